"""Planted-contradiction benchmark for the verifier (issue 7, point 9).

The corpus is built from real rows: real-data sources (../shared/realdata) and demo sources
(files that installed packages ship) are materialized through the pipeline's own stages
(ingest, normalize, ground, facts) into a temporary data root, and each record's FactSet is
the ground truth. For every record the generator writes

- TRUE sentences from its facts, in several phrasings a person or a language model would use
  (image-frame positions, sizes, counts, shape, margin, intensity in the modality's words,
  texture, true negations, modality including hybrid names such as "FDG-PET/CT", organs and
  their neighbouring anatomy, the source's finding, patient sides where a fact gives them);
- PLANTED contradictions for every claim type, both as template edits of the true sentences
  (flip side, position, size, count, shape, margin, intensity word, add a negation, swap
  modality or organ, invent a finding) and as natural sentences ("A 2 cm hypoechoic mass is
  seen in the upper outer quadrant of the left breast.");
- and the grounded writer's own description of the record, which must verify clean.

Each sentence is verified alone against its record's facts (sentences name their subject). A
planted sentence is caught when the verifier flags it; a true sentence flagged is a false alarm.
The generator is deterministic: choices come from a ``random.Random`` seeded with the seed and
the record id.

Usage: python -m medtrinity_assets.bench_verifier [--sources a,b,...] [--per-source N] [--seed S]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from medtrinity_assets.generation.facts import Fact, FactSet
from medtrinity_assets.generation.verifier import SIDE_PROVENANCES
from medtrinity_assets.paths import env_overrides

DEFAULT_SOURCES = (
    "busi", "ham10000", "isic2017", "covid_chestxray", "cxr_samples_tbx11k", "dsb2018", "miccai15_nuclei",
    "ibsi_sts_nifti", "ibsi_sts_dicom",
    "demo_xray_chest", "demo_ct_head", "demo_ultrasound_heart", "demo_fundus_microaneurysms",
    "demo_histopathology_ihc", "demo_nm_bone", "demo_mri_shoulder",
)
CLAIM_TYPES = (
    "side", "position", "laterality", "quadrant", "size", "count", "shape", "margin", "intensity", "texture",
    "colour", "negation", "modality", "organ", "finding", "normal", "lesion_on_whole_image", "binding", "combined",
)
# Flag types that count as catching a planted claim of each type "for the right reason".
RIGHT_FLAGS = {"binding": {"side", "size", "position"}, "lesion_on_whole_image": {"lesion_on_whole_image", "finding"}}
TARGET_CATCH = 0.95
TARGET_FALSE_ALARM = 0.02


@dataclass(frozen=True)
class Case:
    source_id: str
    record_id: str
    claim_type: str
    style: str  # template | natural | true | writer
    text: str
    planted: bool


# --- real rows -----------------------------------------------------------------------------


def real_factsets(source_ids, work: Path, log=print) -> list[tuple[str, FactSet]]:
    """Each record's facts, from the sources materialized through the pipeline's stages."""
    import duckdb

    from medtrinity_assets import stages
    from medtrinity_assets.catalog import load_catalog
    from medtrinity_assets.catalog.acquire import fetch_package_files
    from medtrinity_assets.duckdb_sql import read_parquet
    from medtrinity_assets.paths import DataRoot

    catalog = load_catalog()
    root = DataRoot(work / "var")
    raw = work / "raw"
    result: list[tuple[str, FactSet]] = []
    with env_overrides(MEDTRINITY_RAW=raw):
        for source_id in source_ids:
            spec = catalog.get(source_id)
            if spec is None:
                log(f"  {source_id}: not in the catalog, skipped")
                continue
            if spec.demo and spec.acquisition.method == "package":
                fetch_package_files(spec, raw / source_id)
            started = time.perf_counter()
            stages.run_ingest(spec, root, "bench-salt")
            stages.run_normalize(spec, root)
            stages.run_ground(spec, root)
            stages.run_facts(spec, root)
            table = root.table("facts", source_id)
            if not table.exists():
                log(f"  {source_id}: no facts table (no readable image), skipped")
                continue
            frame = duckdb.sql(f"SELECT * EXCLUDE (source_id) FROM {read_parquet(table)} ORDER BY record_id").fetchall()
            columns = duckdb.sql(f"SELECT * EXCLUDE (source_id) FROM {read_parquet(table)} LIMIT 0").columns
            by_record: dict[str, list[Fact]] = defaultdict(list)
            for row in frame:
                fact = Fact(**dict(zip(columns, row)))
                by_record[fact.record_id].append(fact)
            for record_id in sorted(by_record):
                result.append((source_id, FactSet(by_record[record_id])))
            log(f"  {source_id}: {len(by_record)} records ({time.perf_counter() - started:.1f} s)")
    return result


# --- sentence generation -------------------------------------------------------------------

_OPPOSITE_H = {"left": "right", "right": "left", "center": "left"}
_OPPOSITE_V = {"upper": "lower", "lower": "upper", "middle": "upper"}
_OTHER_SIZE = {"small": "large", "medium": "small", "large": "small"}
_SIZE_WORDS = {"small": ["small", "tiny"], "medium": ["medium-sized", "moderately sized"], "large": ["large", "big"]}
_OTHER_SHAPE = {"round": "irregular", "oval": "irregular", "elongated": "round", "irregular": "round"}
_SHAPE_WORDS = {"round": ["round", "circular"], "oval": ["oval", "ovoid"], "elongated": ["elongated", "linear"],
                "irregular": ["irregular", "lobulated"]}
_MARGIN_WORDS = {"well-defined": ["well-defined", "circumscribed", "sharply defined"],
                 "ill-defined": ["ill-defined", "indistinct", "poorly defined"]}
_OTHER_MARGIN = {"well-defined": "ill-defined", "ill-defined": "well-defined"}
_TEXTURE_WORDS = {"homogeneous": ["homogeneous", "uniform"], "heterogeneous": ["heterogeneous", "inhomogeneous"]}
_OTHER_TEXTURE = {"homogeneous": "heterogeneous", "heterogeneous": "homogeneous"}
# The modality's own intensity words, per direction.
_INTENSITY = {
    "ultrasound": {"lower": "hypoechoic", "higher": "hyperechoic", "similar": "isoechoic"},
    "ct": {"lower": "hypodense", "higher": "hyperdense", "similar": "isodense"},
    "mri": {"lower": "hypointense", "higher": "hyperintense", "similar": "isointense"},
    "xray": {"lower": "more lucent", "higher": "more opaque", "similar": "of similar density"},
    "mammography": {"lower": "more lucent", "higher": "more opaque", "similar": "of similar density"},
    "pet": {"lower": "photopenic", "higher": "hypermetabolic", "similar": "of similar uptake"},
    "nuclear_medicine": {"lower": "photopenic", "higher": "showing increased uptake", "similar": "of similar uptake"},
}
_GENERIC_INTENSITY = {"lower": "darker than its surroundings", "higher": "brighter than its surroundings",
                      "similar": "of similar brightness to its surroundings"}
# A colour that no measured colour name agrees with.
_WRONG_COLOUR = {"red": "blue", "pink": "blue", "brown": "pink", "dark brown": "pink", "black": "yellow",
                 "purple": "yellow", "blue": "yellow", "white": "red", "yellow": "blue", "orange": "blue", "grey": "red"}
_OTHER_DIRECTION = {"lower": "higher", "higher": "lower", "similar": "higher"}
_MODALITY_PHRASE = {
    "ct": "a CT image", "mri": "an MRI image", "xray": "a radiograph", "ultrasound": "an ultrasound image",
    "dermoscopy": "a dermoscopic photograph", "endoscopy": "an endoscopic image", "fundus": "a fundus photograph",
    "histopathology": "a histopathology slide", "microscopy": "a fluorescence microscopy image", "pet": "a PET image",
    "mammography": "a mammogram", "nuclear_medicine": "a bone scintigraphy image",
}
# A modality a sentence may swap in: never one that is true of the record.
_SWAP_MODALITY = {"ct": "mri", "mri": "ct", "xray": "ultrasound", "ultrasound": "ct", "dermoscopy": "mri",
                  "endoscopy": "ct", "fundus": "mri", "histopathology": "ct", "microscopy": "ultrasound",
                  "pet": "ultrasound", "mammography": "ultrasound", "nuclear_medicine": "mri"}
_REGION_OF_ORGAN = {"breast": "breast", "lung": "chest", "chest": "chest", "heart": "chest", "brain": "head",
                    "head": "head", "skull": "head", "liver": "abdomen", "abdomen": "abdomen", "kidney": "abdomen",
                    "skin": "skin", "retina": "eye", "eye": "eye", "colon": "abdomen", "shoulder": "limb",
                    "soft tissue": "limb", "extremity": "limb", "thigh": "limb", "bone": "skeleton",
                    "skeleton": "skeleton"}
_NEIGHBOUR_SENTENCES = {
    "breast": ["The skin and the chest wall are included at the edge of the field.",
               "The pectoral muscle and the overlying skin are visible."],
    "chest": ["The ribs, the spine and the heart are visible.", "The diaphragm and the mediastinum are outlined."],
    "head": ["The skull and the scalp surround the brain.", "The skull is intact around the brain."],
    "abdomen": ["The spine and the abdominal wall muscles are included.", "The lung bases are visible at the top."],
    "limb": ["Bone and muscle surround the soft tissue.", "The skin and the muscles of the limb are visible."],
    "skin": ["A few hairs cross the skin.", "The surrounding skin is visible."],
    "eye": ["The optic disc and the macula are visible.", "The retina fills the field."],
    "skeleton": ["The spine, the ribs and the pelvis are visible.", "The skeleton is shown from head to foot."],
}
_FOREIGN_ORGAN = {"breast": "brain", "chest": "brain", "head": "kidney", "abdomen": "brain", "limb": "brain",
                  "skin": "lung", "eye": "liver", "skeleton": None}
_PAIRED_PART = {"breast": "breast", "chest": "lung", "head": "hemisphere", "abdomen": "kidney", "limb": "thigh",
                "skin": "forearm", "eye": "eye", "skeleton": "femur"}
_QUADRANT_PHRASES = {
    "breast": ["the upper outer quadrant of the left breast", "the lower inner quadrant of the right breast"],
    "chest": ["the right lower zone", "the left upper zone"],
    "abdomen": ["the lower left quadrant", "the right upper quadrant"],
}
_INVENTED_FINDINGS = ["pleural effusion", "consolidation", "pneumothorax", "melanoma", "glioblastoma",
                      "renal cyst", "colorectal polyp", "microaneurysms", "fibroadenoma", "rib fracture"]


def _zone_key(phrase: str) -> frozenset:
    words = set(phrase.lower().replace("-", " ").split())
    return frozenset(words & {"left", "right", "upper", "lower", "middle", "outer", "inner", "zone", "quadrant"})


def _noun(facts: FactSet, roi_id: str, rng: random.Random) -> str:
    label = (facts.roi_value(roi_id, "label") or "").replace("_", " ")
    options = ["region", "annotated region", "lesion"] + ([f"{label} region"] if label else [])
    if (facts.record_value("label_state") or "") != "finding":
        options = [o for o in options if o != "lesion"]
    return rng.choice(options)


def _subject(facts: FactSet, roi_id: str, rng: random.Random) -> str:
    """A subject that binds to this ROI: the only one, 'the largest', 'the second-largest'."""
    ids = facts.roi_ids()
    noun = _noun(facts, roi_id, rng)
    if len(ids) == 1:
        return f"The {noun}"
    rank = ids.index(roi_id)
    if rank == 0:
        return f"The largest {noun}"
    return f"The {['', 'second', 'third', 'fourth', 'fifth'][rank]} {noun}" if rank < 5 else f"The {noun}"


def _intensity_word(modality: str, direction: str) -> str:
    return _INTENSITY.get(modality, _GENERIC_INTENSITY)[direction]


def _organ_region(facts: FactSet) -> str | None:
    for organ in facts.record_values("organ"):
        region = _REGION_OF_ORGAN.get(organ)
        if region:
            return region
    return None


def cases_for_record(source_id: str, facts: FactSet, rng: random.Random, vocabulary) -> list[Case]:
    """True and planted sentences for one record."""
    rid = next(iter(facts)).record_id
    out: list[Case] = []

    def add(kind: str, style: str, text: str, planted: bool) -> None:
        out.append(Case(source_id, rid, kind, style, text, planted))

    modality = facts.record_value("modality") or ""
    region = _organ_region(facts)
    organs = facts.record_values("organ")
    state = facts.record_value("label_state") or "unknown"
    ids = facts.roi_ids()
    findings = facts.record_values("finding")

    # --- record-level: modality, organ, finding, normal ---
    phrase = _MODALITY_PHRASE.get(modality)
    if phrase:
        add("modality", "true", rng.choice([f"This is {phrase}.", f"The study is {phrase}."]), False)
        swap = _SWAP_MODALITY[modality]
        add("modality", "template", f"This is {_MODALITY_PHRASE[swap]}.", True)
        add("modality", "natural", rng.choice([
            f"On this {'MRI' if swap == 'mri' else swap.upper() if swap == 'ct' else 'ultrasound'} study, the anatomy is clearly depicted.",
            f"The {'MRI' if swap == 'mri' else 'CT' if swap == 'ct' else 'ultrasound'} scan shows the imaged region.",
        ]), True)
    if modality in ("ct", "pet"):
        add("modality", "true", rng.choice(["The image comes from an FDG-PET/CT study.", "It was acquired on a PET/CT scanner."]), False)
    if modality == "mammography":
        add("modality", "true", "This X-ray of the breast is a mammogram.", False)
    if organs and region:
        add("organ", "true", f"The image shows the {organs[0]}.", False)
        for sentence in _NEIGHBOUR_SENTENCES.get(region, []):
            add("organ", "true", sentence, False)
        foreign = _FOREIGN_ORGAN.get(region)
        if foreign:
            add("organ", "template", f"The image shows the {foreign}.", True)
            add("organ", "natural", rng.choice([
                f"The {foreign} appears unremarkable in size and contour.",
                f"Part of the {foreign} is included in the field of view.",
            ]), True)
    if state == "finding" and findings:
        finding = findings[0].replace("_", " ")
        add("finding", "true", rng.choice([f"The appearance is consistent with {finding}.",
                                           f"The source's finding is {finding}."]), False)
    present = set()
    for text in findings + [facts.roi_value(i, "label") or "" for i in ids]:
        present |= vocabulary.entries_in(text)
    from medtrinity_assets.generation.verifier import _PublisherView

    publisher = _PublisherView(facts.record("publisher_text"), modality, vocabulary, attributed=False)
    invented = [f for f in _INVENTED_FINDINGS if not (vocabulary.entries_for(f) & (present | publisher.entries))
                and not any(f in (x or "") for x in findings) and not publisher.states(f)]
    if invented:
        first = rng.choice(invented)
        add("finding", "template", f"The appearance is consistent with {first}.", True)
        second = rng.choice([f for f in invented if f != first] or invented)
        add("finding", "natural", rng.choice([
            f"There are signs of {second}.", f"Findings suggest {second}.", f"{second.capitalize()} is noted.",
        ]), True)
    if state == "normal":
        add("normal", "true", rng.choice(["The image is normal.", "No abnormality is seen."]), False)
    else:
        add("normal", "template", rng.choice(["The image is normal.", "No abnormality is seen."]), True)
        add("normal", "natural", rng.choice(["The study is unremarkable.", "There are no findings.",
                                             "This appears to be a healthy examination."]), True)

    # --- patient side / laterality / quadrant ---
    part = _PAIRED_PART.get(region or "", "side")
    labels = " ".join(findings + [facts.roi_value(i, "label") or "" for i in ids])
    if part in labels:  # a side word inside the source's own label ("left lung" boxes) is the label's
        part = {"lung": "hemithorax"}.get(part, "side")
    laterality = facts.record_value("laterality")
    primary_side = None
    if ids:
        fact = facts.roi(ids[0], "patient_side")
        if fact is not None and fact.provenance in SIDE_PROVENANCES and fact.value in ("left", "right"):
            primary_side = fact.value
    true_side = primary_side or (laterality if laterality in ("left", "right") else None)
    if "bilateral" in publisher.sides or {"left", "right"} <= publisher.sides:
        true_side = None  # every side word is supported by the notes: nothing to plant
        add("laterality", "true", "The publisher's notes report findings on both sides.", False)
    elif not true_side and publisher.sides:
        true_side = next(iter(publisher.sides))
        add("laterality", "true", f"The publisher's notes report a finding on the patient's {true_side} side.", False)
        add("laterality", "template", f"The publisher's notes report a finding on the patient's {_OPPOSITE_H[true_side]} side.", True)
    elif true_side:
        subject = _subject(facts, ids[0], rng) if primary_side else "The image"
        add("laterality", "true", f"{subject} is on the patient's {true_side} side." if primary_side
            else f"This is the {true_side} {part}.", False)
        wrong = _OPPOSITE_H[true_side]
        add("laterality", "template", f"{subject} is on the patient's {wrong} side." if primary_side
            else f"This is the {wrong} {part}.", True)
        add("laterality", "natural", f"A finding is seen in the {wrong} {part}.", True)
    elif not publisher.sides:
        side = rng.choice(["left", "right"])
        add("laterality", "template", f"The finding is on the patient's {side}.", True)
        add("laterality", "natural", rng.choice([
            f"A lesion is seen in the {side} {part}.", f"There is a {side}-sided abnormality.",
        ]), True)
    from medtrinity_assets.generation.claims import _QUADRANT

    def named(phrase: str) -> bool:
        words = _zone_key(phrase) - {"zone", "quadrant"}
        return any(words <= zone for zone in publisher.zones)

    quadrants = [q for q in _QUADRANT_PHRASES.get(region or "", ["the lower left quadrant"]) if not named(q)] \
        or ["the lower inner quadrant"]
    add("quadrant", "template", f"The finding lies in {quadrants[0]}.", True)
    add("quadrant", "natural", rng.choice([
        f"A 2 cm hypoechoic mass is seen in {quadrants[-1]}.", f"There is a rounded opacity in {quadrants[-1]}.",
        f"An abnormality is located in {quadrants[0]}.",
    ]), True)
    for note in facts.record_values("publisher_text"):
        # A zone the publisher's note names is true; the same zone on the other side is not.
        for match in _QUADRANT.finditer(note):
            zone = " ".join(match.group(0).lower().split())
            flipped = zone.replace("left", "\0").replace("right", "left").replace("\0", "right")
            add("quadrant", "true", f"The publisher's note places a finding in the {zone}.", False)
            if flipped != zone and not named(flipped):
                add("quadrant", "template", f"A finding is seen in the {flipped}.", True)

    if not ids:
        _whole_image_cases(add, facts, rng, modality, organs, state)
        return out

    # --- region claims, for the primary ROI and (binding) a second one ---
    primary = ids[0]
    subject = _subject(facts, primary, rng)
    h, v = facts.roi_value(primary, "image_horizontal"), facts.roi_value(primary, "image_vertical")
    if h:
        add("side", "true", rng.choice([f"{subject} lies toward the {h} of the image.",
                                        f"{subject} is seen on the {h} side of the image."]) if h != "center"
            else f"{subject} lies in the {v or 'middle'} central part of the image.", False)
        wrong = _OPPOSITE_H[h]
        add("side", "template", f"{subject} lies toward the {wrong} of the image.", True)
        add("side", "natural", rng.choice([f"On the {wrong} side of the frame, {subject.lower()} is visible.",
                                           f"{subject} is located in the {wrong} half of the image."]), True)
    if v:
        add("position", "true", f"{subject} lies in the {v} part of the image." if v != "middle"
            else f"{subject} lies in the middle third of the image.", False)
        wrong = _OPPOSITE_V[v]
        add("position", "template", f"{subject} lies in the {wrong} part of the image.", True)
        add("position", "natural", rng.choice([f"{subject} sits near the {'top' if wrong == 'upper' else 'bottom'} of the image.",
                                               f"{subject} occupies the {wrong} half of the frame."]), True)
    size = facts.roi_value(primary, "size_class")
    noun = _noun(facts, primary, rng)
    if size:
        add("size", "true", rng.choice([f"{subject} is {rng.choice(_SIZE_WORDS[size])}.",
                                        f"It is a {rng.choice(_SIZE_WORDS[size])} {noun}."]) if len(ids) == 1
            else f"{subject} is {rng.choice(_SIZE_WORDS[size])}.", False)
        add("size", "template", f"{subject} is {rng.choice(_SIZE_WORDS[_OTHER_SIZE[size]])}.", True)
    fraction = facts.roi(primary, "area_fraction")
    if fraction is not None and fraction.number:
        percent = 100 * fraction.number
        add("size", "true", f"{subject} covers about {percent:.1f}% of the image.", False)
        add("size", "template", f"{subject} covers about {min(99.0, percent * 3 + 5):.1f}% of the image.", True)
    diameter = facts.roi(primary, "max_diameter_mm")
    if diameter is not None and diameter.number:
        add("size", "true", f"{subject} measures about {diameter.number:.0f} mm.", False)
        add("size", "natural", f"{subject} measures approximately {diameter.number * 3 / 10 + 1:.1f} cm.", True)
    else:
        add("size", "natural", rng.choice([f"{subject} measures approximately 2.5 cm.", f"A 14 mm {noun} is seen."]), True)

    label = facts.roi_value(primary, "label") or ""
    same = sum(1 for i in ids if facts.roi_value(i, "label") == label)
    count_noun = "regions"
    add("count", "true", f"{len(ids)} {count_noun} are annotated in this image." if len(ids) > 1
        else "A single region is annotated in this image.", False)
    add("count", "template", f"{len(ids) + 1} {count_noun} are annotated in this image.", True)
    add("count", "natural", "Multiple lesions are present." if len(ids) == 1
        else rng.choice(["There is a single lesion.", f"Only {same - 1 if same > 2 else 'one'} {label or 'lesion'} is seen." if same > 1
                         else "There is a solitary lesion."]), True)
    if same > 1 and label:
        add("count", "true", f"{same} {label}{'es' if label.endswith('s') else 's'} are annotated.", False)

    for attribute, words, other in (("shape", _SHAPE_WORDS, _OTHER_SHAPE), ("margin", _MARGIN_WORDS, _OTHER_MARGIN),
                                    ("texture", _TEXTURE_WORDS, _OTHER_TEXTURE)):
        value = facts.roi_value(primary, attribute)
        if not value:
            continue
        phrase = {"shape": "in shape", "margin": "at its margins", "texture": "in texture"}[attribute]
        add(attribute, "true", f"{subject} is {rng.choice(words[value])} {phrase}.", False)
        add(attribute, "template", f"{subject} is {rng.choice(words[other[value]])} {phrase}.", True)
        wrong = rng.choice(words[other[value]])
        add(attribute, "natural", {
            "shape": f"{subject} has {'an' if wrong[0] in 'aeiou' else 'a'} {wrong} outline.",
            "margin": f"{subject} shows {wrong} borders.",
            "texture": f"Its internal structure looks {wrong}.",
        }[attribute] if attribute != "texture" else f"{subject} has a {wrong} internal texture.", True)
        add("negation", "true", f"{subject} is not {rng.choice(words[other[value]])} {phrase}.", False)
        add("negation", "template", f"{subject} is not {words[value][0]} {phrase}.", True)
    intensity = facts.roi(primary, "intensity")
    if intensity is not None:
        true_word = _intensity_word(modality, intensity.value)
        wrong_word = _intensity_word(modality, _OTHER_DIRECTION[intensity.value])
        add("intensity", "true", f"{subject} is {true_word}.", False)
        add("intensity", "template", f"{subject} is {wrong_word}.", True)
        add("intensity", "natural", f"A {wrong_word.replace('showing ', '')} {noun} is noted." if " " not in wrong_word
            else f"Relative to the surrounding tissue, {subject.lower()} is {wrong_word}.", True)
        add("negation", "template", f"{subject} is not {true_word.replace('showing ', '')}.", True)
        add("negation", "true", f"{subject} is not {wrong_word.replace('showing ', '')}.", False)
    colour = facts.roi_value(primary, "colour")
    if colour in _WRONG_COLOUR:
        add("colour", "true", rng.choice([f"{subject} has a {colour} colour.", f"The colour of {subject[0].lower() + subject[1:]} is {colour}."]), False)
        wrong = _WRONG_COLOUR[colour]
        add("colour", "template", f"{subject} has a {wrong} colour.", True)
        add("colour", "natural", rng.choice([f"{subject} appears predominantly {wrong}.", f"A {wrong} {noun} is visible."]), True)
    lesion = rng.choice(["mass", "lesion", "abnormality"])
    add("negation", "natural", rng.choice([f"No {lesion} is seen.", f"There is no {lesion} in this image.",
                                           f"The image shows no {lesion}."]), True)

    _combined_cases(add, facts, primary, subject, noun, modality, rng)
    _paraphrase_cases(add, facts, primary, subject, modality, rng)

    # --- binding: a second ROI described with the first one's attributes ---
    if len(ids) > 1:
        second = ids[1]
        second_subject = _subject(facts, second, rng)
        h2 = facts.roi_value(second, "image_horizontal")
        v2 = facts.roi_value(second, "image_vertical") or "middle"
        across = {"center": "central"}
        if h2:
            add("side", "true", f"{second_subject} lies in the {v2} {across.get(h2, h2)} part of the image.", False)
        if h and h2 and h != h2:
            add("binding", "template", f"{second_subject} lies in the {v2} {across.get(h, h)} part of the image.", True)
        s1, s2 = facts.roi_value(primary, "size_class"), facts.roi_value(second, "size_class")
        if s1 and s2 and s1 != s2:
            add("binding", "natural", f"{second_subject} is {_SIZE_WORDS[s1][0]}.", True)
    return out


def _combined_cases(add, facts: FactSet, primary: str, subject: str, noun: str, modality: str, rng: random.Random) -> None:
    """Long sentences that state several attributes at once (as a language model writes them),
    true, and with exactly one attribute wrong; and two-sentence texts where "It" carries the
    subject into the second sentence."""
    true: dict[str, str] = {}
    wrong: dict[str, str] = {}
    size = facts.roi_value(primary, "size_class")
    if size:
        true["size"], wrong["size"] = _SIZE_WORDS[size][0], _SIZE_WORDS[_OTHER_SIZE[size]][0]
    intensity = facts.roi(primary, "intensity")
    if intensity is not None and " " not in _intensity_word(modality, intensity.value):
        true["intensity"] = _intensity_word(modality, intensity.value)
        wrong["intensity"] = _intensity_word(modality, _OTHER_DIRECTION[intensity.value])
    margin = facts.roi_value(primary, "margin")
    if margin:
        true["margin"], wrong["margin"] = _MARGIN_WORDS[margin][0], _MARGIN_WORDS[_OTHER_MARGIN[margin]][0]
    shape = facts.roi_value(primary, "shape")
    if shape:
        true["shape"], wrong["shape"] = _SHAPE_WORDS[shape][0], _SHAPE_WORDS[_OTHER_SHAPE[shape]][0]
    h, v = facts.roi_value(primary, "image_horizontal"), facts.roi_value(primary, "image_vertical")
    if h and v:
        across = {"center": "central"}
        true["side"], wrong["side"] = across.get(h, h), across.get(_OPPOSITE_H[h], _OPPOSITE_H[h])
        true["position"], wrong["position"] = v, _OPPOSITE_V[v]

    kind_noun = noun.split()[-1]

    def sentence(words: dict[str, str]) -> str:
        adjectives = " ".join(w for w in (words.get("size"), words.get("intensity"), words.get("shape")) if w)
        text = f"{subject} is {'an' if adjectives[:1] in 'aeiou' else 'a'} {adjectives} {kind_noun}"
        if words.get("margin"):
            text += f" with {words['margin']} margins"
        if words.get("side"):
            text += f" in the {words['position']} {words['side']} part of the image"
        return text + "."

    if len(true) >= 2:
        add("combined", "true", sentence(true), False)
        for attribute in true:
            kind = {"side": "side", "position": "position"}.get(attribute, attribute)
            add(kind, "natural", sentence({**true, attribute: wrong[attribute]}), True)
    # "It" carries the subject from the sentence before.
    for attribute in ("intensity", "margin", "size"):
        if attribute in true and "side" in true:
            opening = f"{subject} lies in the {true['position']} {true['side']} part of the image."
            said = {"intensity": "It is {}.", "margin": "It has {} margins.", "size": "It is {}."}[attribute]
            add("combined", "true", f"{opening} {said.format(true[attribute])}", False)
            add(attribute, "natural", f"{opening} {said.format(wrong[attribute])}", True)
            break


# Phrasings a language model uses, written apart from the verifier's word tables: each takes the
# TRUE value or a WRONG one for one slot. (slot, template); {s} is the subject.
_PARAPHRASES: list[tuple[str, str]] = [
    ("side", "Within the {pos} portion of the frame, {s_lower} is identified."),
    ("side", "{s}, found toward the {h} edge of the image, is clearly outlined."),
    ("side", "On the {h} of the image, {s_lower} can be appreciated."),
    ("position", "{s} is situated in the {v} half of the picture."),
    ("position", "Toward the {v_edge} of the image, {s_lower} is visible."),
    ("size", "{s} appears {size} relative to the field of view."),
    ("size", "Overall, {s_lower} is a {size} abnormality."),
    ("size", "{s} takes up roughly {pct}% of the image."),
    ("shape", "{s} shows a configuration that is {shape}."),
    ("shape", "Morphologically, {s_lower} is {shape}."),
    ("margin", "The borders of {s_lower} are {margin}."),
    ("margin", "{s} is {margin}, with margins that are easy to follow."),
    ("texture", "Internally, {s_lower} looks {texture}."),
    ("intensity", "Compared to the adjacent tissue, {s_lower} appears {intensity}."),
    ("intensity", "{s} is {intensity} relative to its surroundings."),
]


def _paraphrase_cases(add, facts: FactSet, primary: str, subject: str, modality: str, rng: random.Random) -> None:
    h, v = facts.roi_value(primary, "image_horizontal"), facts.roi_value(primary, "image_vertical")
    size = facts.roi_value(primary, "size_class")
    shape, margin, texture = (facts.roi_value(primary, a) for a in ("shape", "margin", "texture"))
    intensity = facts.roi(primary, "intensity")
    fraction = facts.roi(primary, "area_fraction")
    across = {"center": "central"}
    values: dict[str, tuple[str, str]] = {}  # slot -> (true, wrong)
    if h and v:
        values["pos"] = (f"{v} {across.get(h, h)}", f"{v} {across.get(_OPPOSITE_H[h], _OPPOSITE_H[h])}")
    if h and h != "center":
        values["h"] = (h, _OPPOSITE_H[h])
    if v and v != "middle":
        values["v"] = (v, _OPPOSITE_V[v])
        values["v_edge"] = ({"upper": "top", "lower": "bottom"}[v], {"upper": "bottom", "lower": "top"}[v])
    if size:
        values["size"] = (_SIZE_WORDS[size][-1], _SIZE_WORDS[_OTHER_SIZE[size]][-1])
    if fraction is not None and fraction.number:
        values["pct"] = (f"{100 * fraction.number:.0f}" if fraction.number >= 0.1 else f"{100 * fraction.number:.1f}",
                         f"{min(95, 100 * fraction.number * 4 + 10):.0f}")
    if shape:
        values["shape"] = (_SHAPE_WORDS[shape][-1], _SHAPE_WORDS[_OTHER_SHAPE[shape]][-1])
    if margin:
        values["margin"] = (_MARGIN_WORDS[margin][-1], _MARGIN_WORDS[_OTHER_MARGIN[margin]][-1])
    if texture:
        values["texture"] = (_TEXTURE_WORDS[texture][-1], _TEXTURE_WORDS[_OTHER_TEXTURE[texture]][-1])
    if intensity is not None:
        values["intensity"] = (_intensity_word(modality, intensity.value).replace("showing ", "with "),
                               _intensity_word(modality, _OTHER_DIRECTION[intensity.value]).replace("showing ", "with "))
    for kind, template in _PARAPHRASES:
        slot = next(name for name in values.keys() | {"pos", "h", "v", "v_edge", "size", "pct", "shape", "margin",
                                                      "texture", "intensity"} if "{" + name + "}" in template)
        if slot not in values:
            continue
        fill = {"s": subject, "s_lower": subject[0].lower() + subject[1:]}
        add(kind, "true", template.format(**fill, **{slot: values[slot][0]}), False)
        add(kind, "natural", template.format(**fill, **{slot: values[slot][1]}), True)


def _whole_image_cases(add, facts: FactSet, rng: random.Random, modality: str, organs: list[str], state: str) -> None:
    organ = organs[0] if organs else "tissue"
    add("lesion_on_whole_image", "template", rng.choice([
        f"A small mass is seen in the {organ}.", f"There is a nodule in the {organ}.",
    ]), True)
    add("lesion_on_whole_image", "natural", rng.choice([
        "There is consolidation in the lower zone with a small effusion.",
        f"A well-defined {rng.choice(['hypoechoic', 'hyperdense', 'dark'])} lesion is present.",
        "Two polyps are visible.", "An irregular tumour is seen at the centre of the image.",
    ]), True)
    add("side", "natural", f"The lesion lies in the {rng.choice(['left', 'right'])} part of the image.", True)
    add("count", "natural", rng.choice(["Two lesions are present.", "Multiple nodules are seen."]), True)
    add("size", "natural", rng.choice(["A large abnormality is visible.", "The lesion measures 3 cm."]), True)
    if state == "normal":
        add("negation", "true", rng.choice(["No mass is seen.", "There is no lesion in this image."]), False)
    add("lesion_on_whole_image", "true", rng.choice([
        "No region is annotated in this image.", "The source marks no region in this image.",
    ]), False)


# --- running ---------------------------------------------------------------------------------


def build_corpus(factsets: list[tuple[str, FactSet]], seed: int = 7, per_source: int | None = None) -> list[Case]:
    from medtrinity_assets.generation.claims import default_vocabulary

    vocabulary = default_vocabulary()
    cases: list[Case] = []
    taken: Counter = Counter()
    for source_id, facts in factsets:
        if per_source is not None and taken[source_id] >= per_source:
            continue
        taken[source_id] += 1
        record_id = next(iter(facts)).record_id
        rng = random.Random(f"{seed}:{record_id}")
        cases.extend(cases_for_record(source_id, facts, rng, vocabulary))
    return cases


def writer_cases(factsets: list[tuple[str, FactSet]], per_source: int | None = None) -> list[tuple[Case, FactSet]]:
    """The grounded writer's full descriptions: true texts that must verify clean."""
    from medtrinity_assets.catalog import load_catalog
    from medtrinity_assets.generation.grounded_writer import write_description

    catalog = load_catalog()
    out = []
    taken: Counter = Counter()
    for source_id, facts in factsets:
        if per_source is not None and taken[source_id] >= per_source:
            continue
        taken[source_id] += 1
        written = write_description(facts, {}, catalog[source_id])
        record_id = next(iter(facts)).record_id
        out.append((Case(source_id, record_id, "writer", "writer", written["description"], False), written["facts"]))
    return out


