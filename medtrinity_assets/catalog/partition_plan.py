"""What the sensor does on one tick, decided without Dagster: which partitions to add, which to
drop or report, and which to run.

Inputs are plain values the Dagster layer reads (the catalog's folder states, the instance's
registered and materialized partitions, the cursor, the fingerprints recorded by the last
ingests); the output is a ``TickPlan`` the sensor turns into requests.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from medtrinity_assets.catalog.fingerprint import SourceState
from medtrinity_assets.catalog.shards import parse_partition_key


@dataclass(frozen=True)
class TickPlan:
    add: list[str]  # partitions with a spec and files, not registered yet
    # Registered partitions whose files are gone (or whose source was split into another number
    # of shards, or whose spec was removed), never materialized: deleted, nothing is lost.
    delete: list[str]
    # The same, but materialized: kept (their history and tables stay visible) and reported.
    gone: dict[str, str]  # partition -> why
    runs: dict[str, str]  # partition -> fingerprint of the files it will read
    skipped: dict[str, str]  # partition -> why no run (unchanged since ... )
    cursor: dict[str, str] = field(default_factory=dict)  # partition -> last fingerprint acted on


def _why_gone(key: str, states: dict[str, SourceState]) -> str:
    try:
        source_id, _shard = parse_partition_key(key)
    except ValueError:
        return "not a partition key of this project"
    state = states.get(source_id)
    if state is None:
        return f"no spec for source {source_id} in the catalog"
    if not state.partitions:
        return f"no files for source {source_id} any more"
    return f"source {source_id} is now split into {', '.join(state.partitions)} ({state.files} files)"


def plan_tick(
    states: dict[str, SourceState],
    registered: set[str],
    materialized: set[str],
    seen: dict[str, str],
    last_ingested: dict[str, str | None],
) -> TickPlan:
    """One tick's decisions.

    ``states``: source id -> its folder state now (``fingerprint.source_state``) for every spec
    that loads. ``registered``: the partitions the instance knows. ``materialized``: those with a
    raw_records materialization. ``seen``: the cursor (partition -> fingerprint the sensor last
    requested or found current). ``last_ingested``: partition -> input fingerprint recorded by
    its last complete run; it stands in for the cursor where the cursor has no entry (the first
    tick, a reset cursor), so partitions materialized from the same files are not run again.
    """
    wanted = {key: state.fingerprint for state in states.values() for key in state.partitions}
    stale = sorted(registered - set(wanted))
    runs, skipped, cursor = {}, {}, {}
    for key, fingerprint in sorted(wanted.items()):
        before = seen.get(key) if key in seen else last_ingested.get(key)
        cursor[key] = fingerprint
        if before == fingerprint:
            skipped[key] = "files unchanged since the last run" if key in seen else "already materialized from these files"
        else:
            runs[key] = fingerprint
    return TickPlan(
        add=sorted(set(wanted) - registered),
        delete=[key for key in stale if key not in materialized],
        gone={key: _why_gone(key, states) for key in stale if key in materialized},
        runs=runs,
        skipped=skipped,
        cursor=cursor,
    )
