"""Stage 6: the grounded description writer (the embedded default) and the LLM prompt seam.

MedTrinity's multigranular description has five parts: (1) modality, (2) organ and tissue
detection, (3) ROI location and analysis, (4) lesion texture/colour, (5) region-wise relations
(local–global). This writer renders FACTS (generation/facts.py) and computes nothing: every
sentence states facts of the record or of one ROI, in words the verifier reads back.

- The label state decides what may be said about disease: a finding is named as the source's
  label; "normal" only when the source says so; an unknown state is said to be unknown, never
  "no finding".
- Patient-side words appear only where a fact with geometry or declared-view provenance gives
  them; otherwise positions are image-frame words ("the upper left part of the image").
- Weak measurements (margin, shape) are hedged or left out according to their confidence.
- A region an expert model marked (the source annotated none) is the model's possible finding,
  named with the expert and its confidence ("an expert model (kvasir_polyp) marks a possible
  polyp region in ..., confidence 0.87"), never the image's finding; the label state stays the source's.
- Knowledge is never pasted: the retrieved entry's typical features for this modality are
  compared with the measured ones and only agreement or difference is stated in the writer's own
  words; the entry ids go to the ``knowledge_ids`` column and to the facts (provenance
  ``knowledge``), not into the text.

Sentences are varied by a hash of the record id (the same record always gets the same text),
so the corpus is not one template repeated.

``build_llm_prompt`` gives the same facts as the chat messages of the model writer
(``generation.model_writer``, which owns the prompt and attaches the image for a vision model).
"""

from __future__ import annotations

import hashlib
import json
import re

from medtrinity_assets.generation.facts import Fact, FactSet
from medtrinity_assets.vocabulary import (
    possible_region,
    MODALITY_IMAGE_NOUN,
    MODALITY_NAME,
    SIZE_WORD,
    article,
    as_list,
    display_label,
    image_position_phrase,
    join_words,
)

WRITER = "grounded-v2"
PROMPT_VERSION = "five-part-facts-v2"
MAX_OTHER_ROIS = 5
MAX_RELATIONS = 6  # nearest first (grounding orders them): enough for the local-global picture
MAX_PUBLISHER_SENTENCES = 3
# Below this a margin/shape measurement is left out; up to HEDGE_BELOW it is stated as uncertain.
OMIT_BELOW = 0.3
HEDGE_BELOW = 0.6

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
_ORIGIN_WORDS = {
    "annotation:mask": "outlined by the source's mask",
    "annotation:contour": "outlined by the source's contour",
    "annotation:box": "marked by the source's bounding box",
}
_SIDE_SOURCE_WORDS = {
    "geometry": "from the image's position in patient coordinates",
    "declared_view": "from the declared radiographic view",
}

# Words of knowledge passages that state a feature this writer can compare with a measurement.
# (pattern, attribute, value); the intensity words are the measured ``intensity`` directions.
_KNOWLEDGE_FEATURES: list[tuple[str, str, str]] = [
    (r"\bround(ed)?\b", "shape", "round"),
    (r"\boval\b", "shape", "oval"),
    (r"\birregular(ly shaped| in shape)?\b", "shape", "irregular"),
    (r"\b(elongated|tubular|linear)\b", "shape", "elongated"),
    (r"\b(circumscribed|well[- ]defined|sharp(ly)? (defined|demarcated)|smooth margin)\b", "margin", "well-defined"),
    (r"\b(ill[- ]defined|indistinct|spiculated|microlobulated|blurred margin|poorly defined)\b", "margin", "ill-defined"),
    (r"\b(homogeneous|uniform)\b", "texture", "homogeneous"),
    (r"\b(heterogeneous|mottled|variegated)\b", "texture", "heterogeneous"),
    (r"\b(hypoechoic|anechoic|hypodense|hypointense|lucent|low[- ]density|lower in density|dark(er)?)\b", "intensity", "lower"),
    (r"\b(hyperechoic|hyperdense|hyperintense|high[- ]density|dense|bright(er)?|increased uptake|avid)\b", "intensity", "higher"),
]
def _variant(record_id: str, slot: str, options: list[str]) -> str:
    """One of ``options``, the same for the same record and slot on every run."""
    digest = hashlib.sha256(f"{record_id}\x1f{slot}".encode("utf-8")).digest()
    return options[digest[0] % len(options)]


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:] if text else text


