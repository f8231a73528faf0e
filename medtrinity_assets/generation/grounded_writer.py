"""Stage 6: the grounded description writer (the embedded default) and the LLM prompt seam.

MedTrinity's multigranular description has five parts: (1) modality, (2) organ and tissue
detection, (3) ROI location and analysis, (4) lesion texture/colour, (5) region-wise relations
(local–global). This writer states only what is supported: record metadata, the ROI's measured
attributes, and retrieved knowledge passages, which are quoted and attributed as background
knowledge (``Background knowledge [chunk_id]: «...»``) so the verifier can tell them apart
from claims about this image. An image with no annotated region gets no lesion: only the
global image is described.

``build_llm_prompt`` gives the same inputs as OpenAI-style chat messages for an
OpenAI-compatible writer; the image with the ROI drawn is attached by that writer.
"""

from __future__ import annotations

import json

from medtrinity_assets.generation.vocabulary import (
    MODALITY_IMAGE_NOUN,
    SIZE_WORD,
    annotated_rois,
    article,
    as_list,
    display_label,
    join_words,
    parse_relations,
    patient_side_phrase,
    plane_for,
    position_phrase,
    primary_roi,
    record_labels,
    record_organs,
)

WRITER = "grounded-v1"
PROMPT_VERSION = "five-part-v1"
MAX_PASSAGES = 3
MAX_OTHER_ROIS = 5
MAX_RELATIONS = 6  # nearest first (grounding orders them): enough for the local-global picture

BACKGROUND_PREFIX = "Background knowledge"
# grounding.relations words, read as "this ROI <relation> that ROI" in image coordinates.
RELATION_VERBS = {
    "left_of": "lies to the left of",
    "right_of": "lies to the right of",
    "above": "lies above",
    "below": "lies below",
    "adjacent": "is adjacent to",
    "contains": "contains",
    "inside": "lies inside",
    "overlaps": "overlaps",
}


def background(chunk_id: str, text: str) -> str:
    """A retrieved passage, quoted and attributed so it is never read as a claim about the image."""
    clean = " ".join(str(text).replace("«", '"').replace("»", '"').split())
    return f"{BACKGROUND_PREFIX} [{chunk_id}]: «{clean}»"


def _origin_words(origin: str | None) -> str:
    kind = (origin or "").split(":", 1)
    if kind[0] == "annotation" and len(kind) == 2:
        return f"the source's {kind[1]} annotation"
    return f"'{origin}'" if origin else "an unknown origin"


def _percent(fraction) -> str | None:
    if fraction is None:
        return None
    return f"{100.0 * float(fraction):.1f}%"


def _part_modality(record: dict, spec) -> str:
    modality = record.get("modality") or spec.modality
    noun = MODALITY_IMAGE_NOUN.get(modality, f"{modality} image")
    sentences = [f"This is {article(noun)} {noun} from the source '{spec.name}'."]
    plane = plane_for(spec, record)
    slice_index = record.get("slice_index")
    slice_count = record.get("slice_count") or 1
    if slice_count > 1 and slice_index is not None and slice_index >= 0:
        plane_words = f"{plane} " if plane else ""
        sentences.append(f"It is {plane_words}slice {slice_index + 1} of {slice_count} of a volume.")
    if record.get("sequence"):
        sentences.append(f"The sequence is {record['sequence']}.")
    if record.get("width") and record.get("height"):
        sentences.append(f"The image measures {record['width']} × {record['height']} pixels.")
    spacing = as_list(record.get("pixel_spacing_mm"))
    if len(spacing) == 2 and all(s for s in spacing):
        sentences.append(f"Pixel spacing is {float(spacing[0]):.3g} × {float(spacing[1]):.3g} mm.")
    return " ".join(sentences)


def _cited_passages(knowledge: dict) -> list[tuple[str, str]]:
    ids = as_list(knowledge.get("knowledge_ids"))
    texts = as_list(knowledge.get("knowledge_texts"))
    return [(i, t) for i, t in zip(ids, texts) if i and t][:MAX_PASSAGES]


def _part_organ_tissue(record: dict, rois: list[dict], spec, passages: list[tuple[str, str]]) -> str:
    organs = record_organs(record, spec)
    sentences = []
    if organs:
        sentences.append(f"The source metadata names the {join_words(organs)} as the imaged anatomy.")
    else:
        sentences.append("The source metadata names no organ for this image.")
    labels = record_labels(record, rois)
    if labels:
        quoted = join_words([f"'{label}'" for label in labels])
        if len(labels) == 1:
            sentences.append(f"The finding label given by the source is {quoted}.")
        else:
            sentences.append(f"The finding labels given by the source are {quoted}.")
    else:
        sentences.append("The source gives no finding label for this image.")
    if passages:
        sentences.extend(background(i, t) for i, t in passages)
    else:
        sentences.append("No background knowledge passage was retrieved, so none is stated.")
    return " ".join(sentences)


