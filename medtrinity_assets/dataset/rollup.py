"""Per-source roll-up of partitioned tables: a sharded source is several partitions, each with
its own tables, quarantine and checks; this sums them back to one line per source.

Reads only the Parquet footers of the stage tables (row counts) and the ``kind`` column of the
quarantine tables, so it stays cheap for a source of many shards.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable

import pyarrow.parquet as pq

from medtrinity_assets.paths import DataRoot


@dataclass
class StageRollup:
    rows: int = 0
    quarantined: int = 0
    kinds: Counter = field(default_factory=Counter)
    partitions: int = 0  # partitions that have this stage's table
    missing: list[str] = field(default_factory=list)  # partitions without it

    def as_dict(self) -> dict:
        return {"rows": self.rows, "quarantined": self.quarantined, "kinds": dict(sorted(self.kinds.items())),
                "partitions": self.partitions, "missing": list(self.missing)}


def source_rollup(data_root: DataRoot, partitions: Iterable[str], stages: Iterable[str]) -> dict[str, StageRollup]:
    """Stage -> rows, quarantine rows and their kinds summed over ``partitions`` (the keys of
    one source: its id, or its shard keys)."""
    partitions = list(partitions)
    out: dict[str, StageRollup] = {}
    for stage in stages:
        total = StageRollup()
        for key in partitions:
            table = data_root.table(stage, key)
            if not table.exists():
                total.missing.append(key)
                continue
            total.partitions += 1
            total.rows += pq.read_metadata(table).num_rows
            quarantine = data_root.quarantine(stage, key)
            if quarantine.exists():
                kinds = pq.read_table(quarantine, columns=["kind"]).column("kind").to_pylist()
                total.quarantined += len(kinds)
                total.kinds.update(kinds)
        out[stage] = total
    return out


def rollup_markdown(rollups: dict[str, dict[str, StageRollup]], first: str, last: str) -> str:
    """One line per source: partitions, rows of the ``first`` and ``last`` stage, quarantine
    rows of every stage and their kinds."""
    if not rollups:
        return "No source has partitioned tables yet."
    lines = [f"| source | partitions | {first} rows | {last} rows | quarantined | kinds |", "|---|---|---|---|---|---|"]
    for source_id, stages in sorted(rollups.items()):
        kinds: Counter = Counter()
        for rollup in stages.values():
            kinds.update(rollup.kinds)
        done = stages[first].partitions
        count = done + len(stages[first].missing)
        lines.append(
            f"| {source_id} | {done} of {count} | {stages[first].rows} | {stages[last].rows} | "
            f"{sum(r.quarantined for r in stages.values())} | "
            f"{', '.join(f'{kind} {n}' for kind, n in kinds.most_common()) or '-'} |"
        )
    return "\n".join(lines)
