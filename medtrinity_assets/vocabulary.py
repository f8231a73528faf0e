"""Words shared by the caption writer, the description writer, the retriever and the verifier.

One table per idea (how a modality is named, which body region an organ word belongs to, how
a position is put in words) so that the writer and the verifier cannot drift apart: the
verifier reads back exactly the phrases the writer produces.
"""

from __future__ import annotations

import json
import re
from typing import Iterable

# How each catalog modality code is named in running text, and the noun for one of its images.
MODALITY_NAME = {
    "ct": "CT",
    "mri": "MRI",
    "xray": "X-ray",
    "ultrasound": "ultrasound",
    "dermoscopy": "dermoscopy",
    "endoscopy": "endoscopy",
    "fundus": "fundus photography",
    "histopathology": "histopathology",
    "microscopy": "microscopy",  # fluorescence, phase, brightfield: the spec does not say which
    "pet": "PET",
    "mammography": "mammography",
    "nuclear_medicine": "nuclear medicine scintigraphy",
}
MODALITY_IMAGE_NOUN = {
    "ct": "CT image",
    "mri": "MRI image",
    "xray": "X-ray radiograph",
    "ultrasound": "ultrasound image",
    "dermoscopy": "dermoscopic photograph",
    "endoscopy": "endoscopic image",
    "fundus": "fundus photograph",
    "histopathology": "histopathology image",
    "microscopy": "microscopy image",
    "pet": "PET image",
    "mammography": "mammogram",
    "nuclear_medicine": "nuclear medicine scan",
}

# Words that name a modality as the imaging technique (publisher_findings.named_modalities); each
# entry is (regex, case_sensitive). Acronyms are case-sensitive so "ct" inside a word or a
# lower-case "pet" never counts.
MODALITY_TERMS: dict[str, list[tuple[str, bool]]] = {
    "ct": [(r"\bCT\b", True), (r"\bcomputed tomograph", False)],
    "mri": [(r"\bMRI?\b", True), (r"\bmagnetic resonance", False)],
    "xray": [(r"\bx-?ray", False), (r"\bradiograph", False)],
    "ultrasound": [(r"\bultrasound", False), (r"\bsonograph", False), (r"\bultrasonograph", False)],
    "dermoscopy": [(r"\bdermoscop", False), (r"\bdermatoscop", False)],
    "endoscopy": [(r"\bendoscop", False), (r"\bcolonoscop", False)],
    "fundus": [(r"\bfundus photograph", False), (r"\bfundoscop", False)],
    "histopathology": [(r"\bhistopatholog", False), (r"\bhistolog", False), (r"\bH&E\b", True)],
    "microscopy": [(r"\bfluorescence microscop", False)],
    "pet": [(r"\bPET\b", True), (r"\bpositron emission", False)],
    "mammography": [(r"\bmammogra", False)],
    "nuclear_medicine": [(r"\bscintigra", False), (r"\bnuclear medicine", False), (r"\bbone scan", False)],
}
# A modality whose images may truthfully be named with another's words (a mammogram is an
# X-ray technique; an H&E slide is read under a light microscope).
COMPATIBLE_MODALITIES = {
    "mammography": {"xray"},
    "histopathology": {"microscopy"},
}

# Record organs that span every region: no organ word contradicts them.
WHOLE_BODY_ORGANS = {"whole body", "body", "skeleton"}

# Spelling variants of organ names in specs and labels, folded before filtering and matching.
ORGAN_SYNONYMS = {
    "lungs": "lung",
    "thorax": "chest",
    "eye": "retina",
    "gray matter": "grey matter",
    "breasts": "breast",
    "cells": "cell",
    "nucleus": "nuclei",
    "cell nuclei": "nuclei",
    "cell nucleus": "nuclei",
}

SIZE_WORD = {"small": "small", "medium": "medium-sized", "large": "large"}

NUMBER_WORDS = {
    "one": 1, "single": 1, "two": 2, "three": 3, "four": 4, "five": 5,
    "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10,
}

# Origins that mean "no region was annotated; the ROI is the whole picture".
WHOLE_IMAGE_ORIGINS = {"whole_image"}


def normalize_organ(organ: str) -> str:
    word = " ".join(str(organ).strip().lower().replace("_", " ").split())
    return ORGAN_SYNONYMS.get(word, word)


def normalize_label(label: str) -> str:
    return " ".join(str(label).strip().lower().replace("_", " ").replace("-", " ").split())


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", normalize_label(text)).strip("_")


def display_label(label: str) -> str:
    return " ".join(str(label).replace("_", " ").split())


def article(word: str) -> str:
    first = word.split(" ")[0]
    # Acronyms are read letter by letter: "an MRI", "an X-ray", but "a CT", "a PET".
    if first[:2].isupper() and first.upper() not in {"PET"}:
        return "an" if first[0] in "AEFHILMNORSX" else "a"
    return "an" if first[:1].lower() in "aeiou" else "a"


