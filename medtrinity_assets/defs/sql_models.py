"""Each SQL file in dbt_like_sql/ becomes an asset; its upstream assets are the refs in its SQL."""


import os
import time

import dagster as dg
import duckdb

from medtrinity_assets.defs.resources import PipelineSettings
from medtrinity_assets.defs.retries import retry_if_transient
from medtrinity_assets.duckdb_sql import connect, read_parquet
from medtrinity_assets.paths import REPO_ROOT, DataRoot
from medtrinity_assets.pipeline import PARTITION_TABLES, STAGES
from medtrinity_assets.quality.sql_models import discover_models, run_model
from medtrinity_assets.storage import file_mode, make_dirs

SQL_FOLDER = REPO_ROOT / "dbt_like_sql"
MODELS = discover_models(SQL_FOLDER)
MODEL_NAMES = {model.name for model in MODELS}


def relation_for(data_root: DataRoot, ref: str) -> str:
    """The DuckDB relation a ref reads: Parquet of a pipeline asset, or an upstream model's table."""
    if ref in MODEL_NAMES:
        return ref
    if ref in PARTITION_TABLES:
        return read_parquet(data_root.table_glob(ref), union_by_name=True)
    if ref == "quarantine":
        # The registry's stages only: folders a data root kept from the stages' former names
        # (ingest, normalize, ground, coarse_caption, describe) would count their rows twice.
        folders = [data_root.quarantine(stage.name, "*") for stage in STAGES if stage.quarantines]
        present = [str(glob) for glob in folders if glob.parent.is_dir()]
        return read_parquet(present or data_root.quarantine_glob(), union_by_name=True)
    return read_parquet(data_root.table(ref))


def _connect_warehouse(path, timeout_s: float = 120.0) -> duckdb.DuckDBPyConnection:
    """Open the warehouse, waiting while another process holds DuckDB's single-writer lock.
    The file gets the data root's file mode (DuckDB creates it with the umask's)."""
    make_dirs(path.parent)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            con = connect(path)
            os.chmod(path, file_mode())
            return con
        except duckdb.IOException as error:
            if "lock" not in str(error).lower() or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _model_asset(model) -> dg.AssetsDefinition:
    @dg.asset(
        name=model.name,
        deps=[dg.AssetKey(ref) for ref in model.refs],
        group_name="warehouse",
        description=f"SQL model {model.path.name}, run by DuckDB in the warehouse file.\n\n```sql\n{model.sql.strip()}\n```",
        kinds={"duckdb", "sql"},
        # DuckDB lets one process write the warehouse file: one model at a time, across runs,
        # instead of waiting on its lock (deploy/dagster.postgres.yaml: limit 1).
        pool="warehouse",
    )
    def _asset(context: dg.AssetExecutionContext, settings: PipelineSettings) -> dg.MaterializeResult:
        root = settings.root()
        with retry_if_transient(context):
            con = _connect_warehouse(root.warehouse)
            try:
                rows = run_model(con, model, lambda ref: relation_for(root, ref))
                preview = con.sql(f"SELECT * FROM {model.name} LIMIT 10").to_arrow_table().to_pylist()
            finally:
                con.close()
        return dg.MaterializeResult(
            metadata={
                "dagster/row_count": rows,
                "warehouse": dg.MetadataValue.path(str(root.warehouse)),
                "preview": dg.MetadataValue.json(preview),
            }
        )

    return _asset


SQL_ASSETS = [_model_asset(model) for model in MODELS]
