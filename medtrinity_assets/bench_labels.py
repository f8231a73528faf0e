"""Rows per label state (finding / normal / unknown) and per slice role, per source.

Materializes ``raw_records`` with ``stages.run_ingest`` (the code the Dagster asset runs) into
a temporary data root, for the sources named, or by default every real-data source (specs
whose files are present) and every demo source (fetched from installed packages into a
temporary raw folder). Prints one line per source and the ingest quarantine count.

Usage: python -m medtrinity_assets.bench_labels [source_id ...]
"""

from __future__ import annotations

import argparse
import tempfile
from collections import Counter
from pathlib import Path

import polars as pl


def count_states(source_ids: list[str] | None = None) -> list[dict]:
    from medtrinity_assets.paths import env_overrides

    with tempfile.TemporaryDirectory(prefix="medtrinity-labels-") as scratch:
        # Demo sources are fetched into a scratch raw folder: set before the catalog is read.
        with env_overrides(MEDTRINITY_RAW=Path(scratch) / "raw"):
            return _count_states(Path(scratch), source_ids)


def _count_states(scratch: Path, source_ids: list[str] | None) -> list[dict]:
    from medtrinity_assets import stages
    from medtrinity_assets.catalog.acquire import fetch_package_files
    from medtrinity_assets.catalog.load import load_catalog, source_root
    from medtrinity_assets.paths import DataRoot

    catalog = load_catalog()
    data_root = DataRoot(scratch / "var")
    if not source_ids:
        source_ids = sorted(
            sid for sid, spec in catalog.items()
            if spec.demo or (spec.root and source_root(spec).is_dir())
        )
    results = []
    for sid in source_ids:
        spec = catalog[sid]
        if spec.demo and spec.acquisition.method == "package":
            fetch_package_files(spec, scratch / "raw" / sid)
        report = stages.run_ingest(spec, data_root, salt="label-report")
        rows = pl.read_parquet(data_root.table("raw_records", sid))
        states = Counter(rows["label_state"].to_list()) if rows.height else Counter()
        roles = Counter(r for r in rows["slice_role"].to_list() if r) if rows.height else Counter()
        results.append({"source_id": sid, "rows": rows.height, "states": states, "roles": roles,
                        "quarantined": report.quarantined})
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sources", nargs="*")
    args = parser.parse_args()
    print(f"{'source':28} {'rows':>5} {'finding':>8} {'normal':>7} {'unknown':>8}  slice roles / quarantined")
    for r in count_states(args.sources):
        s = r["states"]
        roles = ", ".join(f"{k} {v}" for k, v in sorted(r["roles"].items())) or "-"
        print(f"{r['source_id']:28} {r['rows']:5} {s['finding']:8} {s['normal']:7} {s['unknown']:8}  {roles} / q {r['quarantined']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