@dataclass
class Result:
    caught: Counter
    caught_right_type: Counter
    planted: Counter
    false_alarms: Counter
    true_total: Counter
    missed: list[Case]
    alarms: list[tuple[Case, list[str]]]

    def catch_rate(self, kind: str) -> float:
        return self.caught[kind] / self.planted[kind] if self.planted[kind] else float("nan")

    @property
    def false_alarm_rate(self) -> float:
        total = sum(self.true_total.values())
        return sum(self.false_alarms.values()) / total if total else 0.0


def run_benchmark(factsets: list[tuple[str, FactSet]], seed: int = 7, per_source: int | None = None) -> Result:
    from medtrinity_assets.generation.verifier import verify

    by_record = {next(iter(f)).record_id: f for _, f in factsets}
    result = Result(Counter(), Counter(), Counter(), Counter(), Counter(), [], [])
    items = [(case, by_record[case.record_id]) for case in build_corpus(factsets, seed, per_source)]
    items += writer_cases(factsets, per_source)
    for case, facts in items:
        flags = verify(case.text, facts)
        if case.planted:
            result.planted[case.claim_type] += 1
            if flags:
                result.caught[case.claim_type] += 1
                right = RIGHT_FLAGS.get(case.claim_type, {case.claim_type})
                if any(flag.split(":")[0] in right for flag in flags):
                    result.caught_right_type[case.claim_type] += 1
            else:
                result.missed.append(case)
        else:
            result.true_total[case.claim_type] += 1
            if flags:
                result.false_alarms[case.claim_type] += 1
                result.alarms.append((case, flags))
    return result


