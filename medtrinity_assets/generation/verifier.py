"""Check a description against the record's metadata and its ROIs' measured attributes.

Returns one flag per contradiction (empty list: verified). What is checked:

- side: "patient's left/right" and "left/right ... of the image" against each ROI's
  ``patient_side`` / ``horizontal``;
- vertical: "upper/lower ... of the image" against ``vertical``;
- size: "a small/medium-sized/large region (lesion, mass...)" against ``size_class``;
- count: "two lesions", "3 regions", "the only region" against ``count_same_label`` (or the
  number of annotated ROIs);
- modality: another modality's name used in the description;
- organ: an organ word of a body region the record's organs do not belong to;
- lesion: a lesion claimed where the only ROI is the whole image.

Background passages (``Background knowledge [id]: «...»``) and quoted labels are removed
before checking: a passage may list several modalities and a label is the source's word, not
a claim of this description. A claim is a contradiction when no ROI of the image supports it,
so a multi-ROI description may name each ROI's position.
"""

from __future__ import annotations

import re

from medtrinity_assets.generation.vocabulary import (
    CELL_LEVEL_ORGANS,
    COMPATIBLE_MODALITIES,
    MODALITY_TERMS,
    NUMBER_WORDS,
    ORGAN_REGION,
    WHOLE_BODY_ORGANS,
    annotated_rois,
    record_organs,
)

_BACKGROUND = re.compile(r"Background knowledge \[[^\]]*\]:\s*«[^»]*»")
_QUOTED = re.compile(r"(?<!\w)'[^'\n]{1,80}'(?!\w)|\"[^\"\n]{1,80}\"|‘[^’\n]{1,80}’|“[^”\n]{1,80}”")
_PATIENT_SIDE = re.compile(r"\bpatient(?:'s|’s|s')?\s+(left|right)\b|\b(left|right)\s+side\s+of\s+the\s+patient\b", re.I)
_OF_IMAGE = re.compile(r"of\s+the\s+(?:image|picture|frame|field of view)\b|\bimage(?:'s|’s)\s+(left|right)\b", re.I)
_LESION_NOUNS = (
    r"lesions?|masse?s?|tumou?rs?|nodules?|cysts?|polyps?|regions?|rois?|areas?|findings?|"
    r"opacit(?:y|ies)|nuclei|nucleus|spots?|abnormalit(?:y|ies)|growths?|instances?"
)
_SIZE_CLAIM = re.compile(rf"\b(small|medium[- ]sized|medium|large)\s+(?:[\w-]+\s+){{0,2}}?(?:{_LESION_NOUNS})\b", re.I)
_NUMBER = r"\d+|" + "|".join(NUMBER_WORDS) + r"|multiple|several|numerous"
_COUNT_CLAIM = re.compile(rf"(?<![\d.,])\b({_NUMBER})\s+(?:[\w-]+\s+){{0,2}}?({_LESION_NOUNS})\b", re.I)
_ONLY_CLAIM = re.compile(rf"\b(?:the\s+only|a\s+single|one\s+single|solitary)\s+(?:[\w-]+\s+){{0,2}}?(?:{_LESION_NOUNS})\b", re.I)
_LESION_CLAIM = re.compile(
    r"\b(lesions?|masses|mass|tumou?rs?|nodules?|cysts?|polyps?|opacit(?:y|ies)|abnormalit(?:y|ies)|growths?)\b", re.I
)
_NEGATION = re.compile(r"\b(no|not|without|absent|neither|nor|free of)\b[\w\s,-]{0,30}$", re.I)
_CLAUSE_BREAK = re.compile(r"[,;:.()\n]")

_VERTICAL_WORDS = {"upper": "upper", "top": "upper", "superior": "upper", "lower": "lower", "bottom": "lower", "inferior": "lower"}
_HORIZONTAL_WORDS = {"left": "left", "right": "right"}


def checkable_text(description: str) -> str:
    """The description without attributed background passages and quoted labels."""
    text = _BACKGROUND.sub(" ", description or "")
    return _QUOTED.sub(" ", text)


def _roi_name(roi: dict) -> str:
    return str(roi.get("roi_id") or roi.get("label") or "roi")


def _image_position_claims(text: str) -> list[tuple[str, str]]:
    """(vertical or horizontal word, the phrase) for each 'X ... of the image' phrase."""
    claims = []
    for match in _OF_IMAGE.finditer(text):
        if match.group(1):  # "image's left"
            claims.append((match.group(1).lower(), match.group(0)))
            continue
        before = text[: match.start()]
        clause = _CLAUSE_BREAK.split(before)[-1]
        words = clause.lower().split()[-5:]
        phrase = " ".join(words + ["of the image"])
        claims.extend((w, phrase) for w in words if w in _VERTICAL_WORDS or w in _HORIZONTAL_WORDS)
    return claims