def _roi_position(roi: dict, spec) -> str:
    where = position_phrase(roi) or "an unrecorded part of the image"
    side = patient_side_phrase(roi, spec)
    return f"{where} ({side})" if side else where


def _part_roi_analysis(rois: list[dict], primary: dict | None, spec) -> str:
    if primary is None:
        return (
            "No region was annotated in this image; the whole image is treated as the region of "
            "interest, so no position, size, shape or count of a finding is stated."
        )
    label = display_label(primary.get("label") or "finding")
    sentences = [
        f"The primary region of interest, labelled '{label}' and taken from {_origin_words(primary.get('origin'))}, "
        f"lies in {_roi_position(primary, spec)}."
    ]
    if primary.get("centroid_x") is not None and primary.get("centroid_y") is not None:
        sentences.append(
            f"Its centre is at {100 * float(primary['centroid_x']):.0f}% of the image width and "
            f"{100 * float(primary['centroid_y']):.0f}% of the image height."
        )
    confidence = primary.get("confidence")
    if confidence is not None and not str(primary.get("origin", "")).startswith("annotation"):
        sentences.append(f"Its detection confidence is {float(confidence):.2f}.")
    size_bits = []
    if primary.get("size_class") in SIZE_WORD:
        size_bits.append(f"It is {article(SIZE_WORD[primary['size_class']])} {SIZE_WORD[primary['size_class']]} region")
    else:
        size_bits.append("Its size class was not measured")
    if primary.get("area_mm2") is not None:
        size_bits.append(f"of about {float(primary['area_mm2']):.1f} mm²")
    if primary.get("area_fraction") is not None:
        size_bits.append(f"covering {_percent(primary['area_fraction'])} of the image area")
    sentence = " ".join(size_bits)
    if primary.get("shape"):
        sentence += f", with {article(primary['shape'])} {primary['shape']} shape"
    sentences.append(sentence + ".")

    annotated = annotated_rois(rois)
    same = primary.get("count_same_label") or sum(1 for r in annotated if r.get("label") == primary.get("label"))
    if same <= 1:
        sentences.append(f"It is the only region labelled '{label}'.")
    else:
        sentences.append(f"{same} regions carry the label '{label}'; this is the largest of them.")
    if len(annotated) > same:
        sentences.append(f"The image has {len(annotated)} annotated regions in total.")
    others = [r for r in annotated if r is not primary][:MAX_OTHER_ROIS]
    if others and len({r.get("label") for r in annotated}) > 1:
        listed = []
        for roi in others:
            if roi.get("label") == primary.get("label"):
                continue
            size = SIZE_WORD.get(roi.get("size_class") or "", "unmeasured size")
            listed.append(f"'{display_label(roi.get('label') or 'finding')}' in {_roi_position(roi, spec)}, {size}")
        if listed:
            sentences.append("Other annotated regions: " + "; ".join(listed) + ".")
    return " ".join(sentences)


def _part_texture_colour(primary: dict | None, rois: list[dict]) -> str:
    if primary is None:
        whole = next(iter(rois or []), None) or {}
        colour = whole.get("colour")
        sentence = "No region-level intensity, texture or margin is stated because no region was annotated."
        if colour:
            sentence += f" The dominant colour of the whole image is {colour}."
        return sentence
    sentences = []
    intensity = primary.get("intensity_word")
    if intensity:
        contrast = primary.get("intensity_contrast")
        detail = f" (intensity contrast {float(contrast):+.2f})" if contrast is not None else ""
        sentences.append(f"Compared with the tissue around it the region is {intensity}{detail}.")
    texture, margin = primary.get("texture"), primary.get("margin")
    if texture and margin:
        sentences.append(f"Its internal texture is {texture} and its margin is {margin}.")
    elif texture:
        sentences.append(f"Its internal texture is {texture}.")
    elif margin:
        sentences.append(f"Its margin is {margin}.")
    if primary.get("colour"):
        sentences.append(f"Its dominant colour is {primary['colour']}.")
    if not sentences:
        sentences.append("No intensity, texture, margin or colour attribute was measured for this region.")
    return " ".join(sentences)


