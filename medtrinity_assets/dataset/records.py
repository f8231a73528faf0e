"""The records a dataset row becomes in the exports: the LLaVA conversation, the reviewer's
record of a row kept out of training, and the flags that keep an image out.

Used by the per-partition parts (``parts``), which build them once per row, and by the exports.
"""

from __future__ import annotations

import json

from medtrinity_assets.duckdb_sql import literal

# Record flags (RAW_RECORDS.flags) that keep an image out of the training files.
# "burned_in_text": text or markers the normalize stage found in the pixels (spec policy hold_back).
HELD_BACK_FLAGS = ("burned_in_annotation", "burned_in_text")


MODALITY_WORDS = {
    "ct": "CT",
    "mri": "MRI",
    "xray": "X-ray",
    "pet": "PET",
    "mammography": "mammography",
    "nuclear_medicine": "nuclear medicine",
}


def held_back_flags(row: dict) -> list[str]:
    """The row's flags that keep it out of the training exports."""
    return [flag for flag in (row.get("flags") or []) if flag in HELD_BACK_FLAGS]


def held_back_sql(flags_column: str = "flags") -> str:
    """SQL truth of ``held_back_flags``, for the dataset card's counts."""
    listed = ", ".join(literal(flag) for flag in HELD_BACK_FLAGS)
    return f"list_has_any(coalesce({flags_column}, []::VARCHAR[]), [{listed}])"


def parsed_source_text(row: dict) -> dict | None:
    """The publisher's text as JSON for the exports (a string in the Parquet table)."""
    text = row.get("source_text")
    if not text:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return {"raw": text}


def box_of(rois_json: str | None, primary_roi_id: str | None) -> tuple[list | None, str | None]:
    """Box and origin of the primary ROI (the first of the ordered list)."""
    try:
        rois = json.loads(rois_json or "[]")
    except json.JSONDecodeError:
        return None, None
    for roi in rois:
        if primary_roi_id is None or roi.get("roi_id") == primary_roi_id:
            return roi.get("box"), roi.get("origin")
    return None, None


def instruction_for(row: dict, box: list | None, origin: str | None, include_coarse_caption: bool = False) -> str:
    """The human turn. Built from the metadata the coarse caption states (modality, organ) and the
    ROI box, but not the finding: naming the finding in the question would hand the answer over."""
    modality = MODALITY_WORDS.get(row.get("modality") or "", row.get("modality") or "medical")
    organs = [o for o in (row.get("organs") or []) if o]
    organ = " and ".join(organs) if organs else "body region"
    if box and origin != "whole_image":
        focus = f"focusing on the region of interest at [{', '.join(str(v) for v in box)}]"
    else:
        focus = "covering the whole image"
    text = f"<image>\nDescribe this {modality} image of the {organ}, {focus}."
    if include_coarse_caption and row.get("coarse_caption"):
        text += f"\nMetadata: {row['coarse_caption']}"
    return text


def llava_record(row: dict, include_coarse_caption: bool = False, image: str | None = None) -> dict:
    """One LLaVA conversation. ``image``: the image path as the reader of the file resolves it
    (relative to the exports folder, dataset/parts.py); the data-root path when not given."""
    box, origin = box_of(row.get("rois"), row.get("primary_roi_id"))
    return {
        "id": row["record_id"],
        "image": image if image is not None else row["image_path"],
        "conversations": [
            {"from": "human", "value": instruction_for(row, box, origin, include_coarse_caption)},
            {"from": "gpt", "value": row["description"]},
        ],
        "roi": box,
        # whole_image, annotation:<kind>, or model:<expert_id>: a model's ROI stays in the
        # training files (its description words it as the model's possible finding), and a
        # user who wants annotation-only ROIs filters on this.
        "roi_origin": origin,
        "source_id": row["source_id"],
        "source_text": parsed_source_text(row),
        # What the description was written from, each with its provenance (generation/facts.py).
        "label_state": row.get("label_state"),
        "facts": json.loads(row["facts"]) if row.get("facts") else [],
    }


def review_record(row: dict, image: str | None = None) -> dict:
    """A row kept out of training, as the reviewer files list it (``image`` as in llava_record)."""
    box, _ = box_of(row.get("rois"), row.get("primary_roi_id"))
    return {
        "id": row["record_id"],
        "image": image if image is not None else row["image_path"],
        "source_id": row["source_id"],
        "split": row["split"],
        "roi": box,
        "description": row["description"],
        "source_text": parsed_source_text(row),
        "verifier_flags": list(row.get("verifier_flags") or []),
        "flags": list(row.get("flags") or []),
    }
