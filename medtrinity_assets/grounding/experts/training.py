"""train_expert: samples -> family.train -> evaluate on validation -> save -> current.json.

An expert is retrained only when what it learns from changed: the data fingerprint (its spec's
training fields and the bytes of its partitions' tables) is compared with current.json, and an
unchanged fingerprint with its file in place reuses the expert without training. A spec with
``weights`` is never trained: its file is loaded (a missing or incompatible file raises
WeightsError naming it), evaluated on the validation split of the annotated partitions when
there are any, and recorded with provenance ``brought``.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from medtrinity_assets.grounding.experts.device import pick_device
from medtrinity_assets.grounding.experts.families import family as family_named
from medtrinity_assets.grounding.experts.metrics import evaluate
from medtrinity_assets.grounding.experts.samples import (
    annotated_samples, dataset_split, required_train_sources, train_source_ids, training_samples,
)
from medtrinity_assets.grounding.experts.spec import ExpertSpec
from medtrinity_assets.grounding.experts.weights import (
    Manifest, brought_weights, current_manifest, data_fingerprint, record_brought, save_weights, sha256_tree,
)
from medtrinity_assets.paths import DataRoot


@dataclass
class TrainingOutcome:
    manifest: Manifest
    reused: bool
    info: dict = field(default_factory=dict)  # sources, split, counts (when samples were read), note


def _root(data_root) -> DataRoot:
    return data_root if isinstance(data_root, DataRoot) else DataRoot(Path(data_root))


def _reusable(current: Manifest | None, fingerprint: str, root: DataRoot) -> bool:
    return current is not None and current.data_fingerprint == fingerprint and current.weights_file(root).exists()


def train_expert(spec: ExpertSpec, data_root, catalog: dict, spec_folder: Path, force: bool = False) -> TrainingOutcome:
    root = _root(data_root)
    if spec.brings_weights:
        return _bring(spec, root, catalog, Path(spec_folder), force)
    sources = required_train_sources(spec, catalog, root)
    fingerprint = data_fingerprint(spec, root, sources)
    current = current_manifest(root, spec.id)
    if not force and _reusable(current, fingerprint, root):
        return TrainingOutcome(current, True, {"sources": sources, "note": "training data and spec unchanged"})
    train, val, info = training_samples(spec, root, catalog)
    impl = family_named(spec.family)
    device = pick_device(spec)
    # The work folder (a family's checkpoints, ultralytics' run folder) lives until the model is saved.
    with tempfile.TemporaryDirectory(prefix=f"expert-{spec.id}-") as workdir:
        # The best epoch is chosen on the 'val' patients only, so the 'test' patients stay a
        # clean held-out set: metrics["test"] is measured on them alone. The top-level metrics
        # cover every validation image (val and test), as the contract says.
        selection = [s for s in val if dataset_split(spec, s) == "val"]
        held_out = [s for s in val if dataset_split(spec, s) == "test"]
        if not selection or not held_out:
            selection, held_out = val, []
        result = impl.train(spec, train, selection, device, Path(workdir))
        metrics = evaluate(impl, result.model, spec, val, device)
        if held_out:
            metrics["test"] = evaluate(impl, result.model, spec, held_out, device)
        info["counts"].update(selection_images=len(selection), test_images=len(held_out))
        manifest = save_weights(
            root, spec, impl, result.model,
            data_fingerprint=fingerprint, train_sources=info["sources"], train_records=len(train), val_records=len(val),
            metrics=metrics, history=result.history, device=result.device, seconds=round(result.seconds, 2), split=info["split"],
        )
    return TrainingOutcome(manifest, False, info)


def _bring(spec: ExpertSpec, root: DataRoot, catalog: dict, spec_folder: Path, force: bool) -> TrainingOutcome:
    path = brought_weights(spec, spec_folder)
    digest = sha256_tree(path)
    sources = train_source_ids(spec, catalog, root)
    fingerprint = data_fingerprint(spec, root, sources, weights_sha256=digest)
    current = current_manifest(root, spec.id)
    if not force and _reusable(current, fingerprint, root) and current.provenance == "brought":
        return TrainingOutcome(current, True, {"sources": sources, "note": "brought file, spec and data unchanged"})
    impl = family_named(spec.family)
    device = pick_device(spec)
    started = time.perf_counter()
    model = impl.load(spec, path, device)  # WeightsError naming the file when it does not fit
    info: dict = {"sources": sources}
    metrics: dict = {}
    val: list = []
    if sources:
        # The validation split a trained expert of the same spec would be measured on; every
        # annotated image when that split is empty (a brought model learned none of them here).
        train, val, info = annotated_samples(spec, root, catalog)
        if not val:
            val, info["note"] = train, "validation split empty: evaluated on every annotated image"
        metrics = evaluate(impl, model, spec, val, device)
    else:
        info["note"] = f"no annotated partition of modality {spec.modality}: the brought weights are not evaluated here"
    manifest = record_brought(
        root, spec, path,
        data_fingerprint=fingerprint, train_sources=sources, train_records=0, val_records=len(val),
        metrics=metrics, history=[], device=device, seconds=round(time.perf_counter() - started, 2),
        split=info.get("split", {}),
    )
    return TrainingOutcome(manifest, False, info)
