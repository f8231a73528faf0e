"""Check a description against the record's facts, sentence by sentence.

The description is read back into claims (``generation.claims``); each claim is bound to what it
speaks of and checked against those facts only:

- claims about a region (image position, size, shape, margin, intensity, texture, patient side)
  are checked against one ROI: the one whose label the clause names, the one an ordinal or size
  word picks ("the second region", "the larger lesion"), the subject carried from the clause
  before ("It ..."), else the primary (largest) ROI. Where a clause names a label several ROIs
  share, or speaks of "the other regions", one ROI of that group must support all its claims
  together; "any ROI supports any claim" never holds;
- claims about the record (modality, organ, finding, normal, counts, laterality of the imaged
  part) are checked against the record's facts;
- a patient-side or laterality word needs a fact with provenance geometry, metadata or
  publisher_text; image-frame words need the measured image position;
- the publisher's text (facts of provenance publisher_text) supports the findings it states, the
  findings it denies ("no effusion"), and their sides and zones; a note about another modality
  (a CT finding in a radiograph's note) supports only a sentence that reports the notes;
- a region an expert model marked (origin fact with provenance ``model``) is described like an
  annotated one, but its label is no finding of the record: a finding or lesion claim that only
  a model ROI supports is accepted only in a sentence that names the model and a possibility
  ("an expert model (kvasir_polyp) marks a possible polyp region"); stated plainly ("There is a
  polyp") it is flagged ``model_as_finding``;
- neighbouring anatomy of the imaged region, hybrid modality names whose one part is the
  record's modality, and marked background sentences are allowed.

``verify`` returns one flag per unsupported claim, "type: says '...' / facts: ...". An empty
list means verified. It works for any writer: nothing here depends on one writer's phrasing.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache

from medtrinity_assets.generation.claims import (
    ACHROMATIC,
    BENIGN_WORDS,
    MALIGNANT_WORDS,
    ORGAN_WORDS,
    REGION_NEIGHBOURS,
    UNBOUNDED_ORGANS,
    Claim,
    Clause,
    FindingVocabulary,
    _QUADRANT,
    _norm,
    default_vocabulary,
    extract_claims,
    read_clauses,
)
from medtrinity_assets.generation.facts import FactSet
from medtrinity_assets.vocabulary import COMPATIBLE_MODALITIES, possible_region

# Provenances that may give a patient side or the side of an imaged part.
SIDE_PROVENANCES = {"geometry", "metadata", "publisher_text"}
# Modalities whose image "up" is the patient's head, so an upper/lower zone can be read off it.
PROJECTION_MODALITIES = {"xray"}
# Modalities photographed in colour: their ROIs carry a measured colour.
PHOTO_MODALITIES = {"dermoscopy", "endoscopy", "fundus", "histopathology", "microscopy"}
ROI_CLAIMS = {"side", "position", "size", "shape", "margin", "intensity", "texture", "colour"}

_ORDINALS = {
    "first": 1, "largest": 1, "biggest": 1, "main": 1, "primary": 1, "dominant": 1, "larger": 1, "bigger": 1,
    "second": 2, "second-largest": 2, "third": 3, "fourth": 4, "fifth": 5,
}
_REFERENT = r"(?:\s+[\w-]+){0,3}?\s+(?:region|lesion|mass|masse|tumou?r|nodule|cyst|polyp|roi|area|finding|opacit(?:y|ie)|structure|object|one|abnormalit(?:y|ie)|focus|foci|spot|instance|nucle(?:us|i)|cell)s?\b"
_ORDINAL_RE = re.compile(
    r"\b(largest|biggest|main|primary|dominant|larger|bigger|smallest|smaller)\b"
    rf"|\b(first|second-largest|second|third|fourth|fifth|other|another|remaining|additional)(?={_REFERENT})",
    re.I,
)
_CARRY_START = re.compile(r"^\W*(?:it|its|it's|this|that|these|they|their|which|the\s+(?:\w+\s+)?(?:region|lesion|"
                          r"mass|tumou?r|nodule|cyst|polyp|roi|area|finding|opacity|structure|object|abnormality))\b", re.I)
# A sentence that says what the publisher's notes say ("The publisher's notes report ...").
_ATTRIBUTED = re.compile(
    r"\b(?:publisher(?:'s|’s)?|clinical|radiology|radiologist(?:'s|’s)?|accompanying|original|same)\s+(?:own\s+)?"
    r"(?:notes?|reports?|captions?|text|description)\b|\baccording to the (?:notes?|reports?|captions?|publisher)\b"
    r"|\bthe (?:notes?|report|caption) (?:states?|reports?|mentions?|describes?|says?)\b",
    re.I,
)
_FURTHER = re.compile(r"\b(?:other|additional|further|another|second|more|separate)\s+(?:\w+\s+)?(?:lesion|mass|masse|tumou?r|nodule|cyst|polyp|abnormalit(?:y|ie)|growth|focus|foci)s?\b", re.I)
# A general statement about a disease ("X typically appears ...") that does not speak of this image.
_HEDGE = re.compile(r"\b(?:typically|usually|generally|often|commonly|classically|tends? to|in general|frequently)\b", re.I)
_THIS_IMAGE = re.compile(r"\b(?:this|here|it|its|the (?:image|lesion|region|mass|roi|finding|nodule|polyp|tumou?r|area))\b", re.I)
# A sentence that gives a finding as an expert model's, and as uncertain: it names the model
# and a word of possibility ("an expert model (kvasir_polyp) marks a possible polyp region").
_MODEL_ATTRIBUTION = re.compile(r"\b(?:expert|model|models|detector|segmenter)\b", re.I)
_MODEL_POSSIBILITY = re.compile(r"\b(?:possible|possibly|may|might|suspected|suspicious|candidate|probable|probably|likely)\b", re.I)
_COMPARATIVE_KNOWLEDGE = re.compile(r"\b(?:usually|typical(?:ly)?|characteristic|commonly|often|classically)\b", re.I)


@dataclass(frozen=True)
class Verdict:
    claim: Claim
    supported: bool
    flag_type: str
    facts_say: str
    roi_id: str | None = None

    @property
    def flag(self) -> str:
        negated = " (negated)" if self.claim.negated else ""
        return f"{self.flag_type}: says '{self.claim.phrase.strip()}'{negated} / facts: {self.facts_say}"


class _Record:
    """What the record's facts say, computed once per description."""

    def __init__(self, facts: FactSet, vocabulary: FindingVocabulary):
        self.facts = facts
        self.vocabulary = vocabulary
        self.roi_ids = facts.roi_ids()
        self.labels = {rid: _norm(self.fact(rid, "label").value) if self.fact(rid, "label") else "" for rid in self.roi_ids}
        # ROIs an expert model marked: regions to describe, never the image's finding.
        self.model_rois = {rid: self.fact(rid, "origin") for rid in self.roi_ids
                           if self.fact(rid, "origin") is not None and self.fact(rid, "origin").provenance == "model"}
        self.modality = facts.record_value("modality")
        self.organs = [_norm(o) for o in facts.record_values("organ")]
        self.state = facts.record_value("label_state") or "unknown"
        self.findings = [_norm(v) for v in facts.record_values("finding")] + [
            l for rid, l in self.labels.items() if l and rid not in self.model_rois]
        self.knowledge = [_norm(f.detail or f.value) for f in facts.record("knowledge")]
        self.finding_entries = set()
        for text in self.findings:
            self.finding_entries |= vocabulary.entries_in(text)
        names = [vocabulary.finding_names.get(e, "") for e in self.finding_entries]
        self.finding_strings = [s for s in self.findings + names if s]
        self.laterality = facts.record_value("laterality")
        self.annotated = len(self.roi_ids) - len(self.model_rois)
        notes = facts.record("publisher_text")
        # In a sentence attributed to the notes, all they say; elsewhere, only what they say
        # about this image's modality.
        self.publisher = {attributed: _PublisherView(notes, self.modality, vocabulary, attributed)
                          for attributed in (True, False)}

    def fact(self, roi_id: str | None, attribute: str):
        """The ROI's fact (a multi-ROI image is checked ROI by ROI)."""
        return self.facts.roi(roi_id, attribute)

    def model_marks(self, claim: Claim) -> list[str]:
        """The model ROIs a finding or lesion claim could speak of: those whose label it names
        (or names it), any of them for a generic lesion noun."""
        term = _norm(claim.value)
        hits = []
        for rid in self.model_rois:
            label = self.labels.get(rid) or ""
            if claim.kind == "lesion" or (label and (_mentions(term, label) or _mentions(label, term))):
                hits.append(rid)
        return hits

    def model_words(self, roi_ids: list[str]) -> str:
        experts = sorted({self.model_rois[rid].value[len("model:"):] for rid in roi_ids})
        labels = sorted({self.labels.get(rid) or "region" for rid in roi_ids})
        best = max(self.model_rois[rid].confidence for rid in roi_ids)
        return f"only an expert model ({', '.join(experts)}) marks a {possible_region('/'.join(labels))} (confidence {best:.2f})"

    def label_count(self, label: str) -> int:
        return sum(1 for l in self.labels.values() if l == label)

    def side_facts(self, roi_id: str | None) -> list[str]:
        fact = self.fact(roi_id, "patient_side") if roi_id else None
        return [fact.value] if fact is not None and fact.provenance in SIDE_PROVENANCES else []

    def malignancy(self) -> set[str]:
        classes = set()
        for text in self.finding_strings:
            words = set(text.split())
            if any(w in text for w in MALIGNANT_WORDS) or words & {"gtv"}:
                classes.add("malignant")
            if any(w in text for w in BENIGN_WORDS):
                classes.add("benign")
        return classes


