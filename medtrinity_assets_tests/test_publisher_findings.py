"""Finding statements read from de-identified publisher text: terms, sides, zones, negation."""

from __future__ import annotations

import csv
import json

import pytest
from conftest import REALDATA, needs_realdata

from medtrinity_assets.generation.publisher_findings import publisher_findings, source_text_findings
from medtrinity_assets.imaging.deid_text import deidentify_text


def _brief(text: str) -> list[tuple]:
    return [(s["terms"], s["sides"], s["zones"], s["negated"]) for s in publisher_findings(text)]


@needs_realdata
def test_every_real_covid_note_reads_as_checked_by_eye():
    """The eight distinct clinical notes of the real extract, after de-identification; each
    statement below was checked against the note by reading it."""
    with open(REALDATA / "covid_chestxray" / "metadata.csv", newline="", encoding="utf-8") as handle:
        notes = list(dict.fromkeys(deidentify_text(r["clinical_notes"]) for r in csv.DictReader(handle)))
    by_start = {note[:24]: _brief(note) for note in notes}
    assert by_start == {
        "Severe ARDS. Person is i": [(["acute respiratory distress syndrome"], [], [], False)],
        "Small consolidation in r": [(["consolidation"], ["right"], ["upper lobe"], False),
                                     (["ground-glass opacity"], ["bilateral"], ["lower lobe"], False)],
        "On [date], a 55-year-old": [(["infiltrate", "opacity"], ["bilateral"], ["perihilar"], False)],
        "Chest CT in convalescent": [(["ground-glass opacity", "reticulation", "fibrosis"], ["bilateral"],
                                      ["peripheral", "subpleural", "lower lobe"], False),
                                     (["opacity"], ["right"], ["upper lobe", "middle lobe"], False),
                                     (["consolidation"], [], [], False)],
        "Elderly male, covid-19 p": [(["opacity"], ["bilateral"], ["perihilar", "upper zone", "peripheral"], False)],
        "Productive cough with a ": [(["opacity"], ["bilateral"], [], False), (["opacity"], ["right"], ["lower zone"], False)],
        "Fever, cough, breathing ": [(["consolidation"], ["left"], ["costal margin"], False)],
        "Admitted at A&E with sho": [(["increased lung markings"], ["bilateral"], ["lower zone"], False),
                                     (["consolidation"], [], [], True)],
    }
    # "probably partially resolved consolidations" is hedged; the costal-margin note is not.
    ct_note = publisher_findings(next(n for n in notes if n.startswith("Chest CT")))
    assert [s["uncertain"] for s in ct_note] == [False, True, True]
    # The imaging each statement is about, as the note says: the same note rides on this
    # patient's radiographs, so a writer must see that these are CT findings.
    assert [s["modalities"] for s in ct_note] == [["ct"], ["ct"], ["ct"]]
    modalities = {note[:24]: [s["modalities"] for s in publisher_findings(note)] for note in notes}
    assert modalities["Small consolidation in r"] == [["ct"], ["ct"]]
    assert modalities["On [date], a 55-year-old"] == [["xray"]]
    assert modalities["Fever, cough, breathing "] == [[]]


@pytest.mark.parametrize(
    "text, expected",
    [
        # A negated list goes on through commas, "or" and adjectives...
        ("No focal airspace disease, large pleural effusions or pulmonary oedema.",
         [(["pleural effusion", "edema"], [], [], True)]),
        ("There is no consolidation, effusion, or pneumothorax.",
         [(["consolidation"], [], [], True), (["pleural effusion"], [], [], True), (["pneumothorax"], [], [], True)]),
        # ...but not into a new located finding.
        ("No effusion, small left basal atelectasis.",
         [(["pleural effusion"], [], [], True), (["atelectasis"], ["left"], ["lower zone"], False)]),
        ("Stable cardiomegaly without pulmonary edema.", [(["cardiomegaly"], [], [], False), (["edema"], [], [], True)]),
        ("The right pneumothorax is no longer seen. Left effusion has resolved.",
         [(["pneumothorax"], ["right"], [], True), (["pleural effusion"], ["left"], [], True)]),
        ("A small left pleural effusion, no right-sided effusion.",
         [(["pleural effusion"], ["left"], [], False), (["pleural effusion"], ["right"], [], True)]),
        # "both" is a side only before lungs, lobes, zones...
        ("Nodule in the left upper lung, seen on both PA and lateral views.", [(["nodule"], ["left"], ["upper zone"], False)]),
        ("Patchy opacities in both lower zones.", [(["opacity"], ["bilateral"], ["lower zone"], False)]),
        ("Opacity within the right upper and lower lobes; biapical pleural thickening.",
         [(["opacity"], ["right"], ["upper lobe", "lower lobe"], False),
          (["pleural thickening"], ["bilateral"], ["upper zone"], False)]),
        ("Consolidation in the LLL and RUL.", [(["consolidation"], ["bilateral"], ["lower lobe", "upper lobe"], False)]),
        # Symptoms and history state no imaging finding.
        ("Fever, cough and sore throat for a week; no chest pain.", []),
    ],
)
def test_statements(text, expected):
    assert _brief(text) == expected


def test_source_text_json_reads_notes_reports_and_captions():
    source_text = json.dumps({"captions": ["Left lower zone consolidation."], "qa": [{"question": "Is there an effusion?", "answer": "no"}],
                              "notes": ["No pneumothorax."]})
    found = [(s["terms"], s["negated"]) for s in source_text_findings(source_text)]
    # QA pairs are not statements (a question states nothing).
    assert found == [(["pneumothorax"], True), (["consolidation"], False)]
    assert source_text_findings(None) == [] and source_text_findings("not json") == []
