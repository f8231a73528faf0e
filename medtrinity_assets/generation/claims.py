"""Read a written description back into claims: the verifier's reading half.

A writer (the grounded writer, or a language model) says things in its own words. This module
splits the text into sentences and clauses and finds, in each, the statements the facts can
confirm or refute: where in the image, which side of the patient, which quadrant or zone, how
big, how many, what shape, margin, intensity and texture, which modality, organ and finding,
and whether the image is called normal. Each claim keeps the words it came from, whether it is
negated, and what it refers to (a label named in the clause, an ordinal or size word, "it"),
so the verifier can check it against the facts of the ROI it speaks of.

Nothing here knows how the grounded writer phrases things; the word tables are the medical
vocabulary (and the knowledge corpus's finding names), not the writer's templates.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from medtrinity_assets.vocabulary import normalize_label

# --- word tables -------------------------------------------------------------------------

NUMBER_WORDS = {
    "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
    "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "a pair of": 2, "a couple of": 2,
    "both": 2,
}
MANY_WORDS = ("multiple", "several", "numerous", "many", "various", "multifocal")
SINGLE_WORDS = ("a single", "one single", "a solitary", "solitary", "the only", "only one", "a lone", "a unique", "unifocal")

# Nouns a writer uses for the thing an ROI outlines. Region/area words count ROIs but do not on
# their own assert a lesion (the whole image is "the region of interest" of an unannotated row).
LESION_NOUNS = (
    "lesion", "lesions", "mass", "masses", "tumour", "tumours", "tumor", "tumors", "nodule", "nodules",
    "cyst", "cysts", "polyp", "polyps", "opacity", "opacities", "abnormality", "abnormalities",
    "growth", "growths", "focus", "foci", "neoplasm", "neoplasms", "fluid collection", "fluid collections",
)
REGION_NOUNS = ("region", "regions", "area", "areas", "roi", "rois", "structure", "structures", "object", "objects",
                "spot", "spots", "blob", "blobs", "instance", "instances", "finding", "findings", "nucleus", "nuclei",
                "cell", "cells")

SIZE_WORDS = {
    "tiny": {"small"}, "small": {"small"}, "little": {"small"}, "minute": {"small"}, "subcentimetre": {"small"},
    "medium": {"medium"}, "medium-sized": {"medium"}, "medium sized": {"medium"}, "moderate-sized": {"medium"},
    "moderately sized": {"medium"}, "intermediate-sized": {"medium"},
    "large": {"large"}, "big": {"large"}, "huge": {"large"}, "sizeable": {"large"}, "sizable": {"large"},
    "bulky": {"large"}, "extensive": {"large"}, "massive": {"large"},
}
SHAPE_WORDS = {
    "round": {"round"}, "circular": {"round"}, "spherical": {"round"}, "rounded": {"round", "oval"},
    "oval": {"oval"}, "ovoid": {"oval"}, "elliptical": {"oval"}, "ellipsoid": {"oval"}, "egg-shaped": {"oval"},
    "elongated": {"elongated"}, "tubular": {"elongated"}, "linear": {"elongated"}, "band-like": {"elongated"},
    "irregular": {"irregular"}, "irregularly shaped": {"irregular"}, "lobulated": {"irregular"},
    "polylobulated": {"irregular"}, "multilobulated": {"irregular"}, "angular": {"irregular"},
}
MARGIN_WORDS = {
    "well-defined": {"well-defined"}, "well defined": {"well-defined"}, "well-circumscribed": {"well-defined"},
    "circumscribed": {"well-defined"}, "sharply defined": {"well-defined"}, "sharply demarcated": {"well-defined"},
    "well-demarcated": {"well-defined"}, "well demarcated": {"well-defined"}, "sharp margins": {"well-defined"},
    "sharp margin": {"well-defined"}, "smooth margins": {"well-defined"}, "smooth margin": {"well-defined"},
    "clear margins": {"well-defined"}, "clear margin": {"well-defined"}, "distinct margins": {"well-defined"},
    "ill-defined": {"ill-defined"}, "ill defined": {"ill-defined"}, "poorly defined": {"ill-defined"},
    "poorly circumscribed": {"ill-defined"}, "indistinct": {"ill-defined"}, "blurred": {"ill-defined"},
    "fuzzy": {"ill-defined"}, "spiculated": {"ill-defined"}, "infiltrative": {"ill-defined"},
    "microlobulated": {"ill-defined"}, "obscured margins": {"ill-defined"}, "irregular margins": {"ill-defined"},
    "irregular margin": {"ill-defined"}, "poorly marginated": {"ill-defined"},
}
# Intensity against the surrounding tissue, in each modality's own words.
INTENSITY_WORDS = {
    "lower": (
        "hypoechoic", "hypoechogenic", "anechoic", "hypodense", "hypointense", "hypoattenuating",
        "low-attenuation", "low attenuation", "low-density", "low density", "low signal", "low-signal",
        "radiolucent", "lucent", "more lucent", "hypometabolic", "photopenic", "darker", "hypopigmented",
        "decreased uptake", "reduced uptake", "decreased echogenicity", "reduced echogenicity",
        "lower echogenicity", "decreased density", "lower density", "decreased attenuation",
        "reduced attenuation", "lower attenuation", "decreased signal", "reduced signal", "lower signal",
    ),
    "higher": (
        "hyperechoic", "hyperechogenic", "echogenic", "hyperdense", "hyperintense", "hyperattenuating",
        "high-attenuation", "high attenuation", "high-density", "high density", "high signal", "high-signal",
        "radiopaque", "radiodense", "sclerotic", "hypermetabolic", "fdg-avid", "brighter", "hyperpigmented",
        "increased uptake", "increased tracer uptake", "more opaque", "radio-opaque",
        "increased echogenicity", "higher echogenicity", "increased density", "higher density",
        "increased attenuation", "higher attenuation", "increased signal", "higher signal",
    ),
    "similar": (
        "isoechoic", "isoechogenic", "isodense", "isointense", "isoattenuating", "iso-attenuating",
        "similar intensity", "similar density", "similar echogenicity", "same intensity", "similar brightness",
        "similar uptake",
    ),
}
TEXTURE_WORDS = {
    "homogeneous": {"homogeneous"}, "homogenous": {"homogeneous"}, "uniform": {"homogeneous"},
    "heterogeneous": {"heterogeneous"}, "heterogenous": {"heterogeneous"}, "inhomogeneous": {"heterogeneous"},
    "mottled": {"heterogeneous"}, "non-uniform": {"heterogeneous"},
}

# Colour words -> the measured colour names (grounding.attributes palette) they agree with.
COLOUR_WORDS = {
    "red": {"red", "pink"}, "reddish": {"red", "pink"}, "pink": {"pink", "red"}, "pinkish": {"pink", "red"},
    "brown": {"brown", "dark brown"}, "brownish": {"brown", "dark brown"}, "light brown": {"brown"}, "tan": {"brown"},
    "dark brown": {"dark brown", "brown", "black"}, "black": {"black", "dark brown"}, "blackish": {"black", "dark brown"},
    "purple": {"purple", "blue"}, "violet": {"purple", "blue"}, "purplish": {"purple", "blue"},
    "blue": {"blue", "purple"}, "bluish": {"blue", "purple"}, "white": {"white"}, "whitish": {"white"},
    "yellow": {"yellow", "orange"}, "yellowish": {"yellow", "orange"}, "orange": {"orange", "yellow", "red"},
    "grey": {"grey"}, "gray": {"grey"}, "greyish": {"grey"},
}
# Brightness, not hue, on a grey-scale image ("a white opacity" on a radiograph).
ACHROMATIC = {"black", "blackish", "white", "whitish", "grey", "gray", "greyish"}

# Modality words: (regex, case-sensitive). Acronyms are case-sensitive so "ct" inside a word or
# "pet" the animal never count.
MODALITY_PATTERNS: dict[str, tuple[tuple[str, bool], ...]] = {
    "ct": ((r"\bCT\b", True), (r"\bcomputed tomograph\w*", False), (r"\bCAT scan", True)),
    "mri": ((r"\bMRI?\b", True), (r"\bmagnetic resonance\b", False)),
    "xray": ((r"\bx-?rays?\b", False), (r"\bradiograph\w*", False), (r"\bCXR\b", True)),
    "ultrasound": ((r"\bultrasound\w*", False), (r"\bsonograph\w*", False), (r"\bultrasonograph\w*", False),
                   (r"\bsonogram\w*", False), (r"\bechocardiogra\w*", False), (r"\bUS\b(?= image| scan)", True)),
    "dermoscopy": ((r"\bdermoscop\w*", False), (r"\bdermatoscop\w*", False)),
    "endoscopy": ((r"\bendoscop\w*", False), (r"\bcolonoscop\w*", False), (r"\bgastroscop\w*", False)),
    "fundus": ((r"\bfundus (?:photo\w*|image|camera)", False), (r"\bfundoscop\w*", False), (r"\bophthalmoscop\w*", False)),
    "histopathology": ((r"\bhistopatholog\w*", False), (r"\bhistolog\w*", False), (r"\bH&E\b", True),
                       (r"\bwhole[- ]slide image", False)),
    "microscopy": ((r"\bfluorescence microscop\w*", False), (r"\bmicroscop\w*", False)),
    "pet": ((r"\bPET\b", True), (r"\bpositron emission\b", False)),
    "mammography": ((r"\bmammogra\w*", False),),
    "nuclear_medicine": ((r"\bscintigra\w*", False), (r"\bnuclear medicine\b", False), (r"\bbone scan\w*", False),
                         (r"\bSPECT\b", True), (r"\bgamma camera\b", False)),
}
# Hybrid scanners: named as one device, true when one part is the record's modality.
HYBRID_MODALITY = re.compile(r"\b(?:FDG[- ])?(?:PET|SPECT)\s*[/-]\s*(?:CT|MRI?)\b")
HYBRID_PARTS = {"PET": "pet", "SPECT": "nuclear_medicine", "CT": "ct", "MR": "mri", "MRI": "mri"}

# Organ and body-part words -> body region (coarse on purpose).
ORGAN_WORDS: dict[str, str] = {}
for _region, _words in {
    "head": ("brain", "head", "skull", "scalp", "cerebral", "cerebrum", "cerebellum", "cerebellar", "grey matter",
             "gray matter", "white matter", "hippocampus", "hippocampal", "frontal lobe", "temporal lobe",
             "parietal lobe", "occipital lobe", "brainstem", "brain stem", "neck", "thyroid", "oropharynx",
             "larynx", "pharynx", "parotid", "face", "orbit", "sinus", "sinuses", "head and neck"),
    "eye": ("eye", "retina", "retinal", "optic disc", "optic disk", "macula", "fovea", "choroid", "optic nerve"),
    "chest": ("lung", "lungs", "chest", "thorax", "thoracic", "pleura", "pleural", "heart", "cardiac", "mediastinum",
              "mediastinal", "diaphragm", "hemidiaphragm", "trachea", "bronchus", "bronchi", "hilum", "hila",
              "hemithorax", "pulmonary", "myocardium", "myocardial", "atrium", "ventricle", "costophrenic"),
    "breast": ("breast", "breasts", "nipple", "axilla", "axillary", "pectoral muscle", "pectoralis", "chest wall"),
    "abdomen": ("liver", "hepatic", "pancreas", "pancreatic", "kidney", "kidneys", "renal", "spleen", "splenic",
                "abdomen", "abdominal", "stomach", "gastric", "colon", "colonic", "bowel", "rectum", "rectal",
                "duodenum", "gallbladder", "adrenal", "bladder", "pelvis", "pelvic", "prostate", "uterus",
                "ovary", "esophagus", "oesophagus", "intestine", "intestinal", "cecum", "caecum", "ileum", "mucosa",
                "colorectal", "upper abdomen"),
    "skin": ("skin", "epidermis", "dermis", "hair", "hairs", "cutaneous"),
    "limb": ("shoulder", "knee", "thigh", "thighs", "arm", "leg", "legs", "extremity", "extremities", "soft tissue",
             "soft tissues", "muscle", "muscles", "hand", "foot", "elbow", "wrist", "ankle", "hip", "forearm", "calf"),
    "skeleton": ("bone", "bones", "skeleton", "skeletal", "spine", "spinal", "vertebra", "vertebrae", "vertebral",
                 "rib", "ribs", "clavicle", "clavicles", "femur", "humerus", "tibia", "sternum", "scapula"),
}.items():
    for _word in _words:
        ORGAN_WORDS[_word] = _region

# What a record's organs may truthfully be seen next to: regions, and single words of other
# regions that lie in the same field of view (skin over a breast, spine on a chest X-ray).
REGION_NEIGHBOURS: dict[str, tuple[set[str], set[str]]] = {
    "breast": ({"breast", "skin"}, {"rib", "ribs", "muscle", "muscles", "pleura", "pleural", "lung", "soft tissue",
                                   "soft tissues", "chest", "thorax", "thoracic", "pectoral muscle", "chest wall"}),
    "chest": ({"chest", "skeleton", "breast"}, {"stomach", "gastric", "liver", "upper abdomen", "neck", "shoulder",
                                              "soft tissue", "soft tissues", "skin", "muscle", "muscles", "abdomen"}),
    "head": ({"head", "eye", "skeleton", "skin"}, {"soft tissue", "soft tissues", "muscle", "muscles"}),
    "eye": ({"eye"}, {"head"}),
    "abdomen": ({"abdomen", "skeleton", "skin"}, {"lung", "lungs", "pleura", "pleural", "diaphragm", "hemidiaphragm",
                                                "heart", "soft tissue", "soft tissues", "muscle", "muscles", "chest wall"}),
    "skin": ({"skin"}, set()),
    "limb": ({"limb", "skeleton", "skin"}, set()),
    "skeleton": ({"skeleton", "limb", "chest", "abdomen", "head"}, {"soft tissue", "soft tissues", "muscle"}),
}
# Record organs that may show anything (whole body) or any tissue (cells, nuclei).
UNBOUNDED_ORGANS = {"whole body", "body", "cell", "cells", "nuclei", "nucleus", "cell nuclei", "tissue",
                    "various tissues", "lymph node"}

# Body parts that come in a left and a right (or that a side word qualifies).
PAIRED_PARTS = (
    "breast", "lung", "kidney", "thigh", "leg", "arm", "hand", "foot", "knee", "hip", "shoulder", "eye", "ear",
    "ovary", "adrenal", "adrenal gland", "lobe", "hemithorax", "hemidiaphragm", "hemisphere", "flank", "chest",
    "axilla", "apex", "base", "costophrenic angle", "costal margin", "hilum", "clavicle", "rib", "ribs", "femur",
    "tibia", "humerus", "parotid", "testis", "side", "lung field", "lung base", "lung apex", "upper lobe",
    "lower lobe", "middle lobe", "frontal lobe", "temporal lobe", "parietal lobe", "occipital lobe", "thalamus",
    "basal ganglia", "orbit", "maxillary sinus", "neck", "groin", "buttock", "calf", "forearm", "wrist", "elbow",
    "ankle", "retina", "fundus", "cerebral hemisphere", "pleural space", "heart border", "kidneys",
)
# Anatomy names that contain a side word but say nothing about the patient's side.
SIDE_IN_NAME = re.compile(
    r"\b(?:left|right)\s+(?:ventric\w*|atri\w*|heart\b|coronary|main\s+(?:bronchus|coronary)|anterior descending|"
    r"bundle branch|colic flexure|lobe of the liver\b(?!\s+of))",
    re.I,
)

NEGATORS = re.compile(
    r"\b(?:no|not|without|absent|neither|nor|free of|lacks?|lacking|never|none|cannot|rather than|instead of|"
    r"isn't|aren't|wasn't|weren't|doesn't|don't|no evidence of|negative for|rules? out|ruled out)\b|n't\b",
    re.I,
)
POST_NEGATION = re.compile(
    r"^[\w\s,'-]{0,40}?\b(?:is|are|was|were)\s+(?:not\s+(?:seen|present|identified|visible|detected|evident|"
    r"demonstrated|noted|observed|shown|appreciated)|absent|excluded)\b",
    re.I,
)
# A clause about what the source annotated or labelled, not about the patient.
ANNOTATION_META = re.compile(
    r"\b(?:annotat\w*|label\w*|segment\w*|outlined|marked|delineated|stated|given by the source|"
    r"source (?:gives|names|provides)|region of interest)\b",
    re.I,
)
NORMAL_PATTERNS = re.compile(
    r"\b(?:normal(?! (?:range|variant|saline|distribution))|unremarkable|healthy|no (?:abnormalit(?:y|ies)|"
    r"pathology|pathological findings?|acute findings?|significant findings?|findings?)|within normal limits|"
    r"(?:lungs?|lung fields?|fields?) (?:are|is|appear|appears) clear|clear lungs?|"
    r"no (?:focal )?(?:lesions?|masses|mass|tumou?rs?|nodules?|polyps?|opacit(?:y|ies)|consolidation))\b",
    re.I,
)
# Marked background knowledge: general statements about a disease, not about this image.
BACKGROUND_START = re.compile(
    r"^\s*(?:background(?: knowledge)?\b|in general\b|generally\b|typically\b|as background\b|by definition\b|"
    r"classically\b|in the literature\b|clinically\b, such|of note, in general)",
    re.I,
)
_ATTRIBUTED_PASSAGE = re.compile(r"Background knowledge(?: \[[^\]]*\])?:\s*«[^»]*»")
_QUOTED = re.compile(r"(?<!\w)'([^'\n]{1,80})'(?!\w)|\"([^\"\n]{1,80})\"|‘([^’\n]{1,80})’|“([^”\n]{1,80})”|«([^»\n]{1,300})»")

# Words that say benign or malignant without naming one disease (read as a "malignancy" claim),
# and the disease words that tell which of the two a record's finding is.
GENERIC_MALIGNANT = ("malignant", "malignancy", "cancer", "cancerous", "carcinoma", "metastasis", "metastases",
                     "metastatic")
GENERIC_BENIGN = ("benign",)
MALIGNANT_WORDS = GENERIC_MALIGNANT + ("melanoma", "sarcoma", "glioma", "glioblastoma", "adenocarcinoma", "lymphoma")
BENIGN_WORDS = GENERIC_BENIGN + ("nevus", "naevus", "fibroadenoma", "keratosis", "lentigo", "dermatofibroma",
                                 "angioma", "hemangioma", "lipoma", "simple cyst")


@dataclass(frozen=True)
class Claim:
    """One checkable statement found in a description."""

    kind: str  # side | position | laterality | quadrant | size | count | shape | margin | intensity | texture |
    #            modality | organ | finding | malignancy | normal | lesion | annotation
    value: str  # the normalized claimed value (e.g. "left", "small", "3", "ct", "pleural effusion")
    phrase: str  # the words it came from
    sentence: int  # index of the sentence
    clause: int  # index of the clause within the whole text
    negated: bool = False
    number: float | None = None  # sizes in mm, percentages, counts
    unit: str | None = None
    accepts: frozenset = field(default_factory=frozenset)  # fact values that support the claim


@dataclass
class Clause:
    text: str  # the clause with quoted spans blanked
    raw: str  # as written, quotes kept (a label may be quoted)
    sentence: int
    index: int
    background: bool = False
    claims: list[Claim] = field(default_factory=list)


# --- sentences and clauses ---------------------------------------------------------------

_SENTENCE_END = re.compile(r"(?<=[.!?])[\"”»']?\s+(?=[A-Z0-9(\"“«'])|\n\s*\n|\n(?=\s*(?:[-*•]|\d+[.)])\s)")
_ABBREVIATIONS = re.compile(r"\b(?:e\.g|i\.e|approx|cf|vs|Dr|Fig|No|et al)\.$", re.I)


def split_sentences(text: str) -> list[str]:
    pieces, start = [], 0
    for match in _SENTENCE_END.finditer(text):
        candidate = text[start:match.start() + 1]
        if _ABBREVIATIONS.search(candidate.rstrip()):
            continue
        pieces.append(candidate)
        start = match.end()
    pieces.append(text[start:])
    return [" ".join(p.split()) for p in pieces if p.strip()]


def _blank_quotes(text: str) -> str:
    return _QUOTED.sub(lambda m: " " * len(m.group(0)), text)


def read_clauses(description: str) -> list[Clause]:
    """Sentences, split at ';' into clauses; attributed or marked background is flagged as such."""
    clauses: list[Clause] = []
    text = description or ""
    sentences = split_sentences(text)
    for s_index, sentence in enumerate(sentences):
        background = bool(BACKGROUND_START.match(sentence) or _ATTRIBUTED_PASSAGE.search(sentence))
        # An attributed passage inside a sentence is background; the rest is read normally.
        sentence = _ATTRIBUTED_PASSAGE.sub(" ", sentence) if not BACKGROUND_START.match(sentence) else sentence
        # Clauses: at ';', a dash, and where a contrast starts a new subject ("..., while the left
        # lung region lies ..."), so each clause can name its own ROI.
        for part in re.split(r";|\s+[—–]\s+|,?\s+(?:while|whereas)\s+|,\s+but\s+(?=(?:the|its|it)\b)|,\s+and\s+(?=the\s)", sentence):
            if part.strip():
                clauses.append(Clause(_blank_quotes(part), part, s_index, len(clauses), background))
    return clauses


# --- helpers -----------------------------------------------------------------------------


def _alternation(words) -> str:
    return "|".join(re.escape(w).replace(r"\ ", r"[\s-]+").replace(r"\-", r"[\s-]?") for w in sorted(words, key=len, reverse=True))


def is_negated(text: str, start: int, end: int) -> bool:
    """A negator shortly before the words in the same clause, or 'is not seen' after them."""
    before = text[max(0, start - 60):start]
    if re.search(r"\bnon-?\s*$", before, re.I):
        return True
    # Only the last few words, and not across "but" / "although".
    tail = re.split(r"\b(?:but|although|though|however|whereas|while|yet)\b|,(?=\s+(?:and|with)?\s*(?:it|which))", before)[-1]
    window = " ".join(tail.split()[-6:])
    if NEGATORS.search(window):
        return True
    return bool(POST_NEGATION.match(text[end:end + 60]))


def _number(word: str) -> float | None:
    word = word.lower().strip()
    if re.fullmatch(r"\d+(?:[.,]\d+)?", word):
        return float(word.replace(",", "."))
    return NUMBER_WORDS.get(word)


# --- the extractors ----------------------------------------------------------------------

_FRAME = r"(?:image|frame|picture|field of view|view|scan|film|photo(?:graph)?|slice|radiograph)"
_IMAGE_POSITION = re.compile(
    rf"\b(?:(?:at|in|on|toward|towards|near|along|to|within|occupying|of)\s+)?the\s+"
    rf"((?:(?:upper|lower|top|bottom|middle|central|centre|center|left|right|superior|inferior|mid)[\s-]*){{1,3}})"
    rf"(?:(?:part|portion|half|side|corner|quadrant|region|area|aspect|edge|border|third|zone|field|section)s?\s+)?"
    rf"(?:of|in)\s+the\s+{_FRAME}\b"
    rf"|\b(?:the\s+)?{_FRAME}(?:'s|’s)\s+((?:(?:upper|lower|top|bottom|left|right|central|centre|center|middle)[\s-]*){{1,2}})",
    re.I,
)
_CENTRE_OF_IMAGE = re.compile(rf"\b(?:centre|center|middle)\s+of\s+the\s+{_FRAME}\b", re.I)
_H_WORDS = {"left": "left", "right": "right", "central": "center", "centre": "center", "center": "center"}
_V_WORDS = {"upper": "upper", "top": "upper", "superior": "upper", "lower": "lower", "bottom": "lower",
            "inferior": "lower", "middle": "middle", "mid": "middle"}

_QUADRANT = re.compile(
    r"\b((?:upper|lower)[\s-]+(?:outer|inner|left|right)|(?:left|right)[\s-]+(?:upper|lower)|"
    r"(?:outer|inner)[\s-]+(?:upper|lower))[\s-]+quadrants?\b"
    r"|\b((?:left|right)[\s-]+(?:upper|middle|mid|lower)[\s-]+(?:zone|lobe|lung zone|lung field)s?"
    r"|(?:upper|middle|mid|lower)[\s-]+(?:zone|lobe)s?\s+of\s+the\s+(?:left|right)\s+lung)\b",
    re.I,
)
_PATIENT_SIDE = re.compile(
    r"\b(?:the\s+)?patient(?:'s|’s|s')\s+(left|right)\b|\b(left|right)\s+side\s+of\s+the\s+(?:patient|body)\b"
    r"|\b(?:on|to)\s+the\s+patient(?:'s|’s)\s+(left|right)\b",
    re.I,
)
_LATERAL_PART = re.compile(
    rf"\b(left|right|bilateral)(?:[\s-]+sided)?[\s-]+(?:(?:upper|lower|middle|mid|outer|inner|medial|lateral|"
    rf"posterior|anterior|distal|proximal|frontal|temporal|parietal|occipital)[\s-]+){{0,2}}"
    rf"({_alternation(PAIRED_PARTS)})\b"
    rf"|\b(left|right)[\s-]+sided\b|\bon\s+the\s+(left|right)(?!\s+(?:of|side of)\s+the)\b(?!\s+(?:part|half|portion|corner))",
    re.I,
)
_SIDE_ALONE = re.compile(r"\b(bilateral(?:ly)?|both\s+(?:breasts|lungs|kidneys|sides|eyes))\b", re.I)

_ALL_NOUNS = LESION_NOUNS + REGION_NOUNS
_NOUN_RE = _alternation(_ALL_NOUNS)
_SIZE = re.compile(
    rf"\b({_alternation(SIZE_WORDS)})\b(?=(?:[\s,-]+[\w-]+){{0,3}}?[\s-]+(?:{_NOUN_RE}|in size|sized)\b)"
    rf"|(?:\b(?:is|are|was|appears?|looks?|seems?|measures?)|,)\s+(?:relatively\s+|very\s+|rather\s+|quite\s+)?"
    rf"({_alternation(SIZE_WORDS)})\b(?!\s+(?:part|portion|amount|number|field))",
    re.I,
)
_MEASURE = re.compile(
    r"(?<![\w.])(\d+(?:[.,]\d+)?)\s*(?:[x×]\s*(\d+(?:[.,]\d+)?)\s*)?(mm|cm|millimet(?:re|er)s?|centimet(?:re|er)s?)\b",
    re.I,
)
_PERCENT = re.compile(
    r"(?:covers?|covering|occup(?:y|ies|ying)|spans?|spanning|takes up|taking up|about|approximately|roughly|some)?\s*"
    r"(\d+(?:\.\d+)?)\s*%\s+of\s+the\s+(?:image|frame|picture|field of view)(?:\s+area)?",
    re.I,
)
_QUANTITY = re.compile(rf"(?<![\w.,/-])({_alternation(list(NUMBER_WORDS) + list(MANY_WORDS))}|\d+)(?=\s)", re.I)
_SINGLE = re.compile(rf"\b({_alternation(SINGLE_WORDS)})(?=\s)", re.I)
_NOUN_STOP = {"of", "in", "to", "mm", "cm", "x", "×", "is", "are", "was", "were", "per", "from", "at", "on", "with"}
_ENHANCEMENT = re.compile(r"\b(non-?\s?enhancing|enhanc(?:ing|es|ement|ed))\b", re.I)


def _image_position_claims(clause: Clause, claims: list[Claim]) -> str:
    text = clause.text
    matches = list(_IMAGE_POSITION.finditer(text))
    blanked = text
    for match in matches:
        blanked = blanked[:match.start()] + " " * (match.end() - match.start()) + blanked[match.end():]
    for match in matches + list(_CENTRE_OF_IMAGE.finditer(blanked)):
        words = re.split(r"[\s-]+", (match.group(1) if match.re is _IMAGE_POSITION and match.group(1) else
                                     (match.group(2) if match.re is _IMAGE_POSITION and match.group(2) else "center")).lower())
        negated = is_negated(text, match.start(), match.end())
        horizontal = [_H_WORDS[w] for w in words if w in _H_WORDS]
        vertical = [_V_WORDS[w] for w in words if w in _V_WORDS]
        if match.re is _CENTRE_OF_IMAGE:
            horizontal, vertical = ["center"], ["middle"]
        if len(horizontal) == 1:
            claims.append(Claim("side", horizontal[0], match.group(0).strip(), clause.sentence, clause.index, negated))
        if len(vertical) == 1:
            claims.append(Claim("position", vertical[0], match.group(0).strip(), clause.sentence, clause.index, negated))
        # "the central part" without a vertical word means the middle row too.
        if horizontal == ["center"] and not vertical and match.re is _IMAGE_POSITION:
            claims.append(Claim("position", "middle", match.group(0).strip(), clause.sentence, clause.index, negated))
        text = text[:match.start()] + " " * (match.end() - match.start()) + text[match.end():]
    return text


def _quadrant_claims(clause: Clause, text: str, claims: list[Claim]) -> str:
    for match in _QUADRANT.finditer(text):
        phrase = " ".join(match.group(0).lower().replace("-", " ").split())
        negated = is_negated(text, match.start(), match.end())
        claims.append(Claim("quadrant", phrase, match.group(0), clause.sentence, clause.index, negated))
        text = text[:match.start()] + " " * (match.end() - match.start()) + text[match.end():]
    return text


def _laterality_claims(clause: Clause, text: str, claims: list[Claim]) -> str:
    text = SIDE_IN_NAME.sub(lambda m: " " * len(m.group(0)), text)
    for match in _PATIENT_SIDE.finditer(text):
        side = next(g for g in match.groups() if g).lower()
        claims.append(Claim("laterality", side, match.group(0), clause.sentence, clause.index,
                            is_negated(text, match.start(), match.end()), unit="patient"))
        text = text[:match.start()] + " " * (match.end() - match.start()) + text[match.end():]
    for match in _LATERAL_PART.finditer(text):
        side = next(g for g in (match.group(1), match.group(3), match.group(4)) if g).lower()
        claims.append(Claim("laterality", side, match.group(0), clause.sentence, clause.index,
                            is_negated(text, match.start(), match.end()), unit=(match.group(2) or "").lower() or None))
    for match in _SIDE_ALONE.finditer(text):
        claims.append(Claim("laterality", "bilateral", match.group(0), clause.sentence, clause.index,
                            is_negated(text, match.start(), match.end())))
    return text


@lru_cache(maxsize=16)
def _word_table(kind: str) -> tuple[re.Pattern, dict[str, set[str]]]:
    table = _WORD_TABLES[kind]
    pattern = re.compile(rf"(?<![\w-])({_alternation(table)})(?![\w-])", re.I)
    return pattern, {" ".join(k.replace("-", " ").split()): v for k, v in table.items()}


def _word_claims(kind: str, clause: Clause, text: str, claims: list[Claim]) -> str:
    pattern, table = _word_table(kind)
    for match in pattern.finditer(text):
        key = " ".join(match.group(1).lower().replace("-", " ").split())
        accepts = table.get(key)
        if accepts is None:
            continue
        claims.append(Claim(kind, sorted(accepts)[0], match.group(0), clause.sentence, clause.index,
                            is_negated(text, match.start(), match.end()), accepts=frozenset(accepts)))
    return pattern.sub(lambda m: " " * len(m.group(0)), text)


_INTENSITY_TABLE = {word: {value} for value, words in INTENSITY_WORDS.items() for word in words}
_WORD_TABLES = {"shape": SHAPE_WORDS, "margin": MARGIN_WORDS, "intensity": _INTENSITY_TABLE, "texture": TEXTURE_WORDS}


def _size_claims(clause: Clause, text: str, claims: list[Claim]) -> None:
    for match in _SIZE.finditer(text):
        word = " ".join((match.group(1) or match.group(2)).lower().replace("-", " ").split())
        accepts = next(v for k, v in SIZE_WORDS.items() if " ".join(k.replace("-", " ").split()) == word)
        claims.append(Claim("size", sorted(accepts)[0], match.group(0), clause.sentence, clause.index,
                            is_negated(text, match.start(), match.end()), accepts=frozenset(accepts)))
    for match in _MEASURE.finditer(text):
        unit = match.group(3).lower()
        scale = 10.0 if unit.startswith("c") else 1.0
        values = [float(g.replace(",", ".")) * scale for g in (match.group(1), match.group(2)) if g]
        # "slice thickness 5 mm", "pixel spacing 0.7 mm" describe the scan, not a lesion.
        before = text[max(0, match.start() - 40):match.start()].lower()
        after = text[match.end():match.end() + 20].lower()
        if re.search(r"spacing|thickness|resolution|pixel|voxel|interval|slice|distance|apart|from the", before) or \
                re.match(r"\s*(?:per|/)\s*(?:pixel|voxel|px)", after):
            continue
        bound = _bound(text, match.start())
        claims.append(Claim("size", f"{bound}{max(values):g} mm", match.group(0), clause.sentence, clause.index,
                            is_negated(text, match.start(), match.end()), number=max(values), unit="mm"))
    for match in _PERCENT.finditer(text):
        if re.search(r"\b(?:remaining|rest|other|outside)\W*(?:\w+\W+)?$", text[max(0, match.start() - 25):match.start() + 1], re.I):
            continue  # "the remaining 97.9% of the image lies outside it"
        bound = _bound(text, match.start(1))
        claims.append(Claim("size", f"{bound}{match.group(1)}%", match.group(0).strip(), clause.sentence, clause.index,
                            is_negated(text, match.start(), match.end()), number=float(match.group(1)), unit="%"))


_LESS = re.compile(r"(?:less than|under|below|smaller than|at most|up to|<)\s*(?:about\s+|approximately\s+)?$", re.I)
_MORE = re.compile(r"(?:more than|over|above|larger than|greater than|at least|exceeding|>)\s*(?:about\s+|approximately\s+)?$", re.I)


def _bound(text: str, start: int) -> str:
    """'<' for "less than 5%", '>' for "more than 2 cm", '' for a plain figure."""
    before = text[max(0, start - 30):start]
    return "<" if _LESS.search(before) else ">" if _MORE.search(before) else ""


def _counted_noun(text: str, end: int, nouns: set[str]) -> tuple[str, int] | None:
    """The noun a quantity counts: among the next four words, before a stop word or punctuation."""
    for word in re.finditer(r"[\w'-]+|[^\w\s]", text[end:end + 80]):
        token = word.group(0).lower()
        if token in nouns:
            return token, end + word.end()
        if token in _NOUN_STOP or not re.match(r"[\w'-]", token) or word.start() > 60:
            return None
    return None


def _count_claims(clause: Clause, text: str, claims: list[Claim], count_nouns: set[str]) -> None:
    nouns = set(_ALL_NOUNS) | set(count_nouns)
    for match in _QUANTITY.finditer(text):
        found = _counted_noun(text, match.end(), nouns)
        if found is None:
            continue
        noun, end = found
        word = match.group(1).lower()
        if word.isdigit() and re.search(r"(?:slice|frame|image|figure|grade|stage|type|level|class)\s*$",
                                        text[:match.start()].lower()):
            continue
        if word in MANY_WORDS:
            value, number = "many", None
        else:
            number = _number(word)
            if number is None:
                continue
            value = str(int(number))
        claims.append(Claim("count", value, text[match.start():end].strip(), clause.sentence, clause.index,
                            is_negated(text, match.start(), end), number=number, unit=noun))
    for match in _SINGLE.finditer(text):
        found = _counted_noun(text, match.end(), nouns)
        if found is None:
            continue
        noun, end = found
        claims.append(Claim("count", "1", text[match.start():end].strip(), clause.sentence, clause.index,
                            is_negated(text, match.start(), end), number=1, unit=noun))


def _modality_claims(clause: Clause, text: str, claims: list[Claim]) -> None:
    for match in HYBRID_MODALITY.finditer(text):
        parts = {HYBRID_PARTS[p] for p in re.findall(r"PET|SPECT|MRI?|CT", match.group(0))}
        claims.append(Claim("modality", "+".join(sorted(parts)), match.group(0), clause.sentence, clause.index,
                            False, accepts=frozenset(parts), unit="hybrid"))
        text = text[:match.start()] + " " * (match.end() - match.start()) + text[match.end():]
    for modality, patterns in MODALITY_PATTERNS.items():
        for pattern, case_sensitive in patterns:
            for match in re.finditer(pattern, text, 0 if case_sensitive else re.I):
                claims.append(Claim("modality", modality, match.group(0), clause.sentence, clause.index,
                                    is_negated(text, match.start(), match.end()), accepts=frozenset({modality})))


_ORGAN_RE = re.compile(rf"(?<![\w-])({_alternation(ORGAN_WORDS)})(?![\w-])", re.I)


def _organ_claims(clause: Clause, text: str, claims: list[Claim]) -> None:
    for match in _ORGAN_RE.finditer(text):
        word = " ".join(match.group(1).lower().replace("-", " ").split())
        region = ORGAN_WORDS.get(word)
        if region is None:
            continue
        claims.append(Claim("organ", word, match.group(0), clause.sentence, clause.index,
                            is_negated(text, match.start(), match.end()), unit=region))


def _finding_claims(clause: Clause, text: str, claims: list[Claim], vocabulary: "FindingVocabulary") -> str:
    for match in vocabulary.pattern.finditer(text):
        term = " ".join(match.group(1).lower().replace("-", " ").split())
        claims.append(Claim("finding", term, match.group(0), clause.sentence, clause.index,
                            is_negated(text, match.start(), match.end()),
                            accepts=frozenset(vocabulary.entries_for(term))))
        text = text[:match.start()] + " " * (match.end() - match.start()) + text[match.end():]
    # Words that state an abnormality without naming an entry of the corpus ("the heart is
    # enlarged", "invades the femur"): a finding claim each, supported only by the record's
    # findings or the publisher's notes.
    for match in _ABNORMAL_MORPHOLOGY.finditer(text):
        claims.append(Claim("finding", match.group(1).lower(), match.group(0), clause.sentence, clause.index,
                            is_negated(text, match.start(), match.end())))
    for match in _MALIGNANCY.finditer(text):
        word = match.group(1).lower()
        value = "benign" if word in GENERIC_BENIGN else "malignant"
        claims.append(Claim("malignancy", value, match.group(0), clause.sentence, clause.index,
                            is_negated(text, match.start(), match.end())))
    return text


_ABNORMAL_MORPHOLOGY = re.compile(
    r"(?<![\w-])(enlarged|enlargement|dilated|dilatation|dilation|thickened|thickening|invades|invading|invaded|"
    r"invasion|infiltrates|infiltrating|infiltration|fractures?|fractured|herniation|herniated|calcified|"
    r"calcifications?|o?edema|effusions?|displaced|obstructed|obstruction|cardiomegaly|atelectasis|pneumothorax|"
    r"ha?emorrhage|necrosis|necrotic)(?![\w-])",
    re.I,
)
_MALIGNANCY = re.compile(rf"(?<![\w-])({_alternation(GENERIC_MALIGNANT)}|{_alternation(GENERIC_BENIGN)})(?![\w-])", re.I)
_COLOUR_ALT = _alternation(COLOUR_WORDS)
_COLOUR = re.compile(
    rf"(?<![\w-])({_COLOUR_ALT})(?:(?:\s*(?:-|to|and|or)\s*|\s+)(?:{_COLOUR_ALT}))?(?=(?:[\s,-]+[\w-]+){{0,2}}?[\s-]+"
    rf"(?:{_alternation(_ALL_NOUNS)}|colou?r|hue|tint|pigmentation|pigment|tone|appearance)\b)"
    rf"|\b(?:colou?r|hue|tint|pigmentation)\s+(?:is|was|appears|looks)\s+(?:mostly\s+|mainly\s+|predominantly\s+)?({_COLOUR_ALT})\b"
    rf"|\b(?:is|appears|looks|seems)\s+(?:mostly\s+|mainly\s+|predominantly\s+|uniformly\s+)?"
    rf"((?:red|reddish|pink|pinkish|brown|brownish|light brown|tan|dark brown|purple|purplish|violet|blue|bluish|yellow|yellowish|orange))\b",
    re.I,
)


def _colour_claims(clause: Clause, text: str, claims: list[Claim]) -> None:
    for match in _COLOUR.finditer(text):
        word = " ".join(next(g for g in match.groups() if g).lower().replace("-", " ").split())
        if re.match(r"\s+matter\b", text[match.end():]) or word not in COLOUR_WORDS:
            continue  # "white matter" is anatomy
        claims.append(Claim("colour", word, match.group(0), clause.sentence, clause.index,
                            is_negated(text, match.start(), match.end()), accepts=frozenset(COLOUR_WORDS[word])))


_LESION_RE = re.compile(rf"(?<![\w-])({_alternation(LESION_NOUNS)})(?![\w-])", re.I)


def _presence_claims(clause: Clause, text: str, claims: list[Claim]) -> None:
    meta = bool(ANNOTATION_META.search(clause.text))
    for match in NORMAL_PATTERNS.finditer(text):
        # "no lesion was annotated" speaks of the annotation, not of the patient.
        kind = "annotation" if meta and match.group(0).lower().startswith("no ") else "normal"
        if kind == "normal" and is_negated(text, match.start(), match.end()) and not match.group(0).lower().startswith("no "):
            continue  # "not normal" asserts an abnormality, which the lesion/finding claims cover
        claims.append(Claim(kind, "normal", match.group(0), clause.sentence, clause.index))
    for match in _LESION_RE.finditer(text):
        negated = is_negated(text, match.start(), match.end())
        kind = "annotation" if meta and negated else "lesion"
        claims.append(Claim(kind, match.group(1).lower(), match.group(0), clause.sentence, clause.index, negated))
    for match in _ENHANCEMENT.finditer(text):
        word = match.group(1).lower()
        negated = word.startswith("non") or is_negated(text, match.start(), match.end())
        claims.append(Claim("intensity", "enhancement", match.group(0), clause.sentence, clause.index, negated))


def extract_claims(clause: Clause, vocabulary: "FindingVocabulary", count_nouns: set[str] = frozenset()) -> list[Claim]:
    claims: list[Claim] = []
    text = _image_position_claims(clause, claims)
    text = _quadrant_claims(clause, text, claims)
    text = _laterality_claims(clause, text, claims)
    _size_claims(clause, text, claims)
    _count_claims(clause, text, claims, set(count_nouns))
    _word_claims("shape", clause, text, claims)
    _word_claims("margin", clause, text, claims)
    text = _word_claims("intensity", clause, text, claims)
    _word_claims("texture", clause, text, claims)
    _modality_claims(clause, text, claims)
    _organ_claims(clause, text, claims)
    text = _finding_claims(clause, text, claims, vocabulary)
    _colour_claims(clause, text, claims)
    _presence_claims(clause, text, claims)
    clause.claims = claims
    return claims


# --- the finding vocabulary from the knowledge corpus ------------------------------------

# Entries that name anatomy or normal appearance, not a finding.
_NOT_FINDINGS = {"grey_matter", "white_matter", "nuclei_histopathology", "nuclei_fluorescence", "colon_tissue_ihc",
                 "histo_he_tissue_section", "fundus_optic_cup", "endo_normal_gi_landmarks"}
# Words too generic to name one finding: they are lesion nouns or malignancy words here.
_GENERIC_TERMS = set(LESION_NOUNS) | set(GENERIC_MALIGNANT) | set(GENERIC_BENIGN) | {
    "normal", "no finding", "no findings", "cell", "cells", "nuclei", "nucleus", "cortex", "collapse", "cavity",
    "viral", "bacterial", "hernia", "distortion", "edema", "oedema", "tumour mass", "primary tumour", "exudate",
    "mole", "retina", "optic disc", "colon", "colon tissue", "asymmetry", "fibrosis", "lung lesion",
}


class FindingVocabulary:
    """Finding names and aliases of the knowledge corpus, each mapped to its entry ids."""

    def __init__(self, entries: list[dict]):
        self.terms: dict[str, set[str]] = {}
        self.finding_names: dict[str, str] = {}
        for entry in entries:
            # Normal-anatomy and anatomy entries name structures, not findings ("optic disc").
            if entry.get("kind", "finding") != "finding":
                continue
            if entry["id"].startswith("normal") or entry["id"] in _NOT_FINDINGS or entry.get("origin") == "radiology_anatomy.yaml":
                continue
            self.finding_names[entry["id"]] = _norm(entry["finding"])
            for term in [entry["finding"], *entry.get("aliases", [])]:
                key = _norm(term)
                if len(key) <= 3 or key in _GENERIC_TERMS:
                    continue
                self.terms.setdefault(key, set()).add(entry["id"])
        # Plurals too ("gliomas", "effusions"); the term itself is group 1.
        self.pattern = re.compile(rf"(?<![\w-])({_alternation(self.terms)})(?:e?s)?(?![\w-])", re.I) if self.terms else re.compile(r"(?!x)x")

    def entries_for(self, term: str) -> set[str]:
        return set(self.terms.get(_norm(term), set()))

    def entries_in(self, text: str) -> set[str]:
        """Entries whose finding name or alias is, or is contained in, a label or a sentence."""
        key = _norm(text)
        found = set(self.terms.get(key, set()))
        for match in self.pattern.finditer(key):
            found |= self.terms.get(_norm(match.group(1)), set())
        return found


# Labels and terms are compared in one spelling: lower case, "_" and "-" as spaces.
_norm = normalize_label


@lru_cache(maxsize=4)
def _load_vocabulary(folder: str) -> FindingVocabulary:
    from medtrinity_assets.knowledge.corpus import load_corpus

    return FindingVocabulary(load_corpus(Path(folder)))


def default_vocabulary() -> FindingVocabulary:
    from medtrinity_assets.paths import REPO_ROOT

    return _load_vocabulary(str(REPO_ROOT / "data" / "knowledge"))