class _PublisherView:
    """What the publisher's de-identified text supports. Facts whose ``detail`` carries the
    structured statement (terms, sides, zones, negated, modalities) are read by their fields;
    a bare sentence supports the claims whose words it contains."""

    def __init__(self, notes, modality: str | None, vocabulary: FindingVocabulary, attributed: bool):
        self.bare: list[str] = []  # sentences without a structured statement
        self.texts: list[str] = []  # every usable sentence
        self.stated: list[str] = []
        self.denied: list[str] = []
        self.sides: set[str] = set()
        self.zones: list[frozenset] = []
        self.entries: set[str] = set()
        allowed = {modality} | COMPATIBLE_MODALITIES.get(modality or "", set()) | {
            m for m, compatible in COMPATIBLE_MODALITIES.items() if modality in compatible}
        for fact in notes:
            text = _norm(fact.value)
            statement = _statement(fact.detail)
            if statement is None:
                self.bare.append(text)
                self.texts.append(text)
                self.entries |= vocabulary.entries_in(text)
                self.zones.extend(_quadrant_key(m.group(0)) - {"zone", "quadrant"} for m in _QUADRANT.finditer(text))
                continue
            about = set(statement.get("modalities") or [])
            if about and not attributed and not about & allowed:
                continue  # a CT finding in the note of a radiograph is not seen on this image
            self.texts.append(text)
            terms = [_norm(t) for t in statement.get("terms") or [] if t]
            if statement.get("negated"):
                self.denied.extend(terms)
                continue
            self.stated.extend(terms)
            for term in terms:
                self.entries |= vocabulary.entries_in(term)
            sides = {_norm(side) for side in statement.get("sides") or []}
            self.sides |= sides & {"left", "right", "bilateral"}
            words = set(" ".join(_norm(z) for z in statement.get("zones") or []).split())
            self.zones.append(frozenset(sides | words))

    def states(self, term: str) -> bool:
        return any(_mentions(t, term) or _mentions(term, t) for t in self.stated) or \
            any(_mentions(text, term) for text in self.bare)

    def denies(self, term: str) -> bool:
        return any(_mentions(t, term) or _mentions(term, t) for t in self.denied)


