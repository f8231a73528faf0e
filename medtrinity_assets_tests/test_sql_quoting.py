"""A data root whose path holds apostrophes ("o'brien's data") works end to end: the triplets
asset (its preview query), the SQL models and the CLI summary. Paths reach DuckDB only through
medtrinity_assets.duckdb_sql, which quotes them."""

from __future__ import annotations

import dagster as dg
import duckdb
import numpy as np
import pytest
from PIL import Image
from dataset.test_dataset import KVASIR, write_source

from medtrinity_assets import cli, stages
from medtrinity_assets.defs.assets import ASSETS_BY_NAME
from medtrinity_assets.defs.resources import PipelineSettings
from medtrinity_assets.defs.sql_models import MODELS, relation_for
from medtrinity_assets.duckdb_sql import literal, read_parquet
from medtrinity_assets.paths import DataRoot
from medtrinity_assets.quality.sql_models import run_models

SOURCE = "kvasir_seg"  # a catalog id: the triplets asset reads its spec (license, burned-in policy)
# KVASIR: kv03 is quarantined at normalize, kv04 has no description, so two triplets.


def _spec():
    from medtrinity_assets.catalog import load_catalog

    return load_catalog()[SOURCE]


@pytest.fixture
def apostrophe_root(tmp_path, monkeypatch):
    root = DataRoot(tmp_path / "o'brien's data" / "var")
    write_source(root, SOURCE, KVASIR, "endoscopy", ["colon"])
    for (path,) in duckdb.sql(f"SELECT image_path FROM {read_parquet(root.table('normalized_images', SOURCE))}").fetchall():
        (root.root / path).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((64, 64, 3), 120, dtype=np.uint8)).save(root.root / path)
    monkeypatch.setenv("MEDTRINITY_HOME", str(root.root))
    return root


def test_literal_and_read_parquet_keep_an_apostrophe_inside_one_value(tmp_path):
    assert duckdb.sql(f"SELECT {literal(chr(39) + 'x' + chr(39) + chr(39))}").fetchall() == [("'x''",)]
    folder = tmp_path / "it's here"
    folder.mkdir()
    duckdb.sql(f"COPY (SELECT 1 AS a) TO {literal(folder / 'a.parquet')} (FORMAT parquet)")
    assert duckdb.sql(f"SELECT a FROM {read_parquet([folder / 'a.parquet'], union_by_name=True)}").fetchall() == [(1,)]


def test_triplets_asset_runs_under_a_data_root_with_apostrophes(apostrophe_root):
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("sources", [SOURCE])
        result = dg.materialize(
            [ASSETS_BY_NAME["triplets"]], partition_key=SOURCE, instance=instance,
            resources={"settings": PipelineSettings(data_root=str(apostrophe_root.root))}, raise_on_error=False,
        )
    assert result.success
    [materialization] = result.asset_materializations_for_node("triplets")
    assert "data:image/png;base64," in materialization.metadata["preview"].value


def test_sql_models_and_cli_summary_run_under_a_data_root_with_apostrophes(apostrophe_root, tmp_path):
    stages.run_triplets(_spec(), apostrophe_root)
    stages.run_dataset(apostrophe_root, [SOURCE])
    con = duckdb.connect(str(tmp_path / "warehouse.duckdb"))
    try:
        rows = run_models(con, MODELS, lambda ref: relation_for(apostrophe_root, ref))
    finally:
        con.close()
    assert rows["stg_triplets"] == 2 and rows["qc_quarantine_by_kind"] == 1

    summary = cli.summary()
    assert f"{SOURCE}" in summary and "(2 triplets)" in summary

