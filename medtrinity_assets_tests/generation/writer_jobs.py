"""Records for the model writer's tests, as the stage hands them over: real facts (with
provenance and confidence), retrieved knowledge and the coarse caption."""

from __future__ import annotations

import json

from spec_factory import build_spec

from medtrinity_assets.generation.facts import Fact, FactSet
from medtrinity_assets.generation.writers import DescribeJob

CT_LIVER = build_spec(id="ct_liver", name="CT liver", modality="ct", organs=["liver", "abdomen"])
BREAST_US = build_spec(id="breast_us", name="Breast ultrasound", modality="ultrasound", organs=["breast"])
CHEST_XRAY = build_spec(id="chest_xray", name="Chest X-ray", modality="xray", organs=["chest", "lung"])

LIVER_PASSAGE = ("On contrast CT a liver tumour is often a focal hypodense mass; hepatocellular carcinoma "
                 "enhances in the arterial phase and washes out later.")
LIVER_KNOWLEDGE = {
    "knowledge_ids": ["liver_tumour.appearance.ct"],
    "knowledge_texts": [LIVER_PASSAGE],
    "knowledge_sections": json.dumps([{"entry_id": "liver_tumour", "finding": "liver tumour", "appearance": LIVER_PASSAGE}]),
}


def record_facts(rid: str, modality: str, organ: str, finding: str | None, rois: int, **extra: str) -> list[Fact]:
    facts = [
        Fact(rid, None, "modality", modality, "metadata"),
        Fact(rid, None, "organ", organ, "metadata"),
        Fact(rid, None, "label_state", "finding" if finding else "unknown", "annotation"),
        Fact(rid, None, "annotated_roi_count", str(rois), "annotation", number=float(rois)),
        Fact(rid, None, "image_width_px", "500", "measurement"),
        Fact(rid, None, "image_height_px", "400", "measurement"),
    ]
    if finding:
        facts.append(Fact(rid, None, "finding", finding, "annotation"))
    return facts + [Fact(rid, None, attribute, value, "metadata") for attribute, value in extra.items()]


def lesion_facts(rid: str, label: str, *, horizontal: str, vertical: str, intensity: tuple[str, str],
                 side: str | None = None, fraction: float = 0.021, diameter: float | None = None) -> list[Fact]:
    """One annotated lesion, measured as the grounding stage measures it."""
    facts = [
        Fact(rid, "a", "label", label, "annotation"),
        Fact(rid, "a", "origin", "annotation:mask", "annotation"),
        Fact(rid, "a", "rank_by_area", "1", "measurement", number=1.0),
        Fact(rid, "a", "image_horizontal", horizontal, "measurement"),
        Fact(rid, "a", "image_vertical", vertical, "measurement"),
        Fact(rid, "a", "size_class", "small", "measurement"),
        Fact(rid, "a", "area_fraction", f"{fraction:.4f}", "measurement", number=fraction),
        Fact(rid, "a", "count_same_label", "1", "annotation", number=1.0),
        Fact(rid, "a", "shape", "oval", "measurement", confidence=0.8),
        Fact(rid, "a", "margin", "ill-defined", "measurement", confidence=0.45),
        Fact(rid, "a", "intensity", intensity[0], "measurement", detail=intensity[1]),
        Fact(rid, "a", "texture", "heterogeneous", "measurement"),
    ]
    if side:
        facts.append(Fact(rid, "a", "patient_side", side, "geometry", detail="geometry"))
    if diameter:
        facts.append(Fact(rid, "a", "max_diameter_mm", f"{diameter:.1f}", "geometry", number=diameter, unit="mm"))
    return facts


def liver_job(rid: str = "rec1") -> DescribeJob:
    """A CT slice with one liver tumour, upper left in the image, on the patient's left (geometry)."""
    facts = record_facts(rid, "ct", "liver", "liver tumour", 1) + lesion_facts(
        rid, "liver tumour", horizontal="left", vertical="upper", intensity=("lower", "hypodense"), side="left")
    return DescribeJob(record_id=rid, source_id="ct_liver", facts=FactSet(facts), knowledge=LIVER_KNOWLEDGE,
                       coarse_caption="A CT image of the liver with a liver tumour.", spec=CT_LIVER)


def breast_job(rid: str = "us1") -> DescribeJob:
    """A breast ultrasound with one malignant lesion, lower right in the image, 16 mm across."""
    facts = record_facts(rid, "ultrasound", "breast", "malignant", 1) + lesion_facts(
        rid, "malignant", horizontal="right", vertical="lower", intensity=("lower", "hypoechoic"), fraction=0.06,
        diameter=16.0)
    return DescribeJob(record_id=rid, source_id="breast_us", facts=FactSet(facts), knowledge={},
                       coarse_caption="An ultrasound image of the breast with a malignant lesion.", spec=BREAST_US)


def chest_job(rid: str = "xr1") -> DescribeJob:
    """A PA chest radiograph with no annotated region and no diagnosis from the source."""
    facts = record_facts(rid, "xray", "lung", None, 0, view="PA")
    return DescribeJob(record_id=rid, source_id="chest_xray", facts=FactSet(facts), knowledge={},
                       coarse_caption="A PA X-ray image of the lung, with no diagnosis given by the source.", spec=CHEST_XRAY)