def _statement(detail: str | None) -> dict | None:
    if not detail or not detail.lstrip().startswith("{"):
        return None
    try:
        parsed = json.loads(detail)
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) and "terms" in parsed else None


def _quadrant_key(phrase: str) -> frozenset:
    words = set(_norm(phrase).replace("mid ", "middle ").split())
    kind = "quadrant" if "quadrant" in words or "quadrants" in words else "zone"
    return frozenset((words & {"left", "right", "upper", "lower", "middle", "outer", "inner"}) | {kind})


def _in_publisher_text(claim: Claim, view: _PublisherView, attributed: bool, whole_image: bool) -> bool:
    """The claim's own words are in the publisher's text. A sentence that reports the notes may
    repeat any of their words; elsewhere a bare (unstructured) note supports a finding or a
    location it names, and on an image without regions the words it uses for its finding
    ("a rounded opacity"); an annotated region's attributes are never the notes' to confirm."""
    phrase = _norm(claim.phrase)
    if attributed:
        texts = view.texts
    elif claim.kind in ("finding", "lesion", "malignancy", "laterality", "quadrant", "organ"):
        texts = view.bare
    elif whole_image:
        texts = view.texts
    else:
        return False
    return bool(phrase) and not claim.negated and any(
        re.search(rf"(?<!\w){re.escape(phrase)}(?!\w)", text) for text in texts)


