"""Measure the dedup pass on the real-data sources (../shared/realdata): what the hash proposes
and what the pixels say, and the numbers behind ``MIN_CORRELATION`` / ``MIN_SSIM``.

Each real-data source of the catalog, plus the two extracts the catalog reaches only through a
download (``busi_train``: more BUSI; ``kvasir_seg``: all 1,000 Kvasir-SEG frames), is ingested
and normalized by the pipeline's stages into a data root (default ``var/bench/dedup``; reused
when present). Then:

1. the production pass (``find_duplicates`` with the ``ImageComparer``, as ``build_dataset``
   runs it): candidate pairs per pair of sources, by verdict, each non-rejected pair listed;
2. ``--survey N``: every pair of images from different volumes whose hashes lie within N bits
   (all pairs, not only the greedy pass's), with correlation and SSIM after alignment, sorted by
   SSIM: the table to read the thresholds from (look at the pairs near the cut by eye).

Usage: python -m medtrinity_assets.bench_dedup [--root DIR] [--survey 6] [--sources busi,busi_train]
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from pathlib import Path

from medtrinity_assets.paths import REPO_ROOT, DataRoot, realdata_dir

SALT = "bench-dedup"


def realdata_specs() -> dict:
    """The catalog's real-data sources, plus busi_train and the full Kvasir-SEG extract."""
    from medtrinity_assets.catalog import load_catalog

    catalog = load_catalog()
    specs = {sid: spec for sid, spec in catalog.items() if spec.root and "shared/realdata" in spec.root}
    realdata = realdata_dir()
    if (realdata / "busi_train").is_dir():
        specs["busi_train"] = catalog["busi"].model_copy(update={"id": "busi_train", "root": str(realdata / "busi_train")})
    if (realdata / "kvasir_seg").is_dir():
        kvasir = catalog["kvasir_seg"]
        layout = kvasir.layout.model_copy(update={"image_glob": "images/*.jpg", "mask_template": "masks/{stem}.jpg"})
        specs["kvasir_seg"] = kvasir.model_copy(update={"root": str(realdata / "kvasir_seg"), "layout": layout})
    return specs


def prepare(root: DataRoot, specs: dict) -> None:
    from medtrinity_assets import stages

    for source_id, spec in sorted(specs.items()):
        if root.table("normalized_images", source_id).exists():
            continue
        started = time.perf_counter()
        ingest = stages.run_ingest(spec, root, SALT)
        normalize = stages.run_normalize(spec, root)
        print(f"  {source_id:<22} {ingest.rows:>5} records, {normalize.rows:>5} images  {time.perf_counter() - started:.1f} s")


def dedup_rows(root: DataRoot, source_ids: list[str]) -> list:
    import duckdb

    from medtrinity_assets.dataset.dedup import DedupRow, volume_group

    from medtrinity_assets.duckdb_sql import read_parquet

    raw = read_parquet([root.table("raw_records", s) for s in source_ids], union_by_name=True)
    norm = read_parquet([root.table("normalized_images", s) for s in source_ids], union_by_name=True)
    rows = duckdb.sql(
        f"""SELECT r.source_id, r.record_id, n.image_sha256, n.phash, r.source_file, r.slice_index, r.patient_hash,
                   r.labels, n.image_path
            FROM {raw} r JOIN {norm} n
            USING (record_id) ORDER BY 1, 2"""
    ).fetchall()
    return [
        DedupRow(source_id, record_id, sha, phash, volume_group(source_id, source_file, slice_index), patient,
                 tuple(labels or ()), None, image_path)
        for source_id, record_id, sha, phash, source_file, slice_index, patient, labels, image_path in rows
    ]