def _check_position(text: str, rois: list[dict], spec, flags: list[str]) -> None:
    sides = {r.get("patient_side") for r in rois if r.get("patient_side")}
    for match in _PATIENT_SIDE.finditer(text):
        side = (match.group(1) or match.group(2)).lower()
        if not getattr(spec, "is_radiological", False) and not sides:
            continue
        if side not in sides:
            where = ", ".join(f"{_roi_name(r)} is on the patient's {r.get('patient_side')}" for r in rois if r.get("patient_side"))
            flags.append(f"side: says patient's '{side}' but {where or 'no ROI has a patient side'}")
    without_patient = _PATIENT_SIDE.sub(" ", text)
    horizontals = {r.get("horizontal") for r in rois if r.get("horizontal")}
    verticals = {r.get("vertical") for r in rois if r.get("vertical")}
    for word, phrase in _image_position_claims(without_patient):
        if word in _HORIZONTAL_WORDS and horizontals and word not in horizontals:
            where = ", ".join(f"{_roi_name(r)} is on the image {r.get('horizontal')}" for r in rois)
            flags.append(f"side: says '{phrase}' but {where}")
        if word in _VERTICAL_WORDS and verticals and _VERTICAL_WORDS[word] not in verticals:
            where = ", ".join(f"{_roi_name(r)} is {r.get('vertical')}" for r in rois)
            flags.append(f"vertical: says '{phrase}' but {where}")


def _check_size(text: str, rois: list[dict], flags: list[str]) -> None:
    classes = {r.get("size_class") for r in rois if r.get("size_class")}
    if not classes:
        return
    for match in _SIZE_CLAIM.finditer(text):
        word = match.group(1).lower()
        claimed = "medium" if word.startswith("medium") else word
        if claimed not in classes:
            where = ", ".join(f"{_roi_name(r)} is {r.get('size_class')}" for r in rois)
            flags.append(f"size: says '{match.group(0)}' but {where}")


def _check_count(text: str, rois: list[dict], flags: list[str]) -> None:
    counts = {int(r.get("count_same_label") or 0) for r in rois if r.get("count_same_label")}
    counts.add(len(rois))
    counts.discard(0)
    if not counts:
        return
    for match in _COUNT_CLAIM.finditer(text):
        word = match.group(1).lower()
        if word in {"multiple", "several", "numerous"}:
            if max(counts) < 2:
                flags.append(f"count: says '{match.group(0)}' but the image has {max(counts)} annotated region")
            continue
        number = int(word) if word.isdigit() else NUMBER_WORDS[word]
        if number not in counts:
            flags.append(f"count: says '{match.group(0)}' but the ROI counts are {sorted(counts)}")
    for match in _ONLY_CLAIM.finditer(text):
        if 1 not in {int(r.get("count_same_label") or 1) for r in rois}:
            flags.append(f"count: says '{match.group(0)}' but the ROI counts are {sorted(counts)}")


def _check_modality(text: str, record: dict, spec, flags: list[str]) -> None:
    modality = record.get("modality") or spec.modality
    allowed = {modality} | COMPATIBLE_MODALITIES.get(modality, set())
    for other, terms in MODALITY_TERMS.items():
        if other in allowed:
            continue
        for pattern, case_sensitive in terms:
            match = re.search(pattern, text, 0 if case_sensitive else re.I)
            if match:
                flags.append(f"modality: says '{match.group(0)}' but the record's modality is {modality}")
                break


def _check_organ(text: str, record: dict, spec, flags: list[str]) -> None:
    organs = record_organs(record, spec)
    if not organs or any(o in WHOLE_BODY_ORGANS for o in organs):
        return
    regions = {ORGAN_REGION[o] for o in organs if o in ORGAN_REGION}
    # Cell-level images (nuclei, cells) may come from any tissue; unknown organs give no region.
    if not regions or any(o in CELL_LEVEL_ORGANS for o in organs):
        return
    for word in sorted(ORGAN_REGION, key=len, reverse=True):
        match = re.search(rf"\b{re.escape(word)}\b", text, re.I)
        if match and ORGAN_REGION[word] not in regions:
            flags.append(
                f"organ: says '{match.group(0)}' ({ORGAN_REGION[word]}) but the record's organs are {', '.join(organs)}"
            )
            text = re.sub(rf"\b{re.escape(word)}\b", " ", text, flags=re.I)


def _check_lesion_on_whole_image(text: str, rois: list[dict], flags: list[str]) -> None:
    for match in _LESION_CLAIM.finditer(text):
        clause = _CLAUSE_BREAK.split(text[: match.start()])[-1]
        if _NEGATION.search(clause):
            continue
        flags.append(f"lesion: says '{match.group(0)}' but no region was annotated (whole-image ROI only)")
        return


def verify(description: str, record: dict, rois: list[dict], spec) -> list[str]:
    text = checkable_text(description)
    annotated = annotated_rois(rois)
    flags: list[str] = []
    if annotated:
        _check_position(text, annotated, spec, flags)
        _check_size(text, annotated, flags)
        _check_count(text, annotated, flags)
    else:
        _check_lesion_on_whole_image(text, rois, flags)
    _check_modality(text, record, spec, flags)
    _check_organ(text, record, spec, flags)
    return list(dict.fromkeys(flags))
