"""The stage registry (medtrinity_assets.pipeline.STAGES) drives the assets, their checks, the
quarantine tables, the benchmark and the SQL refs; a stage has one name everywhere, and a new
registry entry becomes an asset with its checks without touching any other file."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from medtrinity_assets import schemas, stages
from medtrinity_assets.catalog import load_catalog
from medtrinity_assets.defs.assets import ASSETS_BY_NAME, build_assets
from medtrinity_assets.defs.partitions import source_partitions
from medtrinity_assets.defs.resources import PipelineSettings
from medtrinity_assets.definitions import defs
from medtrinity_assets.paths import DataRoot
from medtrinity_assets.pipeline import PARTITION_TABLES, STAGE, STAGES, Stage, StageInputs
from medtrinity_assets.quality import checks as qc
from medtrinity_assets_tests.spec_factory import build_spec


def test_every_registry_entry_is_an_asset_with_its_checks_and_upstreams():
    graph = defs.resolve_asset_graph()
    for stage in STAGES:
        node = graph.get(dg.AssetKey(stage.name))
        # Plus the assets that are no stage (model_rois: the expert models it applies).
        extra = set(stage.extra_deps()) if stage.extra_deps else set()
        assert {k.to_user_string() for k in node.parent_keys} == set(stage.upstream) | extra, stage.name
        assert {k.name for k in node.check_keys} == {c.name for c in stage.checks}, stage.name
        assert (node.partitions_def is not None) == stage.partitioned, stage.name
    assert list(ASSETS_BY_NAME) == [stage.name for stage in STAGES]


def test_check_names_are_unique_per_stage_and_quarantining_stages_check_their_rate():
    for stage in STAGES:
        names = [c.name for c in stage.checks]
        assert len(names) == len(set(names)), stage.name
        assert ("quarantine_rate" in names) == ("quarantine_kinds" in names) == stage.quarantines, stage.name


def test_benchmark_and_sql_refs_use_the_registry_names():
    from medtrinity_assets.bench import _partition_stages
    from medtrinity_assets.defs.sql_models import relation_for

    assert _partition_stages() == list(PARTITION_TABLES) == [s.name for s in STAGES if s.partitioned]
    root = DataRoot(Path("/data"))
    for name in PARTITION_TABLES:
        assert f"/tables/{name}/" in relation_for(root, name)


def test_quarantine_rows_carry_the_stage_name(tmp_path):
    """The ingest stage is raw_records everywhere: report, table folder, quarantine folder and
    the stage column of its quarantine rows (it used to be "ingest" there)."""
    source = tmp_path / "src"
    source.mkdir()
    Image.fromarray(np.full((32, 32), 90, dtype=np.uint8)).save(source / "good.png")
    (source / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    spec = build_spec(id="reg_src", root=str(source), annotation_kinds=["none"])
    root = DataRoot(tmp_path / "var")

    report = STAGE["raw_records"].run(StageInputs(root, spec=spec, salt="s"))
    assert report.stage == "raw_records" and report.quarantined == 1
    assert report.output == str(root.table("raw_records", spec.id))
    rows = pq.read_table(root.quarantine("raw_records", spec.id)).to_pylist()
    assert [(r["stage"], r["source_file"]) for r in rows] == [("raw_records", "broken.png")]


TOY_SCHEMA = pa.schema([("record_id", pa.string()), ("source_id", pa.string()), ("score", pa.float64())])


def _run_toy(inputs: StageInputs) -> stages.StageReport:
    """A stage written as a new contributor would: one row kept, one quarantined."""
    spec, root = inputs.spec, inputs.data_root
    report = stages.StageReport("toy_scores", spec.id, partition=spec.partition)
    with stages.stage_tables(report, root, root.table("toy_scores", spec.partition), TOY_SCHEMA) as (writer, quarantine):
        report.inputs = 2
        writer.write({"record_id": "r1", "source_id": spec.id, "score": 0.5})
        quarantine.add("b.png", "cannot score: empty image", "r2", kind="stage_error")
    return report


def test_a_new_registry_entry_becomes_an_asset_with_checks_and_its_own_quarantine(isolated_env):
    toy = Stage(
        "toy_scores", TOY_SCHEMA, (), _run_toy,
        (qc.not_null(["record_id", "score"]), qc.unique_key(["record_id"]), *qc.quarantine_checks(max_rate=0.6)),
        "A stage added by a test.",
    )
    assets = build_assets((*STAGES, toy))
    assert "toy_scores" in assets
    partition = sorted(load_catalog())[0]
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(source_partitions.name, [partition])
        result = dg.materialize(
            [assets["toy_scores"]], partition_key=partition, instance=instance,
            resources={"settings": PipelineSettings()}, raise_on_error=False,
        )
    assert result.success
    evaluations = {
        e.asset_check_evaluation_data.check_name: e.asset_check_evaluation_data
        for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"
    }
    assert set(evaluations) == {"not_null", "unique_key", "quarantine_rate", "quarantine_kinds"}
    assert all(e.passed for e in evaluations.values()), {k: e.description for k, e in evaluations.items()}
    assert "1 of 2 inputs quarantined" in evaluations["quarantine_rate"].description
    root = DataRoot.from_env()
    rows = pq.read_table(root.quarantine("toy_scores", partition)).to_pylist()
    assert [(r["stage"], r["record_id"]) for r in rows] == [("toy_scores", "r2")]
    assert pq.read_table(root.table("toy_scores", partition)).schema.equals(TOY_SCHEMA)



# --- quarantine kinds ---------------------------------------------------------------------

QUARANTINE_CALLS = {"Quarantined", "MaskProblem"}


def test_every_quarantine_site_states_its_kind():
    """No default kind: a site that forgets it would file its rows under a wrong kind."""
    import ast

    from medtrinity_assets.paths import REPO_ROOT

    unstated = []
    for path in sorted((REPO_ROOT / "medtrinity_assets").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
            is_site = name in QUARANTINE_CALLS or (
                name == "add" and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "quarantine"
            )
            if is_site and not any(keyword.arg == "kind" for keyword in node.keywords):
                unstated.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno}")
    assert not unstated, unstated


def test_a_quarantine_without_a_known_kind_is_refused():
    import pytest

    from medtrinity_assets.sources.base import QUARANTINE_KINDS, Quarantined

    with pytest.raises(TypeError):
        Quarantined("a.png", "unreadable image")  # noqa: the missing kind is the point
    with pytest.raises(ValueError):
        Quarantined("a.png", "unreadable image", kind="mysterious")
    assert Quarantined("a.png", "x", kind="unpaired").kind in QUARANTINE_KINDS


def test_stage_report_and_check_source_group_by_kind(tmp_path):
    """A mask of another size makes its image an invalid annotation, not "unreadable": the report
    and check-source follow the reader's kind, whatever words the reason uses."""
    from medtrinity_assets.sources.check import check_source

    source = tmp_path / "src"
    (source / "images").mkdir(parents=True)
    (source / "masks").mkdir()
    for name, mask_shape in (("a", (32, 32)), ("b", (16, 20))):
        Image.fromarray(np.full((32, 32), 90, dtype=np.uint8)).save(source / "images" / f"{name}.png")
        mask = np.zeros(mask_shape, dtype=np.uint8)
        mask[2:8, 2:8] = 255
        Image.fromarray(mask).save(source / "masks" / f"{name}.png")
    (source / "images" / "c.png").write_bytes(b"<html>403 Forbidden</html>")
    Image.fromarray(np.zeros((32, 32), dtype=np.uint8)).save(source / "masks" / "c.png")
    spec = build_spec(
        id="kinds_src", root=str(source),
        layout={"family": "image_mask", "image_glob": "images/*.png", "mask_replace": [{"old": "images/", "new": "masks/"}]},
    )

    report = stages.run_ingest(spec, DataRoot(tmp_path / "var"), "salt")
    assert report.kinds == {"invalid_annotation": 1, "unreadable": 1}

    checked = check_source(spec, source)
    assert checked.images == 1
    assert [item.split(":")[0] for item in checked.unreadable.items] == ["images/c.png"]
    assert [item.split(":")[0] for item in checked.quarantined["invalid_annotation"].items] == ["images/b.png"]
    assert "Quarantined as invalid_annotation" in checked.render()