def _percent(fraction: float) -> str:
    return f"{100.0 * fraction:.1f}%"


def _position_words(facts: FactSet, roi_id: str) -> str | None:
    return image_position_phrase(facts.roi_value(roi_id, "image_vertical"), facts.roi_value(roi_id, "image_horizontal"))


def _side_clause(facts: FactSet, roi_id: str) -> str | None:
    fact = facts.roi(roi_id, "patient_side")
    if fact is None:
        return None
    how = _SIDE_SOURCE_WORDS.get(fact.detail or fact.provenance, "from the image geometry")
    if fact.value == "midline":
        return f"near the patient's midline ({how})"
    return f"on the patient's {fact.value} side ({how})"


def model_roi(facts: FactSet, roi_id: str) -> dict | None:
    """{expert_id, confidence, weights_sha256} when an expert model, not the source, marked
    the ROI (its origin fact has provenance ``model``), else None."""
    origin = facts.roi(roi_id, "origin")
    if origin is None or origin.provenance != "model" or not origin.value.startswith("model:"):
        return None
    try:
        detail = json.loads(origin.detail or "{}")
    except json.JSONDecodeError:
        detail = {}
    return {"expert_id": detail.get("expert_id") or origin.value[len("model:"):], "confidence": origin.confidence,
            "weights_sha256": detail.get("weights_sha256")}


def model_finding_phrase(expert_id: str, label: str, where: str | None, confidence: float, rid: str, slot: str = "model") -> str:
    """A model's ROI in words that say whose finding it is: never the source's, never certain."""
    place = f" in {where}" if where else ""
    region = possible_region(label)
    return _variant(rid, slot, [
        f"an expert model ({expert_id}) marks a {region}{place}, confidence {confidence:.2f}",
        f"an expert model ({expert_id}) flags a {region}{place} (model confidence {confidence:.2f})",
        f"a {region}{place} is marked by an expert model ({expert_id}), with confidence {confidence:.2f}",
    ])


# --- part 1: modality ----------------------------------------------------------------------


def _part_modality(facts: FactSet, spec, rid: str) -> str:
    modality = facts.record_value("modality") or spec.modality
    noun = MODALITY_IMAGE_NOUN.get(modality, f"{modality} image")
    view = facts.record_value("view")
    kind = facts.record_value("image_kind")
    position = facts.record("slice_position")
    plane = facts.record_value("plane")
    opening = _variant(rid, "modality", [
        f"This is {article(noun)} {noun}",
        f"The image is {article(noun)} {noun}",
        f"Modality: {article(noun)} {noun}",
        f"We are looking at {article(noun)} {noun}",
        f"The picture is {article(noun)} {noun}",
    ])
    if view:
        opening += _variant(rid, "view", [f" taken in the {view} view", f" ({view} view)", f", {view} projection"])
    # The collection's name stays in the provenance: a model trained on the text should learn
    # to describe images, not to name the dataset they came from.
    sentences = [opening + "."]
    if kind in ("slice", "frame") and position:
        index, count = position[0].value.split("/")
        if kind == "slice":
            plane_words = f"{plane} " if plane else ""
            sentences.append(_variant(rid, "slice", [
                f"It is {plane_words}slice {index} of the {count} slices of a volume.",
                f"The volume has {count} slices; this is {plane_words}slice number {index}.",
                f"Shown is {plane_words}slice {index} out of {count} in the volume.",
            ]))
        else:
            sentences.append(_variant(rid, "frame", [
                f"It is frame {index} of the {count} frames of a cine acquisition.",
                f"The cine loop has {count} frames; this is frame {index}.",
            ]))
    sequence = facts.record_value("sequence")
    if sequence:
        sentences.append(f"The MR sequence is {sequence}.")
    width, height = facts.record_value("image_width_px"), facts.record_value("image_height_px")
    if width and height:
        size = _variant(rid, "imgsize", [
            f"The exported image measures {width} × {height} pixels",
            f"As exported it is {width} pixels wide and {height} pixels high",
            f"Its exported size is {width} × {height} pixels",
        ])
        spacing = facts.record("pixel_spacing_mm")
        if spacing:
            size += f", about {spacing[0].number:.2g} mm per pixel"
        sentences.append(size + ".")
    if facts.record_value("burned_in_text"):
        sentences.append("Text or markers are burned into the pixels of this image.")
    return " ".join(sentences)


