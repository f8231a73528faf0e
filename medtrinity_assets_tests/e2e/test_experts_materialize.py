"""Expert models through the Dagster assets, on real Kvasir-SEG frames (issue 10).

A tiny catalog (a few Kvasir-SEG frames with their polyp masks as the annotated partition, other
frames without masks as the unannotated one) and a tiny expert folder (a MONAI UNet, one epoch at
64 px; a spec bringing the weights that expert saved; a spec naming a file that does not exist),
loaded as a code-location reload loads them. Then: the expert asset trains and publishes its
metadata; the training sensor stays quiet until the training partition changes, then asks for one
run; model_rois, facts and the rest of the partition run, with model ROIs (provenance "model") on
the unannotated frames and the drift check on the annotated ones; the brought file is validated
and evaluated; the missing one fails the asset with its path.
"""

from __future__ import annotations

import shutil
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import duckdb
import pytest
import yaml
from conftest import REALDATA

from medtrinity_assets.splits import patient_split
from medtrinity_assets.defs.resources import PipelineSettings
from medtrinity_assets.paths import DataRoot
from medtrinity_assets.sources.base import record_id_for
from medtrinity_assets_tests.defs_reload import DEFS_MODULES, reload_definitions

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (REALDATA / "kvasir_seg").is_dir(), reason="../shared/realdata/kvasir_seg is not present"),
]

KVASIR = REALDATA / "kvasir_seg"
ANNOTATED, UNANNOTATED = "kvasir_tiny", "kvasir_tiny_unannotated"
EXPERT, BROUGHT, MISSING = "polyp_tiny", "polyp_brought", "polyp_missing"
SOURCE = {
    "name": "Kvasir-SEG frames (test extract)", "description": "written by a test", "homepage": "https://datasets.simula.no/kvasir-seg/",
    "license": "CC BY 4.0", "citation": "Jha et al. 2020", "access": "open", "modality": "endoscopy", "organs": ["colon"],
    "diseases": ["polyp"], "approx_size": "a few frames", "patient": {"source": "file"}, "radiological_orientation": False,
    "acquisition": {"method": "manual", "instructions": "copied by the test"},
    # The frames' burned-in date block would hold every frame back, thumbnails included.
    "burned_in_text": "keep",
}
TINY = {
    "modality": "endoscopy", "target": "polyp", "family": "monai", "architecture": "unet", "task": "segment",
    "train_sources": [ANNOTATED], "split": "record", "input_size": 64, "epochs": 1, "batch_size": 4, "seed": 0,
    "network": {"channels": [8, 16], "strides": [2], "num_res_units": 0},
    # One epoch learns little: a low threshold so the path from prediction to ROI rows is taken.
    "confidence_threshold": 0.05, "min_area_fraction": 0.0, "max_rois": 2,
}


def _frames() -> tuple[list[str], list[str]]:
    """Kvasir-SEG frames (sorted) that the record-level split sends to training and to
    validation, by the rule samples.split_of applies to the annotated partition's record ids."""
    train, val = [], []
    for path in sorted((KVASIR / "images").glob("*.jpg")):
        record_id = record_id_for(ANNOTATED, f"images/{path.name}", None, -1)
        (train if patient_split(record_id) == "train" else val).append(path.stem)
    return train, val


@pytest.fixture
def tiny_world(tmp_path, isolated_env, shared_knowledge, monkeypatch):
    """Catalog, raw files and expert folder of the test, in place before the Definitions load."""
    train, val = _frames()
    # 8 training and 2 validation frames; 3 other frames without masks; one more for later.
    annotated, unannotated, later = train[:8] + val[:2], train[8:11], train[11]
    raw = isolated_env["raw"]
    for stem in annotated:
        for folder in ("images", "masks"):
            (raw / ANNOTATED / folder).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(KVASIR / folder / f"{stem}.jpg", raw / ANNOTATED / folder / f"{stem}.jpg")
    (raw / UNANNOTATED).mkdir()
    for stem in unannotated:
        shutil.copyfile(KVASIR / "images" / f"{stem}.jpg", raw / UNANNOTATED / f"{stem}.jpg")

    catalog = tmp_path / "catalog"
    catalog.mkdir()
    specs = {
        ANNOTATED: {**SOURCE, "annotation_kinds": ["mask"],
                    "layout": {"family": "image_mask", "image_glob": "images/*.jpg", "mask_template": "masks/{stem}.jpg"}},
        UNANNOTATED: {**SOURCE, "annotation_kinds": ["none"], "layout": {"family": "image_folder", "image_glob": "*.jpg"}},
    }
    for source_id, spec in specs.items():
        (catalog / f"{source_id}.yaml").write_text(yaml.safe_dump({"id": source_id, **spec}, sort_keys=False))

    experts = tmp_path / "experts"
    experts.mkdir()
    documents = {
        EXPERT: TINY,
        # Brings the file the trained expert saved (copied there by the test once it exists).
        BROUGHT: {**TINY, "train_sources": [], "weights": "brought/polyp.pt", "apply_to": [ANNOTATED]},
        MISSING: {**TINY, "train_sources": [], "weights": "nowhere/polyp.pt", "apply_to": [ANNOTATED]},
    }
    for expert_id, document in documents.items():
        (experts / f"{expert_id}.yaml").write_text(yaml.safe_dump({"id": expert_id, **document}, sort_keys=False))

    shared_knowledge.copy_to(DataRoot(isolated_env["var"]))
    monkeypatch.setenv("MEDTRINITY_CATALOG", str(catalog))
    monkeypatch.setenv("MEDTRINITY_EXPERTS", str(experts))
    return {**isolated_env, "experts": experts, "later": later}