def report(result: Result) -> str:
    lines = [f"{'claim type':<24}{'planted':>8}{'caught':>8}{'rate':>8}{'by type':>9}   {'true':>6}{'alarms':>8}"]
    for kind in CLAIM_TYPES + ("writer",):
        planted, true = result.planted[kind], result.true_total[kind]
        if not planted and not true:
            continue
        rate = f"{100 * result.catch_rate(kind):.1f}%" if planted else "-"
        right = f"{100 * result.caught_right_type[kind] / planted:.1f}%" if planted else "-"
        lines.append(f"{kind:<24}{planted:>8}{result.caught[kind]:>8}{rate:>8}{right:>9}   {true:>6}{result.false_alarms[kind]:>8}")
    planted = sum(result.planted.values())
    true = sum(result.true_total.values())
    lines.append(f"{'all':<24}{planted:>8}{sum(result.caught.values()):>8}"
                 f"{100 * sum(result.caught.values()) / max(planted, 1):>7.1f}%   {true:>6}{sum(result.false_alarms.values()):>8}")
    lines.append(f"false-alarm rate on true sentences and descriptions: {100 * result.false_alarm_rate:.2f}% "
                 f"(target <= {100 * TARGET_FALSE_ALARM:.0f}%); catch target >= {100 * TARGET_CATCH:.0f}% per type")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sources", default=",".join(DEFAULT_SOURCES))
    parser.add_argument("--per-source", type=int, default=40, help="records per source, so no source dominates (0: all)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--show", type=int, default=5, help="misses and false alarms to print")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench_verifier_") as work:
        print("Materializing sources through ingest, normalize, ground, facts:")
        factsets = real_factsets([s for s in args.sources.split(",") if s], Path(work))
    result = run_benchmark(factsets, args.seed, args.per_source or None)
    print(f"\n{len(factsets)} records; seed {args.seed}\n")
    print(report(result))
    for case in result.missed[: args.show]:
        print(f"  missed [{case.claim_type}/{case.style}] {case.source_id}: {case.text}")
    for case, flags in result.alarms[: args.show]:
        print(f"  false alarm [{case.claim_type}/{case.style}] {case.source_id}: {case.text[:160]!r} -> {flags[:2]}")
    ok = all(result.catch_rate(k) >= TARGET_CATCH for k in result.planted) and result.false_alarm_rate <= TARGET_FALSE_ALARM
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
