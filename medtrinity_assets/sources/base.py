"""What every layout family reader shares: its context, its outputs, and quarantine.

A reader walks one source's files in the publisher's layout and yields, for each 2D image, a
row of ``schemas.RAW_RECORDS``; for each file it cannot use, a ``Quarantined`` with the reason.
It never raises for one bad file: the partition must finish.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Union

from medtrinity_assets.catalog.spec import SourceSpec
from medtrinity_assets.storage import BlobStore


@dataclass(frozen=True)
class IngestContext:
    spec: SourceSpec
    root: Path  # the source's folder (publisher layout)
    blobs: BlobStore  # where de-identified pixel arrays and masks go
    salt: str  # secret salt for patient hashes (MEDTRINITY_SALT)


@dataclass(frozen=True)
class Quarantined:
    source_file: str  # relative to the source root
    reason: str
    record_id: str | None = None


IngestItem = Union[dict, Quarantined]
IngestStream = Iterator[IngestItem]


def record_id_for(source_id: str, source_file: str, sequence: str | None, slice_index: int) -> str:
    """Stable id: the same file and slice give the same id on every run."""
    key = f"{source_id}\x1f{source_file}\x1f{sequence or ''}\x1f{slice_index}"
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:24]


def patient_hash(salt: str, source_id: str, patient_id: str) -> str:
    """Salted hash of a patient id: usable for patient-level splits, not reversible without the salt."""
    key = f"{salt}\x1f{source_id}\x1f{patient_id}"
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]
