"""One broken spec stops nothing but itself: it is listed (file and field) by the catalog load,
the CLI and a failing asset check; the code location, the CLI and the other sources keep working."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from medtrinity_assets.catalog import load_catalog, load_catalog_report
from medtrinity_assets.paths import catalog_dir

WORKTREE = Path(__file__).resolve().parents[2]
GOOD = "demo_fundus_normal"


@pytest.fixture
def broken_catalog(tmp_path):
    """A catalog folder: one good spec, one with an invalid field, one that is not YAML, and a
    folder named like a spec."""
    folder = tmp_path / "sources"
    folder.mkdir()
    good = yaml.safe_load((catalog_dir() / f"{GOOD}.yaml").read_text())
    (folder / f"{GOOD}.yaml").write_text(yaml.safe_dump(good))
    bad_field = {**good, "id": "bad_field", "modality": "photograph"}
    (folder / "bad_field.yaml").write_text(yaml.safe_dump(bad_field))
    (folder / "not_yaml.yaml").write_text("id: [unclosed\n")
    (folder / "a_folder.yaml").mkdir()
    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    return folder


def test_a_broken_spec_is_left_out_and_named_with_its_field(broken_catalog):
    loaded = load_catalog_report(broken_catalog)
    assert list(loaded.specs) == [GOOD]
    problems = {problem.file.name: problem for problem in loaded.problems}
    assert set(problems) == {"bad_field.yaml", "not_yaml.yaml", "a_folder.yaml"}
    assert problems["bad_field.yaml"].fields == ("modality",)
    assert "photograph" in problems["bad_field.yaml"].message
    assert "not valid YAML" in problems["not_yaml.yaml"].message
    assert str(broken_catalog / "not_yaml.yaml") in problems["not_yaml.yaml"].message
    assert "cannot be read" in problems["a_folder.yaml"].message
    # What every other caller (CLI, resources, benches) reads: the good specs only.
    assert list(load_catalog(broken_catalog)) == [GOOD]


def _env(catalog: Path, tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(WORKTREE),
        "MEDTRINITY_CATALOG": str(catalog),
        "MEDTRINITY_HOME": str(tmp_path / "var"),
        "MEDTRINITY_RAW": str(tmp_path / "raw"),
        "MEDTRINITY_SALT": "test-salt",
        "DAGSTER_HOME": str(tmp_path),
    }


def test_sources_command_lists_the_good_and_the_broken_spec(broken_catalog, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "medtrinity_assets.cli", "sources"],
        cwd=WORKTREE, env=_env(broken_catalog, tmp_path), capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    listed, _, left_out = result.stdout.partition("left out")
    assert GOOD in listed
    assert "bad_field.yaml" in left_out and "field 'modality'" in left_out
    assert "not_yaml.yaml" in left_out


LOAD_AND_RUN = f'''
import dagster as dg
from medtrinity_assets.catalog import load_catalog
from medtrinity_assets.catalog.acquire import fetch_package_files
from medtrinity_assets.definitions import defs
from medtrinity_assets.defs.assets import raw_records
from medtrinity_assets.defs.catalog import every_spec_loads, source_catalog
from medtrinity_assets.defs.resources import PipelineSettings
from medtrinity_assets.paths import raw_dir

graph = defs.resolve_asset_graph()
print("partitions", graph.get(dg.AssetKey("raw_records")).partitions_def.name)
print("catalog metadata", defs.resolve_assets_def("source_catalog").specs_by_key[dg.AssetKey("source_catalog")].metadata["broken_specs"])
resources = {{"settings": PipelineSettings()}}
check = dg.materialize([source_catalog, every_spec_loads], selection=dg.AssetSelection.checks(every_spec_loads),
                       resources=resources, raise_on_error=False)
(evaluation,) = check.get_asset_check_evaluations()
print("check passed", evaluation.passed, evaluation.metadata["broken_specs"].value)
fetch_package_files(load_catalog()["{GOOD}"], raw_dir() / "{GOOD}")
instance = dg.DagsterInstance.ephemeral()
instance.add_dynamic_partitions("sources", ["{GOOD}"])  # as the sensor registers it
run = dg.materialize([raw_records], partition_key="{GOOD}", instance=instance, resources=resources, raise_on_error=False)
print("good partition", run.success)
'''


@pytest.mark.slow
def test_definitions_load_and_other_sources_run_with_a_broken_spec(broken_catalog, tmp_path):
    env = _env(broken_catalog, tmp_path)
    validate = subprocess.run(
        [str(Path(sys.executable).parent / "dagster"), "definitions", "validate", "-m", "medtrinity_assets.definitions"],
        cwd=WORKTREE, env=env, capture_output=True, text=True, timeout=300,
    )
    assert validate.returncode == 0, validate.stdout[-2000:] + validate.stderr[-2000:]
    run = subprocess.run([sys.executable, "-c", LOAD_AND_RUN], cwd=WORKTREE, env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in run.stdout.splitlines() if line.startswith(("partitions", "check", "good")))
    assert lines["partitions"] == "sources"  # dynamic: the sensor registers sources with files
    assert "catalog metadata 3" in run.stdout
    passed, broken = lines["check"].removeprefix("passed ").split(" ", 1)
    assert passed == "False"
    assert "bad_field.yaml" in broken and "not_yaml.yaml" in broken
    assert lines["good"] == "partition True"