def join_words(words: Iterable[str]) -> str:
    words = [w for w in words if w]
    if not words:
        return ""
    if len(words) == 1:
        return words[0]
    return ", ".join(words[:-1]) + " and " + words[-1]


def as_list(value) -> list:
    """Lists arrive as lists, numpy arrays, tuples or None depending on who read the table."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return list(value)


# An expert model's ROI (grounding/model_rois.py): origin "model:<expert_id>".
MODEL_ORIGIN_PREFIX = "model:"


def is_model_origin(origin: str | None) -> bool:
    return str(origin or "").startswith(MODEL_ORIGIN_PREFIX)


def possible_region(label: str | None) -> str:
    """A model's region in words that stay grammatical for a lesion and for a tissue:
    "possible polyp region", "possible grey matter region" ("possible region" unlabelled)."""
    label = (label or "").strip()
    return f"possible {label} region" if label and label != "region" else "possible region"


def is_annotated(roi: dict) -> bool:
    return roi.get("origin") not in WHOLE_IMAGE_ORIGINS


def annotated_rois(rois: Iterable[dict]) -> list[dict]:
    return [roi for roi in (rois or []) if is_annotated(roi)]


def rois_by_area(rois: Iterable[dict]) -> list[dict]:
    """Annotated ROIs, largest first (ties by id): the order captions and facts name them in."""
    return sorted(annotated_rois(rois), key=lambda r: (-(r.get("area_px") or 0), str(r.get("roi_id"))))


def primary_roi(rois: Iterable[dict]) -> dict | None:
    """The ROI a one-line caption talks about: the largest annotated one."""
    ranked = rois_by_area(rois)
    return ranked[0] if ranked else None


def image_position_phrase(vertical: str | None, horizontal: str | None) -> str | None:
    """'the upper left part of the image' from image-frame position words."""
    if not vertical and not horizontal:
        return None
    horizontal_word = {"left": "left", "right": "right", "center": "central"}.get(horizontal or "center", "central")
    vertical_word = vertical or "middle"
    if vertical_word == "middle" and horizontal_word == "central":
        return "the central part of the image"
    return f"the {vertical_word} {horizontal_word} part of the image"


def position_phrase(roi: dict) -> str | None:
    """The image-frame position phrase of an ROIS row."""
    return image_position_phrase(roi.get("vertical"), roi.get("horizontal"))


def patient_side_phrase(roi: dict) -> str | None:
    """Side of the patient from the ROI's ``patient_side`` alone, which grounding fills only from
    geometry or a declared view (grounding.patient_side)."""
    side = roi.get("patient_side")
    if not side:
        return None
    if side == "midline":
        return "near the patient's midline"
    return f"patient's {side}"


def parse_relations(value) -> list[dict]:
    if not value:
        return []
    if isinstance(value, list):
        return [r for r in value if isinstance(r, dict)]
    try:
        parsed = json.loads(value)
    except (TypeError, ValueError):
        return []
    return [r for r in parsed if isinstance(r, dict)] if isinstance(parsed, list) else []


def plane_for(spec, record: dict) -> str | None:
    """Anatomical plane of a volume slice, known only when the layout fixes the slicing axis."""
    if (record.get("slice_count") or 1) <= 1:
        return None
    layout = getattr(spec, "layout", None)
    axis = getattr(layout, "slice_axis", None) if getattr(layout, "family", None) == "nifti" else None
    return {0: "sagittal", 1: "coronal", 2: "axial"}.get(axis)


def record_organs(record: dict, spec) -> list[str]:
    organs = as_list(record.get("organs")) or as_list(getattr(spec, "organs", None))
    seen: list[str] = []
    for organ in organs:
        word = normalize_organ(organ)
        if word and word not in seen:
            seen.append(word)
    return seen


def record_labels(record: dict, rois: Iterable[dict]) -> list[str]:
    """Findings of the image: its labels, then any annotated ROI label not already named."""
    labels: list[str] = []
    for label in as_list(record.get("labels")) + [r.get("label") for r in annotated_rois(rois)]:
        if label and display_label(label) not in labels:
            labels.append(display_label(label))
    return labels


# Intensity words of grounding.attributes, mapped to the direction they state (retrieval reads
# the same table to drop a passage whose appearance contradicts the measurement).
INTENSITY_DIRECTION = {
    "hyperdense": "higher", "hypodense": "lower", "isodense": "similar",
    "hyperintense": "higher", "hypointense": "lower", "isointense": "similar",
    "hyperechoic": "higher", "hypoechoic": "lower", "isoechoic": "similar",
    "more opaque": "higher", "more lucent": "lower", "similar density": "similar",
    "increased uptake": "higher", "decreased uptake": "lower", "similar uptake": "similar",
    "brighter": "higher", "darker": "lower", "similar brightness": "similar",
}