def _part_relations(record: dict, rois: list[dict], primary: dict | None) -> str:
    if primary is None:
        size = ""
        if record.get("width") and record.get("height"):
            size = f" of {record['width']} × {record['height']} pixels"
        return (
            f"The description is global: it concerns the whole image{size}, and with no annotated "
            "region there is no region-to-region relation to report."
        )
    by_id = {r.get("roi_id"): r for r in rois or []}
    phrases = []
    for relation in parse_relations(primary.get("relations")):
        other = by_id.get(relation.get("roi_id"))
        if other is None or not relation.get("relation"):
            continue
        verb = RELATION_VERBS.get(str(relation["relation"]), str(relation["relation"]).replace("_", " "))
        distance = relation.get("distance")
        tail = f" (centre distance {100 * float(distance):.0f}% of the image diagonal)" if isinstance(distance, (int, float)) else ""
        if len(phrases) >= MAX_RELATIONS:
            break
        phrases.append(f"{verb} the region labelled '{display_label(other.get('label') or 'finding')}'{tail}")
    sentences = []
    if phrases:
        sentences.append("Relative to the other annotated regions, the primary region " + "; ".join(phrases) + ".")
    else:
        sentences.append("No relation to another annotated region was recorded for the primary region.")
    fraction = primary.get("area_fraction")
    if fraction is not None:
        sentences.append(
            f"Locally the region covers {_percent(fraction)} of the image; globally it lies in "
            f"{position_phrase(primary) or 'the image'}, and the remaining {_percent(1 - float(fraction))} "
            "of the image is outside it."
        )
    else:
        sentences.append(f"Globally the region lies in {position_phrase(primary) or 'the image'}.")
    return " ".join(sentences)


def write_description(record: dict, rois: list[dict], knowledge: dict, coarse: str, spec) -> dict:
    rois = list(rois or [])
    primary = primary_roi(rois)
    passages = _cited_passages(knowledge or {})
    parts = {
        "part_modality": _part_modality(record, spec),
        "part_organ_tissue": _part_organ_tissue(record, rois, spec, passages),
        "part_roi_analysis": _part_roi_analysis(rois, primary, spec),
        "part_texture_colour": _part_texture_colour(primary, rois),
        "part_relations": _part_relations(record, rois, primary),
    }
    empty = [name for name, text in parts.items() if not text.strip()]
    if empty:
        raise ValueError(f"writer produced empty parts: {empty}")
    return {
        **parts,
        "description": "\n\n".join(parts.values()),
        "writer": WRITER,
        "prompt_version": PROMPT_VERSION,
        "knowledge_ids": [i for i, _ in passages],
    }


# --- the seam for an OpenAI-compatible writer ----------------------------------------------

_ROI_FIELDS = (
    "roi_id", "label", "origin", "confidence", "horizontal", "vertical", "patient_side", "size_class",
    "area_mm2", "area_fraction", "shape", "intensity_word", "texture", "margin", "colour",
    "count_same_label", "relations",
)

SYSTEM_PROMPT = """You write descriptions of medical images for a training dataset.
Write exactly five labelled parts, in this order:
1. Modality: the imaging modality (and sequence, plane, slice when given).
2. Organ and tissue: the organs named in the metadata; background knowledge only from the
   numbered passages, each cited as [chunk_id] and marked as background knowledge.
3. ROI location and analysis: position in the image, patient side, size, shape, count.
4. Texture and colour: only the measured intensity, texture, margin and colour attributes.
5. Region relations: the given relations between ROIs, and the ROI relative to the whole image.
Rules: state nothing that the metadata, the ROI attributes or the passages do not support.
Never contradict an attribute (side, position, size class, count, modality, organ). If the only
ROI has origin "whole_image", no region was annotated: do not describe any lesion."""


def build_llm_prompt(record: dict, rois: list[dict], knowledge: dict, coarse: str, spec) -> list[dict]:
    """OpenAI chat messages (text only) carrying everything the grounded writer uses."""
    metadata = {
        "source": spec.name,
        "modality": record.get("modality") or spec.modality,
        "sequence": record.get("sequence"),
        "plane": plane_for(spec, record),
        "slice_index": record.get("slice_index"),
        "slice_count": record.get("slice_count"),
        "organs": record_organs(record, spec),
        "labels": record_labels(record, rois),
        "radiological_orientation": bool(getattr(spec, "is_radiological", False)),
    }
    roi_rows = [{name: roi.get(name) for name in _ROI_FIELDS} for roi in rois or []]
    passages = "\n".join(f"[{i}] {t}" for i, t in _cited_passages(knowledge or {})) or "(none retrieved)"
    user = (
        f"Coarse caption: {coarse}\n\n"
        f"Image metadata (JSON): {json.dumps(metadata, default=str)}\n\n"
        f"Regions of interest with measured attributes (JSON): {json.dumps(roi_rows, default=str)}\n\n"
        f"Background knowledge passages:\n{passages}\n\n"
        "Write the five-part description."
    )
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]
