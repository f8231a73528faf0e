"""Each pipeline stage run over one source partition: read the upstream tables, call the
functional core, write this stage's table and its quarantine rows.

This is the seam between the core (sources/, imaging/, grounding/, knowledge/, generation/,
dataset/) and the Dagster layer (defs/): everything here is plain Python, testable without
Dagster, and the assets in defs/ only call these functions and publish their reports.

Every stage streams: upstream rows are read in batches (DuckDB record-batch readers), outputs
are written in batches (storage.TableWriter), so memory does not grow with a partition's size.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np
from PIL import Image

from medtrinity_assets import schemas
from medtrinity_assets.catalog import SourceSpec, source_root
from medtrinity_assets.duckdb_sql import read_parquet, stream_rows
from medtrinity_assets.grounding.grounded_view import grounded_rois_sql  # the ROIs downstream stages read
from medtrinity_assets.paths import DataRoot
from medtrinity_assets.sources.base import describe_error, until_reader_error
from medtrinity_assets.storage import BlobStore, TableWriter, apply_modes, make_dirs, write_table

if TYPE_CHECKING:
    from medtrinity_assets.generation.writers import WriterConfig

@dataclass
class StageReport:
    """What one stage did on one partition: shown as Dagster metadata and in benchmarks."""

    stage: str
    source_id: str | None
    rows: int = 0
    inputs: int = 0
    quarantined: int = 0
    kinds: Counter = field(default_factory=Counter)  # quarantined rows by kind (sources.base.QUARANTINE_KINDS)
    seconds: float = 0.0
    output: str | None = None
    extra: dict = field(default_factory=dict)
    # The partition's key (catalog/shards.py) naming its tables and quarantine file; None: source_id.
    partition: str | None = None

    @property
    def rows_per_second(self) -> float:
        return self.inputs / self.seconds if self.seconds > 0 else 0.0


class _QuarantineLog:
    """Collects one stage's quarantine rows for one partition."""

    def __init__(self, writer: TableWriter, stage: str, source_id: str, report: StageReport):
        self.writer, self.stage, self.source_id, self.report = writer, stage, source_id, report

    def add(self, source_file: str | None, reason: str, record_id: str | None = None, *, kind: str) -> None:
        self.writer.write(
            {
                "source_id": self.source_id,
                "source_file": source_file,
                "record_id": record_id,
                "stage": self.stage,
                "kind": kind,
                "reason": reason,
            }
        )
        self.report.quarantined += 1
        self.report.kinds[kind] += 1


@contextmanager
def stage_tables(
    report: StageReport, data_root: DataRoot, out: Path, schema, quarantine: bool = True
) -> Iterator[tuple[TableWriter, _QuarantineLog | None]]:
    """Open a stage's output table (and its quarantine table, under the stage's one name);
    on success fill in the report."""
    started = time.perf_counter()
    with ExitStack() as stack:
        writer = stack.enter_context(TableWriter(out, schema))
        log = None
        if quarantine:
            q_writer = stack.enter_context(TableWriter(data_root.quarantine(report.stage, report.partition or report.source_id), schemas.QUARANTINE))
            log = _QuarantineLog(q_writer, report.stage, report.source_id, report)
        yield writer, log
    report.rows = writer.rows_written
    report.seconds = time.perf_counter() - started
    report.output = str(out)


def _each_record(rows: Iterator[dict], report: StageReport, quarantine, what: str, work) -> Iterator[tuple[dict, object]]:
    """(record, work(record)) for each row; a record whose work raises is quarantined as
    "cannot {what}" and the stage goes on with the next one."""
    for record in rows:
        report.inputs += 1
        try:
            result = work(record)
        except Exception as error:
            quarantine.add(record["source_file"], f"cannot {what}: {describe_error(error)}", record["record_id"], kind="stage_error")
            continue
        yield record, result


def _load_png(blobs: BlobStore, rel: str) -> np.ndarray:
    with Image.open(blobs.path(rel)) as image:
        return np.asarray(image)


