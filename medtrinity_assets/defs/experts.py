"""Expert models as assets: one ``expert_<id>`` asset per spec under ``data/experts/`` (issue 10).

The asset only wires: ``training.train_expert`` trains (or reuses, or validates brought weights)
and returns the manifest; this module publishes it as metadata (metrics as floats, which the UI
plots across materializations, the training curve as a table and a picture) with the data
fingerprint as the asset's data version, so the UI shows an expert whose training partitions
changed as stale. ``expert_training_sensor`` requests the retraining.
"""


import base64
import logging
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

from medtrinity_assets.catalog import SourceSpec
from medtrinity_assets.catalog.shards import partitions_on_disk
from medtrinity_assets.defs.partitions import CATALOG
from medtrinity_assets.defs.resources import PipelineSettings
from medtrinity_assets.grounding.experts.base import ExpertError
from medtrinity_assets.grounding.experts.spec import ExpertSpec, load_expert, load_experts_each
from medtrinity_assets.paths import DataRoot, experts_dir
from medtrinity_assets.preview import training_curve_markdown, training_curve_png
from medtrinity_assets.storage import write_bytes_atomic

EXPERTS_GROUP = "experts"
# The tables an expert learns from, per training partition (samples.training_samples reads them).
TRAINING_INPUTS = ("rois", "normalized_images")
METRIC_KEYS = ("dice", "box_iou", "map50", "precision", "recall")
KINDS = {"monai": {"pytorch", "monai"}, "yolo": {"pytorch", "ultralytics"}}

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExpertProblem:
    file: Path
    message: str


def load_expert_folder(folder: Path) -> tuple[dict[str, ExpertSpec], list[ExpertProblem]]:
    """Every expert spec of ``folder``, each loaded on its own: a broken file is left out and
    reported (as a broken source spec is), instead of stopping the code location."""
    specs, problems = load_experts_each(folder)
    return specs, [ExpertProblem(Path(file), message) for file, message in problems.items()]


def asset_key(expert_id: str) -> dg.AssetKey:
    return dg.AssetKey(f"expert_{expert_id}")


def training_partitions(spec: ExpertSpec, catalog: dict[str, SourceSpec], data_root: DataRoot) -> list[str]:
    """The partitions the expert learns from (for brought weights: is evaluated on): every
    shard of each training source as its files split it now (the source id itself while it has
    no files), so lineage is drawn to all of them."""
    from medtrinity_assets.catalog.fingerprint import source_state

    from medtrinity_assets.grounding.experts.samples import train_source_ids

    try:
        sources = train_source_ids(spec, catalog, data_root)
    except ExpertError as error:  # e.g. train_sources naming a source not in the catalog
        log.warning("expert %s: %s", spec.id, error)
        return []
    return [key for source_id in sources if source_id in CATALOG for key in (source_state(CATALOG[source_id]).partitions or (source_id,))]


def _metadata_value(value):
    if isinstance(value, (dict, list, tuple)):
        return dg.MetadataValue.json(list(value) if isinstance(value, tuple) else value)
    if value is None:
        return dg.MetadataValue.text("-")
    return value


