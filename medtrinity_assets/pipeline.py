"""The stage registry: every stage of the pipeline, in order, with everything that names it.

One entry per stage gives its name, its table schema, its upstream stages, the function that
runs it, the checks that guard its table and whether it writes quarantine rows. The name is the
only name a stage has: its asset key, its table folder (``tables/<name>/``), its quarantine
stage (``tables/quarantine/<name>/``, the ``stage`` column of quarantine rows) and its report
name. The Dagster assets (defs/assets.py), the benchmark (bench.py), the SQL models' refs and
the tests all iterate ``STAGES``; adding a stage is its functional module plus one entry here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pyarrow as pa

from medtrinity_assets import paths, schemas, stages
from medtrinity_assets.catalog import SourceSpec
from medtrinity_assets.generation.writers import WriterConfig
from medtrinity_assets.paths import DataRoot
from medtrinity_assets.quality import checks as qc
from medtrinity_assets.quality.checks import CheckDef, CheckOutcome, CheckTarget


@dataclass(frozen=True)
class StageInputs:
    """What a runner may need; a partitioned stage gets its source's spec."""

    data_root: DataRoot
    spec: SourceSpec | None = None
    salt: str = ""
    knowledge_folder: Path | None = None
    source_ids: tuple[str, ...] = ()
    writer: WriterConfig | None = None  # the descriptions stage's writer (None: grounded)
    experts_folder: Path | None = None  # the expert specs (None: paths.experts_dir())


def _expert_asset_keys() -> tuple[str, ...]:
    """The expert model assets (expert_<id>, one per spec under paths.experts_dir())."""
    from medtrinity_assets.grounding.experts.spec import load_experts_each

    return tuple(f"expert_{expert_id}" for expert_id in sorted(load_experts_each(paths.experts_dir())[0]))


def _run_model_rois(inputs: StageInputs) -> stages.StageReport:
    from medtrinity_assets.grounding.experts.spec import load_experts_each

    folder = inputs.experts_folder or paths.experts_dir()
    experts, broken = load_experts_each(folder)
    report = stages.run_model_rois(inputs.spec, inputs.data_root, experts, folder)
    if broken:  # shown in the asset's metadata; the partition still gets its table
        report.extra["expert_specs_left_out"] = broken
    return report


@dataclass(frozen=True)
class Stage:
    name: str
    schema: pa.Schema
    upstream: tuple[str, ...]
    run: Callable[[StageInputs], stages.StageReport]
    checks: tuple[CheckDef, ...]
    description: str
    partitioned: bool = True
    quarantines: bool = True  # writes tables/quarantine/<name>/<source>.parquet
    kinds: frozenset[str] = field(default_factory=lambda: frozenset({"parquet", "duckdb"}))
    # The table on disk when it is not tables/<name> (the knowledge base's chunks).
    table_name: str | None = None
    # Runs a writer (generation/writers.py): the asset gets the writer resource, and its Dagster
    # concurrency pool bounds how many partitions call a model endpoint at once, across runs.
    uses_writer: bool = False
    pool: str | None = None
    # Asset keys the stage also reads that are not stages, known when the definitions load
    # (model_rois: one expert_<id> asset per expert spec). None: only ``upstream``.
    extra_deps: Callable[[], tuple[str, ...]] | None = None

    def table(self, root: DataRoot, partition: str | None) -> Path:
        return root.table(self.table_name or self.name, partition)

    def check_target(self, root: DataRoot, partition: str | None) -> CheckTarget:
        quarantine = root.quarantine(self.name, partition) if self.quarantines and partition else None
        return CheckTarget(root, self.table(root, partition), quarantine)


