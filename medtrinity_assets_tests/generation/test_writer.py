"""Facts and the grounded writer: what may be said, from which provenance, in what words."""

from __future__ import annotations

import json
import re

import pytest
from spec_factory import build_spec

from medtrinity_assets import schemas
from medtrinity_assets.generation.coarse import coarse_caption
from medtrinity_assets.generation.fact_builder import build_facts
from medtrinity_assets.generation.facts import Fact, FactSet
from medtrinity_assets.sources.label_state import label_state_of
from medtrinity_assets.generation.grounded_writer import (
    PROMPT_VERSION,
    WRITER,
    build_llm_prompt,
    write_description,
)

PART_KEYS = [f"part_{name}" for name in schemas.DESCRIPTION_PARTS]


def make_spec(source_id, modality, organs, layout=None):
    return build_spec(id=source_id, name=source_id.replace("_", " ").title(), modality=modality, organs=organs,
                      **({"layout": layout} if layout else {}))


def make_record(modality, organs, labels=(), record_id="rec1", **extra) -> dict:
    record = {
        "record_id": record_id, "source_id": "src", "source_file": "a.png", "sequence": None,
        "slice_index": -1, "slice_count": 1, "modality": modality, "organs": list(organs), "labels": list(labels),
        "height": 800, "width": 1000, "image_height": 400, "image_width": 500, "scale": 0.5, "pixel_spacing_mm": None,
    }
    record.update(extra)
    return record


def make_roi(roi_id="roi_a", label="finding", **extra) -> dict:
    roi = {name: None for name in schemas.ROIS.names}
    roi.update(
        roi_id=roi_id, record_id="rec1", source_id="src", label=label, origin="annotation:mask", confidence=1.0,
        image_height=400, image_width=500, x0=40, y0=30, x1=120, y1=100, area_px=4200, area_fraction=0.021,
        centroid_x=0.16, centroid_y=0.16, horizontal="left", vertical="upper", patient_side=None, size_class="small",
        shape="oval", intensity_word="hypoechoic", intensity_contrast=-0.18, texture="heterogeneous",
        margin="ill-defined", count_same_label=1, relations="[]",
    )
    roi.update(extra)
    return roi


def whole_image_roi() -> dict:
    return make_roi("whole", None, origin="whole_image", x0=0, y0=0, x1=500, y1=400, area_px=200000, area_fraction=1.0,
                    horizontal=None, vertical=None, size_class=None, shape=None, intensity_word=None, texture=None,
                    margin=None, count_same_label=0)


CT = make_spec("ct_liver", "ct", ["liver", "abdomen"], layout={"family": "nifti", "slice_axis": 2})
BUSI = make_spec("busi", "ultrasound", ["breast"])
XRAY = make_spec("cxr", "xray", ["chest", "lung"])
ECHO = make_spec("echo", "ultrasound", ["heart"])


def describe(record, rois, spec, knowledge=None):
    facts = build_facts(record, rois, spec)
    return write_description(facts, knowledge or {}, spec)


# --- facts ------------------------------------------------------------------------------


def test_patient_side_is_a_fact_only_with_its_geometry():
    record = make_record("ct", ["liver"], ["liver tumour"], slice_index=33, slice_count=120)
    guessed = build_facts(record, [make_roi(label="liver tumour", patient_side="right")], CT)
    assert guessed.roi("roi_a", "patient_side") is None  # a side without provenance is a frame guess
    measured = build_facts(record, [make_roi(label="liver tumour", patient_side="left", patient_side_source="geometry")], CT)
    fact = measured.roi("roi_a", "patient_side")
    assert fact.value == "left" and fact.provenance == "geometry"
    text = write_description(measured, {}, CT)["description"]
    assert "patient's left side (from the image's position in patient coordinates)" in text
    assert "patient's" not in write_description(guessed, {}, CT)["description"]


def test_label_states_are_never_guessed_to_normal():
    assert label_state_of(make_record("xray", ["lung"])) == "unknown"
    assert label_state_of(make_record("xray", ["lung"], ["nodule"])) == "finding"
    assert label_state_of(make_record("xray", ["lung"], label_state="normal")) == "normal"
    unknown = describe(make_record("xray", ["lung"]), [whole_image_roi()], XRAY)["description"]
    assert "no diagnosis" in unknown
    assert not re.search(r"\bnormal\b|no finding|no abnormal", unknown, re.I), unknown
    normal = describe(make_record("xray", ["lung"], label_state="normal"), [whole_image_roi()], XRAY)
    assert "normal" in normal["part_organ_tissue"]
    context = describe(make_record("ct", ["liver"], slice_index=3, slice_count=40, slice_role="context"),
                       [whole_image_roi()], CT)
    assert "outside the annotated region" in context["part_organ_tissue"]
    assert "normal" not in context["description"]


def test_sizes_are_in_the_exported_frame_and_in_mm_when_known():
    record = make_record("ultrasound", ["breast"], ["malignant"], pixel_spacing_mm=[0.1, 0.1])
    roi = make_roi(label="malignant", max_diameter_mm=16.04, width_px=80, height_px=70)
    facts = build_facts(record, [roi], BUSI)
    assert facts.record("pixel_spacing_mm")[0].number == pytest.approx(0.2)  # 0.1 mm / scale 0.5
    assert facts.roi("roi_a", "width_px").value == "80"
    out = write_description(facts, {}, BUSI)
    assert "500 × 400 pixels" in out["part_modality"]  # the exported frame, not the original 1000 × 800
    assert "about 80 × 70 pixels of the exported image" in out["part_roi_analysis"]
    assert "about 16 mm at its widest" in out["part_roi_analysis"]