def _require(path: Path, stage: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{stage} needs {path}, which does not exist: materialize the upstream asset first")
    return path


# --- Stage 1: ingest ---------------------------------------------------------------------


def run_ingest(spec: SourceSpec, data_root: DataRoot, salt: str) -> StageReport:
    from medtrinity_assets.catalog.shards import owns
    from medtrinity_assets.sources import IngestContext, Quarantined, read_source_in_workers
    from medtrinity_assets.sources.base import SHARD_PATH, pseudonymous_path, pseudonymous_quarantine, shard_path_of

    from medtrinity_assets.catalog.fingerprint import folder_fingerprint

    report = StageReport("raw_records", spec.id, partition=spec.partition)
    # Taken before reading, so a file that changes during the run makes the source stale
    # for the schedule instead of being recorded as already ingested.
    report.extra["input_fingerprint"] = folder_fingerprint(source_root(spec)) or ""
    ctx = IngestContext(spec=spec, root=source_root(spec), blobs=BlobStore(data_root.root), salt=salt, shard=spec.shard)
    out = data_root.table("raw_records", spec.partition)
    seen: set[str] = set()
    with stage_tables(report, data_root, out, schemas.RAW_RECORDS) as (records, log):

        def quarantine_add(source_file: str | None, reason: str, record_id: str | None = None, *, kind: str) -> None:
            # Quarantine rows reach the warehouse (qc_quarantine_by_kind) and the Dagster
            # metadata: a pseudonymized source's real names must not ride along in them.
            if spec.pseudonymize_paths:
                source_file, reason = pseudonymous_quarantine(salt, ctx.root, source_file, reason)
            log.add(source_file, reason, record_id, kind=kind)

        # A reader bug must not lose the rows already read.
        stopped = lambda error: quarantine_add(None, f"reader stopped early: {describe_error(error)}", kind="stage_error")  # noqa: E731
        # Files are decoded and stored by the worker processes (MEDTRINITY_WORKERS), in order.
        for item in until_reader_error(read_source_in_workers(ctx), stopped):
            # Each item is kept by exactly one shard (items without a file by shard 0), whether
            # or not its reader skipped the other shards' files (sources.base.IngestContext.owns).
            if not owns(spec.shard, shard_path_of(item)):
                continue
            report.inputs += 1
            if isinstance(item, Quarantined):
                quarantine_add(item.source_file, item.reason, item.record_id, kind=item.kind)
            elif item["record_id"] in seen:
                quarantine_add(item["source_file"], "duplicate record id (same file and slice listed twice)", item["record_id"], kind="duplicate")
            else:
                seen.add(item["record_id"])
                item.pop(SHARD_PATH, None)
                if spec.pseudonymize_paths:
                    # Hashed only here, as the row is written: readers, box overlays and the
                    # spec check need the real path while the source is read.
                    item = {**item, "source_file": pseudonymous_path(salt, item["source_file"])}
                records.write(item)
    return report


# --- Stage 2: normalize ------------------------------------------------------------------


def run_normalize(spec: SourceSpec, data_root: DataRoot, max_side: int = 512) -> StageReport:
    from medtrinity_assets import parallel
    from medtrinity_assets.imaging.burned_in import DETECTOR_VERSION
    from medtrinity_assets.stage_work import NormalizeJob, RecordProblem, normalize_record

    report = StageReport("normalized_images", spec.id, partition=spec.partition)
    burned_in_kinds: Counter = Counter()
    burned_in_images = 0
    source = _require(data_root.table("raw_records", spec.partition), "normalized_images")
    out = data_root.table("normalized_images", spec.partition)
    with stage_tables(report, data_root, out, schemas.NORMALIZED_IMAGES) as (writer, quarantine):
        rows = stream_rows(f"SELECT * FROM {read_parquet(source)} ORDER BY record_id")
        # Each record is normalized, checked and stored by a worker process (MEDTRINITY_WORKERS);
        # the rows come back in record order, so the table is the same for any number of them.
        with parallel.workers(NormalizeJob(spec, data_root, max_side), parallel.count_for(data_root.root)) as pool:
            for record, done in pool.map(normalize_record, rows, describe=lambda r: r["source_file"]):
                report.inputs += 1
                if isinstance(done, (RecordProblem, parallel.Failed)):
                    reason = done.reason if isinstance(done, RecordProblem) else f"cannot normalize: {done.error}"
                    quarantine.add(record["source_file"], reason, record["record_id"], kind="stage_error")
                    continue
                if done.burned_in_present:
                    burned_in_images += 1
                    burned_in_kinds.update(done.burned_in_kinds)
                writer.write(done.row)
    # Images flagged for burned-in text or markers, and how many showed each kind; whether they
    # are held back is the spec's burned_in_text policy, applied when triplets are assembled.
    report.extra["burned_in_images"] = burned_in_images
    report.extra["burned_in_kinds"] = dict(sorted(burned_in_kinds.items()))
    report.extra["burned_in_policy"] = spec.burned_in_text
    report.extra["burned_in_detector"] = DETECTOR_VERSION
    return report


# --- Stage 3: ground ---------------------------------------------------------------------


def _records_with_images(data_root: DataRoot, source_id: str) -> str:
    raw = read_parquet(data_root.table("raw_records", source_id))
    norm = read_parquet(data_root.table("normalized_images", source_id))
    return f"""
        SELECT r.*, n.image_path, n.scale, n.height AS image_height, n.width AS image_width,
               n.intensity_method, n.image_sha256, n.phash
        FROM {raw} r JOIN {norm} n USING (record_id)
        ORDER BY r.record_id
    """


def run_ground(spec: SourceSpec, data_root: DataRoot) -> StageReport:
    from medtrinity_assets import parallel
    from medtrinity_assets.grounding.rois import REFERENCE_PREFIX
    from medtrinity_assets.stage_work import GroundJob, ground_one

    report = StageReport("rois", spec.id, partition=spec.partition)
    _require(data_root.table("normalized_images", spec.partition), "rois")
    out = data_root.table("rois", spec.partition)
    origins: Counter = Counter()
    tally: Counter = Counter()
    with stage_tables(report, data_root, out, schemas.ROIS) as (writer, quarantine), \
            parallel.workers(GroundJob(spec, data_root), parallel.count_for(data_root.root)) as pool:
        rows = stream_rows(_records_with_images(data_root, spec.partition))
        # Grounded by the worker processes (MEDTRINITY_WORKERS), written in record order.
        for record, done in pool.map(ground_one, rows, describe=lambda r: r["source_file"]):
            report.inputs += 1
            if isinstance(done, parallel.Failed):
                quarantine.add(record["source_file"], f"cannot ground: {done.error}", record["record_id"], kind="stage_error")
                continue
            rois, problems, record_tally = done
            tally.update(record_tally)
            # An annotation that yields no usable region is reported; the image keeps its
            # other ROIs (or its whole-image entry), so nothing else is lost. Publisher boxes
            # the cross-check could not match are reported as they are (nothing was dropped).
            for problem in problems:
                reason = problem if problem.startswith(REFERENCE_PREFIX) else f"annotation dropped: {problem}"
                quarantine.add(record["source_file"], reason, record["record_id"], kind="invalid_annotation")
            for roi in rois:
                origins[roi["origin"]] += 1
                writer.write(roi)
    report.extra["rois_by_origin"] = dict(origins)
    report.extra["specks_dropped"] = int(tally["specks_dropped"])
    if tally["reference_boxes"]:
        report.extra["publisher_boxes"] = {
            "boxes": int(tally["reference_boxes"]),
            "matched": int(tally["boxes_matched"]),
            "unmatched": int(tally["boxes_unmatched"]),
            "components_without_box": int(tally["components_without_box"]),
            "mean_iou": round(tally["box_iou_sum"] / tally["boxes_matched"], 4) if tally["boxes_matched"] else None,
        }
    return report


# --- Stage 3a: expert models' ROIs ---------------------------------------------------------

# Images handed to an expert at once: enough to fill a batch on the device, few enough that the
# decoded images of one batch (and the stream's record batch) bound the memory.
MODEL_BATCH = 8


def _records_for_experts(data_root: DataRoot, source_id: str) -> str:
    """Each record with its normalized image and its annotation ROIs (label, mask)."""
    rois = read_parquet(data_root.table("rois", source_id))
    return f"""
        WITH images AS ({_records_with_images(data_root, source_id)}),
        annotated AS (
            SELECT record_id, list(struct_pack(roi_id, label, origin, mask_path) ORDER BY roi_id) AS annotation_rois
            FROM {rois} WHERE origin LIKE 'annotation:%' GROUP BY record_id
        )
        SELECT i.*, a.annotation_rois FROM images i LEFT JOIN annotated a USING (record_id)
        ORDER BY i.record_id
    """


def _load_experts(experts: dict, spec: SourceSpec, data_root: DataRoot, spec_folder: Path | None):
    """([(loaded expert, the sha256 of the weights it runs)], {expert_id: why it was skipped})
    for the experts that apply to ``spec``.

    An expert without weights (not trained yet, or a brought file missing or unusable) is
    skipped with its reason; the partition still gets its table, so the rest of the pipeline
    runs on the annotation ROIs alone."""
    if not experts:
        return [], {}
    from medtrinity_assets.grounding.experts import apply
    from medtrinity_assets.grounding.experts.base import ExpertError, WeightsError
    from medtrinity_assets.grounding.experts.weights import brought_weights, sha256_tree

    folder = Path(spec_folder) if spec_folder is not None else Path(".")
    loaded, skipped = [], {}
    for expert in apply.applicable_experts(experts, spec):
        try:
            model = apply.load_for_inference(expert, data_root, folder)
            # A brought file is hashed as it is now (its manifest may predate an edit of it).
            sha = sha256_tree(brought_weights(expert, folder)) if expert.brings_weights else model.manifest.sha256
            loaded.append((model, sha))
        except WeightsError as error:  # names the file (a missing or incompatible brought file)
            skipped[expert.id] = f"weights error: {error}"
        except ExpertError as error:  # e.g. not trained yet: materialize expert_<id>
            skipped[expert.id] = str(error)
        except Exception as error:  # e.g. a family whose package is missing: this expert only
            skipped[expert.id] = f"cannot load expert {expert.id}: {describe_error(error)}"
    return loaded, skipped


class _ExpertTally:
    """One expert's counts over a partition, for the stage report (Dagster metadata)."""

    def __init__(self, run):
        self.run = run
        self.counts: Counter = Counter()
        self.iou_sum = 0.0
        self.seconds = 0.0

    def add(self, annotated: bool, rows: list[dict]) -> None:
        mine = [r for r in rows if r["expert_id"] == self.run.expert_id]
        self.counts["rois"] += len(mine)
        self.counts["applied_rois"] += sum(r["applied"] for r in mine)
        if annotated:
            self.counts["annotated_records"] += 1
            best = max((r["iou_vs_annotation"] for r in mine if r["iou_vs_annotation"] is not None), default=None)
            if best is not None:
                self.iou_sum += best
                self.counts["annotated_records_with_rois"] += 1
        else:
            self.counts["unannotated_records"] += 1
            self.counts["unannotated_records_with_rois"] += bool(mine)

    def as_metadata(self) -> dict:
        images = self.counts["annotated_records"] + self.counts["unannotated_records"]
        found = self.counts["annotated_records_with_rois"]
        return {
            "weights_sha256": self.run.weights_sha256,
            "provenance": self.run.provenance,
            **{k: int(self.counts[k]) for k in ("rois", "applied_rois", "unannotated_records", "unannotated_records_with_rois",
                                                "annotated_records", "annotated_records_with_rois")},
            # The drift check's figure counts misses as 0; this one is over the records where it found something.
            "mean_best_iou_where_found": round(self.iou_sum / found, 4) if found else None,
            "inference_seconds": round(self.seconds, 3),
            "images_per_second": round(images / self.seconds, 2) if self.seconds > 0 else None,
        }


def _find_each(find_rois, expert, images) -> list:
    """find_rois image by image: each image's instances, or the exception it raised."""
    out = []
    for image in images:
        try:
            out.append(find_rois(expert, [image])[0])
        except Exception as error:
            out.append(error)
    return out


def run_model_rois(
    spec: SourceSpec,
    data_root: DataRoot,
    experts: dict | None,
    spec_folder: Path | None = None,
    batch: int = MODEL_BATCH,
) -> StageReport:
    """ROIs from every expert that applies to this source, on every normalized image.

    Each applicable expert is loaded once; images stream through in batches of ``batch``. A
    record whose image an expert cannot take is quarantined and the partition goes on. An
    expert that cannot be loaded is skipped: ``extra["experts_skipped"]`` says which and why
    (a missing brought file is named there). Images with burned-in text are processed too:
    nothing leaves the machine. Reruns write the same rows (ordered records, stable roi ids,
    rounded scores)."""
    from medtrinity_assets.grounding.model_rois import ExpertRun, model_roi_rows

    report = StageReport("model_rois", spec.id, partition=spec.partition)
    blobs = BlobStore(data_root.root)
    for upstream in ("normalized_images", "rois"):
        _require(data_root.table(upstream, spec.partition), "model_rois")
    pairs, skipped = _load_experts(experts or {}, spec, data_root, spec_folder)
    runs = [(model, ExpertRun.of(model.spec, sha)) for model, sha in pairs]
    tallies = {run.expert_id: _ExpertTally(run) for _, run in runs}
    out = data_root.table("model_rois", spec.partition)

    def load_mask(rel: str) -> np.ndarray:
        return _load_png(blobs, rel)

    def apply_batch(records: list[dict], writer: TableWriter, quarantine: _QuarantineLog) -> None:
        from medtrinity_assets.grounding.experts.apply import find_rois

        kept = []
        for record in records:
            try:
                kept.append((record, _load_png(blobs, record["image_path"])))
            except Exception as error:
                quarantine.add(record["source_file"], f"cannot read the normalized image: {describe_error(error)}", record["record_id"], kind="stage_error")
        images = [image for _, image in kept]
        found_by_expert = []
        for model, run in runs:
            started = time.perf_counter()
            try:
                found_by_expert.append(find_rois(model, images))
            except Exception:  # one bad image must not cost the batch: apply image by image
                found_by_expert.append(_find_each(find_rois, model, images))
            tallies[run.expert_id].seconds += time.perf_counter() - started
        for index, (record, image) in enumerate(kept):
            try:
                found = []
                for (_, run), results in zip(runs, found_by_expert):
                    if isinstance(results[index], Exception):
                        raise RuntimeError(f"expert {run.expert_id}: {describe_error(results[index])}")
                    found.append((run, results[index]))
                rows = model_roi_rows(record, image, found, blobs, load_mask)
            except Exception as error:
                quarantine.add(record["source_file"], f"cannot find model ROIs: {describe_error(error)}", record["record_id"], kind="stage_error")
                continue
            writer.write_all(rows)
            for tally in tallies.values():
                tally.add(bool(record.get("annotation_rois")), rows)

    with stage_tables(report, data_root, out, schemas.MODEL_ROIS) as (writer, quarantine):
        if runs:  # no expert to run: an empty table, and no model framework imported
            pending: list[dict] = []
            for record in stream_rows(_records_for_experts(data_root, spec.partition), batch_rows=max(batch, 16)):
                report.inputs += 1
                pending.append(record)
                if len(pending) >= batch:
                    apply_batch(pending, writer, quarantine)
                    pending = []
            if pending:
                apply_batch(pending, writer, quarantine)
    report.extra["experts_applied"] = {expert_id: tally.as_metadata() for expert_id, tally in tallies.items()}
    report.extra["experts_skipped"] = skipped
    return report


def _records_with_rois(data_root: DataRoot, source_id: str, extra_joins: str = "", extra_cols: str = "") -> str:
    """Each record with its ROIs (stages.grounded_rois_sql) as a list of structs, ordered by record id."""
    raw = read_parquet(data_root.table("raw_records", source_id))
    rois = f"({grounded_rois_sql(data_root, source_id)})"
    return f"""
        WITH grouped AS (
            SELECT record_id, list(r ORDER BY roi_id) AS rois
            FROM {rois} r GROUP BY record_id
        )
        SELECT rec.*, g.rois {extra_cols}
        FROM {raw} rec JOIN grouped g USING (record_id) {extra_joins}
        ORDER BY rec.record_id
    """


def _records_with_rois_and_images(data_root: DataRoot, source_id: str) -> str:
    """Each record with its ROIs and the exported frame's size and scale (what facts need)."""
    norm = read_parquet(data_root.table("normalized_images", source_id))
    return _records_with_rois(
        data_root,
        source_id,
        extra_joins=f"JOIN {norm} n USING (record_id)",
        extra_cols=", n.height AS image_height, n.width AS image_width, n.scale, n.burned_in",
    )


# --- Stage 3b: facts --------------------------------------------------------------------


def run_facts(spec: SourceSpec, data_root: DataRoot) -> StageReport:
    from medtrinity_assets.generation.fact_builder import build_facts

    report = StageReport("facts", spec.id, partition=spec.partition)
    _require(data_root.table("rois", spec.partition), "facts")
    out = data_root.table("facts", spec.partition)
    by_provenance: Counter = Counter()
    by_state: Counter = Counter()
    with stage_tables(report, data_root, out, schemas.FACTS) as (writer, quarantine):
        rows = stream_rows(_records_with_rois_and_images(data_root, spec.partition))
        for record, facts in _each_record(rows, report, quarantine, "build facts", lambda r: build_facts(r, r["rois"], spec)):
            for fact in facts:
                by_provenance[fact.provenance] += 1
                if fact.attribute == "label_state":
                    by_state[fact.value] += 1
                writer.write(fact.as_row(spec.id))
    report.extra["facts_by_provenance"] = dict(by_provenance)
    report.extra["records_by_label_state"] = dict(by_state)
    return report


def _facts_by_record(data_root: DataRoot, source_id: str) -> str:
    facts = read_parquet(data_root.table("facts", source_id))
    return f"""SELECT record_id, list(f ORDER BY roi_id NULLS FIRST, attribute, value) AS facts
               FROM {facts} f GROUP BY record_id"""


# --- Stage 4: coarse captions ------------------------------------------------------------


def run_coarse_captions(spec: SourceSpec, data_root: DataRoot) -> StageReport:
    from medtrinity_assets.generation.coarse import CAPTION_VERSION, coarse_caption

    report = StageReport("coarse_captions", spec.id, partition=spec.partition)
    _require(data_root.table("rois", spec.partition), "coarse_captions")
    out = data_root.table("coarse_captions", spec.partition)
    with stage_tables(report, data_root, out, schemas.COARSE_CAPTIONS) as (writer, quarantine):
        rows = stream_rows(_records_with_rois(data_root, spec.partition))
        for record, caption in _each_record(rows, report, quarantine, "caption", lambda r: coarse_caption(r, r["rois"], spec)):
            writer.write(
                {
                    "record_id": record["record_id"],
                    "source_id": spec.id,
                    "coarse_caption": caption,
                    "caption_version": CAPTION_VERSION,
                }
            )
    return report


# --- Stage 5: knowledge ------------------------------------------------------------------


def run_knowledge_base(data_root: DataRoot, knowledge_folder: Path) -> StageReport:
    """Chunks table and Chroma store of the corpus; reused as they are (``reused: true``, the
    corpus not even parsed) when both carry the fingerprint of the current corpus files, chunker
    and embedder and the store is intact. ``content_fingerprint`` (what is stored) is the
    asset's data version."""
    from medtrinity_assets.knowledge.corpus import (
        chunk_corpus,
        corpus_fingerprint,
        load_corpus,
    )
    from medtrinity_assets.knowledge.store import (
        build_knowledge_base,
        content_fingerprint,
        mark_built,
        source_fingerprint,
        stored_knowledge,
    )

    report = StageReport("knowledge_base", None)
    started = time.perf_counter()
    source = source_fingerprint(corpus_fingerprint(knowledge_folder), schemas.KNOWLEDGE_CHUNKS)
    out = data_root.table("knowledge_chunks")
    stored = stored_knowledge(data_root.chroma)
    reused = (
        stored is not None
        and stored["corpus_fingerprint"] == source
        and _table_fingerprint(out) == (source, stored["chunks"])
    )
    if reused:
        entries, chunks, content = stored["entries"], stored["chunks"], stored["content_fingerprint"]
        stats = {"embedded": 0, "unchanged": chunks, "deleted": 0}
    else:
        loaded = load_corpus(knowledge_folder)
        rows = chunk_corpus(loaded)
        entries, chunks, content = len(loaded), len(rows), content_fingerprint(rows)
        # The table first and the store's fingerprint last: a run killed in between leaves a
        # store whose fingerprint does not match, so the next run rebuilds.
        write_table(out, schemas.KNOWLEDGE_CHUNKS.with_metadata({"corpus_fingerprint": source}), rows)
        stats = build_knowledge_base(rows, data_root.chroma)
        stats.pop("chunks")
        mark_built(data_root.chroma, source, content, entries)
        apply_modes(data_root.chroma)  # Chroma writes with the umask's modes
    report.inputs = entries
    report.rows = chunks
    report.seconds = time.perf_counter() - started
    report.output = str(data_root.chroma)
    report.extra.update(
        {"entries": entries, "chunks": chunks, "corpus_fingerprint": source, "content_fingerprint": content,
         "reused": reused, **stats}
    )
    return report


def _table_fingerprint(path: Path) -> tuple[str | None, int] | None:
    """(fingerprint in the Parquet footer, row count) of the chunks table; None if unreadable."""
    import pyarrow.parquet as pq

    try:
        meta = pq.read_metadata(path)
    except (OSError, ValueError):
        return None
    stored = (meta.metadata or {}).get(b"corpus_fingerprint")
    return (stored.decode("utf-8") if stored else None, meta.num_rows)


def run_retrieval(spec: SourceSpec, data_root: DataRoot, k: int = 3, batch: int = 64) -> StageReport:
    from medtrinity_assets.knowledge.retrieval import KnowledgeRetriever

    report = StageReport("retrieved_knowledge", spec.id, partition=spec.partition)
    _require(data_root.table("rois", spec.partition), "retrieved_knowledge")
    # Query vectors are kept beside the store: later partitions and reruns skip the model.
    retriever = KnowledgeRetriever(data_root.chroma, cache_dir=data_root.query_embeddings)
    out = data_root.table("retrieved_knowledge", spec.partition)
    with stage_tables(report, data_root, out, schemas.RETRIEVED_KNOWLEDGE, quarantine=False) as (writer, _):
        pending: list[dict] = []

        def flush() -> None:
            for row in retriever.retrieve_many([(r, r["rois"]) for r in pending], spec, k=k):
                writer.write(row)
            pending.clear()

        for record in stream_rows(_records_with_rois(data_root, spec.partition)):
            report.inputs += 1
            pending.append(record)
            if len(pending) >= batch:
                flush()
        flush()
    report.extra.update({**retriever.counts, **{f"query_vectors_{name}": n for name, n in retriever.vectors.counts.items()}})
    return report


# --- Stage 6: describe and verify --------------------------------------------------------


class InFlightGauge:
    """Requests in flight around ``writer.write``: the most at once and the time-weighted mean
    over the span from the first call's start to the last call's end."""

    def __init__(self):
        self._lock = threading.Lock()
        self.current = self.max = 0
        self._area = 0.0  # in-flight count integrated over time
        self._first: float | None = None
        self._last = 0.0

    def _advance(self, now: float) -> None:
        if self._first is None:
            self._first = self._last = now
        self._area += self.current * (now - self._last)
        self._last = now

    @contextmanager
    def track(self) -> Iterator[None]:
        with self._lock:
            self._advance(time.perf_counter())
            self.current += 1
            self.max = max(self.max, self.current)
        try:
            yield
        finally:
            with self._lock:
                self._advance(time.perf_counter())
                self.current -= 1

    @property
    def mean(self) -> float:
        span = self._last - self._first if self._first is not None else 0.0
        return self._area / span if span > 0 else float(self.max)


def _description_jobs_sql(data_root: DataRoot, source_id: str, with_image: bool) -> str:
    """One row per record to describe: its facts, knowledge and coarse caption; with the
    normalized image path and the ROI boxes when a vision model will see the image. The caption
    join keeps the records a caption was written for (facts exist only for records with ROIs)."""
    raw = read_parquet(data_root.table("raw_records", source_id))
    captions = read_parquet(data_root.table("coarse_captions", source_id))
    retrieved = read_parquet(data_root.table("retrieved_knowledge", source_id))
    image_cols = image_joins = ""
    if with_image:
        norm = read_parquet(data_root.table("normalized_images", source_id))
        rois = f"({grounded_rois_sql(data_root, source_id)})"
        image_cols = ", n.image_path, coalesce(json_extract(n.burned_in, '$.present')::BOOLEAN, false) AS burned_in, ro.rois"
        image_joins = f"""
        LEFT JOIN {norm} n USING (record_id)
        LEFT JOIN (SELECT record_id, list(struct_pack(roi_id, label, x0, y0, x1, y1, mask_path) ORDER BY roi_id) AS rois
                   FROM {rois} GROUP BY record_id) ro USING (record_id)"""
    return f"""
        SELECT rec.record_id, rec.source_file, c.coarse_caption, k.* EXCLUDE (record_id, source_id), fx.facts {image_cols}
        FROM {raw} rec
        JOIN (SELECT record_id, coarse_caption FROM {captions}) c USING (record_id)
        JOIN {retrieved} k USING (record_id)
        JOIN ({_facts_by_record(data_root, source_id)}) fx USING (record_id)
        {image_joins}
        ORDER BY rec.record_id
    """


# Records handed to the pool ahead of the one written next, per worker: a slow row at the head
# then does not leave the other workers idle, and memory stays bounded.
LOOKAHEAD_PER_WORKER = 4


def _ordered_in_flight(items: Iterator, work, concurrency: int) -> Iterator[tuple[object, object]]:
    """(item, outcome) in input order, with at most ``concurrency`` calls of ``work`` running at
    once; outcome is work's result or the exception it raised (for the caller to quarantine)."""

    def guarded(item):
        try:
            return work(item)
        except Exception as error:
            return error

    if concurrency <= 1:
        for item in items:
            yield item, guarded(item)
        return
    pending: deque = deque()
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="describe") as pool:
        for item in items:
            pending.append((item, pool.submit(guarded, item)))
            if len(pending) >= concurrency * LOOKAHEAD_PER_WORKER:
                head, future = pending.popleft()
                yield head, future.result()
        while pending:
            head, future = pending.popleft()
            yield head, future.result()