# --- part 2: organ, tissue and what the source says -------------------------------------------


def _label_sentence(facts: FactSet, rid: str) -> str:
    state = facts.record_value("label_state") or "unknown"
    findings = [display_label(f) for f in facts.record_values("finding")]
    if state == "finding" and findings:
        if len(findings) == 1:
            return _variant(rid, "label", [
                f"The source labels this image with the finding {findings[0]}.",
                f"The finding given by the source for this image is {findings[0]}.",
                f"According to the source's label, the image shows {findings[0]}.",
                f"The source's diagnosis for this image is {findings[0]}.",
                f"The label attached by the source is {findings[0]}.",
            ])
        return f"The source labels this image with the findings {join_words(findings)}."
    if state == "normal":
        return _variant(rid, "label", [
            "The source labels this image as normal.",
            "According to the source's label, the image is normal.",
        ])
    return _variant(rid, "label", [
        "The source gives no diagnosis for this image, and none is implied here.",
        "No diagnostic label is available for this image, so no diagnosis is stated.",
    ])


def _part_organ_tissue(facts: FactSet, rid: str, publisher: list[str]) -> str:
    organs = facts.record_values("organ")
    sentences = []
    if organs:
        sentences.append(_variant(rid, "organ", [
            f"The imaged anatomy, as the source records it, is the {join_words(organs)}.",
            f"It shows the {join_words(organs)}, according to the source's metadata.",
            f"The source's metadata place it in the {join_words(organs)}.",
            f"Anatomy recorded by the source: the {join_words(organs)}.",
        ]))
    else:
        sentences.append("The source names no organ for this image.")
    laterality = facts.record_value("laterality")
    if laterality in ("left", "right") and organs:
        sentences.append(f"The source records the {laterality} side ({organs[0]}).")
    elif laterality == "bilateral":
        sentences.append("The source records both sides.")
    sentences.append(_label_sentence(facts, rid))
    grades = facts.record_values("grade")
    if grades:
        sentences.append("The source's grading: " + "; ".join(g.replace("=", " ") for g in grades) + ".")
    if facts.record_value("slice_context"):
        sentences.append("This slice was kept as context: it lies outside the annotated region of the volume.")
    sex, age = facts.record_value("sex"), facts.record_value("age_band")
    if sex or age:
        parts = []
        if sex:
            parts.append(f"recorded as {sex}")
        if age:
            parts.append(f"in the age band {age}")
        sentences.append("The patient is " + " and ".join(parts) + ".")
    sentences.extend(publisher)
    return " ".join(sentences)


def _publisher_sentences(facts: FactSet) -> list[str]:
    """The publisher's findings in this writer's words (the notes themselves stay in
    ``source_text``: pasting them would train a model to repeat one publisher's phrasing)."""
    stated, denied = [], []
    for fact in facts.record("publisher_text"):
        try:
            found = json.loads(fact.detail or "{}")
        except json.JSONDecodeError:
            continue
        terms = [t for t in as_list(found.get("terms")) if t]
        if not terms:
            continue
        where = [w for w in as_list(found.get("sides"))[:1] + as_list(found.get("zones"))[:1] if w]
        phrase = join_words(terms) + (f" ({', '.join(where)})" if where else "")
        (denied if found.get("negated") else stated).append(phrase)
    sentences = []
    if stated:
        sentences.append(f"The publisher's notes for this image report {join_words(stated[:MAX_PUBLISHER_SENTENCES])}.")
    if denied:
        sentences.append(f"The same notes state that there is no {join_words(denied[:MAX_PUBLISHER_SENTENCES])}.")
    return sentences


# --- part 3: regions --------------------------------------------------------------------------


