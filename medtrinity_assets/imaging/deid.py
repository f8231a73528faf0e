"""The PHI boundary of ingest: what may leave a DICOM (or NIfTI) read, and a leak detector.

Only pixels and the small allowlist below ever leave ``dicom_io``; everything else in the header
(names, ids, dates, institutions, free text) is never copied into a record, a quarantine reason
or a log. The patient id is read for one purpose: the salted hash in ``sources.base.patient_hash``.

Pixels themselves can carry burned-in text (ultrasound and secondary-capture screens often print
the institution or the patient's name). Detecting and masking it needs OCR and is a separate,
later step; readers keep ``BurnedInAnnotation`` out of the allowlist because a "NO" there is
often wrong, and the demo sources were chosen among files without identifying burned-in text.
"""

from __future__ import annotations

import gzip
import os
import re
import zlib
from pathlib import Path
from typing import Iterable, Optional

from medtrinity_assets.catalog.spec import PatientRule

# Technical, non-identifying attributes that the DICOM PS3.15 Annex E Basic Application Level
# Confidentiality Profile keeps ("K" or not listed): acquisition geometry, pixel encoding and
# rescale/window values. Anything not named here is dropped. The full profile (its Retain
# options, UID remapping, burned-in pixel cleaning) is a later issue.
ALLOWED_KEYWORDS: frozenset[str] = frozenset(
    {
        "Modality",
        "BodyPartExamined",
        "PixelSpacing",
        "ImagerPixelSpacing",
        "Rows",
        "Columns",
        "PhotometricInterpretation",
        "RescaleSlope",
        "RescaleIntercept",
        "RescaleType",
        "WindowCenter",
        "WindowWidth",
        "SliceThickness",
        "NumberOfFrames",
        "SamplesPerPixel",
        "BitsStored",
        "PixelRepresentation",
    }
)

# Read only to order slices and group files into series, in memory; never written anywhere.
# (UIDs and positions are not names, but a UID can link back to the hospital's archive.)
GROUPING_ONLY_KEYWORDS: frozenset[str] = frozenset(
    {"SeriesInstanceUID", "ImagePositionPatient", "ImageOrientationPatient", "InstanceNumber"}
)

# Read only to compute a PET SUV scale factor in memory; only the factor leaves.
SUV_INPUT_KEYWORDS: frozenset[str] = frozenset(
    {
        "Units",
        "DecayCorrection",
        "PatientWeight",
        "SeriesTime",
        "AcquisitionTime",
        "RadiopharmaceuticalInformationSequence",
    }
)


def patient_identifier(rule: PatientRule, relative_path: str, dicom_patient_id: Optional[str] = None) -> str:
    """The raw patient key of one file, to be hashed at once by ``patient_hash``.

    A missing DICOM PatientID (or a rule that does not match) falls back to the file path:
    each such file is then its own patient, which can only make splits stricter, never leak.
    """
    if rule.source == "dicom" and dicom_patient_id and dicom_patient_id.strip():
        return dicom_patient_id.strip()
    parts = Path(relative_path).parts
    if rule.source == "folder" and len(parts) > rule.folder_depth + 1:
        return parts[rule.folder_depth]
    if rule.source == "regex" and rule.pattern:
        match = re.search(rule.pattern, relative_path)
        if match:
            return match.group(1) if match.groups() else match.group(0)
    return relative_path


def _encodings(identifier: str) -> list[bytes]:
    # DICOM stores names in ASCII/UTF-8/Latin-1; SQLite (Chroma) and some writers use UTF-16LE.
    lowered = identifier.lower()
    forms = {lowered.encode("utf-8"), lowered.encode("utf-16-le")}
    return sorted(forms)


def _files_under(paths: Iterable[Path]) -> Iterable[Path]:
    for path in paths:
        path = Path(path)
        if path.is_file():
            yield path
        elif path.is_dir():
            for folder, _, names in os.walk(path):
                for name in sorted(names):
                    yield Path(folder) / name


def scan_for_identifiers(paths: Iterable[Path], identifiers: Iterable[str], chunk_bytes: int = 1 << 22) -> list[tuple[Path, str]]:
    """Every (file, identifier) where a planted identifier appears in a file's bytes.

    Scans every file under the given folders whatever its format (Parquet, npy, PNG, JSON,
    DuckDB, Chroma's SQLite...), case-insensitively, in UTF-8 and UTF-16LE; gzip files also
    decompressed. Parquet and DuckDB
    may compress pages, so pipeline tests should also check decoded table values; this scan
    catches the uncompressed copies (dictionary pages, logs, SQLite, JSON, sidecars).
    """
    wanted = [(ident, form) for ident in identifiers for form in _encodings(ident)]
    longest = max((len(form) for _, form in wanted), default=1)
    hits: list[tuple[Path, str]] = []
    for file in _files_under(paths):
        found: set[str] = set()
        try:
            with open(file, "rb") as handle:
                _scan_stream(handle, wanted, longest, found, chunk_bytes)
            # gzip members (.nii.gz, .json.gz...) are scanned decompressed as well.
            with open(file, "rb") as handle:
                is_gzip = handle.read(2) == b"\x1f\x8b"
            if is_gzip:
                with gzip.open(file, "rb") as handle:
                    _scan_stream(handle, wanted, longest, found, chunk_bytes)
        except (OSError, EOFError, zlib.error):
            pass  # unreadable or corrupt compressed data: the raw bytes were still scanned
        hits.extend((file, ident) for ident in sorted(found))
    return hits


def _scan_stream(handle, wanted, longest: int, found: set[str], chunk_bytes: int) -> None:
    tail = b""
    while True:
        chunk = handle.read(chunk_bytes)
        if not chunk:
            return
        # Keep the end of the previous chunk so an identifier split across chunks is found.
        window = (tail + chunk).lower()
        for ident, form in wanted:
            if ident not in found and form in window:
                found.add(ident)
        tail = window[-(longest - 1):] if longest > 1 else b""