def run_descriptions(spec: SourceSpec, data_root: DataRoot, writer: "WriterConfig | None" = None) -> StageReport:
    """Describe every record with the configured writer (None: the grounded writer) and the
    verifier. ``writer.concurrency`` rows are in flight at once; rows are written in record order.
    A writer never raises for a model fault (it falls back to the grounded writer and says so);
    anything else it raises quarantines that record, and the partition goes on."""
    from medtrinity_assets.generation.facts import Fact, FactSet
    from medtrinity_assets.generation.writers import DescribeJob, WriterConfig, make_writer

    config = writer or WriterConfig()
    if config.kind != "grounded":
        # The response cache lives with the data (a rerun of the partition makes no request).
        config = replace(config, cache_dir=config.cache_dir or data_root.llm_cache)
        make_dirs(config.cache_dir)
    report = StageReport("descriptions", spec.id, partition=spec.partition)
    for upstream in ("facts", "coarse_captions", "retrieved_knowledge"):
        _require(data_root.table(upstream, spec.partition), "descriptions")
    with_image = config.kind == "vlm"
    fact_fields = [name for name in schemas.FACTS.names if name != "source_id"]

    def job_for(record: dict) -> DescribeJob:
        return DescribeJob(
            record_id=record["record_id"],
            source_id=spec.id,
            facts=FactSet(Fact(**{k: f[k] for k in fact_fields}) for f in record["facts"]),
            knowledge={
                "knowledge_ids": record.get("knowledge_ids") or [],
                "knowledge_texts": record.get("knowledge_texts") or [],
                "distances": record.get("distances") or [],
                "knowledge_sections": record.get("knowledge_sections"),
            },
            coarse_caption=record["coarse_caption"],
            spec=spec,
            image_path=data_root.root / record["image_path"] if with_image and record.get("image_path") else None,
            rois=tuple(record.get("rois") or ()) if with_image else (),
            data_root=data_root.root,
            image_withheld=bool(record.get("burned_in")),
        )

    out = data_root.table("descriptions", spec.partition)
    flagged = 0
    states: Counter = Counter()
    mix: Counter = Counter()
    totals: Counter = Counter()
    gauge = InFlightGauge()
    text_writer = make_writer(config)

    def describe(record: dict):
        job = job_for(record)
        with gauge.track():
            return text_writer.write(job)

    started = time.perf_counter()
    try:
        with stage_tables(report, data_root, out, schemas.DESCRIPTIONS) as (table, quarantine):
            rows = stream_rows(_description_jobs_sql(data_root, spec.partition, with_image))
            for record, written in _ordered_in_flight(rows, describe, config.concurrency):
                report.inputs += 1
                if isinstance(written, Exception):
                    quarantine.add(record["source_file"], f"cannot describe: {describe_error(written)}", record["record_id"], kind="stage_error")
                    continue
                flagged += not written.verified
                state = written.facts.record_value("label_state")
                states[state] += 1
                mix[written.writer] += 1
                totals["fallbacks"] += written.fallback_reason is not None
                totals["rows_from_cache"] += written.cached
                for name in ("prompt_tokens", "completion_tokens", "cost_usd", "sentences_written", "sentences_dropped"):
                    totals[name] += getattr(written, name)
                table.write(_description_row(written, record["record_id"], spec.id, state))
        endpoint_counts = getattr(text_writer, "endpoint_counts", None)
        faults = endpoint_counts().as_metadata() if endpoint_counts else None
    finally:
        text_writer.close()
    if config.cache_dir is not None:
        apply_modes(config.cache_dir)  # the cache's entries are written by the endpoint client
    elapsed = time.perf_counter() - started
    described = sum(mix.values())
    report.extra["contradictions"] = flagged
    report.extra["rows_by_label_state"] = dict(states)
    report.extra["writer_kind"] = config.kind
    report.extra["writer_mix"] = dict(sorted(mix.items()))
    report.extra["fallbacks"] = int(totals["fallbacks"])
    report.extra["fallback_rate"] = round(totals["fallbacks"] / described, 4) if described else 0.0
    # Tokens and cost spent by this run: the endpoint's count (an answer from the response cache
    # costs nothing now; its row still carries what it took to write).
    spent = faults if faults is not None else totals
    report.extra["prompt_tokens"] = int(spent["prompt_tokens"])
    report.extra["completion_tokens"] = int(spent["completion_tokens"])
    report.extra["cost_usd"] = round(spent["cost_usd"], 6)
    report.extra["rows_from_cache"] = int(totals["rows_from_cache"])
    report.extra["sentences_written"] = int(totals["sentences_written"])
    report.extra["sentences_dropped"] = int(totals["sentences_dropped"])
    if faults is not None:
        report.extra["endpoint"] = faults
    report.extra["in_flight_max"] = gauge.max
    report.extra["in_flight_mean"] = round(gauge.mean, 3)
    report.extra["rows_per_second"] = round(report.inputs / elapsed, 3) if elapsed > 0 else 0.0
    return report