def _mentions(text: str, term: str) -> bool:
    pattern = _term_pattern(_norm(term))
    return bool(pattern and pattern.search(text))


def _singular(word: str) -> str:
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith("ses") and word[:-2].endswith(("sis", "ss")):
        return word[:-2]
    if word.endswith(("xes", "ches", "shes", "sses")):
        return word[:-2]
    if word.endswith("s") and not word.endswith(("ss", "us", "is")) and len(word) > 3:
        return word[:-1]
    return word


@lru_cache(maxsize=4096)
def _term_pattern(term: str) -> re.Pattern | None:
    """The term, its plural, and "-us" -> "-i" (nucleus, nuclei), as whole words."""
    if len(term) < 3:
        return None
    head, _, last = term.rpartition(" ")
    last = _singular(last)
    base = f"{head} {last}".strip()
    forms = {term, base, base + "s", base + "es"}
    if last.endswith("y"):
        forms.add(base[:-1] + "ies")
    if last.endswith("us"):
        forms.add(base[:-2] + "i")
    if last.endswith("is"):
        forms.add(base[:-2] + "es")
    return re.compile(r"(?<![\w-])(?:" + "|".join(re.escape(f) for f in sorted(forms, key=len, reverse=True)) + r")(?![\w-])")


def _first_mention(text: str, term: str) -> int:
    match = re.search(rf"(?<![\w-]){re.escape(term)}", text)
    return match.start() if match else len(text)


# --- binding -----------------------------------------------------------------------------


