"""Triplets files for tests: rows in the TRIPLETS schema with real PNG images stored by their
sha256 under the data root, as the pipeline's normalize and triplets stages leave them."""

from __future__ import annotations

import hashlib
import io
import json
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from medtrinity_assets import schemas
from medtrinity_assets.paths import DataRoot
from medtrinity_assets.splits import patient_split
from medtrinity_assets.storage import write_table


def put_png(root: DataRoot, seed: int, size: int = 24) -> tuple[str, str]:
    """A PNG stored by its sha256 as the normalize stage stores them; (path, sha256)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    data = buffer.getvalue()
    sha = hashlib.sha256(data).hexdigest()
    rel = f"blobs/images/{sha[:2]}/{sha}.png"
    (root.root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root.root / rel).write_bytes(data)
    return rel, sha


def seed_of(source_id: str, n: int) -> int:
    return zlib.crc32(f"{source_id}/{n}".encode())


def triplet(root: DataRoot, source_id: str, n: int, *, seed: int | None = None, verified: bool = True,
            flags: list[str] | None = None, labels: list[str] | None = None, description: str | None = None,
            patient: str | None = None) -> dict:
    image_path, sha = put_png(root, seed if seed is not None else seed_of(source_id, n))
    record_id = f"{source_id.replace('.', '_')}_{n:03d}"
    patient = patient or f"{source_id}-p{n % 4}"
    box = [2, 3, 12 + n % 5, 14]
    return {
        "record_id": record_id, "source_id": source_id.split(".")[0], "image_path": image_path,
        "image_sha256": sha, "phash": f"{(int(sha[:16], 16)):016x}", "height": 24, "width": 24,
        "modality": "endoscopy", "organs": ["colon"], "labels": labels if labels is not None else ["polyp"],
        "rois": json.dumps([{"roi_id": f"{record_id}-r0", "label": "polyp", "origin": "annotation:mask", "box": box}]),
        "primary_roi_id": f"{record_id}-r0", "coarse_caption": "Endoscopy of the colon.",
        "description": description or f"Image {n} of {source_id}: a polyp in the upper left.",
        "source_text": None, "verified": verified,
        "verifier_flags": [] if verified else ["side: says right, ROI is left"], "flags": flags or [],
        "patient_hash": patient, "split": patient_split(patient), "license": "CC BY 4.0",
        "provenance": json.dumps({"source_file": f"images/{n}.png", "slice_index": -1}),
        "label_state": "finding", "facts": json.dumps([{"attribute": "finding", "value": "polyp"}]),
    }


def write_triplets(root: DataRoot, partition: str, rows: list[dict]) -> Path:
    path = root.table("triplets", partition)
    write_table(path, schemas.TRIPLETS, rows)
    return path