def production_pass(root: DataRoot, rows: list) -> None:
    from medtrinity_assets.dataset.dedup import MIN_CORRELATION, MIN_SSIM, NEAR_DUPLICATE_MAX_HAMMING, ImageComparer, find_duplicates

    started = time.perf_counter()
    comparer = ImageComparer(root.root)
    result = find_duplicates(rows, comparer)
    seconds = time.perf_counter() - started
    print(f"\nProduction pass over {len(rows)} images: candidates = same sha256 or phash <= {NEAR_DUPLICATE_MAX_HAMMING} bits"
          f" (not within one volume); confirmed when correlation >= {MIN_CORRELATION} and SSIM >= {MIN_SSIM}")
    print(f"  {len(result.pairs)} candidate pairs, {comparer.compared} pixel comparisons, {seconds:.1f} s")
    by_sources: Counter = Counter()
    for pair in result.pairs:
        by_sources[(pair.kept.source_id, pair.row.source_id, pair.verdict)] += 1
    print(f"  {'kept source':<18} {'later source':<18} {'confirmed':>9} {'conflict':>8} {'rejected':>8}")
    for kept_source, row_source in sorted({(k, r) for k, r, _ in by_sources}):
        counts = [by_sources[(kept_source, row_source, v)] for v in ("confirmed", "conflict", "rejected")]
        print(f"  {kept_source:<18} {row_source:<18} {counts[0]:>9} {counts[1]:>8} {counts[2]:>8}")
    print(f"  rows dropped as duplicates: {len(result.duplicates)}; rows held back as conflicts: {len(result.conflicts)}")
    cross = [p for p in result.pairs if p.verdict != "rejected" and p.cross_patient and p.row.source_id == p.kept.source_id]
    print(f"  confirmed/conflict pairs across two patients of one source: {len(cross)}")
    for pair in result.pairs:
        if pair.verdict != "rejected" and pair.kind == "near":
            print(f"    {pair.verdict:<9} d={pair.distance} corr={pair.match.correlation} ssim={pair.match.ssim} "
                  f"{pair.kept.source_id}:{pair.kept.labels} <- {pair.row.source_id}:{pair.row.labels}  "
                  f"{pair.kept.image_path} {pair.row.image_path}")
    exact = Counter((p.kept.source_id, p.row.source_id, p.verdict) for p in result.pairs if p.kind == "exact")
    for (kept_source, row_source, verdict), n in sorted(exact.items()):
        print(f"    {verdict:<9} identical bytes x{n}: {kept_source} <- {row_source}")


def survey(root: DataRoot, rows: list, max_bits: int) -> None:
    import numpy as np
    from PIL import Image

    from medtrinity_assets.dataset.dedup import MIN_CORRELATION, MIN_SSIM, compare_images, parse_phash

    hashed = [(row, parse_phash(row.phash)) for row in rows]
    hashed = [(row, value) for row, value in hashed if value is not None]
    values = np.array([value for _, value in hashed], dtype=np.uint64)
    started = time.perf_counter()
    measured = []
    for i, (row, value) in enumerate(hashed):
        xor = values[i + 1 :] ^ np.uint64(value)
        bits = np.unpackbits(xor.view(np.uint8).reshape(-1, 8), axis=1).sum(axis=1)
        for j in np.nonzero(bits <= max_bits)[0]:
            other = hashed[i + 1 + j][0]
            if row.group is not None and row.group == other.group:
                continue  # slices of one volume are never candidates
            if row.image_sha256 == other.image_sha256:
                continue  # identical bytes need no measurement
            a = np.asarray(Image.open(root.root / row.image_path))
            b = np.asarray(Image.open(root.root / other.image_path))
            measured.append((compare_images(a, b), int(bits[j]), row, other))
    seconds = time.perf_counter() - started
    print(f"\nSurvey: {len(measured)} pairs of different images (not identical bytes, not one volume) within {max_bits} bits,"
          f" measured in {seconds:.1f} s; sorted by SSIM, '*' = confirmed by the thresholds")
    for match, bits, row, other in sorted(measured, key=lambda m: (m[0].ssim, m[0].correlation)):
        confirmed = "*" if match.correlation >= MIN_CORRELATION and match.ssim >= MIN_SSIM else " "
        print(f"  {confirmed} ssim={match.ssim:.3f} corr={match.correlation:.3f} d={bits} "
              f"{row.source_id}:{Path(row.image_path).name[:12]} {sorted(row.labels)} | "
              f"{other.source_id}:{Path(other.image_path).name[:12]} {sorted(other.labels)}  ({match.reason})")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=REPO_ROOT / "var" / "bench" / "dedup")
    parser.add_argument("--survey", type=int, default=6, help="phash bits for the all-pairs survey (0: skip)")
    parser.add_argument("--sources", default="", help="comma-separated source ids (default: all real-data sources)")
    args = parser.parse_args(argv)
    specs = realdata_specs()
    if args.sources:
        specs = {s: specs[s] for s in args.sources.split(",")}
    root = DataRoot(args.root)
    print(f"Ingest and normalize into {root.root}:")
    prepare(root, specs)
    rows = dedup_rows(root, sorted(specs))
    production_pass(root, rows)
    if args.survey:
        survey(root, rows, args.survey)


if __name__ == "__main__":
    main()