def test_quarantine_kinds_check_refuses_a_kind_outside_the_list(tmp_path):
    from medtrinity_assets.pipeline import run_checks
    from medtrinity_assets.storage import write_table

    root = DataRoot(tmp_path / "var")
    row = {"source_id": "s", "source_file": "a.png", "record_id": None, "stage": "normalized_images", "reason": "r"}
    write_table(root.table("normalized_images", "s"), schemas.NORMALIZED_IMAGES, [])
    write_table(root.quarantine("normalized_images", "s"), schemas.QUARANTINE, [{**row, "kind": "unreadable"}])
    assert next(o for o in run_checks("normalized_images", root, "s") if o.name == "quarantine_kinds").passed
    write_table(root.quarantine("normalized_images", "s"), schemas.QUARANTINE, [{**row, "kind": "cosmic_rays"}])
    outcome = next(o for o in run_checks("normalized_images", root, "s") if o.name == "quarantine_kinds")
    assert not outcome.passed and outcome.metadata["unexpected"] == {"cosmic_rays": 1}


# --- layers -------------------------------------------------------------------------------

# Lowest first: a module may import its own package and any lower layer, nothing above it.
LAYERS = [
    {"objectstore", "install_profile"},
    {"paths", "shutdown", "schemas", "duckdb_sql", "validation", "vocabulary", "containment", "bounded_yaml", "splits", "transient", "__init__",
     "parallel"},
    {"storage"},
    {"settings"},
    {"imaging"},
    {"catalog"},
    {"sources"},
    {"grounding", "knowledge"},
    {"generation"},
    {"dataset"},
    {"preview"},
    {"quality"},
    {"stage_work"},  # the per-record work of the CPU stages, run in worker processes
    {"stages"},
    {"pipeline"},
    {"defs", "instance"},
    {"definitions", "cli", "side_report", "bench", "bench_burned_in", "bench_dedup", "bench_deid_text",
     "bench_labels", "bench_text", "bench_verifier", "bench_experts"},
    # bench_llm reads bench_text's measures of text variety; bench_retrieval runs bench's workload;
    # bench_ingest takes bench's CPU and memory sampling.
    {"bench_llm", "bench_retrieval", "bench_ingest"},
]
TOLERATED: set[tuple[str, str]] = set()  # (from, to) layer pairs allowed upward; keep it empty


