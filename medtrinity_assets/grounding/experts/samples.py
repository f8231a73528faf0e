"""Training samples for an expert: normalized images with the union of their target annotations.

Samples come from the data root the pipeline already wrote (normalized_images + rois, with the
patient hash and label state from raw_records), never from the raw files, so an expert learns
exactly the pixels and masks the rest of the pipeline describes. Records the source declares
normal (label_state ``normal``, e.g. the BUSI ``normal`` folder) join as negatives with an empty
mask; records with neither a target annotation nor a normal statement are left out (unknown is
never normal: an unannotated image may hold an unmarked lesion).

Memory: every sample's image and mask are decoded into RAM (uint8 / bool at the normalized size,
at most 512 px a side): about 0.9 GB for the 1,000 Kvasir-SEG images. A record's per-object
instance masks share the union array when it has one object.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

from medtrinity_assets.catalog.shards import partitions_on_disk
from medtrinity_assets.splits import SPLIT_VERSION, patient_split
from medtrinity_assets.duckdb_sql import connect, literal as sql_literal, read_parquet
from medtrinity_assets.grounding.experts.base import ExpertError, Sample
from medtrinity_assets.grounding.experts.spec import ExpertSpec
from medtrinity_assets.paths import DataRoot
from medtrinity_assets.storage import BlobStore
from medtrinity_assets.sources.label_state import NORMAL

# ROI origins that are annotations (whole_image is not; model ROIs never train an expert).
ANNOTATION_ORIGINS = ("annotation:mask", "annotation:contour", "annotation:box")


def _root(data_root) -> DataRoot:
    return data_root if isinstance(data_root, DataRoot) else DataRoot(Path(data_root))


def _label_filter(spec: ExpertSpec) -> str:
    origins = ", ".join(sql_literal(o) for o in ANNOTATION_ORIGINS)
    where = f"origin IN ({origins})"
    if spec.train_labels:
        where += f" AND label IN ({', '.join(sql_literal(l) for l in spec.train_labels)})"
    return where


def train_source_ids(spec: ExpertSpec, catalog: dict, data_root) -> list[str]:
    """The partitions an expert learns from: ``spec.train_sources`` when given, else every source
    of the spec's modality whose rois table holds a target annotation (mask, contour or box)."""
    root = _root(data_root)
    if spec.train_sources:
        unknown = [s for s in spec.train_sources if s not in catalog]
        if unknown:
            raise ExpertError(f"expert {spec.id}: train_sources {unknown} are not in the catalog")
        return list(spec.train_sources)
    found = []
    con = connect()
    for source_id in sorted(catalog):
        if spec.modality not in source_modalities(catalog[source_id]):
            continue
        tables = source_tables(root, "rois", source_id)
        if not tables:
            continue
        count = con.execute(
            f"SELECT count(*) FROM {read_parquet(tables)} WHERE {_label_filter(spec)}"
        ).fetchone()[0]
        if count:
            found.append(source_id)
    return found


def source_tables(root: DataRoot, stage: str, source_id: str) -> list[Path]:
    """A source's tables of one stage: one per partition (every shard of a sharded source)."""
    return [root.table(stage, key) for key in partitions_on_disk(root.table(stage, source_id).parent, source_id)]


def source_modalities(source) -> set[str]:
    """Every modality a source's records may have (its own, and its per-file rules')."""
    return {source.modality, *getattr(source, "modality_by_path", {}).values()}


def split_of(spec: ExpertSpec, patient_hash: str | None, record_id: str) -> str:
    """'train' or 'val' by the dataset's patient rule ('val' and 'test' both validate here);
    ``split: record`` applies the same rule to the record id."""
    key = patient_hash if spec.split == "patient" else record_id
    if not key:
        raise ExpertError(f"expert {spec.id}: record {record_id} has no patient hash; use split: record for a one-subject source")
    return "train" if patient_split(key) == "train" else "val"


def dataset_split(spec: ExpertSpec, sample: Sample) -> str:
    """The dataset's own split name of a sample ('train', 'val' or 'test')."""
    return patient_split(sample.patient_hash if spec.split == "patient" else sample.record_id)


def _png(root: DataRoot, rel: str) -> np.ndarray:
    with Image.open(BlobStore(root.root).path(rel)) as image:  # a local copy when the root is an object store
        return np.asarray(image)


def _rows(con, sql: str) -> list[dict]:
    cursor = con.execute(sql)
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]


