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


@needs_realdata
def test_facts_of_covid_records_keep_only_statements_about_their_own_modality(tmp_path):
    from medtrinity_assets.catalog.load import load_spec, source_root
    from medtrinity_assets.generation.publisher_findings import publisher_text_facts
    from medtrinity_assets.paths import REPO_ROOT
    from medtrinity_assets.sources import read_source
    from medtrinity_assets.sources.base import IngestContext
    from medtrinity_assets.storage import BlobStore

    spec = load_spec(REPO_ROOT / "data" / "sources" / "covid_chestxray.yaml")
    ctx = IngestContext(spec=spec, root=source_root(spec), blobs=BlobStore(tmp_path), salt="s")
    records = {r["source_file"].split("/")[-1]: r for r in read_source(ctx) if isinstance(r, dict)}

    def facts(name):
        return [(f.attribute, f.value, json.loads(f.detail) if f.detail else None, f.confidence)
                for f in publisher_text_facts(records[name])]

    # A radiograph whose note describes the patient's HRCT: no publisher finding, metadata only.
    assert facts("jkms-35-e79-g001-l-a.jpg") == [("view", "AP", None, 1.0), ("sex", "male", None, 1.0),
                                                 ("age_band", "50-59", None, 1.0)]
    # The CT of the same patient gets both located statements.
    ct = [f for f in facts("jkms-35-e79-g001-l-d.jpg") if f[0] == "publisher_text"]
    assert [(d["terms"], d["sides"], d["zones"]) for _, _, d, _ in ct] == [
        (["consolidation"], ["right"], ["upper lobe"]), (["ground-glass opacity"], ["bilateral"], ["lower lobe"])]
    # A radiograph whose note names no modality keeps its statement, with the sentence as value.
    costal = facts("covid-19-pneumonia-7-PA.jpg")
    assert costal[0][:2] == ("publisher_text", "Vertical air space consolidation along the left costal margin.")
    assert costal[0][2]["zones"] == ["costal margin"] and costal[0][2]["negated"] is False
    assert ("view", "PA", None, 1.0) in costal and ("view", "lateral", None, 1.0) in facts("covid-19-pneumonia-7-L.jpg")
    hedged = [f for f in facts("1-s2.0-S0929664620300449-gr3_lrg-a.jpg") if f[0] == "publisher_text"]
    assert [f[3] for f in hedged] == [1.0, 0.5, 0.5]