STAGES: tuple[Stage, ...] = (
    Stage(
        "raw_records", schemas.RAW_RECORDS, (),
        lambda i: stages.run_ingest(i.spec, i.data_root, i.salt),
        (
            qc.row_count(),
            qc.not_null(["record_id", "source_id", "source_file", "modality", "pixel_ref", "height", "width"]),
            qc.unique_key(["record_id"]),
            *qc.quarantine_checks(),
        ),
        "Ingest: one record per 2D image read from the source's own layout; protected health "
        "information stripped here (salted patient hash kept); unreadable files quarantined with a reason.",
    ),
    Stage(
        "normalized_images", schemas.NORMALIZED_IMAGES, ("raw_records",),
        lambda i: stages.run_normalize(i.spec, i.data_root),
        (
            qc.not_null(["record_id", "image_sha256", "image_path", "phash", "height", "width"]),
            qc.unique_key(["record_id"]),
            *qc.quarantine_checks(),
        ),
        "Normalize: modality-aware intensity (CT windows, MR/X-ray percentiles, PET SUV, photos "
        "passed through), bounded size, content-addressed PNG, perceptual hash.",
    ),
    Stage(
        "rois", schemas.ROIS, ("normalized_images",),
        lambda i: stages.run_ground(i.spec, i.data_root),
        (
            qc.not_null(["roi_id", "record_id", "origin", "x0", "y0", "x1", "y1", "image_width", "image_height"]),
            qc.unique_key(["roi_id"]),
            qc.rois_inside_image(),
            *qc.quarantine_checks(),
        ),
        "Ground: regions of interest from the source's annotations with measured attributes "
        "(position, size, shape, intensity, texture, margin, colour, count) and relations.",
    ),
    Stage(
        "model_rois", schemas.MODEL_ROIS, ("normalized_images", "rois"),
        _run_model_rois,
        (
            qc.not_null(["roi_id", "record_id", "origin", "expert_id", "x0", "y0", "x1", "y1", "image_width", "image_height"]),
            qc.unique_key(["roi_id"]),
            qc.model_rois_well_formed(),
            qc.model_iou_on_annotated(),
            # The rate over the normalized images: this table has rows only where a model found
            # something, so it is no count of the stage's inputs.
            qc.quarantine_rate(records_table="normalized_images"),
            qc.quarantine_kinds(),
        ),
        "Expert models' ROIs: every expert that applies to the source (data/experts/) run on each "
        "normalized image; the ROIs are measured like annotation ROIs and used for records without "
        "annotation (origin model:<expert>, confidence = score); on annotated records their IoU "
        "against the annotation is the drift check.",
        kinds=frozenset({"parquet", "duckdb", "pytorch"}), extra_deps=_expert_asset_keys,
        # Loads every applicable expert network: the pool bounds how many partitions hold them
        # (on the GPU where there is one) at once, across runs.
        pool="gpu",
    ),
    Stage(
        "facts", schemas.FACTS, ("rois", "model_rois"),
        lambda i: stages.run_facts(i.spec, i.data_root),
        (
            qc.not_null(["record_id", "attribute", "value", "provenance", "confidence"]),
            qc.provenance_values(),
            qc.patient_side_from_geometry(),
            *qc.quarantine_checks(),
        ),
        "Facts: everything a description may say about each record and ROI (modality, organs, label "
        "state, view, sides from geometry, sizes in the exported frame, measured attributes, publisher text), one "
        "row per fact with its provenance and confidence.",
    ),
    Stage(
        "coarse_captions", schemas.COARSE_CAPTIONS, ("rois", "model_rois"),
        lambda i: stages.run_coarse_captions(i.spec, i.data_root),
        (
            qc.not_null(["record_id", "coarse_caption", "caption_version"]),
            qc.unique_key(["record_id"]),
            *qc.quarantine_checks(),
        ),
        "Coarse caption: metadata to one sentence (modality, organ, finding, ROI position).",
    ),
    Stage(
        "knowledge_base", schemas.KNOWLEDGE_CHUNKS, (),
        lambda i: stages.run_knowledge_base(i.data_root, i.knowledge_folder),
        (qc.row_count(), qc.not_null(["chunk_id", "entry_id", "text"]), qc.unique_key(["chunk_id"])),
        "Knowledge base: the project's medical knowledge corpus, chunked, embedded with the local "
        "all-MiniLM-L6-v2 model and stored in a persistent Chroma collection.",
        partitioned=False, quarantines=False, kinds=frozenset({"chroma"}), table_name="knowledge_chunks",
    ),
    Stage(
        "retrieved_knowledge", schemas.RETRIEVED_KNOWLEDGE, ("facts", "knowledge_base"),
        lambda i: stages.run_retrieval(i.spec, i.data_root),
        (qc.not_null(["record_id", "query", "knowledge_ids"]), qc.unique_key(["record_id"])),
        "Knowledge retrieval: passages per record from the Chroma store, filtered by modality and organ.",
        quarantines=False,
    ),
    Stage(
        "descriptions", schemas.DESCRIPTIONS, ("facts", "coarse_captions", "retrieved_knowledge"),
        lambda i: stages.run_descriptions(i.spec, i.data_root, i.writer),
        (
            qc.not_null(["record_id", "description", "verified", "writer"]),
            qc.unique_key(["record_id"]),
            qc.five_parts(),
            qc.contradiction_rate(),
            qc.fallback_rate(),
            *qc.quarantine_checks(),
        ),
        "Describe: MedTrinity's five-part description written from the facts by the configured writer "
        "(grounded templates, or a language / vision model through an OpenAI-compatible endpoint), "
        "then read back sentence by sentence by the verifier (unsupported claims flagged, never shipped for training).",
        uses_writer=True, pool="llm",
    ),
    Stage(
        "triplets", schemas.TRIPLETS, ("descriptions",),
        lambda i: stages.run_triplets(i.spec, i.data_root),
        (
            qc.row_count(),
            qc.not_null(["record_id", "image_path", "image_sha256", "primary_roi_id", "description", "split", "license"]),
            qc.unique_key(["record_id"]),
            qc.split_values(),
            qc.patient_single_split(),
            qc.source_text_kept_apart(),
        ),
        "Assemble: image - ROI - description triplets with provenance and a patient-level split.",
        quarantines=False,
    ),
    Stage(
        "medtrinity_dataset", schemas.DATASET, ("triplets",),
        lambda i: stages.run_dataset(i.data_root, list(i.source_ids)),
        (
            qc.unique_key(["record_id"]),
            qc.not_null(["record_id", "source_id", "image_path", "description", "split", "license"]),
            qc.patient_single_split("duplicate_of IS NULL", "Among non-duplicate rows, no patient has images in two splits."),
            qc.duplicate_label_conflicts(),
            qc.duplicate_cross_patient(),
        ),
        "The final dataset over all materialized sources: cross-source deduplication, patient-level "
        "splits, Parquet plus LLaVA-style conversation JSONL exports and a dataset card.",
        partitioned=False, quarantines=False,
    ),
)

STAGE = {stage.name: stage for stage in STAGES}
# The per-source tables, in pipeline order (one Parquet file per source under tables/<name>/).
PARTITION_TABLES = tuple(stage.name for stage in STAGES if stage.partitioned)


def checks_for(name: str) -> list[CheckDef]:
    """The checks registered for a stage (empty for a name that is no stage)."""
    return list(STAGE[name].checks) if name in STAGE else []


def run_checks(name: str, data_root: DataRoot, partition: str | None) -> list[CheckOutcome]:
    """Run every check of a stage for one partition (None: unpartitioned stage)."""
    stage = STAGE[name]
    return qc.run_check_set(stage.checks, stage.check_target(data_root, partition))
