"""Stage 4: the coarse caption, MedTrinity's metadata integration.

One sentence from metadata alone: modality (with plane and sequence when known), organ,
finding(s), and where the primary annotated ROI lies. It states nothing the metadata and the
measured ROI attributes do not, so it can be trusted as the anchor of the longer description.
"""

from __future__ import annotations

from medtrinity_assets.sources.label_state import label_state_of
from medtrinity_assets.vocabulary import (
    MODALITY_IMAGE_NOUN,
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
)

CAPTION_VERSION = "coarse-v2"


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


def coarse_caption(record: dict, rois: list[dict], spec) -> str:
    image = _image_phrase(record, spec)
    organs = record_organs(record, spec)
    organ_part = f" of the {join_words(organs)}" if organs else ""
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
        return f"{image}{organ_part}{finding}."

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