def test_weak_measurements_are_hedged_or_left_out():
    record = make_record("ultrasound", ["breast"], ["benign"])
    strong = describe(record, [make_roi(label="benign", margin_confidence=0.9, shape_confidence=0.9)], BUSI)
    assert "its margin is ill-defined" in strong["part_texture_colour"]
    hedged = describe(record, [make_roi(label="benign", margin_confidence=0.45)], BUSI)
    assert "margin appears ill-defined, though this measurement is uncertain" in hedged["part_texture_colour"]
    omitted = describe(record, [make_roi(label="benign", margin_confidence=0.1)], BUSI)
    assert "margin" not in omitted["part_texture_colour"]


def test_components_counts_and_relations():
    a = make_roi("a", "polyp", area_px=900, count_same_label=2, relations=json.dumps(
        [{"roi_id": "b", "label": "polyp", "relation": "left_of", "distance": 0.4}]))
    b = make_roi("b", "polyp", area_px=300, count_same_label=2, horizontal="right", vertical="lower")
    out = describe(make_record("endoscopy", ["colon"], ["polyp"]), [a, b], make_spec("kv", "endoscopy", ["colon"]))
    assert "largest of 2 separate regions labelled polyp" in out["part_roi_analysis"]
    assert "small polyp region in the lower right part of the image" in out["part_roi_analysis"]
    assert "lies to the left of the polyp region" in out["part_relations"]


def test_cine_frames_are_frames_not_slices():
    record = make_record("ultrasound", ["heart"], slice_index=92, slice_count=120, frame_kind="frame")
    out = describe(record, [whole_image_roi()], ECHO)
    assert "frame 93 of the 120 frames of a cine acquisition" in out["part_modality"]
    assert "slice" not in out["part_modality"]


def test_knowledge_is_compared_not_pasted():
    appearance = ("On breast ultrasound a malignant mass is often irregular in shape, with an angular or spiculated "
                  "margin, hypoechoic and heterogeneous echotexture, and sometimes posterior acoustic shadowing.")
    knowledge = {
        "knowledge_ids": ["breast_tumour_malignant.appearance.ultrasound"],
        "knowledge_texts": [appearance],
        "knowledge_sections": json.dumps([{"entry_id": "breast_tumour_malignant", "finding": "malignant breast tumour",
                                           "appearance": appearance}]),
    }
    record = make_record("ultrasound", ["breast"], ["malignant"])
    out = describe(record, [make_roi(label="malignant", shape="oval")], BUSI, knowledge)
    text = out["description"]
    assert "the hypoechoic appearance" in text and "match what is usually reported for malignant breast tumour" in text
    assert "the oval shape is less typical of it" in out["part_texture_colour"].lower()
    assert out["knowledge_ids"] == ["breast_tumour_malignant"]
    assert "breast_tumour_malignant" not in text and "«" not in text and "[" not in text
    words = appearance.lower().split()
    five_grams = {" ".join(words[i:i + 5]) for i in range(len(words) - 4)}
    assert not any(gram in text.lower() for gram in five_grams)
    facts = out["facts"]
    assert [f.value for f in facts.record("knowledge")] == ["breast_tumour_malignant"]
    assert facts.record("knowledge")[0].provenance == "knowledge"
    # An unknown label state gets no knowledge comparison at all.
    unknown = describe(make_record("ultrasound", ["breast"]), [whole_image_roi()], BUSI, knowledge)
    assert unknown["knowledge_ids"] == []


def test_writer_is_deterministic_and_varied():
    rois = [make_roi(label="malignant")]
    first = describe(make_record("ultrasound", ["breast"], ["malignant"]), rois, BUSI)
    assert first == describe(make_record("ultrasound", ["breast"], ["malignant"]), rois, BUSI)
    assert all(first[key].strip() for key in PART_KEYS)
    assert first["writer"] == WRITER and first["prompt_version"] == PROMPT_VERSION
    texts = {describe(make_record("ultrasound", ["breast"], ["malignant"], record_id=f"r{i}"), rois, BUSI)["description"]
             for i in range(12)}
    assert len(texts) >= 4  # sentence variants by record id


def test_facts_round_trip_and_reject_unknown_values():
    facts = build_facts(make_record("ct", ["liver"], ["liver tumour"]), [make_roi(label="liver tumour")], CT)
    assert FactSet.from_json(facts.to_json()).facts == facts.facts
    with pytest.raises(ValueError, match="shape"):
        Fact("r", "a", "shape", "blobby", "measurement")
    with pytest.raises(ValueError, match="provenance"):
        Fact("r", "a", "shape", "round", "guess")


def test_coarse_caption_says_unknown_not_normal():
    caption = coarse_caption(make_record("mri", ["brain"], sequence="T1"), [whole_image_roi()], make_spec("brain_mr", "mri", ["brain"]))
    assert caption == "A T1 MRI image of the brain, with no diagnosis given by the source."


def test_llm_prompt_carries_the_facts():
    record = make_record("ct", ["liver"], ["liver tumour"], slice_index=33, slice_count=120)
    facts = build_facts(record, [make_roi(label="liver tumour", patient_side="left", patient_side_source="geometry")], CT)
    messages = build_llm_prompt(facts, {}, "the coarse caption", CT)
    user = messages[1]["content"]
    assert '"attribute": "patient_side", "value": "left", "provenance": "geometry"' in user
    assert "label_state" in user and "the coarse caption" in user