def _bind(clause: Clause, record: _Record, previous: list[str] | None, same_sentence: bool) -> tuple[list[str], bool]:
    """The candidate ROIs the clause speaks of, and whether it named them itself."""
    if not record.roi_ids:
        return [], False
    raw = _norm(clause.raw)
    named = [rid for rid, label in record.labels.items() if label and _mentions(raw, label)]
    if len({record.labels[rid] for rid in named}) > 1:
        # Several labels named: the clause speaks of the one it names first (its subject).
        first = min({record.labels[rid] for rid in named}, key=lambda label: _first_mention(raw, label))
        named = [rid for rid in named if record.labels[rid] == first]
    pool = named or list(record.roi_ids)
    ordinal = _ORDINAL_RE.search(raw)
    if ordinal:
        word = (ordinal.group(1) or ordinal.group(2)).lower()
        ranked = [rid for rid in record.roi_ids if rid in pool]
        if word in ("other", "another", "remaining", "additional"):
            others = [rid for rid in ranked if rid != record.roi_ids[0]]
            # "the other regions" of a listing; a main/largest word in the same clause wins.
            if others and not re.search(r"\b(main|primary|largest|biggest)\b", raw):
                return others, True
            return [record.roi_ids[0]], True
        if word in ("smallest", "smaller"):
            return ranked[-1:], True
        index = _ORDINALS.get(word, 1) - 1
        if index < len(ranked):
            return [ranked[index]], True
    if named:
        return named, True
    if previous and (same_sentence or _CARRY_START.match(clause.raw)):
        return previous, False
    return [record.roi_ids[0]], False


# --- checks ------------------------------------------------------------------------------


def _within(claim: Claim, measured: float, tolerance: float) -> bool:
    """A stated figure agrees with the measured one: within tolerance, or on the stated side of a bound."""
    if claim.value.startswith("<"):
        return measured <= claim.number + tolerance / 2
    if claim.value.startswith(">"):
        return measured >= claim.number - tolerance / 2
    return abs(claim.number - measured) <= tolerance


def _roi_claim(claim: Claim, roi_id: str | None, record: _Record) -> tuple[bool, str]:
    if roi_id is None:
        return False, "no region is annotated in this image"
    label = record.labels.get(roi_id) or roi_id
    attribute = {"side": "image_horizontal", "position": "image_vertical", "size": "size_class"}.get(claim.kind, claim.kind)
    if claim.kind == "size" and claim.unit == "mm":
        fact = record.fact(roi_id, "max_diameter_mm")
        if fact is None or fact.number is None:
            return False, f"no size in mm is known for the {label} region"
        ok = _within(claim, fact.number, max(2.0, 0.25 * fact.number))
        return ok != claim.negated, f"the {label} region measures about {fact.number:.0f} mm"
    if claim.kind == "size" and claim.unit == "%":
        fact = record.fact(roi_id, "area_fraction")
        if fact is None or fact.number is None:
            return False, f"no area is known for the {label} region"
        percent = 100 * fact.number
        ok = _within(claim, percent, max(1.0, 0.25 * percent))
        return ok != claim.negated, f"the {label} region covers {percent:.1f}% of the image"
    if claim.kind == "intensity" and claim.value == "enhancement":
        labels = " ".join(record.findings)
        enhancing = "enhancing" in labels and "non enhancing" not in labels
        if claim.negated:
            return ("non enhancing" in labels or "necrotic" in labels), f"the labels are {', '.join(record.findings) or 'none'}; enhancement is not measured"
        return enhancing, f"the labels are {', '.join(record.findings) or 'none'}; enhancement is not measured"
    fact = record.fact(roi_id, attribute)
    if claim.kind == "colour" and fact is None and claim.value in ACHROMATIC and record.modality not in PHOTO_MODALITIES:
        return True, "a grey-scale image: black/white/grey describe brightness"
    if fact is None:
        return False, f"no {attribute.replace('_', ' ')} fact for the {label} region"
    accepts = claim.accepts or frozenset({claim.value})
    ok = fact.value in accepts
    said = fact.detail if claim.kind == "intensity" and fact.detail else fact.value
    return ok != claim.negated, f"the {label} region's {attribute.replace('image_', 'image ').replace('_', ' ')} is {said}"