def _source_samples(spec: ExpertSpec, root: DataRoot, source_id: str, counts: dict) -> list[tuple[str, Sample]]:
    # Every shard of a sharded source (catalog/shards.py): the expert learns from the whole source.
    tables = {name: source_tables(root, name, source_id) for name in ("raw_records", "normalized_images", "rois")}
    for name, paths in tables.items():
        if not paths:
            raise ExpertError(
                f"expert {spec.id}: {root.table(name, source_id)} does not exist (nor a table per shard): "
                f"materialize {name} for partition {source_id} first"
            )
    con = connect()
    lit = {name: read_parquet(paths) for name, paths in tables.items()}
    records = _rows(
        con,
        f"""
        SELECT n.record_id, n.image_path, n.height, n.width, r.patient_hash, r.label_state
        FROM {lit['normalized_images']} n
        JOIN {lit['raw_records']} r USING (record_id)
        -- a source mixing modalities (modality_by_path) trains each expert on its own images only
        WHERE coalesce(r.modality, {sql_literal(spec.modality)}) = {sql_literal(spec.modality)}
        ORDER BY n.record_id
        """,
    )
    rois = _rows(
        con,
        f"""
        SELECT record_id, roi_id, label, origin, mask_path, x0, y0, x1, y1
        FROM {lit['rois']}
        WHERE mask_path IS NOT NULL AND origin IN ({', '.join(sql_literal(o) for o in ANNOTATION_ORIGINS)})
        ORDER BY record_id, roi_id
        """,
    )
    by_record: dict[str, list[dict]] = defaultdict(list)
    for roi in rois:
        by_record[roi["record_id"]].append(roi)
    wanted = set(spec.train_labels)
    out = []
    for record in records:
        annotated = by_record.get(record["record_id"], [])
        target = [r for r in annotated if not wanted or r["label"] in wanted]
        if not target:
            # Another label's annotation says nothing about the target's absence; only a
            # source-declared normal image is a negative.
            if annotated or record["label_state"] != NORMAL:
                counts["skipped"] += 1
                continue
        image = _png(root, record["image_path"])
        shape = image.shape[:2]
        masks = []
        for roi in target:
            mask = _png(root, roi["mask_path"]) != 0
            if mask.shape != shape:
                raise ExpertError(
                    f"expert {spec.id}: ROI mask {root.root / roi['mask_path']} is {mask.shape}, its image "
                    f"{root.root / record['image_path']} is {shape}: rerun the rois stage of {source_id}"
                )
            masks.append(mask)
        union = np.logical_or.reduce(masks) if masks else np.zeros(shape, dtype=bool)
        instances = (union,) if len(masks) == 1 else tuple(masks)
        boxes = tuple((int(r["x0"]), int(r["y0"]), int(r["x1"]), int(r["y1"])) for r in target)
        sample = Sample(
            record_id=record["record_id"], source_id=source_id, patient_hash=record["patient_hash"] or "",
            image=image, mask=union, boxes=boxes, instances=instances,
        )
        counts["positives" if masks else "negatives"] += 1
        out.append((split_of(spec, record["patient_hash"], record["record_id"]), sample))
    return out


def required_train_sources(spec: ExpertSpec, catalog: dict, data_root) -> list[str]:
    """train_source_ids, or ExpertError saying what to materialize when there is none."""
    sources = train_source_ids(spec, catalog, _root(data_root))
    if not sources:
        labels = f" labelled {spec.train_labels}" if spec.train_labels else ""
        raise ExpertError(
            f"expert {spec.id}: no partition of modality {spec.modality} has mask, contour or box ROIs{labels}: "
            "materialize rois for an annotated source of that modality, or name train_sources"
        )
    return sources


def annotated_samples(spec: ExpertSpec, data_root, catalog: dict) -> tuple[list[Sample], list[Sample], dict]:
    """(train, val, info) like training_samples, without requiring both sides to be non-empty
    (a brought expert is evaluated on whatever annotated images there are)."""
    root = _root(data_root)
    sources = required_train_sources(spec, catalog, root)
    counts: dict = defaultdict(int)
    train: list[Sample] = []
    val: list[Sample] = []
    for source_id in sources:
        for split, sample in _source_samples(spec, root, source_id, counts):
            (train if split == "train" else val).append(sample)
    key = (lambda s: s.patient_hash) if spec.split == "patient" else (lambda s: s.record_id)
    counts.update(
        train_images=len(train), val_images=len(val),
        train_patients=len({key(s) for s in train}), val_patients=len({key(s) for s in val}),
    )
    info = {"sources": sources, "split": {"by": spec.split, "rule": SPLIT_VERSION, "train": "train", "val": ["val", "test"]},
            "counts": dict(counts)}
    return train, val, info


def training_samples(spec: ExpertSpec, data_root, catalog: dict) -> tuple[list[Sample], list[Sample], dict]:
    """(train, val, info) for an expert. info: sources, split (rule and version), counts."""
    train, val, info = annotated_samples(spec, data_root, catalog)
    if not train or not val:
        counts = info["counts"]
        unit = "patients" if spec.split == "patient" else "records"
        raise ExpertError(
            f"expert {spec.id}: the {spec.split} split left {len(train)} training and {len(val)} validation images "
            f"({counts['train_patients']} + {counts['val_patients']} {unit}) from {info['sources']}: an expert needs both; "
            "add annotated partitions (about 80% of patients train, 20% validate)"
        )
    return train, val, info
