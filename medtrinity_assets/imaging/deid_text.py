"""Free-text de-identification: publisher captions, reports and clinical notes.

Publisher text is kept (DESIGN.md: publisher text is a fact source), so it must pass through
this module before it leaves ingest. Identifiers are replaced by neutral tokens so sentences stay
readable ("Case courtesy of [name]", "seen on [date]"):

- person names after a title ("Dr. A. Smith", "Mrs Jones"), after a naming cue ("courtesy of",
  "Name:", "signed by") or starting with a common given name ("John Smith");
- dates in numeric (2020-01-25, 25/01/2020, 20200125) and written forms (January 25, 2020;
  25th Jan 2020; Jan 2020; Monday, 3 March), with a time that is attached to them; a year on its
  own is kept (it identifies nobody and dates the case);
- identifiers: labelled ones (MRN, accession, case/study/patient id, rID), e-mail, URL, phone,
  social security numbers, digit runs of 7 or more, letter-digit codes with a run of 4+ digits;
- street addresses and postcodes (US ZIP after a state, UK and Canadian forms);
- institutions ("Myongji Hospital", "Ospedale Santo Spirito", "St. Mary's Medical Center");
- ages over 89 become "90 or older" ("a 93-year-old" -> "a [age 90 or older]").

Words that look like names but are medicine (eponyms: Parkinson, Hodgkin, Down syndrome;
capitalised anatomy) are never taken for a name unless a title or cue names a person.

``known`` adds strings the caller knows identify this row (the values of a spec's identifying
columns, e.g. covid-chestxray's ``location``): each is scrubbed wherever it appears.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Iterable

# --- word lists ----------------------------------------------------------------------------

MONTHS = {
    "january": 1, "jan": 1, "february": 2, "feb": 2, "march": 3, "mar": 3, "april": 4, "apr": 4,
    "may": 5, "june": 6, "jun": 6, "july": 7, "jul": 7, "august": 8, "aug": 8, "september": 9,
    "sep": 9, "sept": 9, "october": 10, "oct": 10, "november": 11, "nov": 11, "december": 12, "dec": 12,
}
WEEKDAYS = r"(?:Mon|Tues?|Wed(?:nes)?|Thu(?:rs)?|Fri|Sat(?:ur)?|Sun)(?:day)?\.?"

# Eponyms and capitalised medical words that must never be read as a person's name without a
# title or cue (lower case; possessive "'s" is stripped before lookup).
MEDICAL_CAPITALISED = {
    "addison", "alzheimer", "apgar", "asperger", "babinski", "baker", "barrett", "bartholin", "bell",
    "bence", "berger", "bowen", "broca", "brown", "budd", "burkitt", "chiari", "chagas", "charcot",
    "colles", "conn", "cooper", "creutzfeldt", "crohn", "cushing", "dandy", "dubin", "duchenne",
    "dupuytren", "down", "edwards", "ehlers", "danlos", "epstein", "barr", "ewing", "fallot", "fanconi",
    "gaucher", "gilbert", "glasgow", "graves", "guillain", "barré", "barre", "hashimoto", "hodgkin",
    "horner", "huntington", "jakob", "kaposi", "kawasaki", "klinefelter", "korsakoff", "krukenberg",
    "kussmaul", "langerhans", "legionella", "lou", "gehrig", "lyme", "mallory", "weiss", "marfan",
    "meckel", "meig", "meigs", "meniere", "ménière", "monteggia", "morton", "munchausen", "murphy",
    "niemann", "pick", "osgood", "schlatter", "paget", "pancoast", "parkinson", "perthes", "peyronie",
    "pott", "raynaud", "reed", "sternberg", "reiter", "reye", "schatzki", "sjogren", "sjögren", "smith",
    "stevens", "johnson", "still", "sturge", "weber", "takayasu", "tay", "sachs", "tourette", "turner",
    "virchow", "von", "willebrand", "hippel", "lindau", "waldenstrom", "waldenström", "wegener",
    "wernicke", "whipple", "willis", "wilms", "wilson", "wolff", "white", "zenker",
    "kerley", "fleischner", "hampton", "westermark", "golden", "rigler", "silhouette", "swan", "ganz",
    "foley", "hickman", "port", "hounsfield", "bi-rads", "birads", "gleason", "breslow", "clark",
    "tnm", "who", "covid", "sars", "ards", "copd", "ct", "mri", "pet", "pa", "ap", "gist", "hiv",
    "spitz", "merkel", "kimura", "castleman", "caroli", "klatskin", "wharton", "stensen", "bochdalek",
    "morgagni", "rathke", "schwann", "purkinje", "eustachian", "fallopian", "sylvian", "monro",
    "luschka", "magendie", "galen", "hunter", "scarpa", "poupart", "treitz", "oddi", "vater", "glisson",
}
# Common given names used as the first word of an uncued "Given Surname" name. Names that are
# also common English or medical words (May, Will, Mark, Grace, Hope, Bill, Joy) are left out.
GIVEN_NAMES = set(
    """
    aaron adam adrian ahmed aisha alan albert alejandro alex alexander alice alison amanda amy ana
    andrea andrew angela ann anna anne anthony antonio arthur barbara ben benjamin beth betty brian
    bruce carl carlos carmen carol caroline catherine charles charlotte chen chris christina
    christine christopher claire daniel david deborah dennis diana diane donald donna dorothy
    douglas edward elena elizabeth ellen emily emma eric erin eva evelyn fatima fernando frances
    francesco frank gary george gerald giovanni giuseppe gloria gregory hannah harold harry helen
    henry hiroshi ian isabel jack jacob james jane janet janice jason jean jeffrey jennifer jeremy
    jessica joan joe john jonathan jorge jose joseph joshua juan judith julia julie justin karen
    kate katherine kathleen keith kenneth kevin kim laura lawrence li linda lisa liu louis lucy
    luis margaret maria marie marilyn mario martha martin mary matthew megan melissa michael
    michelle mohammed muhammad nancy natalie nicholas nicole olivia oscar pablo pamela patricia
    patrick paul peter philip rachel ralph raymond rebecca richard robert roger ronald ruth ryan
    samuel sandra sara sarah scott sean sharon shirley sophia sophie stephanie stephen steven susan
    thomas timothy tyler victoria vincent virginia walter wang wei william yuki zhang
    """.split()
)
# ("Sister" is left out: "Sister Mary Joseph nodule" is a sign, not a nurse.)
TITLES = r"(?:Dr|Drs|Doctor|Mr|Mrs|Ms|Mss|Miss|Mx|Prof|Professor|Sr|Nurse|Rev)"
# Cues after which capitalised words are a person's name even without a title.
NAME_CUES = (
    r"(?:courtesy of|(?:seen|reported|dictated|signed|read|referred|examined|reviewed|verified|"
    r"transcribed|approved|authored|written) by|(?:patient|physician|radiologist|surgeon|doctor|"
    r"clinician|consultant|attending|referrer|referring physician|technologist|sonographer|"
    r"pathologist|author|name|patient name|signed|contact)\s*[:=-])"
)
INSTITUTION_WORDS = (
    r"(?:Hospital|Hospitals|Clinic|Clinics|Infirmary|Medical Cent(?:er|re)|Health(?:care)? "
    r"(?:System|Cent(?:er|re)|Trust)|Cancer Cent(?:er|re)|Institute|University|Sanatorium|Hospice|"
    r"Polyclinic|Policlinico|Ospedale|Hôpital|Hopital|Hospital[e]?|Klinikum|Klinik|Universitätsklinikum|"
    r"Centre Hospitalier|Medical College|School of Medicine|Foundation Trust|NHS Trust)"
)
STREET_SUFFIXES = (
    r"(?:Street|St|Road|Rd|Avenue|Ave|Lane|Ln|Drive|Boulevard|Blvd|Way|Court|Ct|Place|Pl|"
    r"Terrace|Close|Crescent|Highway|Hwy|Parkway|Square|Sq|Row|Mews)"
)
US_STATES = (
    "AL AK AZ AR CA CO CT DE FL GA HI ID IL IN IA KS KY LA ME MD MA MI MN MS MO MT NE NV NH NJ NM NY NC "
    "ND OH OK OR PA RI SC SD TN TX UT VT VA WA WV WI WY DC"
).split()

TOKENS = {
    "name": "[name]",
    "date": "[date]",
    "id": "[id]",
    "phone": "[phone]",
    "email": "[email]",
    "url": "[url]",
    "address": "[address]",
    "postcode": "[postcode]",
    "institution": "[institution]",
    "known": "[redacted]",
    "age": "[age 90 or older]",
}

# --- patterns ------------------------------------------------------------------------------

# A capitalised word (Smith-Jones, D'Souza), whole: never the head of "Radiopaedia.org".
CAP = r"[A-Z][a-zà-öø-ÿ'’]+(?:-[A-Z][a-zà-öø-ÿ'’]+)?(?![\w'’-])(?!\.[A-Za-z])"
MC = r"(?:Ma?c|O')[A-Z][a-z]+(?![\w'’-])"  # McDonald, MacLeod, O'Neil
NAME_WORD = rf"(?:{MC}|{CAP}|[A-Z]\.)"  # a name part or an initial ("J.")
MONTH_NAMES = "|".join(sorted(MONTHS, key=len, reverse=True))
MONTH = rf"(?:{MONTH_NAMES})\.?"
DAY = r"(?:[12][0-9]|3[01]|0?[1-9])(?:st|nd|rd|th)?"
YEAR = r"(?:1[89][0-9]{2}|20[0-9]{2})"
TIME = r"(?:[01]?[0-9]|2[0-3])[:h][0-5][0-9](?::[0-5][0-9](?:\.[0-9]+)?)?\s*(?:[AaPp]\.?[Mm]\.?)?"
TIME_TAIL = rf"(?:(?:\s*,?\s*(?:at\s+)?|T){TIME}(?:\s*(?:Z|UTC|GMT|[A-Z]{{3}}T?))?)?"
TIME_HEAD = rf"(?:{TIME}\s*(?:on\s+|,\s*)?)?"

DATE_PATTERNS = [
    # ISO and compact: 2020-01-25, 2020/1/25, 2020.01.25, 20200125 (with a valid month/day)
    rf"\b{YEAR}[-/.](?:0?[1-9]|1[0-2])[-/.](?:[12][0-9]|3[01]|0?[1-9])(?![0-9])",
    r"\b(?:19|20)[0-9]{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12][0-9]|3[01])(?![0-9])",
    # 25/01/2020, 01-25-20, 25.01.2020 (day/month order unknowable: both are dates)
    # One separator throughout: "16.2/24.7" is a ratio, not a date.
    *(rf"\b(?:[12][0-9]|3[01]|0?[1-9]){sep}(?:[12][0-9]|3[01]|0?[1-9]){sep}(?:[0-9]{{4}}|[0-9]{{2}})(?![0-9]|\.[0-9])"
      for sep in ("-", "/", r"\.")),
    # January 25, 2020 / Jan. 25th 2020 / January 25 (with an optional weekday before)
    rf"(?:\b{WEEKDAYS},?\s+)?\b{MONTH}\s+{DAY}(?:,?\s+{YEAR})?\b",
    # 25 January 2020 / 25th of Jan, 2020 / 3 March
    rf"(?:\b{WEEKDAYS},?\s+)?\b{DAY}\s+(?:of\s+)?{MONTH}(?:,?\s+{YEAR})?\b",
    # January 2020 / Jan-2020 / 01/2020
    rf"\b{MONTH}[\s,-]+{YEAR}\b",
    r"\b(?:0?[1-9]|1[0-2])/(?:19|20)[0-9]{2}\b",
]
# "May" needs its day or year: "may be" is a verb, never a date; the month patterns above
# always require a day or a year next to a month name, and matching is case-insensitive only
# for the month word itself via (?i:...) below.


def _ci_months(pattern: str) -> str:
    """Month names match in any case ("JAN 3", "jan 3"), other parts keep their case."""
    return pattern.replace(f"(?:{MONTH_NAMES})", f"(?i:{MONTH_NAMES})")


DATE_RE = re.compile(
    "|".join(f"(?:{TIME_HEAD}{_ci_months(p)}{TIME_TAIL})" for p in DATE_PATTERNS)
)

EMAIL_RE = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b")
URL_RE = re.compile(
    r"\b(?:https?://|ftp://|www\.)[^\s<>\"')\]]+|\b[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.(?:com|org|net|edu|gov|io|co|uk|de|fr|it|es|cn|jp|kr|tw|au|ca|nl|info)/[^\s<>\"')\]]*",
    re.IGNORECASE,
)
SSN_RE = re.compile(r"\b[0-9]{3}-[0-9]{2}-[0-9]{4}\b")
PHONE_RE = re.compile(
    r"(?:(?<![\w+])\+[0-9]{1,3}[\s.-]?)?"  # country code
    r"(?:\(\s*[0-9]{2,5}\s*\)[\s.-]?|(?<![\w./-])[0-9]{2,5}[\s.-])"  # area code
    r"[0-9]{3,4}[\s.-]?[0-9]{3,4}(?![\w/])"
)
PHONE_CUE_RE = re.compile(
    r"\b(?:tel|telephone|phone|ph|mobile|cell|fax|pager|bleep|call)\b\.?\s*(?:no\.?|number|#)?\s*[:#]?\s*"
    r"(\+?[0-9][0-9 ().-]{5,}[0-9])",
    re.IGNORECASE,
)
ID_LABEL = (
    r"(?:MRN|mrn|medical record(?: number| no\.?| #)?|record (?:number|no\.?|#)|hospital (?:number|no\.?|#)|"
    r"NHS (?:number|no\.?)|accession(?: number| no\.?| #)?|acc(?:ession)?\s*#|ACC|patient\s*(?:id|ID|#|no\.?|number)|"
    r"pt\s*(?:id|ID|#)|case\s*(?:id|ID|#|no\.?|number)|study\s*(?:id|ID|#|no\.?)|rID|ID|id|SSN|"
    r"social security(?: number)?|encounter(?: number| #)?|account(?: number| #)?|specimen(?: number| #| no\.?)?|"
    r"visit(?: number| #)|order(?: number| #))"
)
LABELLED_ID_RE = re.compile(
    rf"\b{ID_LABEL}\s*(?:[:#=]|is|no\.?)?\s*((?=[A-Za-z0-9-]*[0-9])[A-Za-z0-9][A-Za-z0-9-/]*)"
)
# A letter-digit code with a run of 4+ digits (PLANTEDACC44711, AB-1234567); a long digit run.
CODE_RE = re.compile(r"\b(?=[A-Za-z0-9-]*[A-Za-z])(?=[A-Za-z0-9-]*[0-9]{4})[A-Za-z0-9]+(?:-[A-Za-z0-9]+)*\b")
DIGITS_RE = re.compile(r"(?<![\d.,])[0-9]{7,}(?![\d.,]?\d)")

AGE_UNIT = r"(?:-?\s*(?:years?|yrs?|y)\s*-?\s*old|\s*-?\s*(?:yo|y/o|y\.o\.)|\s+years?\s+of\s+age|\s*-?\s*years?(?=\s*,?\s*(?:male|female|man|woman)))"
AGE_PATTERNS = [
    # "93-year-old", "93 yo", "93 years of age" -> "[age 90 or older]"
    (re.compile(rf"\b(?P<n>[0-9]{{2,3}}){AGE_UNIT}\b", re.IGNORECASE), "token"),
    # "aged 93", "age: 93", "Age 93" -> "aged 90 or older"
    (re.compile(r"\b(?P<cue>aged?\s*[:=]?\s*)(?P<n>[0-9]{2,3})\b(?!\s*(?:%|mm|cm|kg|mg|ml|days|weeks|months))", re.IGNORECASE), "number"),
    # "93M", "93 F", "93/F", "M/93" -> "[age 90 or older] M"
    (re.compile(r"\b(?P<n>[0-9]{2,3})\s?/?\s?(?P<sex>M|F)\b"), "sex"),
    (re.compile(r"\b(?P<sex>M|F)\s?/\s?(?P<n>[0-9]{2,3})\b"), "sex"),
]

TITLE_NAME_RE = re.compile(
    rf"\b{TITLES}\b\.?,?\s+(?P<name>{NAME_WORD}(?:\s+{NAME_WORD}){{0,3}}(?:,\s+{CAP}(?![.][a-z])){{0,2}})"
)
CUE_NAME_RE = re.compile(
    rf"(?i:\b{NAME_CUES})\s*(?:{TITLES}\.?\s+)?(?P<name>{NAME_WORD}(?:\s+{NAME_WORD}){{0,3}})"
)
GIVEN_NAME_RE = re.compile(rf"\b(?P<name>(?P<given>{CAP})(?:\s+[A-Z]\.)?\s+(?P<family>{MC}|{CAP}))")
# Two capitalised words opening a clause, followed by what people do in notes ("Chidi Okafor was
# admitted"): a name even when the given name is not in the list.
PERSON_VERBS = (
    r"(?:was|is|has|had|presented|presents|reports|reported|underwent|complains|complained|denies|"
    r"denied|died|returned|attended|arrived|came|developed|received|states|stated|noted|agreed|"
    r"declined|consented|recalls|lives)"
)
SUBJECT_NAME_RE = re.compile(rf"(?:^|(?<=[.!?;]\s)|(?<=\n))(?P<name>{CAP}(?:\s+[A-Z]\.)?\s+(?:{MC}|{CAP}))(?=\s+{PERSON_VERBS}\b)")
# Two capitalised words after a word that introduces a person ("spoke with Oksana Rossi",
# "sent to", "family of"): a name unless either word is anatomy, position or medicine.
PERSON_PREPOSITION_NAME_RE = re.compile(
    rf"\b(?:with|to|of|from|by|for|and|called|named|husband|wife|son|daughter|mother|father)\s+"
    rf"(?P<name>{CAP}(?:\s+[A-Z]\.)?\s+(?:{MC}|{CAP}))"
)
ANATOMY_POSITION_WORDS = {
    "left", "right", "upper", "lower", "middle", "mid", "outer", "inner", "central", "lateral", "medial",
    "anterior", "posterior", "superior", "inferior", "lobe", "lobes", "zone", "zones", "quadrant", "breast",
    "lung", "lungs", "heart", "liver", "kidney", "brain", "chest", "abdomen", "pelvis", "spine", "bone",
    "field", "fields", "region", "side", "base", "apex", "hilum", "hilar", "pleura", "pleural", "axial",
    "coronal", "sagittal", "contrast", "image", "images", "view", "series", "phase", "sequence", "weighted",
    "computed", "tomography", "magnetic", "resonance", "imaging", "ultrasound", "radiograph", "figure",
    "table", "panel", "arrow", "arrows", "scale", "score", "stage", "grade", "type", "class", "syndrome",
    "disease", "sign", "fracture", "tumour", "tumor", "lymphoma", "sarcoma", "carcinoma", "cancer",
    "infection", "pneumonia", "virus", "criteria", "classification", "emergency", "department", "unit",
    "care", "intensive", "radiology", "medicine", "surgery", "oncology", "cardiology",
}
# Capitalised words that open a sentence before such a verb without being a name.
NOT_NAME_WORDS = {
    "the", "this", "that", "there", "patient", "chest", "lung", "lungs", "heart", "left", "right", "upper",
    "lower", "middle", "bilateral", "follow-up", "previous", "prior", "repeat", "imaging", "image", "images",
    "study", "exam", "examination", "scan", "report", "history", "clinical", "physical", "blood", "pleural",
    "air", "ground-glass", "consolidation", "opacity", "opacities", "cardiac", "mediastinal", "abdominal",
    "no", "one", "two", "both", "each", "his", "her", "their", "mother", "father", "wife", "husband",
    "son", "daughter", "case", "covid", "covid-19", "elderly", "young", "male", "female", "woman", "man",
}
INSTITUTION_RE = re.compile(
    rf"(?:\b(?:St\.?|Saint)\s+)?(?:\b{CAP}(?:\s+(?:{CAP}|of|the|and|&|de|di|del|della|la|le))*\s+{INSTITUTION_WORDS}\b"
    rf"(?:\s+(?:of|for|de|di)\s+{CAP}(?:\s+{CAP})*)?"
    rf"|\b{INSTITUTION_WORDS}\s+(?:(?:of|de|di|del|della|the|San|Santa|Santo|St\.?)\s+)*{CAP}(?:\s+{CAP}){{0,3}})"
)
LABELLED_INSTITUTION_RE = re.compile(
    r"(?i:\b(?:institution|hospital|facility|site|clinic|department)\s*[:=])\s*(?P<name>[^\n;:.]{2,80})"
)
ADDRESS_RE = re.compile(
    rf"\b[0-9]{{1,5}}[A-Za-z]?\s+(?:{CAP}\s+){{1,3}}{STREET_SUFFIXES}\b\.?(?:,?\s+(?:Apt|Suite|Unit|Flat)\.?\s*[0-9A-Za-z]+)?"
    rf"(?:,\s*{CAP}(?:\s+{CAP})*)?"
)
PO_BOX_RE = re.compile(r"\bP\.?\s?O\.?\s+Box\s+[0-9]+\b", re.IGNORECASE)
POSTCODE_RES = [
    re.compile(rf"\b(?:{'|'.join(US_STATES)})\s+[0-9]{{5}}(?:-[0-9]{{4}})?\b"),
    re.compile(r"\b(?i:zip(?:\s*code)?|postcode|postal code)\s*[:#]?\s*[A-Z0-9]{3,5}(?:[\s-][A-Z0-9]{3,4})?\b"),
    re.compile(r"\b[A-Z]{1,2}[0-9][A-Z0-9]?\s+[0-9][A-Z]{2}\b"),  # UK: SW1A 1AA, M1 1AE
    # Canada: K1A 0B1, with its space (without it, "T2N0M0" is a TNM stage).
    re.compile(r"\b[A-Z][0-9][A-Z]\s[0-9][A-Z][0-9]\b"),
]


@dataclass(frozen=True)
class Span:
    kind: str  # a key of TOKENS
    start: int
    end: int
    replacement: str


@dataclass(frozen=True)
class ScrubResult:
    text: str
    spans: tuple[Span, ...]  # positions in the input text

    @property
    def counts(self) -> dict[str, int]:
        return dict(Counter(span.kind for span in self.spans))


# Nouns that make a capitalised word before them an eponym ("Smith fracture", "Kerley B lines").
EPONYM_HEADS = re.compile(
    r"\s*(?:[A-Z]\s+)?(?:disease|syndrome|sign|signs|fracture|lymphoma|sarcoma|tumou?r|palsy|triad|lines?|"
    r"test|score|scale|classification|criteria|procedure|operation|nodes?|cells?|tube|catheter|"
    r"phenomenon|reflex|anomaly|malformation|deformity|cyst|ulcer|esophagus|oesophagus|hernia|"
    r"angle|space|canal|duct|gland|body|bodies|ring|node|aneurysm|thyroiditis|encephalopathy|"
    r"dystrophy|sarcoidosis|arteritis|granulomatosis|pouch|diverticulum|foramen|rosettes?|staging|stage|"
    r"nodules?|tear|effect|maneuver|manoeuvre|position|view|projection|curve|regression|units?)\b",
    re.IGNORECASE,
)


def _is_eponym(word: str, following: str) -> bool:
    """A capitalised word used as a medical eponym: in the list, and possessive or followed by
    the noun it names ("Crohn's", "Smith fracture"); "John Smith" is still a person."""
    base = re.sub(r"['’]s$", "", word).lower()
    if base not in MEDICAL_CAPITALISED:
        return False
    return word.lower().endswith(("'s", "’s")) or bool(EPONYM_HEADS.match(following))


def _plain_capitalised(word: str) -> bool:
    """A capitalised word that is not a name: anatomy, position, medicine, a sentence opener."""
    base = re.sub(r"['’]s$", "", word).lower().rstrip(".")
    return base in ANATOMY_POSITION_WORDS or base in NOT_NAME_WORDS or base in MEDICAL_CAPITALISED


def _name_spans(text: str) -> list[Span]:
    spans = []
    for regex in (TITLE_NAME_RE, CUE_NAME_RE):
        for match in regex.finditer(text):
            start, end = match.start("name"), match.end("name")
            name = match.group("name")
            # Trailing "(arrows)" etc. are not part of it; a bare initial alone is no name.
            if not re.search(r"[A-Za-z]{2}", name):
                continue
            # A title-less cue may be followed by an ordinary capitalised word ("Patient: Male").
            if regex is CUE_NAME_RE and name.split()[0].lower() in {"male", "female", "unknown", "none", "n/a"}:
                continue
            spans.append(Span("name", match.start() if regex is TITLE_NAME_RE else start, end, TOKENS["name"]))
    for match in SUBJECT_NAME_RE.finditer(text):
        words = match.group("name").split()
        if not any(w.lower() in NOT_NAME_WORDS or _is_eponym(w, "") for w in words):
            spans.append(Span("name", match.start("name"), match.end("name"), TOKENS["name"]))
    for match in PERSON_PREPOSITION_NAME_RE.finditer(text):
        words = match.group("name").split()
        # "with Homer Wright rosettes", "Ann Arbor staging": two capitals naming a thing.
        if EPONYM_HEADS.match(text[match.end():]):
            continue
        if not any(_plain_capitalised(w) for w in words) and not _is_eponym(words[-1], text[match.end():]):
            spans.append(Span("name", match.start("name"), match.end("name"), TOKENS["name"]))
    for match in GIVEN_NAME_RE.finditer(text):
        given, family = match.group("given"), match.group("family")
        if given.lower() in GIVEN_NAMES and not _is_eponym(family, text[match.end():]) and not EPONYM_HEADS.match(text[match.end():]):
            spans.append(Span("name", match.start(), match.end(), TOKENS["name"]))
    return spans


def _age_spans(text: str) -> list[Span]:
    spans = []
    for regex, style in AGE_PATTERNS:
        for match in regex.finditer(text):
            if int(match.group("n")) < 90 or int(match.group("n")) > 130:
                continue
            if style == "token":
                spans.append(Span("age", match.start(), match.end(), TOKENS["age"]))
            elif style == "sex":
                spans.append(Span("age", match.start(), match.end(), f"{TOKENS['age']} {match.group('sex')}"))
            else:
                spans.append(Span("age", match.start("n"), match.end("n"), "90 or older"))
    return spans


def _regex_spans(kind: str, regex: re.Pattern, text: str, group: int | str = 0) -> list[Span]:
    return [Span(kind, m.start(group), m.end(group), TOKENS[kind]) for m in regex.finditer(text) if m.group(group)]


def _known_spans(text: str, known: Iterable[str]) -> list[Span]:
    spans = []
    for value in known:
        value = (value or "").strip()
        if len(value) < 3:
            continue
        for match in re.finditer(rf"(?<!\w){re.escape(value)}(?!\w)", text, re.IGNORECASE):
            spans.append(Span("known", match.start(), match.end(), TOKENS["known"]))
    return spans


# Kinds in priority order: when spans overlap, the longer wins; at equal length the earlier kind
# (a known value that is also a date reads "[date]", not "[redacted]").
PRIORITY = ["email", "url", "date", "age", "phone", "id", "address", "postcode", "institution", "name", "known"]


def find_identifiers(text: str, known: Iterable[str] = ()) -> list[Span]:
    """Non-overlapping identifier spans in ``text``, in text order."""
    candidates: list[Span] = []
    candidates += _known_spans(text, known)
    candidates += _regex_spans("email", EMAIL_RE, text)
    candidates += _regex_spans("url", URL_RE, text)
    candidates += _regex_spans("date", DATE_RE, text)
    candidates += _age_spans(text)
    candidates += _regex_spans("id", SSN_RE, text)
    candidates += _regex_spans("phone", PHONE_CUE_RE, text, 1)
    candidates += [s for s in _regex_spans("phone", PHONE_RE, text) if sum(c.isdigit() for c in text[s.start:s.end]) >= 9]
    candidates += _regex_spans("id", LABELLED_ID_RE, text, 1)
    candidates += _regex_spans("id", CODE_RE, text)
    candidates += _regex_spans("id", DIGITS_RE, text)
    candidates += _regex_spans("address", ADDRESS_RE, text)
    candidates += _regex_spans("address", PO_BOX_RE, text)
    for regex in POSTCODE_RES:
        candidates += _regex_spans("postcode", regex, text)
    candidates += _regex_spans("institution", INSTITUTION_RE, text)
    candidates += _regex_spans("institution", LABELLED_INSTITUTION_RE, text, "name")
    candidates += _name_spans(text)

    rank = {kind: i for i, kind in enumerate(PRIORITY)}
    chosen: list[Span] = []
    for span in sorted(candidates, key=lambda s: (-(s.end - s.start), rank[s.kind], s.start)):
        if span.end > span.start and all(span.end <= c.start or span.start >= c.end for c in chosen):
            chosen.append(span)
    # "[name] [name]" (a title phrase then the name) reads as one name.
    merged: list[Span] = []
    for span in sorted(chosen, key=lambda s: s.start):
        if merged and merged[-1].kind == span.kind == "name" and not text[merged[-1].end : span.start].strip():
            merged[-1] = Span("name", merged[-1].start, span.end, TOKENS["name"])
        else:
            merged.append(span)
    return merged


def scrub_text(text: str | None, known: Iterable[str] = ()) -> ScrubResult:
    """``text`` with every identifier found replaced by its neutral token."""
    if not text:
        return ScrubResult(text or "", ())
    spans = find_identifiers(text, known)
    pieces, cursor = [], 0
    for span in spans:
        pieces.append(text[cursor : span.start])
        pieces.append(span.replacement)
        cursor = span.end
    pieces.append(text[cursor:])
    return ScrubResult("".join(pieces), tuple(spans))


def deidentify_text(text: str | None, known: Iterable[str] = ()) -> str:
    """The de-identified text alone (see ``scrub_text``)."""
    return scrub_text(text, known).text