def _laterality(claim: Claim, candidates: list[str], record: _Record, view: _PublisherView,
                attributed: bool) -> tuple[bool, str]:
    phrase = _norm(claim.phrase)
    if any(phrase in label for label in record.findings):
        return True, "the source's label names it"
    sides = {record.laterality} if record.laterality else set()
    roi_sides = {side for rid in candidates or [None] for side in record.side_facts(rid)}
    # A region with its own side is checked against it; the notes' sides speak for the notes.
    sides |= roi_sides if roi_sides and not attributed else view.sides | roi_sides
    facts_say = f"the patient side known from geometry/metadata/publisher text is {', '.join(sorted(sides))}" if sides \
        else "no patient-side fact (geometry, declared laterality or publisher text)"
    if not sides:
        return False, facts_say
    if claim.negated:
        return claim.value not in sides, facts_say
    if claim.value == "bilateral":
        return "bilateral" in sides, facts_say
    return (claim.value in sides or "bilateral" in sides), facts_say


def _quadrant(claim: Claim, candidates: list[str], record: _Record, view: _PublisherView) -> tuple[bool, str]:
    key = _quadrant_key(claim.phrase)
    words = key - {"zone", "quadrant"}
    if any(words <= zone for zone in view.zones):
        return not claim.negated, "the publisher's text names it"
    side = next(iter(key & {"left", "right"}), None)
    vertical = next(iter(key & {"upper", "lower", "middle"}), None)
    if side and vertical and record.modality in PROJECTION_MODALITIES:
        for rid in candidates:
            vertical_fact = record.fact(rid, "image_vertical")
            if side in record.side_facts(rid) and vertical_fact is not None and vertical_fact.value == vertical:
                return not claim.negated, "the region's patient side and image position"
    named = [" ".join(sorted(zone)) for zone in view.zones if zone]
    return claim.negated and not named, (
        f"the publisher's text names {'; '.join(named)}" if named
        else "no fact places a region in a quadrant or zone of the patient"
    )


def _count(claim: Claim, candidates: list[str], record: _Record, clause: Clause) -> tuple[bool, str]:
    noun = _norm(claim.unit or "")
    raw = _norm(clause.raw)
    counts: set[int] = set()
    label_hits = [l for l in set(record.labels.values()) if l and (_mentions(noun, l) or _mentions(raw, l))]
    for label in label_hits:
        counts.add(record.label_count(label))
    if not any(_mentions(noun, l) for l in label_hits):
        counts.add(record.annotated)  # a generic noun ("lesions", "regions") counts every annotated ROI
    said = f"{record.annotated} annotated region(s)" + (
        "; " + ", ".join(f"{record.label_count(l)} labelled {l}" for l in sorted(label_hits)) if label_hits else "")
    if claim.negated:
        return True, said
    if claim.value == "many":
        return max(counts, default=0) >= 2, said
    return int(claim.number or 0) in counts, said


def _modality(claim: Claim, record: _Record) -> tuple[bool, str]:
    said = f"the modality is {record.modality}"
    if not record.modality or claim.negated:
        return True, said
    allowed = {record.modality} | COMPATIBLE_MODALITIES.get(record.modality, set())
    return bool(set(claim.accepts or {claim.value}) & allowed), said


def _organ(claim: Claim, record: _Record) -> tuple[bool, str]:
    if claim.negated or not record.organs:
        return True, ""
    regions = set()
    for organ in record.organs:
        if organ in UNBOUNDED_ORGANS:
            return True, ""
        region = ORGAN_WORDS.get(organ)
        if region is None:
            return True, ""  # an organ the table does not place: nothing to compare with
        regions.add(region)
    allowed_regions, allowed_words = set(), set()
    for region in regions:
        near_regions, near_words = REGION_NEIGHBOURS.get(region, ({region}, set()))
        allowed_regions |= near_regions | {region}
        allowed_words |= near_words
    ok = claim.unit in allowed_regions or claim.value in allowed_words
    return ok, f"the record's organs are {', '.join(record.organs)} ({', '.join(sorted(regions))})"


