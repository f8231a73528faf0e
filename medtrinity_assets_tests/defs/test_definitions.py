"""The Dagster layer loads: every stage is an asset with checks, SQL models take their deps from SQL."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import dagster as dg

from medtrinity_assets.catalog import load_catalog
from medtrinity_assets.definitions import defs
from medtrinity_assets.paths import REPO_ROOT

STAGES = [
    "raw_records", "normalized_images", "rois", "facts", "coarse_captions", "knowledge_base",
    "retrieved_knowledge", "descriptions", "triplets", "medtrinity_dataset",
]


def _graph():
    return defs.resolve_asset_graph()


def test_every_stage_is_an_asset_with_checks():
    graph = _graph()
    keys = {key.to_user_string() for key in graph.get_all_asset_keys()}
    assert set(STAGES) <= keys
    for stage in STAGES:
        checks = graph.get_checks_for_asset(dg.AssetKey(stage)) if hasattr(graph, "get_checks_for_asset") else None
        node = graph.get(dg.AssetKey(stage))
        assert node.check_keys or checks, f"{stage} has no asset checks"


def test_partitions_are_the_dynamic_sources_partitions():
    """Partitions follow the data: none exist until the sensor (or the CLI) registers a source
    with a spec and files; every per-source stage shares the one "sources" definition."""
    graph = _graph()
    assert load_catalog()  # the catalog has specs, yet no partition is fixed by it
    for stage in STAGES:
        partitions = graph.get(dg.AssetKey(stage)).partitions_def
        if stage in {"knowledge_base", "medtrinity_dataset"}:
            assert partitions is None
        else:
            assert isinstance(partitions, dg.DynamicPartitionsDefinition) and partitions.name == "sources"
    with dg.instance_for_test() as instance:
        assert graph.get(dg.AssetKey("rois")).partitions_def.get_partition_keys(dynamic_partitions_store=instance) == []
        instance.add_dynamic_partitions("sources", ["busi", "kvasir_seg.s0of2"])
        assert graph.get(dg.AssetKey("triplets")).partitions_def.get_partition_keys(dynamic_partitions_store=instance) == [
            "busi", "kvasir_seg.s0of2"]


def test_lineage_follows_the_pipeline():
    graph = _graph()
    parents = lambda name: {k.to_user_string() for k in graph.get(dg.AssetKey(name)).parent_keys}  # noqa: E731
    assert parents("normalized_images") == {"raw_records"}
    assert parents("facts") == {"rois", "model_rois"}
    assert parents("model_rois") >= {"normalized_images", "rois"}  # plus the expert models it applies
    assert parents("retrieved_knowledge") == {"facts", "knowledge_base"}
    assert parents("descriptions") == {"facts", "coarse_captions", "retrieved_knowledge"}
    # triplets_index: the observed set of triplets files, so staleness shows at any partition count.
    assert parents("medtrinity_dataset") == {"triplets", "triplets_index"}
    assert parents("triplets_index") == {"triplets"}


def test_sql_models_take_their_upstreams_from_the_sql():
    from medtrinity_assets.quality.sql_models import discover_models

    graph = _graph()
    models = discover_models(REPO_ROOT / "dbt_like_sql")
    assert {"stg_triplets", "summary_by_source", "summary_by_modality", "summary_by_finding"} <= {m.name for m in models}
    names = {m.name for m in models}
    for model in models:
        parents = {k.to_user_string() for k in graph.get(dg.AssetKey(model.name)).parent_keys}
        # A model over the per-source tables also follows triplets_index (defs/dataset_automation.py).
        follows = {"triplets_index"} if set(model.refs) - names else set()
        assert parents == set(model.refs) | follows, model.name


def test_sensor_schedule_and_job_are_defined():
    assert defs.resolve_sensor_def("raw_files_sensor")
    assert defs.resolve_schedule_def("refresh_sources_schedule")
    assert defs.resolve_job_def("source_pipeline")


def test_dagster_cli_validates_the_workspace():
    dagster = Path(sys.executable).parent / "dagster"
    result = subprocess.run(
        [str(dagster), "definitions", "validate", "-w", "workspace.yaml"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


def test_each_expert_spec_is_an_asset_learning_from_its_partitions():
    """data/experts/demo_grey_matter_mri.yaml: an unpartitioned asset in group experts, downstream
    of exactly the rois and normalized_images partitions it trains on, upstream of model_rois;
    its code version is the spec's training hash."""
    from medtrinity_assets.defs.experts import EXPERT_SPECS
    from medtrinity_assets.grounding.experts.spec import load_expert
    from medtrinity_assets.paths import experts_dir

    spec = load_expert(experts_dir() / "demo_grey_matter_mri.yaml")
    assert EXPERT_SPECS["demo_grey_matter_mri"] == spec
    key = dg.AssetKey("expert_demo_grey_matter_mri")
    graph = _graph()
    node = graph.get(key)
    assert node.partitions_def is None and node.group_name == "experts"
    assert node.code_version == spec.training_hash()[:16]
    assert {"pytorch", "monai"} <= set(node.kinds)
    assert {k.to_user_string() for k in node.parent_keys} == {"rois", "normalized_images"}
    for parent in ("rois", "normalized_images"):
        mapping = graph.get_partition_mapping(key, dg.AssetKey(parent))
        assert isinstance(mapping, dg.SpecificPartitionsPartitionMapping)
        assert list(mapping.partition_keys) == ["demo_mri_brain_mni"]
    assert key in graph.get(dg.AssetKey("model_rois")).parent_keys
    assert defs.resolve_sensor_def("expert_training_sensor")
