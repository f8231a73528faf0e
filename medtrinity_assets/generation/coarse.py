"""Stage 4: the coarse caption, MedTrinity's metadata integration.

One sentence from metadata alone: modality (with plane and sequence when known), organ,
finding(s), and where the primary annotated ROI lies. It states nothing the metadata and the
measured ROI attributes do not, so it can be trusted as the anchor of the longer description.
Where only an expert model marks a region, the sentence says so as the model's possible finding.
"""

from __future__ import annotations

from medtrinity_assets.sources.label_state import label_state_of
from medtrinity_assets.vocabulary import (
    possible_region,
    MODALITY_IMAGE_NOUN,
    MODEL_ORIGIN_PREFIX,
    annotated_rois,
    article,
    display_label,
    join_words,
    patient_side_phrase,
    plane_for,
    position_phrase,
    primary_roi,
    record_labels,
    record_organs,
    rois_by_area,
    is_model_origin,
)

CAPTION_VERSION = "coarse-v3"  # v3: an expert model's ROI is worded as the model's possible finding


def _image_phrase(record: dict, spec) -> str:
    modality = record.get("modality") or spec.modality
    noun = MODALITY_IMAGE_NOUN.get(modality, f"{modality} image")
    plane = plane_for(spec, record)
    sequence = record.get("sequence")
    if modality == "mri" and sequence:
        noun = f"{sequence} MRI image"
    if plane:
        noun = noun.replace("image", "slice") if noun.endswith("image") else f"{noun} slice"
        noun = f"{plane} {noun}"
    phrase = f"{article(noun)} {noun}"
    return phrase[0].upper() + phrase[1:]


def _model_clause(rois: list[dict]) -> str:
    """'; an expert model (kvasir_polyp) marks a possible polyp region in the lower left part of the
    image, confidence 0.87' for the largest model ROI, or ''."""
    marked = rois_by_area([r for r in rois if is_model_origin(r.get("origin"))])
    if not marked:
        return ""
    roi = marked[0]
    expert = roi.get("expert_id") or str(roi["origin"])[len(MODEL_ORIGIN_PREFIX):]
    where = position_phrase(roi)
    place = f" in {where}" if where else ""
    more = f" ({len(marked) - 1} more region{'s' if len(marked) > 2 else ''} marked)" if len(marked) > 1 else ""
    return (f"; an expert model ({expert}) marks a {possible_region(display_label(roi.get('label') or ''))}{place}, "
            f"confidence {float(roi.get('confidence') or 0.0):.2f}{more}")


def coarse_caption(record: dict, rois: list[dict], spec) -> str:
    image = _image_phrase(record, spec)
    organs = record_organs(record, spec)
    organ_part = f" of the {join_words(organs)}" if organs else ""
    # A model's ROIs are used only where nothing is annotated; they never give the record a
    # label: the caption keeps the source's state and adds the model's mark as the model's.
    model_clause = _model_clause(rois)
    rois = [r for r in rois if not is_model_origin(r.get("origin"))]
    labels = record_labels(record, rois)
    roi = primary_roi(rois)

    if roi is None:
        state = label_state_of(record)
        if state == "finding" and labels:
            finding = f" labelled {join_words(labels)} at image level, with no annotated region"
        elif state == "normal":
            finding = " labelled normal by the source"
        else:
            # Unknown is never written as normal or as "no finding".
            finding = ", with no diagnosis given by the source"
        return f"{image}{organ_part}{finding}{model_clause}."

    label = display_label(roi.get("label") or (labels[0] if labels else "finding"))
    same_label = roi.get("count_same_label") or sum(
        1 for r in annotated_rois(rois) if r.get("label") == roi.get("label")
    )
    if same_label > 1:
        finding = f" showing {same_label} annotated {label} regions, the largest in"
    else:
        finding = f" showing {article(label)} {label} in"
    where = position_phrase(roi) or "the image"
    side = patient_side_phrase(roi)
    side_part = f" ({side})" if side else ""
    others = [l for l in labels if l != label]
    also = f", also labelled {join_words(others)}" if others else ""
    return f"{image}{organ_part}{finding} {where}{side_part}{also}."
