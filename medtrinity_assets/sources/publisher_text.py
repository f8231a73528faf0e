"""Publisher text and per-image metadata from label tables: de-identified, normalized.

A label table may carry free text (clinical notes, reports, captions) and per-image metadata
(view, sex, age) beside its labels. The spec declares those columns (``text_columns``,
``identifying_columns``, ``metadata_columns`` of the image_csv layout); this module turns one
row's cells into what a record may hold:

- ``row_source_text``: the text columns through the free-text de-identification pass, as
  {"captions": [...], "qa": [], "notes": [...], "reports": [...]} (empty kinds left out, the
  two keys every source_text has kept);
- ``row_metadata``: ``view`` (PA, AP, AP supine, lateral, ...), ``sex`` (female | male) and
  ``age_band`` ("40-49", "90+"). The exact age never leaves this module.

Unrecognised values give null, never a guess: "O", "Unknown", "EXCLUDE" say nothing usable.
"""

from __future__ import annotations

import re
from typing import Mapping

from medtrinity_assets.catalog.layouts.tabular import ImageCsvLayout, MetadataColumns
from medtrinity_assets.imaging.deid_text import deidentify_text

# Publisher spellings (lower case, spaces and "_" / "-" folded to one space) -> view word.
VIEW_SPELLINGS = {
    "pa": "PA", "posteroanterior": "PA", "postero anterior": "PA", "pa erect": "PA",
    "ap": "AP", "anteroposterior": "AP", "antero posterior": "AP", "ap erect": "AP",
    "ap supine": "AP supine", "ap horizontal": "AP supine", "supine ap": "AP supine", "ap lying": "AP supine",
    "l": "lateral", "ll": "lateral", "rl": "lateral", "lat": "lateral", "lateral": "lateral",
    "left lateral": "lateral", "right lateral": "lateral", "latero lateral": "lateral",
    "frontal": "frontal",
    "oblique": "oblique",
    "axial": "axial", "coronal": "coronal", "sagittal": "sagittal",
    "cc": "CC", "craniocaudal": "CC", "cranio caudal": "CC",
    "mlo": "MLO", "mediolateral oblique": "MLO", "medio lateral oblique": "MLO",
}
SEX_SPELLINGS = {
    "f": "female", "female": "female", "woman": "female", "w": "female", "fem": "female",
    "m": "male", "male": "male", "man": "male",
}
MAX_PLAUSIBLE_AGE = 125  # ChestX-ray14 has ages such as 413: a typo is no age


def _fold(value: str) -> str:
    return re.sub(r"[\s_\-]+", " ", value.strip().lower())


def normalize_view(raw: str | None, extra: Mapping[str, str] | None = None) -> str | None:
    """The view word for a publisher's spelling ("AP Supine" -> "AP supine", "L" -> "lateral")."""
    if not raw or not raw.strip():
        return None
    folded = _fold(raw)
    for spelling, word in (extra or {}).items():
        if _fold(spelling) == folded:
            return word
    return VIEW_SPELLINGS.get(folded)


def normalize_sex(raw: str | None) -> str | None:
    return SEX_SPELLINGS.get(_fold(raw)) if raw else None


def parse_age_years(raw: str | None) -> float | None:
    """Age in years from "54", "54.0", "058Y", "006M" (months), "10D" (days); None if not an age."""
    if raw is None:
        return None
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([YyMmWwDd])?\s*", str(raw))
    if not match:
        return None
    number = float(match.group(1))
    unit = (match.group(2) or "Y").upper()
    years = number / {"Y": 1, "M": 12, "W": 52.18, "D": 365.25}[unit]
    return years if 0 <= years <= MAX_PLAUSIBLE_AGE else None


def age_band(years: float | None) -> str | None:
    """Decade band of an age: "0-9", ..., "80-89"; "90+" for 90 and over (HIPAA: no finer)."""
    if years is None:
        return None
    if years >= 90:
        return "90+"
    low = int(years // 10) * 10
    return f"{low}-{low + 9}"


def _age_from_birth_year(birth_year: str | None, study_date: str | None) -> float | None:
    birth = re.match(r"\s*((?:18|19|20)[0-9]{2})", birth_year or "")
    study = re.match(r"\s*((?:19|20)[0-9]{2})", study_date or "")
    if not birth or not study:
        return None
    years = int(study.group(1)) - int(birth.group(1))
    return float(years) if 0 <= years <= MAX_PLAUSIBLE_AGE else None


def row_metadata(columns: MetadataColumns | None, row: Mapping[str, str]) -> dict:
    """{"view", "sex", "age_band"} of one table row (each None when absent or unrecognised)."""
    if columns is None:
        return {"view": None, "sex": None, "age_band": None}
    view = next((v for v in (normalize_view(row.get(c), columns.view_map) for c in columns.view) if v), None)
    sex = normalize_sex(row.get(columns.sex)) if columns.sex else None
    if columns.age:
        years = parse_age_years(row.get(columns.age))
    elif columns.birth_year:
        years = _age_from_birth_year(row.get(columns.birth_year), row.get(columns.study_date))
    else:
        years = None
    return {"view": view, "sex": sex, "age_band": age_band(years)}


def row_known_identifiers(layout: ImageCsvLayout, row: Mapping[str, str], patient_column: str | None) -> list[str]:
    """Values of the row that identify it and must not survive in its text: the identifying
    columns (whole and comma-separated parts: "Myongji Hospital, Goyang, South Korea") and the
    patient id."""
    known: list[str] = []
    for column in [*layout.identifying_columns, *([patient_column] if patient_column else [])]:
        value = (row.get(column) or "").strip()
        if value:
            known.append(value)
            known += [part.strip() for part in value.split(",") if len(part.strip()) >= 4]
    return known


def row_source_text(layout: ImageCsvLayout, row: Mapping[str, str], known: list[str]) -> dict | None:
    """The de-identified text columns of one row as a source_text dict; None when all are empty."""
    text: dict[str, list[str]] = {}
    for kind, columns in layout.text_columns.items():
        for column in columns:
            value = (row.get(column) or "").strip()
            if value:
                text.setdefault(kind, []).append(deidentify_text(value, known))
    if not text:
        return None
    return {"captions": text.pop("captions", []), "qa": [], **text}