@contextmanager
def reloaded_definitions(monkeypatch):
    """The Dagster layer loaded from the test's catalog and experts (a code-location reload);
    afterwards, with the environment restored, loaded again so later tests see the project's own."""
    try:
        yield {name.rsplit(".", 1)[-1]: module for name, module in zip(DEFS_MODULES, reload_definitions())}
    finally:
        monkeypatch.undo()
        reload_definitions()


def _events(result, kind: str) -> list:
    return [e for e in result.all_events if e.event_type_value == kind]


def _metadata(result, key: str) -> dict:
    for event in _events(result, "ASSET_MATERIALIZATION"):
        materialization = event.event_specific_data.materialization
        if materialization.asset_key.to_user_string() == key:
            return {name: getattr(value, "value", value) for name, value in materialization.metadata.items()}
    raise AssertionError(f"{key} was not materialized")


def test_experts_train_apply_and_retrain_through_dagster(tiny_world, monkeypatch):
    with reloaded_definitions(monkeypatch) as mods, dg.instance_for_test() as instance:
        assets, experts_mod, definitions = mods["assets"], mods["experts"], mods["definitions"].defs
        everything = [*assets.ASSETS, *experts_mod.EXPERT_ASSETS]
        settings = PipelineSettings()

        def materialize(selection, partition=None):
            if partition and not instance.has_dynamic_partition("sources", partition):
                instance.add_dynamic_partitions("sources", [partition])  # as the sensor registers it
            return dg.materialize(everything, selection=selection, partition_key=partition, instance=instance,
                                  resources={"settings": settings}, raise_on_error=False)

        # The graph: one asset per expert spec, learning from its training partition (lineage),
        # and model_rois downstream of every expert.
        graph = definitions.resolve_asset_graph()
        expert_key = dg.AssetKey(f"expert_{EXPERT}")
        assert {k.to_user_string() for k in graph.get_all_asset_keys() if k.to_user_string().startswith("expert_")} == {
            f"expert_{EXPERT}", f"expert_{BROUGHT}", f"expert_{MISSING}"}
        assert dg.AssetKey("rois") in graph.get(expert_key).parent_keys
        assert {expert_key, dg.AssetKey(f"expert_{BROUGHT}")} <= graph.get(dg.AssetKey("model_rois")).parent_keys
        assert experts_mod.EXPERT_TRAINING[EXPERT] == [ANNOTATED]

        assert materialize([assets.knowledge_base.key]).success
        grounding = [assets.ASSETS_BY_NAME[name].key for name in ("raw_records", "normalized_images", "rois")]
        assert materialize(grounding, ANNOTATED).success

        # Train: metadata, weights named by their sha256, the fingerprint as data version.
        trained = materialize([expert_key])
        assert trained.success
        meta = _metadata(trained, f"expert_{EXPERT}")
        for key in ("dice", "box_iou", "map50", "precision", "recall"):
            assert isinstance(meta[key], float), key
        assert meta["provenance"] == "trained" and meta["reused"] is False and meta["epochs_run"] == 1
        assert (meta["train_records"], meta["val_records"]) == (8, 2)
        assert meta["training_sources"] == [ANNOTATED]
        weights = Path(meta["weights"])
        assert weights.is_file() and meta["weights_sha256"] in weights.name
        assert "| epoch |" in meta["training_curve"]
        assert meta["training_curve_plot"].startswith("![") and "data:image/png;base64," in meta["training_curve_plot"]
        assert Path(meta["training_curve_path"]).is_file()
        record = instance.get_latest_data_version_record(expert_key)
        assert record.asset_materialization.tags["dagster/data_version"] == meta["data_fingerprint"]

        # The sensor: nothing to retrain while the training partition is as it learned it.
        sensor = experts_mod.expert_training_sensor
        tick = sensor(dg.build_sensor_context(instance=instance, definitions=definitions, resources={"settings": settings}))
        assert not tick.run_requests

        # A second materialization with the same data reuses the weights.
        again = _metadata(materialize([expert_key]), f"expert_{EXPERT}")
        assert again["reused"] is True and again["weights_sha256"] == meta["weights_sha256"]

        # Brought weights: the trained file, named in a spec, is validated and evaluated.
        brought_file = tiny_world["experts"] / "brought" / "polyp.pt"
        brought_file.parent.mkdir()
        shutil.copyfile(weights, brought_file)
        brought = materialize([dg.AssetKey(f"expert_{BROUGHT}")])
        assert brought.success
        assert _metadata(brought, f"expert_{BROUGHT}")["provenance"] == "brought"

        # A missing brought file fails its asset, the message naming the file.
        missing = materialize([dg.AssetKey(f"expert_{MISSING}")])
        assert not missing.success
        failures = [e.event_specific_data.error for e in _events(missing, "STEP_FAILURE")]
        assert failures and any("nowhere/polyp.pt" in (f.message + str(f.cause or "")) for f in failures)

        # Apply: on the annotated partition for the drift check; the unannotated one through
        # facts and triplets, with every check.
        annotated_run = materialize([dg.AssetKey("model_rois")], ANNOTATED)
        assert annotated_run.success
        unannotated_run = materialize([a.key for a in assets.PARTITIONED_ASSETS], UNANNOTATED)
        assert unannotated_run.success
        checks = [e.asset_check_evaluation_data for e in _events(unannotated_run, "ASSET_CHECK_EVALUATION")]
        assert {"model_rois_well_formed", "provenance_values"} <= {c.check_name for c in checks}
        failed = {f"{c.asset_key.to_user_string()}.{c.check_name}": c.description for c in checks if not c.passed}
        assert not failed, failed

        root = DataRoot.from_env()
        model_rows = duckdb.sql(
            f"SELECT record_id, origin, confidence, applied FROM read_parquet('{root.table('model_rois', UNANNOTATED)}')").fetchall()
        assert model_rows and all(origin == f"model:{EXPERT}" for _, origin, _, _ in model_rows)
        assert all(applied and 0 <= confidence <= 1 for _, _, confidence, applied in model_rows)
        facts = duckdb.sql(
            f"SELECT DISTINCT provenance FROM read_parquet('{root.table('facts', UNANNOTATED)}') "
            "WHERE attribute IN ('label', 'origin')").fetchall()
        assert ("model",) in facts
        drift = [e.asset_check_evaluation_data for e in _events(annotated_run, "ASSET_CHECK_EVALUATION")
                 if e.asset_check_evaluation_data.check_name == "model_iou_on_annotated"]
        assert len(drift) == 1 and drift[0].asset_key == dg.AssetKey("model_rois")
        # The triplets' preview shows the model's ROI, worded as the model's.
        preview = _metadata(unannotated_run, "triplets")["preview"]
        assert f"model {EXPERT}" in preview and "data:image/png;base64," in preview

        # The training partition changes (one more annotated frame): the sensor asks for one
        # retraining, keyed by the new fingerprint.
        later = tiny_world["later"]
        for folder in ("images", "masks"):
            shutil.copyfile(KVASIR / folder / f"{later}.jpg", tiny_world["raw"] / ANNOTATED / folder / f"{later}.jpg")
        assert materialize(grounding, ANNOTATED).success
        from medtrinity_assets.grounding.experts.weights import data_fingerprint

        spec = experts_mod.load_expert(tiny_world["experts"] / f"{EXPERT}.yaml")
        fingerprint = data_fingerprint(spec, root, [ANNOTATED])
        assert fingerprint != meta["data_fingerprint"]
        tick = sensor(dg.build_sensor_context(instance=instance, definitions=definitions, resources={"settings": settings}))
        assert [(r.run_key, r.asset_selection) for r in tick.run_requests] == [(f"expert_{EXPERT}:{fingerprint}", [expert_key])]