def _finding_present(term: str, entries: set[str], record: _Record, allow_knowledge: bool,
                     view: _PublisherView | None = None) -> bool:
    if entries & record.finding_entries:
        return True
    if view is not None and (entries & view.entries or view.states(term)):
        return True
    if any(_mentions(text, term) for text in record.finding_strings):
        return True
    if any(len(l) > 3 and _mentions(_norm(term), l) for l in record.findings):
        return True
    return allow_knowledge and any(_mentions(k, term) for k in record.knowledge)


def _finding(claim: Claim, record: _Record, clause: Clause, view: _PublisherView) -> tuple[bool, str]:
    present = _finding_present(claim.value, set(claim.accepts), record,
                               bool(_COMPARATIVE_KNOWLEDGE.search(clause.raw)), view)
    said = f"label state {record.state}; findings: {', '.join(dict.fromkeys(record.findings)) or 'none'}"
    if view.stated or view.denied:
        said += f"; publisher notes report {', '.join(dict.fromkeys(view.stated)) or 'nothing'}" + (
            f" and deny {', '.join(dict.fromkeys(view.denied))}" if view.denied else "")
    if claim.negated:
        if view.denies(claim.value):
            return True, said
        return (not present and record.state == "normal"), said
    return present, said


def _malignancy(claim: Claim, record: _Record) -> tuple[bool, str]:
    classes = record.malignancy()
    said = f"findings: {', '.join(dict.fromkeys(record.findings)) or 'none'}"
    if claim.negated:
        return bool(classes) and claim.value not in classes, said
    return claim.value in classes, said


def _lesion(claim: Claim, record: _Record, clause: Clause, view: _PublisherView) -> tuple[bool, str]:
    noun = claim.value
    if claim.negated:
        said = f"{record.annotated} annotated region(s); label state {record.state}"
        if _FURTHER.search(clause.text):
            return record.annotated <= 1, said  # "no other lesion is seen" beside the one annotated
        if record.annotated:
            return False, said
        if view.denies(noun):
            return True, said
        if any(_mentions(text, noun) for text in record.finding_strings) or view.states(noun):
            return False, said
        return record.state == "normal", said
    if record.annotated:
        return True, ""
    stem = _singular(noun)
    ok = any(_mentions(text, stem) or _mentions(text, noun) for text in record.finding_strings) or \
        view.states(stem) or view.states(noun)
    return ok, f"no region is annotated (whole image only); label state {record.state}"


def _record_claim(claim: Claim, candidates: list[str], record: _Record, clause: Clause,
                  view: _PublisherView, attributed: bool = False) -> tuple[bool, str]:
    kind = claim.kind
    if kind == "laterality":
        return _laterality(claim, candidates, record, view, attributed)
    if kind == "quadrant":
        return _quadrant(claim, candidates, record, view)
    if kind == "count":
        return _count(claim, candidates, record, clause)
    if kind == "modality":
        return _modality(claim, record)
    if kind == "organ":
        return _organ(claim, record)
    if kind == "finding":
        return _finding(claim, record, clause, view)
    if kind == "malignancy":
        return _malignancy(claim, record)
    if kind == "normal":
        return record.state == "normal", f"label state {record.state}"
    if kind == "annotation":
        if _FURTHER.search(clause.text):
            return record.annotated <= 1, f"{record.annotated} annotated region(s)"
        return record.annotated == 0, f"{record.annotated} annotated region(s)"
    if kind == "lesion":
        return _lesion(claim, record, clause, view)
    return True, ""


def _flag_type(claim: Claim) -> str:
    if claim.negated and claim.kind not in ("laterality",):
        return "negation"
    return {"lesion": "lesion_on_whole_image", "malignancy": "finding", "annotation": "finding"}.get(claim.kind, claim.kind)


