"""Stages 4 and 6: coarse captions, the grounded five-part writer, the LLM prompt, the verifier."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image
from spec_factory import build_spec

from medtrinity_assets import schemas
from medtrinity_assets.catalog.spec import SourceSpec
from medtrinity_assets.generation.coarse import CAPTION_VERSION, coarse_caption
from medtrinity_assets.generation.grounded_writer import (
    PROMPT_VERSION,
    WRITER,
    build_llm_prompt,
    write_description,
)
from medtrinity_assets.generation.verifier import checkable_text, verify
from medtrinity_assets.grounding.attributes import measure_roi
from medtrinity_assets.grounding.relations import relate
from medtrinity_assets_tests.conftest import REALDATA, needs_realdata

PART_KEYS = [f"part_{name}" for name in schemas.DESCRIPTION_PARTS]
LESION_WORDS = re.compile(r"\b(lesions?|mass(es)?|tumou?rs?|nodules?|cysts?|polyps?)\b", re.I)


def make_spec(source_id, modality, organs, layout=None, **extra) -> SourceSpec:
    return build_spec(
        id=source_id, name=source_id.replace("_", " ").title(), modality=modality, organs=organs,
        **({"layout": layout} if layout else {}), **extra,
    )

def make_record(modality, organs, labels=(), **extra) -> dict:
    record = {
        "record_id": "rec1", "source_id": "src", "source_file": "a.png", "sequence": None,
        "slice_index": -1, "slice_count": 1, "modality": modality, "dicom_modality": None,
        "organs": list(organs), "labels": list(labels), "height": 400, "width": 500,
        "pixel_spacing_mm": None,
    }
    record.update(extra)
    return record


def make_roi(roi_id="roi_a", label="finding", **extra) -> dict:
    roi = {name: None for name in schemas.ROIS.names}
    roi.update(
        roi_id=roi_id, record_id="rec1", source_id="src", label=label, origin="annotation:mask",
        confidence=1.0, image_height=400, image_width=500, x0=40, y0=30, x1=120, y1=100,
        area_px=4200, area_fraction=0.021, area_mm2=None, centroid_x=0.16, centroid_y=0.16,
        horizontal="left", vertical="upper", patient_side=None, size_class="small", shape="oval",
        intensity_word="hypoechoic", intensity_contrast=-0.18, texture="heterogeneous",
        margin="ill-defined", colour=None, count_same_label=1, relations="[]",
    )
    roi.update(extra)
    return roi


def whole_image_roi(**extra) -> dict:
    return make_roi(
        roi_id="whole", label=None, origin="whole_image", x0=0, y0=0, x1=500, y1=400, area_px=200000,
        area_fraction=1.0, centroid_x=0.5, centroid_y=0.5, horizontal="center", vertical="middle",
        size_class="large", shape=None, intensity_word=None, intensity_contrast=None, texture="homogeneous",
        margin=None, **extra,
    )


CT_LIVER = make_spec("ct_liver", "ct", ["liver", "abdomen"], layout={"family": "nifti", "slice_axis": 2})
BUSI = make_spec("busi", "ultrasound", ["breast"])
HAM = make_spec("ham", "dermoscopy", ["skin"])
NUCLEI = make_spec("nuclei", "microscopy", ["cell nucleus"])
BRAIN = make_spec("brain", "mri", ["brain"])

KNOWLEDGE_LIVER = {
    "knowledge_ids": ["liver_tumour.appearance.ct", "liver_tumour.differential"],
    "knowledge_texts": [
        "Liver tumour — appearance on CT: on MRI and CT many tumours enhance; lesions in the left lobe.",
        "Liver tumour — differential: cysts, haemangioma and abscess.",
    ],
    "distances": [0.2, 0.3],
}


def liver_case():
    record = make_record("ct", ["liver", "abdomen"], ["liver tumour"], slice_index=33, slice_count=120,
                         pixel_spacing_mm=[0.8, 0.8])
    rois = [make_roi(label="liver tumour", patient_side="right", intensity_word="hypodense", area_mm2=145.25,
                     shape="round", margin="well-defined", texture="homogeneous")]
    return record, rois


# --- coarse captions ---------------------------------------------------------------------


def test_coarse_caption_ct_slice_with_position_and_patient_side():
    record, rois = liver_case()
    caption = coarse_caption(record, rois, CT_LIVER)
    assert caption == (
        "An axial CT slice of the liver and abdomen showing a liver tumour in the upper left part of "
        "the image (patient's right)."
    )
    assert CAPTION_VERSION


def test_coarse_caption_photo_has_no_patient_side_and_counts_regions():
    record = make_record("ultrasound", ["breast"], ["benign breast tumor"])
    rois = [make_roi(label="benign breast tumor", horizontal="right", vertical="middle", patient_side=None)]
    caption = coarse_caption(record, rois, BUSI)
    assert caption == "An ultrasound image of the breast showing a benign breast tumor in the middle right part of the image."

    nuclei = [make_roi(f"n{i}", "nucleus", area_px=100 + i, count_same_label=3, horizontal="center",
                       vertical="middle") for i in range(3)]
    caption = coarse_caption(make_record("microscopy", ["cell nucleus"]), nuclei, NUCLEI)
    assert caption == (
        "A fluorescence microscopy image of the nuclei showing 3 annotated nucleus regions, the largest in "
        "the central part of the image."
    )


def test_coarse_caption_without_region():
    labelled = coarse_caption(make_record("dermoscopy", ["skin"], ["melanoma"]), [whole_image_roi()], HAM)
    assert labelled == "A dermoscopic photograph of the skin labelled melanoma at image level, with no annotated region."
    unlabelled = coarse_caption(make_record("mri", ["brain"], sequence="T1"), [whole_image_roi()], BRAIN)
    assert unlabelled == "A T1 MRI image of the brain with no annotated finding."
    xray = coarse_caption(make_record("xray", ["lung"], ["covid-19 pneumonia"]), [whole_image_roi()],
                          make_spec("cxr", "xray", ["lung"]))
    assert xray == "An X-ray radiograph of the lung labelled covid-19 pneumonia at image level, with no annotated region."


def test_coarse_caption_is_deterministic_and_order_independent():
    rois = [make_roi("a", "polyp", area_px=50, horizontal="right"), make_roi("b", "polyp", area_px=900, count_same_label=2)]
    record = make_record("endoscopy", ["colon"], ["polyp"])
    spec = make_spec("kvasir", "endoscopy", ["colon"])
    first = coarse_caption(record, rois, spec)
    assert first == coarse_caption(record, list(reversed(rois)), spec)
    assert "largest in the upper left part" in first  # roi b, the larger one


# --- grounded writer ---------------------------------------------------------------------


def test_writer_five_parts_match_the_attributes():
    record, rois = liver_case()
    out = write_description(record, rois, KNOWLEDGE_LIVER, coarse_caption(record, rois, CT_LIVER), CT_LIVER)
    assert all(out[key].strip() for key in PART_KEYS)
    assert out["description"] == "\n\n".join(out[key] for key in PART_KEYS)
    assert out["writer"] == WRITER and out["prompt_version"] == PROMPT_VERSION
    assert out["knowledge_ids"] == KNOWLEDGE_LIVER["knowledge_ids"]
    assert "CT image" in out["part_modality"] and "axial slice 34 of 120" in out["part_modality"]
    assert "0.8 × 0.8 mm" in out["part_modality"]
    assert "liver and abdomen" in out["part_organ_tissue"]
    assert "Background knowledge [liver_tumour.appearance.ct]: «Liver tumour" in out["part_organ_tissue"]
    roi_part = out["part_roi_analysis"]
    assert "upper left part of the image (patient's right)" in roi_part
    assert "a small region of about 145.2 mm²" in roi_part or "a small region of about 145.3 mm²" in roi_part
    assert "2.1% of the image area" in roi_part and "round shape" in roi_part
    assert "the only region labelled 'liver tumour'" in roi_part
    texture = out["part_texture_colour"]
    assert "hypodense (intensity contrast -0.18)" in texture
    assert "homogeneous" in texture and "well-defined" in texture
    assert "colour" not in texture  # no colour was measured, so none is stated
    assert "97.9%" in out["part_relations"]


def test_writer_relations_and_counts_for_several_regions():
    a = make_roi("a", "nodule", area_px=900, count_same_label=2, horizontal="left")
    b = make_roi("b", "nodule", area_px=300, count_same_label=2, horizontal="right", centroid_x=0.8, size_class="small")
    c = make_roi("c", "effusion", area_px=500, count_same_label=1, vertical="lower", horizontal="right",
                 centroid_x=0.8, centroid_y=0.85, size_class="medium")
    a["relations"] = json.dumps([
        {"roi_id": "b", "label": "nodule", "relation": "left_of", "distance": 0.5},
        {"roi_id": "c", "label": "effusion", "relation": "above", "distance": 0.7},
    ])
    record = make_record("xray", ["chest", "lung"], ["nodule", "effusion"])
    spec = make_spec("cxr", "xray", ["chest", "lung"])
    out = write_description(record, [a, b, c], {}, "", spec)
    assert "2 regions carry the label 'nodule'; this is the largest" in out["part_roi_analysis"]
    assert "3 annotated regions in total" in out["part_roi_analysis"]
    assert "'effusion' in the lower right part of the image" in out["part_roi_analysis"]
    assert "lies to the left of the region labelled 'nodule' (centre distance 50%" in out["part_relations"]
    assert "lies above the region labelled 'effusion'" in out["part_relations"]
    assert "No background knowledge passage was retrieved" in out["part_organ_tissue"]
    assert out["knowledge_ids"] == []
    assert verify(out["description"], record, [a, b, c], spec) == []


def test_whole_image_record_gets_no_lesion():
    record = make_record("dermoscopy", ["skin"], ["melanoma"])
    knowledge = {"knowledge_ids": ["melanoma.definition"],
                 "knowledge_texts": ["Melanoma — definition: a malignant tumour of melanocytes."]}
    out = write_description(record, [whole_image_roi(colour="brown")], knowledge, "", HAM)
    assert all(out[key].strip() for key in PART_KEYS)
    assert "No region was annotated" in out["part_roi_analysis"]
    assert "whole image is brown" in out["part_texture_colour"]
    # Outside the attributed passage and the quoted label, no lesion word at all.
    assert not LESION_WORDS.search(checkable_text(out["description"]))
    assert verify(out["description"], record, [whole_image_roi()], HAM) == []


@needs_realdata
def test_real_busi_image_measured_written_and_verified():
    """Real BUSI pixels and masks, measured by the grounding code, through caption, writer, verifier."""
    folder = REALDATA / "busi" / "benign"
    display = np.asarray(Image.open(folder / "images" / "benign (4).png").convert("L"))
    rois = []
    for index, name in enumerate(["benign (4)_mask.png", "benign (4)_mask_1.png"]):
        mask = np.asarray(Image.open(folder / "mask" / name).convert("L")) > 127
        rows, cols = np.nonzero(mask)
        roi = make_roi(f"r{index}", "benign breast tumor", image_height=mask.shape[0], image_width=mask.shape[1],
                       x0=int(cols.min()), y0=int(rows.min()), x1=int(cols.max()) + 1, y1=int(rows.max()) + 1,
                       count_same_label=2, relations=None)
        roi.update(measure_roi(mask, display, modality="ultrasound"))
        rois.append(roi)
    relate(rois)
    record = make_record("ultrasound", ["breast"], ["benign breast tumor"], height=display.shape[0], width=display.shape[1])
    caption = coarse_caption(record, rois, BUSI)
    out = write_description(record, rois, {}, caption, BUSI)
    primary = max(rois, key=lambda r: r["area_px"])
    assert primary["intensity_word"] in out["part_texture_colour"]
    assert f"{primary['vertical']} " in out["part_roi_analysis"]
    assert "2 regions carry the label 'benign breast tumor'" in out["part_roi_analysis"]
    assert "patient's" not in out["description"]  # ultrasound photos carry no patient side
    assert verify(out["description"], record, rois, BUSI) == []


def test_llm_prompt_carries_caption_attributes_and_passages():
    record, rois = liver_case()
    messages = build_llm_prompt(record, rois, KNOWLEDGE_LIVER, "the coarse caption", CT_LIVER)
    assert [m["role"] for m in messages] == ["system", "user"]
    user = messages[1]["content"]
    assert "the coarse caption" in user and "[liver_tumour.differential]" in user
    assert '"patient_side": "right"' in user and '"modality": "ct"' in user and '"plane": "axial"' in user
    assert "five" in messages[0]["content"] and "whole_image" in messages[0]["content"]


# --- verifier ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "case", ["liver", "busi", "nuclei", "brain_whole", "ham_whole"],
)
def test_writer_outputs_verify_clean(case):
    if case == "liver":
        record, rois = liver_case()
        spec, knowledge = CT_LIVER, KNOWLEDGE_LIVER
    elif case == "busi":
        record = make_record("ultrasound", ["breast"], ["malignant breast tumor"])
        rois = [make_roi(label="malignant breast tumor", size_class="large", area_fraction=0.3, shape="irregular")]
        spec, knowledge = BUSI, {}
    elif case == "nuclei":
        record = make_record("microscopy", ["cell nucleus"])
        rois = [make_roi(f"n{i}", "nucleus", area_px=50 + i, count_same_label=12, horizontal=h, vertical=v)
                for i, (h, v) in enumerate([("left", "upper"), ("right", "lower"), ("center", "middle")] * 4)]
        spec, knowledge = NUCLEI, {}
    elif case == "brain_whole":
        record = make_record("mri", ["brain"], sequence="T1", slice_index=10, slice_count=40)
        rois = [whole_image_roi()]
        spec = BRAIN
        # Background passages may name other modalities and organs; they are attributed, not claims.
        knowledge = {"knowledge_ids": ["grey_matter.appearance.ct"],
                     "knowledge_texts": ["Grey matter — appearance on CT: denser than white matter; a breast lesion on X-ray differs."]}
    else:
        record = make_record("dermoscopy", ["skin"])
        rois, spec, knowledge = [whole_image_roi()], HAM, {}
    out = write_description(record, rois, knowledge, coarse_caption(record, rois, spec), spec)
    assert verify(out["description"], record, rois, spec) == []


def _liver_description(**changes) -> str:
    record, rois = liver_case()
    text = write_description(record, rois, KNOWLEDGE_LIVER, "", CT_LIVER)["description"]
    for old, new in changes.items():
        assert old in text
        text = text.replace(old, new)
    return text


CONTRADICTIONS = [
    ("side", "The tumour is on the patient's left.", "side: says patient's 'left'"),
    ("side", "A lesion lies in the upper right part of the image.", "side: says 'in the upper right part of the image' but roi_a is on the image left"),
    ("vertical", "A lesion lies in the lower left part of the image.", "vertical: says 'in the lower left part of the image' but roi_a is upper"),
    ("size", "There is a large mass in the liver.", "size: says 'large mass'"),
    ("count", "Two lesions are seen in the liver.", "count: says 'Two lesions'"),
    ("count", "Multiple nodules are seen.", "count: says 'Multiple nodules'"),
    ("modality", "This MRI image shows the liver.", "modality: says 'MRI'"),
    ("organ", "This CT image shows the brain.", "organ: says 'brain'"),
]


@pytest.mark.parametrize("kind,sentence,expected", CONTRADICTIONS)
def test_verifier_flags_each_contradiction(kind, sentence, expected):
    record, rois = liver_case()
    flags = verify(sentence, record, rois, CT_LIVER)
    assert any(flag.startswith(expected) for flag in flags), flags
    # Only the planted contradiction is flagged, nothing else in the sentence.
    assert {flag.split(":")[0] for flag in flags} == {kind}


def test_verifier_flags_contradictions_planted_in_the_writer_output():
    record, rois = liver_case()
    assert verify(_liver_description(), record, rois, CT_LIVER) == []
    planted = _liver_description(**{"patient's right": "patient's left", "a small region": "a large region"})
    flags = verify(planted, record, rois, CT_LIVER)
    assert any("says patient's 'left' but roi_a is on the patient's right" in f for f in flags), flags
    assert any(f.startswith("size: says 'large region' but roi_a is small") for f in flags), flags
    modality = _liver_description(**{"This is a CT image": "This is an MRI image"})
    assert any(f.startswith("modality:") for f in verify(modality, record, rois, CT_LIVER))


def test_verifier_flags_lesion_on_whole_image_but_not_negations():
    record = make_record("ultrasound", ["breast"])
    rois = [whole_image_roi()]
    flags = verify("A small hypoechoic mass is seen in the breast.", record, rois, BUSI)
    assert any(f.startswith("lesion: says 'mass'") for f in flags), flags
    assert verify("The breast shows no lesion; no mass is annotated.", record, rois, BUSI) == []


def test_verifier_wrong_organ_for_breast_ultrasound_and_background_is_exempt():
    record = make_record("ultrasound", ["breast"], ["benign breast tumor"])
    rois = [make_roi(label="benign breast tumor")]
    flags = verify("An ultrasound image of the brain.", record, rois, BUSI)
    assert any(f.startswith("organ: says 'brain' (head)") for f in flags), flags
    background = "An ultrasound image of the breast. Background knowledge [x.y]: «On MRI of the brain, two large masses.»"
    assert verify(background, record, rois, BUSI) == []
    # A quoted source label is the source's word, not a claim of this description.
    assert verify("The source labels it 'brain tumour'.", record, rois, BUSI) == []
