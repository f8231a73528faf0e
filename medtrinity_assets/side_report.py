"""How many ROIs get patient-side words, and from what: a per-source count over the rois tables.

``count_patient_sides`` reads materialized ``rois`` tables (with ``raw_records`` for the frame
kind); ``main`` first materializes ingest -> normalize -> ground for the sources asked for into
a temporary data root (the demo sources copied from their installed packages), so it can be run
on any machine without touching var/:

    python -m medtrinity_assets.side_report                 # demo + realdata sources
    python -m medtrinity_assets.side_report ibsi_sts_dicom  # just these
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import duckdb

from medtrinity_assets.paths import DataRoot


def count_patient_sides(data_root: DataRoot, source_ids: list[str]) -> list[dict]:
    """Per source: ROIs, annotated ROIs, ROIs with a patient side by source and by side, and
    records by frame kind."""
    rows = []
    con = duckdb.connect()
    for source_id in source_ids:
        rois_path = data_root.table("rois", source_id)
        raw_path = data_root.table("raw_records", source_id)
        if not rois_path.is_file() or not raw_path.is_file():
            continue
        roi_row = con.execute(
            """
            SELECT count(*),
                   count(*) FILTER (WHERE origin <> 'whole_image'),
                   count(*) FILTER (WHERE patient_side_source = 'geometry'),
                   count(*) FILTER (WHERE patient_side_source = 'declared_view'),
                   count(*) FILTER (WHERE patient_side = 'left'),
                   count(*) FILTER (WHERE patient_side = 'right'),
                   count(*) FILTER (WHERE patient_side = 'midline')
            FROM read_parquet(?)
            """,
            [str(rois_path)],
        ).fetchone()
        kinds = dict(con.execute(
            "SELECT coalesce(frame_kind, '2d'), count(*) FROM read_parquet(?) GROUP BY 1 ORDER BY 1", [str(raw_path)]
        ).fetchall())
        axes = dict(con.execute(
            "SELECT coalesce(json_extract_string(image_axes, '$.source'), 'none'), count(*) FROM read_parquet(?) GROUP BY 1 ORDER BY 1",
            [str(raw_path)],
        ).fetchall())
        total, annotated, geometry, declared, left, right, midline = roi_row
        rows.append({
            "source_id": source_id, "rois": total, "annotated_rois": annotated,
            "side_from_geometry": geometry, "side_from_declared_view": declared,
            "left": left, "right": right, "midline": midline,
            "records_by_frame_kind": kinds, "records_by_axes_source": axes,
        })
    return rows


def materialize_upto_rois(source_ids: list[str], data_root: DataRoot, raw: Path) -> list[str]:
    """Ingest, normalize and ground each source (demo files copied into ``raw`` first); returns
    the sources that were run."""
    from medtrinity_assets import stages
    from medtrinity_assets.catalog import load_catalog
    from medtrinity_assets.catalog.acquire import fetch_package_files
    from medtrinity_assets.paths import env_overrides

    catalog = load_catalog()
    done = []
    with env_overrides(MEDTRINITY_RAW=raw):
        for source_id in source_ids:
            spec = catalog[source_id]
            if spec.acquisition.method == "package":
                fetch_package_files(spec, raw / source_id)
            stages.run_ingest(spec, data_root, salt="side-report")
            stages.run_normalize(spec, data_root)
            stages.run_ground(spec, data_root)
            done.append(source_id)
    return done


def default_sources() -> list[str]:
    from medtrinity_assets.catalog import load_catalog

    catalog = load_catalog()
    return sorted(s for s, spec in catalog.items() if spec.demo or (spec.root and "shared/realdata" in spec.root))


def main(argv: list[str] | None = None) -> int:
    source_ids = list(argv if argv is not None else sys.argv[1:]) or default_sources()
    with tempfile.TemporaryDirectory(prefix="side_report_") as folder:
        data_root = DataRoot(Path(folder) / "var")
        done = materialize_upto_rois(source_ids, data_root, Path(folder) / "raw")
        header = f"{'source':32} {'rois':>5} {'annot':>5} {'geom':>5} {'decl':>5} {'L':>4} {'R':>4} {'mid':>4}  frame kinds / axes"
        print(header)
        for row in count_patient_sides(data_root, done):
            print(
                f"{row['source_id']:32} {row['rois']:5d} {row['annotated_rois']:5d} {row['side_from_geometry']:5d} "
                f"{row['side_from_declared_view']:5d} {row['left']:4d} {row['right']:4d} {row['midline']:4d}  "
                f"{row['records_by_frame_kind']} {row['records_by_axes_source']}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