def _imports(package_root):
    """(importing module, imported module) for every medtrinity_assets import, at any depth."""
    import ast

    for path in sorted(package_root.rglob("*.py")):
        module = ".".join(path.relative_to(package_root.parent).with_suffix("").parts)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "medtrinity_assets":
                if node.module == "medtrinity_assets":  # "from medtrinity_assets import schemas, stages"
                    for alias in node.names:
                        submodule = package_root / f"{alias.name}.py"
                        yield module, f"medtrinity_assets.{alias.name}" if submodule.exists() or (package_root / alias.name).is_dir() else "medtrinity_assets.__init__"
                else:
                    yield module, node.module
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == "medtrinity_assets":
                        yield module, alias.name


def test_imports_point_down_the_layers():
    from medtrinity_assets.paths import REPO_ROOT
    from medtrinity_assets.sources import FAMILY_MODULES

    rank = {name: i for i, layer in enumerate(LAYERS) for name in layer}
    readers = set(FAMILY_MODULES.values())
    wrong = []
    for importer, imported in _imports(REPO_ROOT / "medtrinity_assets"):
        top_from, top_to = importer.split(".")[1], imported.split(".")[1] if "." in imported else "__init__"
        if importer in readers and imported in readers and importer != imported:
            wrong.append(f"{importer} -> {imported} (family readers share code through sources.base, image_common, dicom_common)")
        if top_from == top_to or (top_from, top_to) in TOLERATED:
            continue
        assert top_from in rank and top_to in rank, f"{top_from} or {top_to} has no layer: add it to LAYERS"
        if rank[top_to] >= rank[top_from]:
            wrong.append(f"{importer} -> {imported}")
    assert not wrong, "\n".join(sorted(set(wrong)))


def test_quarantine_model_reads_registry_stages_not_folders_of_former_names(tmp_path):
    """A data root written before stages had one name keeps tables/quarantine/ingest/...: the
    warehouse must not count those rows beside the ones the renamed stage writes now."""
    import duckdb

    from medtrinity_assets.defs.sql_models import MODELS, relation_for
    from medtrinity_assets.quality.sql_models import run_models
    from medtrinity_assets.storage import write_table

    root = DataRoot(tmp_path / "var")
    row = {"source_id": "s", "source_file": "a.png", "record_id": None, "kind": "unreadable", "reason": "r"}
    write_table(root.quarantine("ingest", "s"), schemas.QUARANTINE, [{**row, "stage": "ingest"}])
    write_table(root.quarantine("raw_records", "s"), schemas.QUARANTINE, [{**row, "stage": "raw_records"}])
    con = duckdb.connect()
    try:
        run_models(con, [m for m in MODELS if m.refs == ["quarantine"]], lambda ref: relation_for(root, ref))
        assert con.sql("SELECT stage, files FROM qc_quarantine_by_kind").fetchall() == [("raw_records", 1)]
    finally:
        con.close()
