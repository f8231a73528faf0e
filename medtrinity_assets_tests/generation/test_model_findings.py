"""Expert-model ROIs in the facts and the text: provenance ``model`` with the score as
confidence, the label state left as the source gave it, the writers and the coarse caption word
them as the model's possible findings, and the verifier accepts them only so.

ROI rows are hand-made (the columns grounding writes); no model runs here.
"""

from __future__ import annotations

import json

import pytest
from spec_factory import build_spec

from medtrinity_assets.generation.coarse import coarse_caption
from medtrinity_assets.generation.fact_builder import build_facts
from medtrinity_assets.generation.grounded_writer import write_description
from medtrinity_assets.generation.model_writer import SYSTEM_PROMPT, prompt_facts
from medtrinity_assets.generation.verifier import verify, verify_claims

SHA = "5eed" * 16
SPEC = build_spec(id="kvasir_unlabelled", modality="endoscopy", organs=["colon"])


def model_roi(roi_id, score, horizontal="left", vertical="lower", area=9000, **extra) -> dict:
    return {
        "roi_id": roi_id, "record_id": "r1", "source_id": SPEC.id, "label": "polyp", "origin": "model:kvasir_polyp",
        "confidence": score, "expert_id": "kvasir_polyp", "weights_sha256": SHA, "model_provenance": "trained",
        "horizontal": horizontal, "vertical": vertical, "size_class": "medium", "area_fraction": area / 204800,
        "width_px": 110, "height_px": 95, "area_px": area, "shape": "oval", "shape_confidence": 0.9,
        "margin": "well-defined", "margin_confidence": 0.86, "intensity_word": "darker", "intensity_contrast": -0.1,
        "texture": "homogeneous", "colour": "pink", "count_same_label": 2, "relations": "[]", **extra,
    }


def record(state="unknown", labels=()) -> dict:
    return {"record_id": "r1", "source_id": SPEC.id, "modality": "endoscopy", "organs": ["colon"], "labels": list(labels),
            "label_state": state, "image_width": 512, "image_height": 400, "scale": 1.0}


ROIS = [
    model_roi("a", 0.87, relations=json.dumps([{"roi_id": "b", "label": "polyp", "relation": "left_of", "distance": 0.4}])),
    model_roi("b", 0.55, horizontal="right", vertical="upper", area=3000),
]


def test_model_rois_give_model_facts_and_leave_the_label_state_alone():
    facts = build_facts(record(), ROIS, SPEC)
    assert facts.record_value("label_state") == "unknown"  # a model never makes a finding or a normal
    assert facts.record_values("finding") == []
    assert facts.record_value("annotated_roi_count") == "0"
    label, origin = facts.roi("a", "label"), facts.roi("a", "origin")
    assert (label.provenance, label.confidence) == ("model", 0.87)
    assert (origin.value, origin.provenance, origin.confidence) == ("model:kvasir_polyp", "model", 0.87)
    assert json.loads(origin.detail) == {"expert_id": "kvasir_polyp", "weights_sha256": SHA, "provenance": "trained"}
    assert facts.roi("b", "count_same_label").provenance == "model"
    # The region's measurements are measurements; the model's score caps how sure its outline's shape is.
    assert facts.roi("a", "image_horizontal").provenance == "measurement"
    assert facts.roi("a", "shape").confidence == pytest.approx(0.87 * 0.9)
    assert facts.roi("b", "margin").confidence == pytest.approx(0.55 * 0.86)
    # A finding the source gives stays the source's, whatever a model marks.
    labelled = build_facts(record("finding", ["polyp"]), ROIS, SPEC)
    assert [(f.value, f.provenance) for f in labelled.record("finding")] == [("polyp", "metadata")]


def test_grounded_writer_and_caption_word_model_rois_as_model_findings():
    facts = build_facts(record(), ROIS, SPEC)
    written = write_description(facts, {}, SPEC)
    roi_part = written["part_roi_analysis"]
    assert "expert model (kvasir_polyp)" in roi_part and "possible polyp region in the lower left part of the image" in roi_part
    assert "0.87" in roi_part and "The same model also marks a medium-sized possible polyp region in the upper right part of the image (confidence 0.55)" in roi_part
    assert "annotated region" not in written["description"]  # the source annotated nothing
    assert "No diagnostic label" in written["part_organ_tissue"] or "no diagnosis" in written["part_organ_tissue"]
    assert "possible polyp region" in written["part_relations"]
    assert verify(written["description"], written["facts"]) == []

    caption = coarse_caption(record(), ROIS, SPEC)
    assert caption == ("An endoscopic image of the colon, with no diagnosis given by the source; an expert model "
                       "(kvasir_polyp) marks a possible polyp region in the lower left part of the image, confidence 0.87 (1 more region marked).")


@pytest.mark.parametrize("sentence, flag", [
    ("There is a polyp in the lower left part of the image.", "model_as_finding"),
    ("The image shows two polyps.", "model_as_finding"),
    ("A model finds a polyp in the lower left part of the image.", "model_as_finding"),  # attributed, not hedged
    ("An expert model (kvasir_polyp) marks a possible polyp region in the lower left part of the image, confidence 0.87.", None),
    ("The detector suggests a possible lesion in the lower left part of the image.", None),
    # Hedged, but where no model region lies: the position is checked as for any region.
    ("An expert model marks a possible polyp in the lower right part of the image.", "side"),
])
def test_verifier_accepts_model_findings_only_with_the_hedge(sentence, flag):
    facts = build_facts(record(), ROIS, SPEC)
    flags = verify(sentence, facts)
    if flag is None:
        assert flags == []
    else:
        assert flags and flags[0].startswith(flag + ":"), flags
        if flag == "model_as_finding":
            assert "kvasir_polyp" in flags[0] and "possible polyp" in flags[0]


def test_a_model_region_never_supports_a_plain_finding_even_beside_a_source_label():
    # The source labels the image polyp: "There is a polyp" rests on the source, not the model.
    facts = build_facts(record("finding", ["polyp"]), ROIS, SPEC)
    assert verify("There is a polyp in the lower left part of the image.", facts) == []
    # With an unknown state the same sentence has only the model behind it.
    verdicts = verify_claims("There is a polyp.", build_facts(record(), ROIS, SPEC))
    assert any(v.flag_type == "model_as_finding" and not v.supported for v in verdicts)


def test_model_writer_prompt_labels_model_facts():
    facts = build_facts(record(), ROIS, SPEC)
    lines = [json.loads(line) for line in prompt_facts(facts) if line.startswith("{")]
    origin = next(l for l in lines if l.get("roi") == "a" and l["attribute"] == "origin")
    assert origin == {"roi": "a", "attribute": "origin", "value": "model:kvasir_polyp", "provenance": "model", "confidence": 0.87}
    label = next(l for l in lines if l.get("roi") == "a" and l["attribute"] == "label")
    assert label["provenance"] == "model" and label["confidence"] == 0.87
    assert 'provenance "model"' in SYSTEM_PROMPT and "possible" in SYSTEM_PROMPT


def test_regions_of_two_experts_name_each_expert():
    second = model_roi("c", 0.66, horizontal="center", vertical="middle", area=2000, origin="model:polyp_yolo", expert_id="polyp_yolo")
    facts = build_facts(record(), ROIS[:1] + [second], SPEC)
    written = write_description(facts, {}, SPEC)
    assert "Other expert models also mark a medium-sized possible polyp region in the central part of the image (polyp_yolo, confidence 0.66)" \
        in written["part_roi_analysis"]
    assert verify(written["description"], written["facts"]) == []
