"""A dbt-like runner for the SQL models in ``dbt_like_sql/``.

A model is one ``<name>.sql`` file holding a SELECT. Its upstream tables are written
``{{ ref('asset_name') }}``: the refs are parsed from the text, so the Dagster layer can make
each model an asset whose dependencies are exactly what its SQL reads. At run time each ref is
replaced by a relation (a ``read_parquet(...)`` over a pipeline asset's files, or the table of
an upstream model) and the model is materialized with ``CREATE OR REPLACE TABLE`` in the
DuckDB warehouse.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import duckdb

REF = re.compile(r"\{\{\s*ref\(\s*['\"]([A-Za-z_][A-Za-z0-9_]*)['\"]\s*\)\s*\}\}")
MODEL_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")


class ModelError(ValueError):
    """A model set that cannot run: bad name, or refs forming a cycle."""


@dataclass(frozen=True)
class SqlModel:
    name: str
    path: Path
    sql: str
    refs: list[str]


def parse_refs(sql: str) -> list[str]:
    """Ref names in order of first appearance, each once."""
    return list(dict.fromkeys(REF.findall(sql)))


def load_model(path: Path) -> SqlModel:
    path = Path(path)
    name = path.stem
    if not MODEL_NAME.match(name):
        raise ModelError(f"{path}: model name '{name}' must be lower-case letters, digits and '_'")
    sql = path.read_text(encoding="utf-8")
    refs = parse_refs(sql)
    if name in refs:
        raise ModelError(f"{path}: model '{name}' refs itself")
    return SqlModel(name=name, path=path, sql=sql, refs=refs)


def topological_order(models: list[SqlModel]) -> list[SqlModel]:
    """Models ordered so each comes after the models it refs; ties by name, so the order is stable.

    Refs to names that are not models (pipeline assets) impose no order. A cycle raises
    ModelError naming the models on it.
    """
    by_name = {m.name: m for m in models}
    if len(by_name) != len(models):
        raise ModelError("two SQL models share a name")
    upstream = {m.name: {r for r in m.refs if r in by_name} for m in models}
    ordered: list[SqlModel] = []
    done: set[str] = set()
    remaining = set(by_name)
    while remaining:
        ready = sorted(n for n in remaining if upstream[n] <= done)
        if not ready:
            raise ModelError("ref cycle among SQL models: " + _describe_cycle(upstream, remaining))
        for name in ready:
            ordered.append(by_name[name])
            done.add(name)
            remaining.discard(name)
    return ordered


def _describe_cycle(upstream: dict[str, set[str]], remaining: set[str]) -> str:
    """Follow refs inside the stuck set until a model repeats: that loop is a cycle."""
    path = [min(remaining)]
    while True:
        next_name = min(r for r in upstream[path[-1]] if r in remaining)
        if next_name in path:
            cycle = path[path.index(next_name):] + [next_name]
            return " -> ".join(cycle)
        path.append(next_name)


def discover_models(folder: Path) -> list[SqlModel]:
    """Every ``*.sql`` model in the folder, in dependency order (raises ModelError on a cycle)."""
    folder = Path(folder)
    return topological_order([load_model(p) for p in sorted(folder.glob("*.sql"))])


def render(model: SqlModel, relation_for: Callable[[str], str]) -> str:
    """The model's SQL with each ref replaced by its relation, trailing semicolons dropped."""
    sql = REF.sub(lambda match: relation_for(match.group(1)), model.sql)
    return sql.strip().rstrip(";").strip()


def run_model(con: duckdb.DuckDBPyConnection, model: SqlModel, relation_for: Callable[[str], str]) -> int:
    """Materialize the model as a table in ``con``'s database; return its row count."""
    table = '"' + model.name + '"'
    con.execute(f"CREATE OR REPLACE TABLE {table} AS\n{render(model, relation_for)}")
    return int(con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0])


def run_models(con, models: list[SqlModel], relation_for: Callable[[str], str]) -> dict[str, int]:
    """Run models in dependency order; returns rows per model."""
    return {model.name: run_model(con, model, relation_for) for model in topological_order(models)}