def _size_sentence(facts: FactSet, roi_id: str, rid: str) -> str | None:
    width, height = facts.roi(roi_id, "width_px"), facts.roi(roi_id, "height_px")
    size_class = facts.roi_value(roi_id, "size_class")
    fraction = facts.roi(roi_id, "area_fraction")
    diameter = facts.roi(roi_id, "max_diameter_mm")
    bits = []
    if width and height:
        bits.append(f"spans about {width.value} × {height.value} pixels of the exported image")
    if diameter is not None:
        bits.append(f"measures about {diameter.number:.0f} mm at its widest")
    if fraction is not None:
        bits.append(f"covers {_percent(fraction.number)} of the image area")
    if not bits:
        return None
    sentence = _variant(rid, "size-subject", ["It ", "The region ", "This region "]) + join_words(bits)
    if size_class in SIZE_WORD:
        sentence += _variant(rid, f"size{roi_id}", [
            f", which makes it {article(SIZE_WORD[size_class])} {SIZE_WORD[size_class]} region",
            f" ({SIZE_WORD[size_class]} for this image)",
            f"; relative to the image it is {SIZE_WORD[size_class]}",
        ])
    return sentence + "."


def _part_roi_analysis(facts: FactSet, rid: str) -> str:
    roi_ids = facts.roi_ids()
    if not roi_ids:
        return _variant(rid, "noroi", [
            "No region is annotated in this image, so the whole image is the region of interest and "
            "no region position, size or count is stated.",
            "The source marks no region in this image; the description therefore concerns the whole image "
            "and gives no region position, size or count.",
            "Without an annotated region, the region of interest is the whole frame, and nothing is said "
            "about where a region lies or how large it is.",
            "The whole image serves as the region of interest because the source outlines nothing in it; "
            "region position, size and count are therefore not given.",
        ])
    primary = roi_ids[0]
    if model_roi(facts, primary) is not None:
        return _model_roi_analysis(facts, rid, roi_ids)
    label = display_label(facts.roi_value(primary, "label") or "unlabelled")
    origin = _ORIGIN_WORDS.get(facts.roi_value(primary, "origin") or "", "found by a model")
    where = _position_words(facts, primary) or "an unrecorded part of the image"
    side = _side_clause(facts, primary)
    sentences = [
        _variant(rid, "where", [
            f"The main region of interest, labelled {label} and {origin}, lies in {where}",
            f"The largest annotated region ({label}, {origin}) is in {where}",
            f"A region labelled {label}, {origin}, occupies {where}",
            f"In {where} lies the main annotated region, labelled {label} and {origin}",
        ]) + (f", {side}" if side else "") + "."
    ]
    size = _size_sentence(facts, primary, rid)
    if size:
        sentences.append(size)
    same = int(facts.roi(primary, "count_same_label").number) if facts.roi(primary, "count_same_label") else 1
    total = len(roi_ids)
    if same <= 1:
        sentences.append(_variant(rid, "count", [
            f"It is the only region labelled {label}.",
            f"Only one region carries the label {label}.",
            f"This is the single region labelled {label}.",
        ]))
    else:
        sentences.append(_variant(rid, "count", [
            f"It is the largest of {same} separate regions labelled {label}.",
            f"{same} separate regions carry the label {label}, and this is the largest.",
        ]))
    if total > same:
        sentences.append(f"In all, {total} regions are annotated in this image.")
    others = []
    for roi_id in roi_ids[1 : 1 + MAX_OTHER_ROIS]:
        other_label = display_label(facts.roi_value(roi_id, "label") or "unlabelled")
        other_where = _position_words(facts, roi_id) or "an unrecorded part of the image"
        other_side = _side_clause(facts, roi_id)
        size_class = facts.roi_value(roi_id, "size_class")
        text = f"a {SIZE_WORD.get(size_class, 'unmeasured')} {other_label} region in {other_where}"
        others.append(text + (f", {other_side}" if other_side else ""))
    if others:
        sentences.append("The other annotated regions: " + "; ".join(others) + ".")
    return " ".join(sentences)


