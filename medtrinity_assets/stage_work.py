"""The per-record work of the CPU stages, as module-level functions a worker process can run
(``parallel``): each takes the stage's job settings (sent once per worker) and one upstream row,
writes its blobs, and returns what the stage writes for that row. ``stages`` writes the results
in input order, so a partition's table is the same for any number of workers.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
from PIL import Image

from medtrinity_assets.catalog import SourceSpec
from medtrinity_assets.paths import DataRoot
from medtrinity_assets.storage import BlobStore


@dataclass(frozen=True)
class NormalizeJob:
    spec: SourceSpec
    data_root: DataRoot  # pickled whole: a worker reopens an object-store root (DataRoot.__reduce__)
    max_side: int


@dataclass(frozen=True)
class NormalizedRow:
    row: dict  # a NORMALIZED_IMAGES row
    burned_in_present: bool
    burned_in_kinds: tuple[str, ...]


@dataclass(frozen=True)
class RecordProblem:
    """A record the stage quarantines, with the reason (``kind`` stage_error)."""

    reason: str


def normalize_record(job: NormalizeJob, record: dict) -> NormalizedRow | RecordProblem:
    """Intensity, resize, PNG blob, burned-in text check and perceptual hash of one record."""
    from medtrinity_assets.imaging.burned_in import detect_burned_in
    from medtrinity_assets.imaging.normalize import encode_png, normalize_pixels
    from medtrinity_assets.imaging.phash import phash
    from medtrinity_assets.sources.base import describe_error

    blobs = BlobStore(job.data_root.root)
    try:
        normalized = normalize_pixels(blobs.get_array(record["pixel_ref"]), record, job.spec.intensity_rule(), max_side=job.max_side)
        digest, rel = blobs.put("images", encode_png(normalized.display), "png")
    except Exception as error:
        return RecordProblem(f"cannot normalize: {describe_error(error)}")
    display = normalized.display
    try:
        burned_in = detect_burned_in(display)
    except Exception as error:
        # An image nobody could check for burned-in text must not reach training unseen.
        return RecordProblem(f"cannot check for burned-in text: {describe_error(error)}")
    row = {
        "record_id": record["record_id"],
        "source_id": job.spec.id,
        "image_sha256": digest,
        "image_path": rel,
        "height": int(display.shape[0]),
        "width": int(display.shape[1]),
        "channels": int(display.shape[2]) if display.ndim == 3 else 1,
        "scale": float(normalized.scale),
        "intensity_method": normalized.intensity_method,
        "phash": phash(display),
        "burned_in": burned_in.to_json(),
    }
    return NormalizedRow(row, bool(burned_in.present), tuple(sorted(set(burned_in.kinds))) if burned_in.present else ())


@dataclass(frozen=True)
class GroundJob:
    spec: SourceSpec
    data_root: DataRoot


def ground_one(job: GroundJob, record: dict) -> tuple[list[dict], list[str], Counter]:
    """The ROIs of one record with their relations, the annotation problems, and the record's
    share of the stage's tallies (summed by the stage)."""
    from medtrinity_assets.grounding.relations import relate
    from medtrinity_assets.grounding.rois import ground_record

    blobs = BlobStore(job.data_root.root)
    tally: Counter = Counter()
    with Image.open(blobs.path(record["image_path"])) as image:
        pixels = np.asarray(image)
    rois, problems = ground_record(record, pixels, record["scale"], blobs, job.spec, tally)
    relate(rois)
    return rois, problems, tally