def _count_nouns(record: _Record) -> set[str]:
    nouns = set()
    for label in record.labels.values():
        last = label.split()[-1] if label else ""
        if len(last) > 2:
            nouns |= {last, last + "s", last + "es", (last[:-2] + "i") if last.endswith("us") else last + "s"}
    return nouns


def verify_claims(description: str, facts: FactSet, *, vocabulary: FindingVocabulary | None = None) -> list[Verdict]:
    """Every claim of the description with its verdict (the bench reads these)."""
    vocabulary = vocabulary or default_vocabulary()
    record = _Record(facts, vocabulary)
    nouns = _count_nouns(record)
    verdicts: list[Verdict] = []
    previous: list[str] | None = None
    last_sentence = -1
    clauses = read_clauses(description)
    attributed = {c.sentence for c in clauses if _ATTRIBUTED.search(c.raw)}
    by_sentence: dict[int, str] = {}
    for c in clauses:
        by_sentence[c.sentence] = by_sentence.get(c.sentence, "") + " " + c.raw
    hedged = {n for n, text in by_sentence.items() if _MODEL_ATTRIBUTION.search(text) and _MODEL_POSSIBILITY.search(text)}
    for clause in clauses:
        if clause.background:
            continue
        view = record.publisher[clause.sentence in attributed]
        general = bool(_HEDGE.search(clause.raw)) and not _THIS_IMAGE.search(clause.raw)
        candidates, _ = _bind(clause, record, previous, clause.sentence == last_sentence)
        previous, last_sentence = candidates or previous, clause.sentence
        claims = extract_claims(clause, vocabulary, nouns)
        roi_claims, other_claims = [], []
        if general:
            # Only what the sentence says exists (a finding) is checked in a general statement.
            claims = [c for c in claims if c.kind in ("finding", "malignancy")]
        for claim in claims:
            if _in_publisher_text(claim, view, clause.sentence in attributed, not record.annotated):
                verdicts.append(Verdict(claim, True, _flag_type(claim), "the publisher's text says so"))
                continue
            (roi_claims if claim.kind in ROI_CLAIMS else other_claims).append(claim)
        if roi_claims:
            # One ROI of the candidates must support every region claim of the clause together.
            best: list[Verdict] | None = None
            for rid in candidates or [None]:
                results = []
                for claim in roi_claims:
                    ok, said = _roi_claim(claim, rid, record)
                    kind = _flag_type(claim) if rid is not None else (
                        "negation" if claim.negated else claim.kind)
                    results.append(Verdict(claim, ok, kind, said, rid))
                if best is None or sum(not v.supported for v in results) < sum(not v.supported for v in best):
                    best = results
            verdicts.extend(best or [])
        for claim in other_claims:
            ok, said = _record_claim(claim, candidates, record, clause, view, clause.sentence in attributed)
            kind = _flag_type(claim)
            if not ok and not claim.negated and claim.kind in ("finding", "lesion") and record.model_rois:
                marks = record.model_marks(claim)
                if marks and clause.sentence in hedged:
                    ok, said = True, record.model_words(marks).replace("only ", "", 1) + ", stated as the model's"
                elif marks:
                    # "There is a polyp" where only a model marks one: a model's output stated as fact.
                    kind, said = "model_as_finding", record.model_words(marks) + "; say it is the model's possible finding"
            verdicts.append(Verdict(claim, ok, kind, said))
    return verdicts


def verify(description: str, facts, rois=None, spec=None, *, vocabulary: FindingVocabulary | None = None) -> list[str]:
    """One flag per unsupported claim (empty: verified).

    ``facts`` is the record's FactSet. The old call shape ``verify(text, record, rois, spec)``
    still works: the facts are then built from those rows by the fact builder."""
    if not isinstance(facts, FactSet):
        from medtrinity_assets.generation.fact_builder import build_facts

        facts = build_facts(facts, list(rois or []), spec)
    return list(dict.fromkeys(v.flag for v in verify_claims(description, facts, vocabulary=vocabulary) if not v.supported))