def _model_roi_analysis(facts: FactSet, rid: str, roi_ids: list[str]) -> str:
    """Part 3 when the regions come from expert models (the source annotated none): each is the
    model's possible finding, with its confidence, never the image's finding."""
    primary = roi_ids[0]
    model = model_roi(facts, primary)
    label = display_label(facts.roi_value(primary, "label") or "region")
    where = _position_words(facts, primary)
    side = _side_clause(facts, primary)
    sentences = [
        _variant(rid, "model-none", [
            "The source annotates no region in this image.",
            "No region is annotated by the source.",
            "The source outlines nothing in this image.",
        ]),
        _cap(model_finding_phrase(model["expert_id"], label, where, model["confidence"], rid))
        + (f", {side}" if side else "") + ".",
    ]
    size = _size_sentence(facts, primary, rid)
    if size:
        sentences.append(size)
    others = [(roi_id, model_roi(facts, roi_id)) for roi_id in roi_ids[1 : 1 + MAX_OTHER_ROIS]]
    others = [(roi_id, other) for roi_id, other in others if other is not None]
    if others:
        same = all(other["expert_id"] == model["expert_id"] for _, other in others)
        listed = []
        for roi_id, other in others:
            other_label = display_label(facts.roi_value(roi_id, "label") or "region")
            other_where = _position_words(facts, roi_id) or "an unrecorded part of the image"
            size_class = facts.roi_value(roi_id, "size_class")
            by = "" if same else f"{other['expert_id']}, "
            listed.append(f"a {SIZE_WORD.get(size_class, 'unmeasured')} {possible_region(other_label)} in {other_where} "
                          f"({by}confidence {other['confidence']:.2f})")
        subject = "The same model also marks " if same else "Other expert models also mark "
        sentences.append(subject + "; ".join(listed) + ".")
    sentences.append(_variant(rid, "model-caveat", [
        "These are a model's suggestions, not the source's findings.",
        "A model's mark is a suggestion to check, not a diagnosis.",
    ]))
    return " ".join(sentences)


# --- part 4: intensity, texture, margin, colour -----------------------------------------------


def _intensity_predicate(word: str) -> str:
    """'is hypoechoic', 'shows increased uptake', 'has similar density'."""
    if "uptake" in word:
        return f"shows {word}"
    if word.startswith("similar"):
        return f"has {word}"
    return f"is {word}"


def _hedged(fact: Fact | None, noun: str) -> str | None:
    if fact is None or fact.confidence < OMIT_BELOW:
        return None
    if fact.confidence < HEDGE_BELOW:
        return f"its {noun} appears {fact.value}, though this measurement is uncertain"
    return f"its {noun} is {fact.value}"


def _knowledge_features(text: str) -> dict[str, str]:
    """Features a knowledge passage states as typical: {attribute: value}; conflicting words cancel."""
    found: dict[str, set[str]] = {}
    for pattern, attribute, value in _KNOWLEDGE_FEATURES:
        if re.search(pattern, text, re.I):
            found.setdefault(attribute, set()).add(value)
    return {attribute: next(iter(values)) for attribute, values in found.items() if len(values) == 1}


def _feature_phrase(fact: Fact) -> str:
    if fact.attribute == "intensity":
        return f"the {fact.detail or fact.value + ' intensity'} appearance"
    return f"the {fact.value} {fact.attribute}"


def _knowledge_sentence(facts: FactSet, primary: str, passages: list[dict], rid: str) -> tuple[str | None, list[str]]:
    """Agreement of the measured features with the retrieved entry's typical ones, and the ids used."""
    modality = MODALITY_NAME.get(facts.record_value("modality") or "", "this modality")
    label = facts.roi_value(primary, "label")
    # Typical features of a disease say nothing about an anatomy ROI (a lung box, a
    # grey-matter map): compare only a region whose label is one of the record's findings.
    if label not in facts.record_values("finding"):
        return None, []
    for passage in passages:
        expected = _knowledge_features(passage.get("appearance") or "")
        agree, differ = [], []
        for attribute, value in expected.items():
            fact = facts.roi(primary, attribute)
            if fact is None or fact.confidence < HEDGE_BELOW:
                continue
            (agree if fact.value == value else differ).append(_feature_phrase(fact))
        if not agree and not differ:
            continue
        finding = display_label(passage.get("finding") or label or "this finding")
        sentences = []
        if agree:
            verb = "match" if len(agree) > 1 else "matches"
            sentences.append(_cap(_variant(rid, "agree", [
                f"{join_words(agree)} {verb} what is usually reported for {finding} on {modality}.",
                f"{join_words(agree)} {'are' if len(agree) > 1 else 'is'} in keeping with how {finding} commonly looks on {modality}.",
            ])))
        if differ:
            verb = "are" if len(differ) > 1 else "is"
            target = "it" if agree else f"{finding} on {modality}"
            sentences.append(_cap(f"{join_words(differ)} {verb} less typical of {target}."))
        return " ".join(sentences), [passage["entry_id"]]
    return None, []