def _description_row(written, record_id: str, source_id: str, state: str) -> dict:
    from medtrinity_assets.generation.writers import PART_NAMES

    return {
        "record_id": record_id,
        "source_id": source_id,
        "description": written.description,
        **{name: written.parts[name] for name in PART_NAMES},
        "writer": written.writer,
        "prompt_version": written.prompt_version,
        "knowledge_ids": list(written.knowledge_ids),
        "verified": written.verified,
        "verifier_flags": list(written.flags),
        "label_state": state,
        "facts": written.facts.to_json(),
        "model": written.model,
        "prompt_hash": written.prompt_hash,
        "attempts": written.attempts,
        "prompt_tokens": written.prompt_tokens,
        "completion_tokens": written.completion_tokens,
        "cost_usd": float(written.cost_usd),
        "fallback_reason": written.fallback_reason,
        "sentences_written": written.sentences_written,
        "sentences_dropped": written.sentences_dropped,
    }


# --- Stage 7: assemble -------------------------------------------------------------------


def run_triplets(spec: SourceSpec, data_root: DataRoot) -> StageReport:
    from medtrinity_assets.dataset.triplets import assemble_triplets

    report = StageReport("triplets", spec.id, partition=spec.partition)
    started = time.perf_counter()
    _require(data_root.table("descriptions", spec.partition), "triplets")
    out = data_root.table("triplets", spec.partition)
    stats = assemble_triplets(data_root, spec.id, spec, out)
    report.rows = report.inputs = int(stats.get("rows", 0))
    report.seconds = time.perf_counter() - started
    report.output = str(out)
    report.extra.update({k: v for k, v in stats.items() if k != "rows"})
    return report


def run_dataset(data_root: DataRoot, source_ids: list[str]) -> StageReport:
    from medtrinity_assets.dataset.exports import DUPLICATE_PAIRS_TABLE, build_dataset
    from medtrinity_assets.dataset.parts import PARTS_FOLDER, part_order, triplets_files

    report = StageReport("medtrinity_dataset", None)
    started = time.perf_counter()
    # Every triplets file of a catalog source is one part: a whole source, or one of its shards.
    paths = triplets_files(data_root.table("triplets", "_").parent, source_ids)
    out = data_root.table("medtrinity_dataset")
    stats = build_dataset(
        paths, out, data_root.exports, images_root=data_root.root, pairs_path=data_root.table(DUPLICATE_PAIRS_TABLE),
        parts_dir=data_root.table(PARTS_FOLDER, "_").parent,
    )
    report.rows = int(stats.get("rows", 0))
    report.inputs = len(paths)
    report.seconds = time.perf_counter() - started
    report.output = str(out)
    report.extra.update({k: v for k, v in stats.items() if k != "rows"})
    report.extra["sources"] = sorted({part_order(p.stem)[0] for p in paths})
    report.extra["partitions"] = [p.stem for p in paths]
    return report

