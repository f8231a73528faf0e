"""Adding a source is one YAML file: the README's worked example, end to end.

The YAML is read from README.md ("Adding a source"), written into a catalog folder beside the
project's own specs, and its files into the raw folder. Then, as the UI's "Reload" does (a fresh
load of the code location), the Definitions are built again: the new partition exists, the
raw-files sensor requests its run, and materializing its ingest partition gives the records.
"""

from __future__ import annotations

import json
import re
import shutil
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
import pytest
import yaml
from PIL import Image

from medtrinity_assets import cli
from medtrinity_assets.paths import REPO_ROOT, DataRoot, catalog_dir
from medtrinity_assets_tests.defs_reload import reload_definitions

# The README example's frames: <patient>_<frame>; the mask beside each under masks/.
FRAMES = {"p01_frame1": (20, 30), "p01_frame2": (40, 60), "p02_frame1": (70, 90)}


def readme_example_spec() -> dict:
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Adding a source", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```yaml\n(.*?)```", section, re.DOTALL)
    assert block, "README's 'Adding a source' section has no yaml block"
    return yaml.safe_load(block.group(1))


def write_example_files(root: Path) -> None:
    rng = np.random.default_rng(0)
    for name, (top, left) in FRAMES.items():
        speckle = rng.gamma(2.0, 30.0, (120, 160)).clip(0, 255).astype(np.uint8)
        mask = np.zeros((120, 160), dtype=np.uint8)
        mask[top : top + 25, left : left + 35] = 255
        for folder, pixels, suffix in (("images", speckle, ""), ("masks", mask, "_mask")):
            (root / folder).mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(root / folder / f"{name}{suffix}.png")


@pytest.fixture
def catalog_with_example(tmp_path, isolated_env, monkeypatch):
    """The project's catalog plus the README example, and the example's files in the raw folder."""
    catalog = tmp_path / "catalog"
    shutil.copytree(catalog_dir(), catalog)
    spec = readme_example_spec()
    (catalog / f"{spec['id']}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    write_example_files(isolated_env["raw"] / spec["id"])
    monkeypatch.setenv("MEDTRINITY_CATALOG", str(catalog))
    return {"catalog": catalog, "id": spec["id"], **isolated_env}


@contextmanager
def reloaded_definitions():
    """Load the Dagster layer again from the current catalog, as a code-location reload does;
    afterwards load it again so later tests see the project's own catalog."""
    try:
        yield reload_definitions()
    finally:
        reload_definitions()


def test_readme_example_becomes_a_partition_the_sensor_runs_and_ingest_reads(catalog_with_example, monkeypatch):
    source_id = catalog_with_example["id"]
    assert cli.main(["check-source", source_id]) == 0

    with reloaded_definitions() as (_partitions, _experts, assets, automation, _catalog, definitions):
        with dg.DagsterInstance.ephemeral() as instance:
            evaluation = automation.raw_files_sensor(
                dg.build_sensor_context(instance=instance, resources={"settings": assets.PipelineSettings()})
            )
            keys = [key for request in evaluation.dynamic_partitions_requests for key in request.partition_keys]
            assert source_id in keys and "busi" in keys  # added beside the sources with files
            instance.add_dynamic_partitions("sources", keys)  # as the daemon applies the request
            requested = {request.partition_key: request for request in evaluation.run_requests}
            assert source_id in requested
            assert requested[source_id].tags["medtrinity/trigger"] == "files_changed"

            result = dg.materialize(
                [assets.raw_records],
                partition_key=source_id,
                instance=instance,
                resources={"settings": assets.PipelineSettings()},
            )
            assert result.success

    rows = pl.read_parquet(DataRoot.from_env().table("raw_records", source_id)).sort("source_file")
    assert rows["source_file"].to_list() == [f"images/{name}.png" for name in sorted(FRAMES)]
    assert set(rows["modality"]) == {"ultrasound"} and rows["organs"].to_list()[0] == ["thyroid"]
    annotations = [json.loads(value) for value in rows["annotations"]]
    assert [[a["kind"] for a in found] for found in annotations] == [["mask"]] * 3
    assert {a["label"] for found in annotations for a in found} == {"thyroid nodule"}
    # The regex patient rule: p01's two frames share a patient, p02 is another one.
    hashes = rows["patient_hash"].to_list()
    assert hashes[0] == hashes[1] != hashes[2]


def test_broken_spec_in_the_catalog_is_named_by_file_and_field(catalog_with_example, capsys):
    path = catalog_with_example["catalog"] / f"{catalog_with_example['id']}.yaml"
    spec = yaml.safe_load(path.read_text())
    spec["modality"] = "sonography"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))

    assert cli.main(["check-source", catalog_with_example["id"]]) == 1
    err = capsys.readouterr().err
    assert str(path) in err and "field 'modality'" in err and "sonography" in err

    # The listing still works (a broken spec stops only itself) and names it with its field.
    assert cli.main(["sources"]) == 0
    out = capsys.readouterr().out
    assert "busi" in out and str(path) in out.partition("left out")[2] and "field 'modality'" in out