def _part_texture_colour(facts: FactSet, passages: list[dict], rid: str) -> tuple[str, list[str]]:
    roi_ids = facts.roi_ids()
    if not roi_ids:
        return (
            _variant(rid, "notexture", [
                "No region-level intensity, texture, margin or colour is stated because no region is annotated.",
                "With nothing outlined, region intensity, texture, margin and colour are not described.",
                "Intensity, texture, margin and colour are region measurements, and this image has no annotated region.",
            ]),
            [],
        )
    primary = roi_ids[0]
    sentences = []
    intensity = facts.roi(primary, "intensity")
    if intensity is not None and intensity.detail:
        state = _intensity_predicate(intensity.detail)
        sentences.append(_variant(rid, "intensity", [
            f"Compared with the tissue around it, the region {state}.",
            f"Against its surroundings the region {state}.",
            f"Relative to the neighbouring tissue the region {state}.",
        ]))
    clauses = [c for c in (
        _hedged(facts.roi(primary, "texture"), "internal texture"),
        _hedged(facts.roi(primary, "shape"), "shape"),
        _hedged(facts.roi(primary, "margin"), "margin"),
    ) if c]
    if clauses:
        sentences.append(_cap(join_words(clauses)) + ".")
    colour = facts.roi_value(primary, "colour")
    if colour:
        sentences.append(f"Its dominant colour is {colour}.")
    used: list[str] = []
    if facts.record_value("label_state") == "finding":
        knowledge, used = _knowledge_sentence(facts, primary, passages, rid)
        if knowledge:
            sentences.append(knowledge)
    if not sentences:
        sentences.append("No intensity, texture, margin or colour was measured for this region.")
    return " ".join(sentences), used


# --- part 5: relations ------------------------------------------------------------------------


def _part_relations(facts: FactSet, rid: str) -> str:
    roi_ids = facts.roi_ids()
    if not roi_ids:
        width, height = facts.record_value("image_width_px"), facts.record_value("image_height_px")
        size = f" of {width} × {height} pixels" if width and height else ""
        return _variant(rid, "norelation", [
            f"The description is global: it concerns the whole image{size}, and with no annotated region "
            "there is no region-to-region relation to report.",
            f"Only the global level applies here: the whole image{size} is described, and region-to-region "
            "relations need annotated regions, which this image lacks.",
            f"Relations between regions cannot be given without annotated regions; the account covers the "
            f"whole image{size}.",
        ])
    primary = roi_ids[0]
    # Relations to same-labelled neighbours are grouped ("lies above 5 nucleus regions"), so a
    # crowded image does not repeat one phrase per neighbour.
    grouped: dict[tuple[str, str], int] = {}
    for fact in [f for f in facts.roi_facts(primary) if f.attribute == "relation"][:MAX_RELATIONS]:
        if fact.detail not in roi_ids:
            continue
        other_label = display_label(facts.roi_value(fact.detail or "", "label") or "unlabelled")
        verb = RELATION_VERBS.get(fact.value, fact.value.replace("_", " "))
        grouped[(verb, other_label)] = grouped.get((verb, other_label), 0) + 1
    marked = model_roi(facts, primary) is not None
    possible = "possible " if marked else ""  # a model's region stays a possible one
    phrases = [
        f"{verb} the {possible}{label} region" if count == 1 else f"{verb} {count} of the {possible}{label} regions"
        for (verb, label), count in grouped.items()
    ]
    sentences = []
    if phrases:
        experts = {(model_roi(facts, roi_id) or {}).get("expert_id") for roi_id in roi_ids}
        others = ("the other regions the model marks" if len(experts) == 1 else "the other regions the models mark") \
            if marked else "the other annotated regions"
        sentences.append(f"Relative to {others}, the main region " + "; ".join(phrases) + ".")
    elif len(roi_ids) > 1:
        sentences.append("No relation between the main region and the others was recorded.")
    fraction = facts.roi(primary, "area_fraction")
    where = _position_words(facts, primary) or "the image"
    if fraction is not None:
        inside, outside = _percent(fraction.number), _percent(1 - fraction.number)
        sentences.append(_variant(rid, "local-global", [
            f"Locally the main region covers {inside} of the image; globally it sits in {where}, "
            f"and the remaining {outside} of the image lies outside it.",
            f"Seen against the whole image, the main region takes up {inside} of it and sits in {where}; "
            f"the remaining {outside} of the image lies outside it.",
            f"At the global level the main region sits in {where}, taking up {inside} of the image; "
            f"the remaining {outside} lies outside it.",
        ]))
    else:
        sentences.append(f"Globally the main region sits in {where}.")
    return " ".join(sentences)


