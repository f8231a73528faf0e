"""The verifier (the writer and coarse captions: test_writer.py)."""

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


# --- verifier ----------------------------------------------------------------------------


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
