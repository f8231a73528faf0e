"""Finding statements read out of de-identified publisher text (clinical notes, reports, captions).

Publisher text carries what the measured attributes cannot: "consolidation along the left costal
margin", "a discrete rounded opacity in the right lower zone". ``publisher_findings`` turns such
text into statements the grounded writer can render (provenance ``publisher_text``) and the
verifier can check sentences against:

    {"sentence": "...", "terms": ["consolidation"], "sides": ["left"], "zones": ["costal margin"],
     "negated": False, "uncertain": False, "modalities": []}

``modalities`` names the imaging the statement is about when the text says so ("were observed on
high-resolution computed tomography", "Chest X-ray showed"), carried to the following sentences
of the same text until another is named. Publisher notes are often per case, not per image
(covid-chestxray gives every image of a patient the same note, CT findings included): a writer
must not state a CT finding as seen on the radiograph it describes.

One statement per group of finding terms that share a location: "small consolidation in right
upper lobe and ground-glass opacities in both lower lobes" gives two (right / upper lobe;
bilateral / lower lobe), while "GGOs with superimposed reticulation and fibrotic change at
bilateral lungs" gives one. A location word before the first term, or directly before a later
one ("and left basal atelectasis"), belongs to that term; one after a term belongs to it.
Negation ("no clear consolidation seen", "effusion is absent") runs from its cue to the end of the
clause (";", "but", a comma that does not continue a list). Hedges ("probably", "may represent")
mark the statement ``uncertain``. Sentences without a finding term (symptoms, history) give none.

Plain rules over a closed vocabulary, no model: what it cannot read it leaves out.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass

from medtrinity_assets.generation.facts import Fact
from medtrinity_assets.vocabulary import COMPATIBLE_MODALITIES, MODALITY_TERMS

# Finding terms: (pattern, normalized term). Longer phrases first, so "ground-glass opacities"
# is one term and not "opacity".
TERMS: list[tuple[str, str]] = [
    (r"ground[- ]glass(?:\s+(?:opacit(?:y|ies)|opacifications?|attenuation|densit(?:y|ies)|changes?))?|GGOs?", "ground-glass opacity"),
    (r"crazy[- ]paving", "crazy paving"),
    (r"air[- ]?bronchograms?", "air bronchogram"),
    (r"(?:coarsening of (?:the )?)?(?:lung|interstitial|bronchovascular) markings", "increased lung markings"),
    (r"pleural effusions?|effusions?", "pleural effusion"),
    (r"pleural thickening", "pleural thickening"),
    (r"pneumothora(?:x|ces)", "pneumothorax"),
    (r"consolidat(?:ion|ions|ed|ive changes?)", "consolidation"),
    (r"opacit(?:y|ies)|opacifications?|densit(?:y|ies)", "opacity"),
    (r"infiltrat(?:e|es|ion|ions)", "infiltrate"),
    (r"atelecta(?:sis|ses|tic(?: changes?)?)|collapse", "atelectasis"),
    (r"nodul(?:e|es|ar opacit(?:y|ies))", "nodule"),
    (r"mass(?:es)?", "mass"),
    (r"cardiomegaly|enlarged (?:cardiac silhouette|heart)|cardiac enlargement", "cardiomegaly"),
    (r"o?edema", "edema"),
    (r"fibros(?:is|es)|fibrotic (?:changes?|bands?|strands?)", "fibrosis"),
    (r"reticulation|reticular (?:pattern|opacit(?:y|ies)|changes?)", "reticulation"),
    (r"emphysema(?:tous changes?)?", "emphysema"),
    (r"bronchiectasis", "bronchiectasis"),
    (r"cavit(?:y|ies|ation|ary lesions?)", "cavity"),
    (r"calcifi(?:cation|cations|ed granulomas?|ed nodules?)|granulomas?", "calcification"),
    (r"lymphadenopathy|enlarged lymph nodes?", "lymphadenopathy"),
    (r"fractures?", "fracture"),
    (r"hernia(?:tion)?", "hernia"),
    (r"pneumonias?", "pneumonia"),
    (r"ARDS|acute respiratory distress syndrome", "acute respiratory distress syndrome"),
    (r"abscess(?:es)?", "abscess"),
    (r"tumou?rs?|neoplasms?|malignanc(?:y|ies)", "tumour"),
    (r"lesions?", "lesion"),
    (r"cysts?", "cyst"),
    (r"scarring|scars?", "scarring"),
]
TERM_RE = re.compile("|".join(f"(?P<t{i}>\\b(?:{p})\\b)" for i, (p, _) in enumerate(TERMS)), re.IGNORECASE)

# Location words: (pattern, kind, value). Lobe abbreviations carry a side and a zone.
LOCATIONS: list[tuple[str, str, str]] = [
    (r"RUL", "lobe", "right|upper lobe"), (r"RML", "lobe", "right|middle lobe"), (r"RLL", "lobe", "right|lower lobe"),
    (r"LUL", "lobe", "left|upper lobe"), (r"LLL", "lobe", "left|lower lobe"),
    (r"R\s*>\s*L|L\s*>\s*R", "side", "bilateral"),
    # "both" only before lungs, lobes, zones or sides: "seen on both PA and lateral views" is no side.
    (r"bilateral(?:ly)?|both(?=(?:\s+\w+){0,2}\s+(?:lungs?|lobes|zones|fields|bases|apices|sides|hemithoraces|hila))",
     "side", "bilateral"),
    # "upper and lower lobes": every lobe named.
    (r"(?:upper|middle|lower)(?:\s*(?:,|and|or)\s*(?:(?:right|left)\s+)?(?:upper|middle|lower))+\s+lobes?", "lobes", ""),
    (r"left", "side", "left"), (r"right", "side", "right"),
    (r"lingula(?:r)?", "lobe", "left|lingula"),
    (r"upper lobes?", "zone", "upper lobe"), (r"middle lobe", "zone", "middle lobe"), (r"lower lobes?", "zone", "lower lobe"),
    (r"biapical", "lobe", "bilateral|upper zone"),
    (r"bibasal|bibasilar", "lobe", "bilateral|lower zone"),
    (r"upper (?:zones?|fields?|lungs?|hemithorax)|apical|apex|apices", "zone", "upper zone"),
    (r"mid(?:dle)?[- ]?(?:zones?|fields?|lungs?)", "zone", "middle zone"),
    (r"lower (?:zones?|fields?|lungs?|hemithorax)|basal|bases?|basilar", "zone", "lower zone"),
    (r"perihilar|parahilar|hilar|hila|hilum", "zone", "perihilar"),
    (r"peripheral(?:ly)?|periphery", "zone", "peripheral"),
    (r"subpleural", "zone", "subpleural"),
    (r"central(?:ly)?", "zone", "central"),
    (r"costal margin", "zone", "costal margin"),
    (r"costophrenic(?: (?:angles?|recess(?:es)?|sulc(?:us|i)))?", "zone", "costophrenic angle"),
    (r"retrocardiac", "zone", "retrocardiac"),
    (r"paratracheal", "zone", "paratracheal"),
    (r"mediastin(?:um|al)", "zone", "mediastinal"),
]
LOCATION_RE = re.compile("|".join(f"(?P<l{i}>\\b(?:{p})\\b)" for i, (p, _, _) in enumerate(LOCATIONS)))
LOCATION_RE_CI = re.compile(
    "|".join(f"(?P<l{i}>\\b(?:{p})\\b)" for i, (p, _, _) in enumerate(LOCATIONS)), re.IGNORECASE
)
ABBREVIATIONS = {0, 1, 2, 3, 4, 5}  # RUL..LLL and R>L match in capitals only

# Words that may stand between a location and the term it modifies ("left basal patchy atelectasis").
MODIFIERS = re.compile(
    r"^(?:\s|,|-sided\b|\b(?:a|an|the|definite|no|of|small|large|tiny|patchy|mild|moderate|severe|multifocal|focal|diffuse|"
    r"ill-defined|well-defined|discrete|rounded|round|irregular|dense|faint|subtle|new|persistent|"
    r"extensive|minimal|prominent|confluent|areas?|regions?|zones?|lung|lungs|sided|side|segmental|"
    r"multiple|scattered|linear|nodular|vertical|air[- ]space|airspace|lobar|lobe|\w+-sided)\b)*$",
    re.IGNORECASE,
)

NEGATION_CUE = re.compile(
    r"\b(?:no|not|without|negative for|free of|absence of|nor|clear of|resolution of)\b", re.IGNORECASE
)
NOT_NEGATION = re.compile(r"\bwith or without\b|\bnot only\b", re.IGNORECASE)
POST_NEGATION = re.compile(
    r"^[^.;]{0,40}?\b(?:is|are|was|were|has|have)\s+(?:now\s+)?(?:absent|not (?:seen|identified|present|visible|appreciated|demonstrated|evident)|"
    r"excluded|resolved|cleared)\b|^[^.;]{0,40}?\bno longer (?:seen|visible|present|identified)\b",
    re.IGNORECASE,
)
HEDGE = re.compile(
    r"\b(?:probabl[ey]|possibl[ey]|may (?:be|represent)|might|could (?:be|represent)|suspect(?:ed)?|"
    r"suspicious for|suggest(?:s|ive of|ing)?|likely|questionable|cannot be excluded|equivocal)\b",
    re.IGNORECASE,
)
CLAUSE_BREAK = re.compile(r";|\bbut\b|,\s*(?:however|although|though|whereas)\b|\.\s", re.IGNORECASE)
SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(\[])|\n+")


@dataclass(frozen=True)
class FindingStatement:
    sentence: str
    terms: tuple[str, ...]
    sides: tuple[str, ...]
    zones: tuple[str, ...]
    negated: bool
    uncertain: bool
    modalities: tuple[str, ...] = ()

    def as_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in SENTENCE_BREAK.split(text or "") if s.strip()]


def _terms(clause: str) -> list[tuple[int, int, str]]:
    found = []
    for match in TERM_RE.finditer(clause):
        index = int(match.lastgroup[1:])
        found.append((match.start(), match.end(), TERMS[index][1]))
    return found


def _locations(clause: str) -> list[tuple[int, int, list[tuple[str, str]]]]:
    """(start, end, [(kind, value)]) of each location word; lobe abbreviations only in capitals."""
    found = []
    for match in LOCATION_RE_CI.finditer(clause):
        index = int(match.lastgroup[1:])
        if index in ABBREVIATIONS and not LOCATION_RE.fullmatch(match.group()):
            continue
        _, kind, value = LOCATIONS[index]
        if kind == "lobes":
            levels = re.findall(r"upper|middle|lower", match.group(), re.IGNORECASE)
            found.append((match.start(), match.end(), [("zone", f"{level.lower()} lobe") for level in levels]))
        elif kind == "lobe":
            side, zone = value.split("|")
            found.append((match.start(), match.end(), [("side", side), ("zone", zone)]))
        else:
            found.append((match.start(), match.end(), [(kind, value)]))
    return found


def _negation_scopes(clause: str) -> list[tuple[int, int]]:
    """Character ranges of the clause a negation cue governs: to a comma that starts something
    else than a continued list ("no effusion, pneumothorax or consolidation" stays negated)."""
    masked = NOT_NEGATION.sub(lambda m: " " * len(m.group()), clause)
    scopes = []
    for cue in NEGATION_CUE.finditer(masked):
        end = len(clause)
        for comma in re.finditer(r",", clause[cue.end():]):
            after = clause[cue.end() + comma.end():]
            next_term = TERM_RE.search(after)
            lead = after[: next_term.start()] if next_term else after
            # A list goes on through "or", "and" and modifiers ("no disease, large effusions or
            # edema"); a location or other words start a new, positive statement.
            if not (MODIFIERS.match(re.sub(r"\b(?:or|and|nor|acute|focal|significant|definite|evidence of)\b", " ", lead))
                    and not _locations(lead)):
                end = cue.end() + comma.start()
                break
        scopes.append((cue.start(), end))
    return scopes


def _clause_statements(sentence: str, clause: str) -> list[FindingStatement]:
    terms = _terms(clause)
    if not terms:
        return []
    locations = _locations(clause)
    # Groups of terms sharing a location: a new group starts after a comma / "including", or
    # when a location stands between two terms.
    groups: list[dict] = [{"terms": [terms[0]], "locs": []}]
    for (_, end_a, _), term_b in zip(terms, terms[1:]):
        start_b = term_b[0]
        between = clause[end_a:start_b]
        inner = [loc for loc in locations if end_a <= loc[0] and loc[1] <= start_b]
        negation_between = NEGATION_CUE.search(NOT_NEGATION.sub(" ", between))
        if not inner and not negation_between and not re.search(r",|\bincluding\b|\bwith\b(?! or without)", between):
            groups[-1]["terms"].append(term_b)
            continue
        # Location words directly before term_b (only modifiers between) modify it.
        cut = start_b
        for loc in reversed(inner):
            if MODIFIERS.match(clause[loc[1]:cut]) or not clause[loc[1]:cut].strip():
                cut = loc[0]
            else:
                break
        groups[-1]["locs"] += [loc for loc in inner if loc[1] <= cut]
        groups.append({"terms": [term_b], "locs": [loc for loc in inner if loc[0] >= cut]})
    groups[0]["locs"] += [loc for loc in locations if loc[1] <= terms[0][0]]
    groups[-1]["locs"] += [loc for loc in locations if loc[0] >= terms[-1][1]]

    scopes = _negation_scopes(clause)
    hedged = bool(HEDGE.search(clause))
    statements = []
    for group in groups:
        first = group["terms"][0][0]
        last_end = group["terms"][-1][1]
        negated = any(start <= first < end for start, end in scopes) or bool(POST_NEGATION.match(clause[last_end:]))
        sides = list(dict.fromkeys(v for loc in group["locs"] for k, v in loc[2] if k == "side"))
        if "bilateral" in sides:
            sides = ["bilateral"]
        elif {"left", "right"} <= set(sides):
            sides = ["bilateral"]
        zones = list(dict.fromkeys(v for loc in sorted(group["locs"]) for k, v in loc[2] if k == "zone"))
        statements.append(
            FindingStatement(
                sentence=sentence,
                terms=tuple(dict.fromkeys(t for _, _, t in group["terms"])),
                sides=tuple(sides),
                zones=tuple(zones),
                negated=negated,
                uncertain=hedged,
            )
        )
    return statements


def named_modalities(sentence: str) -> tuple[str, ...]:
    """Catalog modality codes a sentence names (the verifier's own modality words)."""
    found = []
    for code, patterns in MODALITY_TERMS.items():
        for pattern, case_sensitive in patterns:
            if re.search(pattern, sentence, 0 if case_sensitive else re.IGNORECASE):
                found.append(code)
                break
    return tuple(found)


def publisher_findings(text: str | None) -> list[dict]:
    """Finding statements of de-identified publisher text, in text order (see module doc)."""
    statements: list[dict] = []
    modalities: tuple[str, ...] = ()
    for sentence in split_sentences(text or ""):
        modalities = named_modalities(sentence) or modalities
        for clause in CLAUSE_BREAK.split(sentence):
            statements += [{**s.as_dict(), "modalities": list(modalities)} for s in _clause_statements(sentence, clause)]
    return statements


def source_text_findings(source_text: str | None) -> list[dict]:
    """Finding statements of a record's ``source_text`` JSON: its notes, reports and captions."""
    if not source_text:
        return []
    try:
        data = json.loads(source_text)
    except json.JSONDecodeError:
        return []
    texts = [t for key in ("notes", "reports", "captions") for t in data.get(key, []) if isinstance(t, str)]
    return [statement for text in texts for statement in publisher_findings(text)]


def publisher_text_facts(record: dict) -> list[Fact]:
    """Facts of one RAW_RECORDS row from its publisher text and metadata columns:

    - one ``publisher_text`` fact per finding statement, value = the de-identified sentence,
      ``detail`` = the statement as JSON (terms, sides, zones, negated, uncertain, modalities);
      confidence 0.5 when hedged. Statements about another imaging modality than the record's
      (the CT findings of a note that rides on a radiograph) are left out;
    - ``view``, ``sex`` and ``age_band`` facts (provenance ``metadata``) where the row has them.

    The facts stage calls this beside the other fact builders; writers render these facts and
    the verifier reads claims against them.
    """
    record_id, modality = record["record_id"], record.get("modality")
    fitting = {modality, *COMPATIBLE_MODALITIES.get(modality, set())} if modality else set()
    facts = []
    seen: set[tuple[str, str]] = set()
    for statement in source_text_findings(record.get("source_text")):
        if statement["modalities"] and modality and not fitting & set(statement["modalities"]):
            continue
        detail = json.dumps({k: v for k, v in statement.items() if k != "sentence"}, sort_keys=True)
        if (statement["sentence"], detail) in seen:
            continue
        seen.add((statement["sentence"], detail))
        facts.append(Fact(record_id, None, "publisher_text", statement["sentence"], "publisher_text",
                          confidence=0.5 if statement["uncertain"] else 1.0, detail=detail))
    for attribute in ("view", "sex", "age_band"):
        if record.get(attribute):
            facts.append(Fact(record_id, None, attribute, record[attribute], "metadata"))
    return facts