# --- the writer -------------------------------------------------------------------------------


def knowledge_passages(knowledge: dict) -> list[dict]:
    """Retrieved entries as {entry_id, finding, appearance}: the structured sections when
    retrieval gives them, else the appearance chunks' own text."""
    sections = knowledge.get("knowledge_sections")
    if isinstance(sections, str) and sections:
        try:
            sections = json.loads(sections)
        except json.JSONDecodeError:
            sections = None
    passages = []
    if isinstance(sections, list):
        for item in sections:
            if isinstance(item, dict) and item.get("entry_id"):
                passages.append({"entry_id": item["entry_id"], "finding": item.get("finding"), "appearance": item.get("appearance") or ""})
        return passages
    for chunk_id, text in zip(as_list(knowledge.get("knowledge_ids")), as_list(knowledge.get("knowledge_texts"))):
        entry_id, _, section = str(chunk_id).partition(".")
        if section.startswith("appearance"):
            passages.append({"entry_id": entry_id, "finding": None, "appearance": str(text)})
    return passages


def write_description(facts: FactSet, knowledge: dict, spec) -> dict:
    """The five parts from the record's facts; returns the parts, the description and the facts
    the text rests on (the record's plus the knowledge entries it used)."""
    rid = next((f.record_id for f in facts), "")
    passages = knowledge_passages(knowledge or {})
    texture_part, used = _part_texture_colour(facts, passages, rid)
    parts = {
        "part_modality": _part_modality(facts, spec, rid),
        "part_organ_tissue": _part_organ_tissue(facts, rid, _publisher_sentences(facts)),
        "part_roi_analysis": _part_roi_analysis(facts, rid),
        "part_texture_colour": texture_part,
        "part_relations": _part_relations(facts, rid),
    }
    empty = [name for name, text in parts.items() if not text.strip()]
    if empty:
        raise ValueError(f"writer produced empty parts: {empty}")
    knowledge_facts = [
        Fact(rid, None, "knowledge", entry_id, "knowledge", detail=next((p.get("finding") for p in passages if p["entry_id"] == entry_id), None))
        for entry_id in used
    ]
    return {
        **parts,
        "description": "\n\n".join(parts.values()),
        "writer": WRITER,
        "prompt_version": PROMPT_VERSION,
        "knowledge_ids": used,
        "facts": FactSet(list(facts) + knowledge_facts),
    }


# --- the seam for an OpenAI-compatible writer ----------------------------------------------


def build_llm_prompt(facts: FactSet, knowledge: dict, coarse: str, spec) -> list[dict]:
    """OpenAI chat messages (text only) carrying the facts this writer uses: the model writer's
    versioned prompt (``generation.model_writer``)."""
    from medtrinity_assets.generation.model_writer import build_messages

    return build_messages(facts, knowledge, coarse, spec)