def _number(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def expert_metadata(spec: ExpertSpec, outcome, data_root: DataRoot, curve_path: Path | None) -> dict:
    """What the asset's page shows for one materialization (the manifest of the weights in use)."""
    manifest = outcome.manifest
    info = outcome.info or {}
    counts = info.get("counts") or {}
    metrics = manifest.metrics or {}
    weights = manifest.weights_file(data_root)
    metadata = {
        # Floats every time (NaN-free): Dagster plots a numeric key across materializations.
        **{key: float(_number(metrics.get(key)) or 0.0) for key in METRIC_KEYS},
        "validation_images": int(_number(metrics.get("images")) or 0),
        # The held-out 'test' patients alone (the best epoch was chosen on the 'val' ones).
        **{f"test_{key}": float(_number(metrics["test"].get(key)) or 0.0)
           for key in METRIC_KEYS if isinstance(metrics.get("test"), dict)},
        "train_records": int(manifest.train_records),
        "val_records": int(manifest.val_records),
        "training_sources": dg.MetadataValue.json(list(manifest.train_sources)),
        "split": _metadata_value(manifest.split),
        "device": manifest.device,
        "seconds": round(float(manifest.seconds), 2),
        "epochs_run": len(manifest.history or []),
        "reused": bool(outcome.reused),
        "provenance": manifest.provenance,
        "family": manifest.family,
        "architecture": manifest.architecture,
        "weights": dg.MetadataValue.path(str(weights)),
        "weights_sha256": manifest.sha256,
        "training_hash": manifest.training_hash,
        "data_fingerprint": manifest.data_fingerprint,
        "created_at": str(manifest.created_at),
        "training_curve": dg.MetadataValue.md(training_curve_markdown(manifest.history or [])),
    }
    if curve_path is not None:
        png = curve_path.read_bytes()
        metadata["training_curve_plot"] = dg.MetadataValue.md(
            f"![training curve of {spec.id}](data:image/png;base64,{base64.b64encode(png).decode('ascii')})"
        )
        metadata["training_curve_path"] = dg.MetadataValue.path(str(curve_path))
    # Patients (or records, for a record-level split) per side, and what sample reading counted;
    # only when samples were read this time (reused weights keep the earlier materialization's).
    for key in ("train_patients", "val_patients"):
        if key in counts:
            metadata[key] = int(counts[key])
    for key, value in counts.items():
        if key not in ("train_patients", "val_patients"):
            metadata[f"counts/{key}"] = _metadata_value(value)
    if info.get("note"):
        metadata["note"] = str(info["note"])
    return metadata


def write_curve(data_root: DataRoot, spec: ExpertSpec, manifest) -> Path | None:
    """The training curve as a PNG beside the weights (``<sha256>.curve.png``); None when there
    is no history (brought weights)."""
    if not manifest.history:
        return None
    path = manifest.weights_file(data_root).with_name(f"{manifest.sha256}.curve.png")
    if not path.exists():  # content of the same weights never changes
        write_bytes_atomic(path, training_curve_png(manifest.history, title=f"{spec.id} ({manifest.architecture})"))
    return path


def current_spec(settings: PipelineSettings, expert_id: str) -> tuple[ExpertSpec, Path]:
    """The spec as its file is now (a run uses the file, not the copy read when the code
    location loaded), and its folder (brought weights are relative to it)."""
    folder = settings.experts_folder()
    path = folder / f"{expert_id}.yaml"
    if not path.is_file():
        raise dg.Failure(f"expert spec {path} no longer exists: reload the code location")
    return load_expert(path), folder


def expert_asset(spec: ExpertSpec, partitions: list[str]) -> dg.AssetsDefinition:
    deps = [
        dg.AssetDep(name, partition_mapping=dg.SpecificPartitionsPartitionMapping(partitions))
        for name in TRAINING_INPUTS
    ] if partitions else []
    how = (
        f"Brings its own weights ({spec.weights}): validated here and evaluated on "
        f"{', '.join(partitions) or 'no annotated partition yet'}, never trained."
        if spec.brings_weights
        else f"Trained on {', '.join(partitions) or 'no partition yet'} with a {spec.split}-level split."
    )

    @dg.asset(
        name=asset_key(spec.id).path[-1],
        group_name=EXPERTS_GROUP,
        deps=deps,
        kinds=KINDS[spec.family],
        # Training takes the accelerator (or every core) for minutes: one at a time per pool slot.
        pool="gpu",
        # A change to a training field (epochs, input size, network...) is a new code version.
        code_version=spec.training_hash()[:16],
        description=f"Expert model {spec.id}: {spec.family} {spec.architecture} finding '{spec.target}' "
        f"in {spec.modality} images. {how} {spec.description}".strip(),
        metadata={"target": spec.target, "modality": spec.modality, "organs": dg.MetadataValue.json(list(spec.organs))},
    )
    def _expert(context: dg.AssetExecutionContext, settings: PipelineSettings) -> dg.MaterializeResult:
        from medtrinity_assets.grounding.experts.training import train_expert

        current, folder = current_spec(settings, spec.id)
        root = settings.root()
        try:
            outcome = train_expert(current, root, settings.specs(), folder)
        except ExpertError as error:
            # The message says what to fix (a WeightsError names the file): it leads the failure
            # in the UI instead of the last line of a stack trace.
            metadata = {"expert": spec.id, "weights": current.weights or "-"}
            raise dg.Failure(description=str(error), metadata=metadata) from error
        manifest = outcome.manifest
        curve = write_curve(root, current, manifest)
        context.log.info(
            f"expert_{spec.id}: {'reused' if outcome.reused else manifest.provenance} weights "
            f"{manifest.sha256[:12]}, dice {manifest.metrics.get('dice')}, {manifest.seconds:.1f}s on {manifest.device}"
        )
        return dg.MaterializeResult(
            metadata=expert_metadata(current, outcome, root, curve),
            # The fingerprint of what it learned from: the UI marks the expert stale when the
            # training partitions' tables change.
            data_version=dg.DataVersion(manifest.data_fingerprint),
        )

    return _expert


# Fixed when the code location loads (as the source partitions are): a new expert spec appears
# on reload. A broken spec is left out and logged.
EXPERT_SPECS, EXPERT_PROBLEMS = load_expert_folder(experts_dir())
for _problem in EXPERT_PROBLEMS:
    log.warning("expert spec left out: %s", _problem.message)
# Expert id -> the source partitions it learns from (the lineage drawn in the UI).
EXPERT_TRAINING = {
    expert_id: training_partitions(spec, CATALOG, DataRoot.from_env()) for expert_id, spec in EXPERT_SPECS.items()
}
EXPERT_ASSETS_BY_ID = {expert_id: expert_asset(spec, EXPERT_TRAINING[expert_id]) for expert_id, spec in EXPERT_SPECS.items()}
EXPERT_ASSETS = list(EXPERT_ASSETS_BY_ID.values())
EXPERT_KEYS = [asset_key(expert_id) for expert_id in EXPERT_ASSETS_BY_ID]


# --- retraining when the training partitions change -------------------------------------------------


def stale_experts(settings: PipelineSettings) -> dict[str, str]:
    """Expert id -> data fingerprint, for each trained expert whose training partitions' tables
    differ from those its weights in use (current.json) learned from. An expert none of whose
    training partitions has been grounded yet is left out: there is nothing to learn from."""
    from medtrinity_assets.grounding.experts.samples import train_source_ids
    from medtrinity_assets.grounding.experts.weights import current_manifest, data_fingerprint

    root, catalog = settings.root(), settings.specs()
    specs, _problems = load_expert_folder(settings.experts_folder())
    stale = {}
    for expert_id, spec in sorted(specs.items()):
        if spec.brings_weights:
            continue
        sources = train_source_ids(spec, catalog, root)
        if not any(partitions_on_disk(root.table("rois", source_id).parent, source_id) for source_id in sources):
            continue
        fingerprint = data_fingerprint(spec, root, sources)
        current = current_manifest(root, expert_id)
        if current is None or current.data_fingerprint != fingerprint:
            stale[expert_id] = fingerprint
    return stale


@dg.sensor(
    asset_selection=dg.AssetSelection.assets(*EXPERT_KEYS) if EXPERT_KEYS else dg.AssetSelection.groups(EXPERTS_GROUP),
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.STOPPED,
)
def expert_training_sensor(context: dg.SensorEvaluationContext, settings: PipelineSettings) -> dg.SensorResult:
    """Request ``expert_<id>`` when the rois / normalized_images tables of its training
    partitions (or its training fields) no longer match the weights in use. The run key is the
    new fingerprint, so one change gives one run however often the sensor ticks."""
    known = {key.path[-1] for key in EXPERT_KEYS}
    requests, skipped = [], []
    for expert_id, fingerprint in stale_experts(settings).items():
        if f"expert_{expert_id}" not in known:
            skipped.append(expert_id)  # a spec added since the code location loaded
            continue
        requests.append(
            dg.RunRequest(
                run_key=f"expert_{expert_id}:{fingerprint}",
                asset_selection=[asset_key(expert_id)],
                tags={"medtrinity/trigger": "training_data_changed", "medtrinity/fingerprint": fingerprint[:32]},
            )
        )
    if skipped:
        context.log.info(f"expert specs not in this code location yet (reload it): {', '.join(skipped)}")
    return dg.SensorResult(run_requests=requests)
