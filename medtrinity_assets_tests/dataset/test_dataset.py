"""Stage 7: triplet assembly, patient splits, cross-source dedup and the exports.

The stage tables are real Parquet files written with the project's own TableWriter and
schemas, for two sources shaped like the ones the pipeline reads (an endoscopy set with polyp
masks, a brain MRI set sliced from volumes, several slices per patient).
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter

import duckdb
import pyarrow.parquet as pq
import pytest
from spec_factory import build_spec

from medtrinity_assets import schemas
from medtrinity_assets.catalog.spec import SourceSpec
from medtrinity_assets.dataset.dedup import DedupRow, PixelMatch, find_duplicates, hamming, parse_phash
from medtrinity_assets.dataset.exports import (
    CARD_FILE,
    CONFLICTS_FILE,
    FLAGGED_FILE,
    REJECTED_FILE,
    build_dataset,
    llava_file,
)
from medtrinity_assets.splits import (
    SPLIT_NAMES,
    patient_split,
    split_bucket,
    split_sql,
)
from medtrinity_assets.dataset.triplets import assemble_triplets
from medtrinity_assets.paths import DataRoot
from medtrinity_assets.storage import write_table


def make_spec(source_id: str, modality: str, organs: list[str], license: str) -> SourceSpec:
    return build_spec(
        id=source_id, name=source_id.replace("_", " ").title(), modality=modality, organs=organs, license=license,
        layout={"family": "image_folder", "image_glob": "**/*.png"},
    )

def roi_row(record_id, source_id, n, label, origin, box, width, height, confidence=1.0):
    x0, y0, x1, y1 = box
    area = (x1 - x0) * (y1 - y0)
    return {
        "roi_id": f"{record_id}-roi{n}",
        "record_id": record_id,
        "source_id": source_id,
        "label": label,
        "origin": origin,
        "confidence": confidence,
        "image_height": height,
        "image_width": width,
        "x0": x0,
        "y0": y0,
        "x1": x1,
        "y1": y1,
        "mask_path": None if origin == "whole_image" else f"blobs/masks/{record_id}{n}.png",
        "contour": "[]",
        "area_px": area,
        "area_fraction": area / (width * height),
        "horizontal": "left" if x1 <= width / 2 else "right",
        "vertical": "upper",
        "size_class": "small",
        "shape": "oval",
        "texture": "homogeneous",
        "margin": "well-defined",
        "count_same_label": 1,
        "relations": "[]",
    }


def write_source(root: DataRoot, source_id: str, records: list[dict], modality: str, organs: list[str]) -> None:
    """Write every stage table of one source. Each record dict says which stages it reached."""
    raw, normalized, rois, captions, descriptions, quarantine = [], [], [], [], [], []
    for rec in records:
        rid, w, h = rec["id"], rec.get("width", 256), rec.get("height", 256)
        raw.append(
            {
                "record_id": rid,
                "source_id": source_id,
                "source_file": rec["file"],
                "sequence": rec.get("sequence"),
                "slice_index": rec.get("slice", -1),
                "slice_count": rec.get("slice_count", 1),
                "modality": modality,
                "organs": organs,
                "labels": rec.get("labels", []),
                "patient_hash": rec.get("patient"),
                "pixel_ref": f"blobs/pixels/{rid}.npy",
                "height": h,
                "width": w,
                "channels": 3 if modality == "endoscopy" else 1,
                "pixel_dtype": "uint8",
                "pixel_units": "rgb" if modality == "endoscopy" else "raw",
                "annotations": "[]",
                "photometric": "RGB" if modality == "endoscopy" else "MONOCHROME2",
            }
        )
        if rec.get("quarantined_at") == "normalize":
            quarantine.append(
                {"source_id": source_id, "source_file": rec["file"], "record_id": rid, "stage": "normalized_images", "reason": "unreadable pixels"}
            )
            continue
        normalized.append(
            {
                "record_id": rid,
                "source_id": source_id,
                "image_sha256": rec.get("sha", f"sha-{rid}"),
                "image_path": f"blobs/images/{rid}.png",
                "height": h,
                "width": w,
                "channels": 3 if modality == "endoscopy" else 1,
                "scale": 1.0,
                "intensity_method": "rgb" if modality == "endoscopy" else "percentile:0.5-99.5",
                "phash": rec["phash"],
            }
        )
        for n, (label, origin, box) in enumerate(rec.get("rois", [("", "whole_image", (0, 0, w, h))])):
            rois.append(roi_row(rid, source_id, n, label, origin, box, w, h))
        captions.append(
            {"record_id": rid, "source_id": source_id, "coarse_caption": f"{modality} of the {organs[0]}.", "caption_version": "cc-1"}
        )
        if rec.get("quarantined_at") == "describe":
            continue
        verified = rec.get("verified", True)
        descriptions.append(
            {
                "record_id": rid,
                "source_id": source_id,
                "description": f"This {modality} image of the {organs[0]} shows {', '.join(rec.get('labels', [])) or 'no finding'}.",
                "part_modality": "m",
                "part_organ_tissue": "o",
                "part_roi_analysis": "r",
                "part_texture_colour": "t",
                "part_relations": "rel",
                "writer": "grounded-writer",
                "prompt_version": "p-3",
                "knowledge_ids": ["kb-polyp-1"] if labels_of(rec) else [],
                "verified": verified,
                "verifier_flags": [] if verified else ["side: description says left, ROI is right"],
            }
        )
        if verified:
            # A verified row may be exported, and the training shards carry its image's bytes.
            write_png(root.root / f"blobs/images/{rid}.png", rid, w, h)
    write_table(root.table("raw_records", source_id), schemas.RAW_RECORDS, raw)
    write_table(root.table("normalized_images", source_id), schemas.NORMALIZED_IMAGES, normalized)
    write_table(root.table("rois", source_id), schemas.ROIS, rois)
    write_table(root.table("coarse_captions", source_id), schemas.COARSE_CAPTIONS, captions)
    write_table(root.table("descriptions", source_id), schemas.DESCRIPTIONS, descriptions)
    write_table(root.quarantine("normalized_images", source_id), schemas.QUARANTINE, quarantine)


def write_png(path, seed: str, width: int, height: int) -> None:
    """A small PNG whose pixels differ per record (deterministic, so reruns give the same bytes)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(sum(seed.encode()))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (min(height, 32), min(width, 32)), dtype=np.uint8)).save(path)


def labels_of(rec):
    return rec.get("labels", [])


KVASIR = [
    # Two annotated polyps (the larger must lead) plus the whole-image ROI that must come last.
    {"id": "kv01", "file": "images/cju0qkwl35piu0993l0dewei2.jpg", "patient": "pk1", "labels": ["polyp"], "phash": "f0f0f0f0f0f0f0f0",
     "rois": [("polyp", "whole_image", (0, 0, 256, 256)), ("polyp", "annotation:mask", (10, 10, 30, 30)),
              ("polyp", "annotation:mask", (100, 80, 180, 170))]},
    {"id": "kv02", "file": "images/cju0roawvklrq0799vmjorwfv.jpg", "patient": "pk2", "labels": ["polyp"], "phash": "0123456789abcdef",
     "rois": [("polyp", "annotation:mask", (40, 40, 90, 100))], "verified": False},
    {"id": "kv03", "file": "images/cju0s690hkp960855tjuaqvv0.jpg", "patient": "pk3", "labels": ["polyp"], "phash": "1111222233334444",
     "quarantined_at": "normalize"},
    {"id": "kv04", "file": "images/cju0sr5ghl0nd08789uzf1raf.jpg", "patient": "pk4", "labels": ["polyp"], "phash": "aaaa5555aaaa5555",
     "rois": [("polyp", "annotation:mask", (5, 5, 60, 60))], "quarantined_at": "describe"},
]
BRATS = [
    # Slices of two patients; one slice's image is byte-identical to kv01 (an exact hash match,
    # under another label: a conflict) and one is 3 bits away from kv02's phash (a near candidate
    # whose image files are absent here, so it cannot be confirmed); one is 5 bits away (no candidate).
    {"id": "br01", "file": "BraTS_001/flair.nii.gz", "patient": "pb1", "slice": 70, "slice_count": 155, "sequence": "FLAIR",
     "labels": ["glioma"], "phash": "ffff0000ffff0000", "sha": "sha-kv01",
     "rois": [("glioma", "annotation:mask", (120, 90, 170, 150))]},
    {"id": "br02", "file": "BraTS_001/flair.nii.gz", "patient": "pb1", "slice": 72, "slice_count": 155, "sequence": "FLAIR",
     "labels": ["glioma"], "phash": "0123456789abcde8",
     "rois": [("glioma", "annotation:mask", (118, 92, 172, 149))]},
    {"id": "br03", "file": "BraTS_002/flair.nii.gz", "patient": "pb2", "slice": 60, "slice_count": 155, "sequence": "FLAIR",
     "labels": [], "phash": "0123456789abcc0e"},
    {"id": "br04", "file": "BraTS_002/flair.nii.gz", "patient": "pb2", "slice": 64, "slice_count": 155, "sequence": "FLAIR",
     "labels": ["glioma"], "phash": "9999999999999999",
     "rois": [("glioma", "annotation:mask", (30, 40, 80, 100))]},
]


@pytest.fixture
def two_sources(tmp_path):
    root = DataRoot(tmp_path / "var")
    write_source(root, "kvasir_seg", KVASIR, "endoscopy", ["colon"])
    write_source(root, "brats_demo", BRATS, "mri", ["brain"])
    specs = {
        "kvasir_seg": make_spec("kvasir_seg", "endoscopy", ["colon"], "CC BY 4.0"),
        "brats_demo": make_spec("brats_demo", "mri", ["brain"], "CC BY-NC 4.0"),
    }
    return root, specs


def assemble_all(root, specs):
    paths = []
    for source_id, spec in specs.items():
        out = root.table("triplets", source_id)
        assemble_triplets(root, source_id, spec, out)
        paths.append(out)
    return paths


# --- splits ----------------------------------------------------------------------------


def test_patient_split_is_deterministic_and_close_to_fractions():
    hashes = [f"{i:032x}" for i in range(20_000)]
    first = [patient_split(h) for h in hashes]
    assert first == [patient_split(h) for h in hashes]
    counts = Counter(first)
    assert abs(counts["train"] / len(hashes) - 0.8) < 0.02
    assert abs(counts["val"] / len(hashes) - 0.1) < 0.02
    assert abs(counts["test"] / len(hashes) - 0.1) < 0.02
    # Other fractions move the thresholds, not the buckets.
    assert Counter(patient_split(h, (0.5, 0.25, 0.25)) for h in hashes)["train"] / len(hashes) == pytest.approx(0.5, abs=0.02)


def test_patient_split_rejects_bad_fractions_and_empty_hash():
    with pytest.raises(ValueError, match="summing to 1"):
        patient_split("abc", (0.8, 0.1, 0.2))
    with pytest.raises(ValueError):
        patient_split("")


def test_sql_split_agrees_with_python_split():
    hashes = [f"{random.Random(i).getrandbits(128):032x}" for i in range(3000)] + ["o'brien", "p1"]
    con = duckdb.connect()
    con.execute("CREATE TABLE patients (h VARCHAR)")
    con.executemany("INSERT INTO patients VALUES (?)", [[h] for h in hashes])
    for fractions in [(0.8, 0.1, 0.1), (0.6, 0.2, 0.2)]:
        sql = dict(con.execute(f"SELECT h, {split_sql('h', fractions)} FROM patients").fetchall())
        assert sql == {h: patient_split(h, fractions) for h in hashes}
    assert {split_bucket(h) for h in hashes} <= set(range(10_000))


# --- triplets --------------------------------------------------------------------------


def test_assemble_triplets_joins_stages_and_orders_rois(two_sources):
    root, specs = two_sources
    out = root.table("triplets", "kvasir_seg")
    stats = assemble_triplets(root, "kvasir_seg", specs["kvasir_seg"], out)

    table = pq.read_table(out)
    assert table.schema.names == schemas.TRIPLETS.names
    for field in schemas.TRIPLETS:
        assert table.schema.field(field.name).type == field.type, field.name
    rows = {row["record_id"]: row for row in table.to_pylist()}
    # kv03 was quarantined at normalize and kv04 never got a description: no triplet for either.
    assert sorted(rows) == ["kv01", "kv02"]
    assert stats["rows"] == 2 and stats["records"] == 4 and stats["records_without_triplet"] == 2
    assert sum(stats["by_split"].values()) == 2

    rois = json.loads(rows["kv01"]["rois"])
    assert [r["origin"] for r in rois] == ["annotation:mask", "annotation:mask", "whole_image"]
    assert rois[0]["box"] == [100, 80, 180, 170]  # the larger annotated polyp leads
    # expert_id and weights_sha256 name the model behind a model ROI (null for annotation ROIs).
    assert set(rois[0]) == {"roi_id", "label", "origin", "box", "mask_path", "confidence", "expert_id", "weights_sha256"}
    assert rois[0]["expert_id"] is None
    assert rows["kv01"]["primary_roi_id"] == rois[0]["roi_id"] == "kv01-roi2"

    kv01 = rows["kv01"]
    assert kv01["license"] == "CC BY 4.0"
    assert kv01["split"] == patient_split("pk1")
    assert kv01["verified"] is True and rows["kv02"]["verified"] is False
    assert rows["kv02"]["verifier_flags"] == ["side: description says left, ROI is right"]
    provenance = json.loads(kv01["provenance"])
    assert provenance["source_file"] == "images/cju0qkwl35piu0993l0dewei2.jpg"
    assert provenance["knowledge_ids"] == ["kb-polyp-1"]
    assert provenance["writer"] == "grounded-writer" and provenance["prompt_version"] == "p-3"
    assert provenance["caption_version"] == "cc-1" and provenance["intensity_method"] == "rgb"
    assert "pixel_ref" not in provenance and "pipeline_version" in provenance


def test_assemble_triplets_keeps_patients_together_and_reruns_identically(two_sources):
    root, specs = two_sources
    out = root.table("triplets", "brats_demo")
    assemble_triplets(root, "brats_demo", specs["brats_demo"], out)
    first = pq.read_table(out).to_pylist()
    splits_by_patient = {}
    for row in first:
        splits_by_patient.setdefault(row["patient_hash"], set()).add(row["split"])
        assert row["split"] == patient_split(row["patient_hash"])
    assert all(len(s) == 1 for s in splits_by_patient.values())
    assert json.loads(first[0]["provenance"])["sequence"] == "FLAIR"
    assemble_triplets(root, "brats_demo", specs["brats_demo"], out)
    assert pq.read_table(out).to_pylist() == first
    assert [p.name for p in out.parent.iterdir()] == ["brats_demo.parquet"]  # no temp file left


def test_assemble_triplets_names_missing_stage_table(two_sources):
    root, specs = two_sources
    root.table("coarse_captions", "kvasir_seg").unlink()
    with pytest.raises(FileNotFoundError, match="coarse_captions"):
        assemble_triplets(root, "kvasir_seg", specs["kvasir_seg"], root.table("triplets", "kvasir_seg"))
    assert not root.table("triplets", "kvasir_seg").exists()


# --- dedup -----------------------------------------------------------------------------


def same_pixels(row, kept):
    """A comparer for tests of the hash candidate search alone: every candidate's pixels match."""
    return PixelMatch(1.0, 1.0, "test: pixels taken as equal")


def rows_of(tuples, labels=()):
    """(source_id, record_id, sha, phash[, group]) tuples as dedup rows, all with the same labels."""
    return [DedupRow(t[0], t[1], t[2], t[3], t[4] if len(t) > 4 else None, labels=tuple(labels)) for t in tuples]


def test_find_duplicates_exact_near_and_far():
    rows = rows_of([
        ("b_src", "b1", "sha-x", "0000000000000000"),
        ("a_src", "a1", "sha-x", "ffffffffffffffff"),  # same bytes as b1, earlier source: kept
        ("a_src", "a2", "sha-y", "000000000000000f"),
        ("b_src", "b2", "sha-z", "000000000000001f"),  # 1 bit from a2: near duplicate
        ("b_src", "b3", "sha-w", "00000000000003ff"),  # 6 bits from a2: distinct
        ("b_src", "b4", "sha-v", "1111000000000000"),  # 4 bits from b1, which is itself a duplicate
        ("b_src", "b5", "sha-u", None),  # no phash: exact matching only
    ])
    dups = find_duplicates(rows, same_pixels).duplicates
    assert dups["b1"].kept_record_id == "a1" and dups["b1"].kind == "exact"
    assert dups["b2"].kept_record_id == "a2" and dups["b2"].kind == "near" and dups["b2"].distance == 1
    assert "b3" not in dups and "b5" not in dups and "a1" not in dups and "a2" not in dups
    # Only kept rows anchor near duplicates: b4 is close to b1 alone, and b1 is not kept.
    assert "b4" not in dups
    assert find_duplicates(list(reversed(rows)), same_pixels).duplicates == dups  # order of input does not matter


def test_near_duplicate_at_distance_four_across_all_blocks_is_found():
    # Four differing bits, one in each 16-bit block: a 4-block filter would miss this pair.
    base = 0x0123456789ABCDEF
    other = base ^ (1 | 1 << 16 | 1 << 32 | 1 << 48)
    assert hamming(base, other) == 4
    dups = find_duplicates(rows_of([("s", "r1", "h1", f"{base:016x}"), ("s", "r2", "h2", f"{other:016x}")]), same_pixels)
    assert dups.duplicates["r2"].kept_record_id == "r1" and dups.duplicates["r2"].distance == 4
    five = base ^ (1 | 1 << 16 | 1 << 32 | 1 << 48 | 1 << 63)
    far = find_duplicates(rows_of([("s", "r1", "h1", f"{base:016x}"), ("s", "r2", "h2", f"{five:016x}")]), same_pixels)
    assert far.duplicates == {} and far.pairs == []


def test_find_duplicates_matches_brute_force_and_is_fast():
    rng = random.Random(7)
    centers = [rng.getrandbits(64) for _ in range(300)]
    rows = []
    for i in range(3000):
        value = rng.choice(centers)
        for _ in range(rng.randint(0, 7)):
            value ^= 1 << rng.randrange(64)
        rows.append(("s", f"r{i:05d}", f"sha{i}", f"{value:016x}"))
    dups = find_duplicates(rows_of(rows), same_pixels).duplicates
    # Brute force: the same greedy rule over all pairs.
    kept: list[tuple[int, str]] = []
    expected = {}
    for _, rid, _, ph in sorted(rows, key=lambda r: (r[0], r[1])):
        value = parse_phash(ph)
        close = [(hamming(value, kv), order, kid) for order, (kv, kid) in enumerate(kept) if hamming(value, kv) <= 4]
        if close:
            expected[rid] = min(close)[2]
        else:
            kept.append((value, rid))
    assert {rid: d.kept_record_id for rid, d in dups.items()} == expected
    assert 0 < len(expected) < len(rows)

    big = rows_of([("s", f"r{i:06d}", f"sha{i}", f"{rng.getrandbits(64):016x}") for i in range(100_000)])
    started = time.perf_counter()
    find_duplicates(big, same_pixels)
    assert time.perf_counter() - started < 30


# --- final dataset and exports ---------------------------------------------------------


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_build_dataset_dedups_guards_splits_and_exports(two_sources, tmp_path):
    root, specs = two_sources
    paths = assemble_all(root, specs)
    out = root.table("medtrinity_dataset")
    exports = root.exports
    stats = build_dataset(paths, out, exports)

    table = pq.read_table(out)
    assert table.schema.names == schemas.DATASET.names
    rows = {row["record_id"]: row for row in table.to_pylist()}
    assert sorted(rows) == ["br01", "br02", "br03", "br04", "kv01", "kv02"]
    # brats_demo sorts before kvasir_seg, so the brats rows are the kept ones. kv01 has br01's
    # bytes under another label: a conflict, both held back, neither dropped as a duplicate.
    assert rows["kv01"]["duplicate_of"] is None and rows["kv01"]["duplicate_conflicts"] == ["br01"]
    assert rows["br01"]["duplicate_conflicts"] == ["kv01"]
    # kv02 is 3 bits from br02, but kv02's image file is absent: not confirmed, so not dropped.
    assert rows["kv02"]["duplicate_of"] is None and rows["kv02"]["duplicate_conflicts"] is None
    assert {r["duplicate_of"] for r in rows.values()} == {None}
    # Conflicting rows keep their own (patient) split.
    assert rows["kv01"]["split"] == patient_split("pk1") and rows["br01"]["split"] == patient_split("pb1")
    assert stats["rows"] == 6 and stats["duplicates"] == 0 and stats["split_reassigned"] == 0
    assert stats["candidate_pairs"] == 2
    assert stats["pairs_by_verdict"] == {"confirmed": 0, "conflict": 1, "rejected": 1}
    assert stats["by_source"] == {"brats_demo": 4, "kvasir_seg": 2}

    pairs = {p["record_id"]: p for p in pq.read_table(root.table("duplicate_pairs")).to_pylist()}
    assert pq.read_schema(root.table("duplicate_pairs")).names == schemas.DUPLICATE_PAIRS.names
    assert pairs["kv01"]["kept_record_id"] == "br01" and pairs["kv01"]["verdict"] == "conflict"
    assert pairs["kv01"]["match"] == "exact" and pairs["kv01"]["labels"] == ["polyp"] and pairs["kv01"]["kept_labels"] == ["glioma"]
    assert pairs["kv01"]["cross_source"] and pairs["kv01"]["cross_patient"]
    assert pairs["kv02"]["verdict"] == "rejected" and pairs["kv02"]["phash_distance"] == 3
    assert pairs["kv02"]["correlation"] is None and "cannot read blobs/images/kv02.png" in pairs["kv02"]["reason"]

    exported = {split: read_jsonl(exports / llava_file(split)) for split in SPLIT_NAMES}
    ids = [rec["id"] for recs in exported.values() for rec in recs]
    assert sorted(ids) == ["br02", "br03", "br04"]  # conflicts and unverified left out
    assert stats["exported"] == {s: len(v) for s, v in exported.items()}
    for split, records in exported.items():
        for rec in records:
            assert rows[rec["id"]]["split"] == split
    br02 = next(rec for recs in exported.values() for rec in recs if rec["id"] == "br02")
    # Relative to the exports folder (var/exports), where the JSONL lies.
    assert br02["image"] == "../blobs/images/br02.png" and br02["source_id"] == "brats_demo"
    assert (exports / br02["image"]).is_file()
    assert br02["roi"] == [118, 92, 172, 149]
    human, gpt = br02["conversations"]
    assert human["from"] == "human" and human["value"].startswith("<image>\nDescribe this MRI image of the brain")
    assert "[118, 92, 172, 149]" in human["value"] and "glioma" not in human["value"]
    assert gpt == {"from": "gpt", "value": rows["br02"]["description"]}
    br03 = next(rec for recs in exported.values() for rec in recs if rec["id"] == "br03")
    assert "whole image" in br03["conversations"][0]["value"]

    conflicts = {rec["id"]: rec for rec in read_jsonl(exports / CONFLICTS_FILE)}
    assert sorted(conflicts) == ["br01", "kv01"] and stats["held_back_conflicts"] == 2
    assert conflicts["kv01"]["held_back_reason"] == "same pixels as br01 under other labels"
    assert conflicts["kv01"]["labels"] == ["polyp"] and conflicts["br01"]["labels"] == ["glioma"]
    assert [r["id"] for r in read_jsonl(exports / REJECTED_FILE)] == ["kv02"]  # unverified, kept
    card = (exports / CARD_FILE).read_text(encoding="utf-8")
    assert "| brats_demo | 4 | 0 | 3 | 0 | CC BY-NC 4.0 |" in card
    assert "| kvasir_seg | 2 | 0 | 0 | 1 | CC BY 4.0 |" in card
    assert "| mri | 1 | 4 | 4 |" in card
    assert "2 pairs; confirmed 0, conflict 1, rejected 1" in card
    assert sorted(p.name for p in exports.iterdir()) == sorted(
        [CARD_FILE, FLAGGED_FILE, REJECTED_FILE, CONFLICTS_FILE, *(llava_file(s) for s in SPLIT_NAMES), "hf", "webdataset"]
    )


def test_build_dataset_reads_label_state_when_the_triplets_carry_it(two_sources):
    import pyarrow as pa

    root, specs = two_sources
    paths = assemble_all(root, specs)
    # kvasir_seg's rows say nothing certain about their images (label state unknown), so the
    # copy of br01's bytes is a plain duplicate, not a conflict.
    kvasir = pq.read_table(root.table("triplets", "kvasir_seg"))
    kvasir = kvasir.set_column(kvasir.schema.get_field_index("label_state"), "label_state",
                               pa.array(["unknown"] * kvasir.num_rows))
    pq.write_table(kvasir, root.table("triplets", "kvasir_seg"))
    stats = build_dataset(paths, root.table("medtrinity_dataset"), root.exports)
    pairs = {p["record_id"]: p for p in pq.read_table(root.table("duplicate_pairs")).to_pylist()}
    assert pairs["kv01"]["verdict"] == "confirmed" and pairs["kv01"]["label_state"] == "unknown"
    assert pairs["kv01"]["kept_label_state"] is None
    assert stats["duplicates"] == 1 and stats["held_back_conflicts"] == 0


def test_unverified_rows_go_to_rejected_file_with_flags(two_sources):
    root, specs = two_sources
    paths = [root.table("triplets", "kvasir_seg")]
    assemble_triplets(root, "kvasir_seg", specs["kvasir_seg"], paths[0])
    stats = build_dataset(paths, root.table("medtrinity_dataset"), root.exports)
    rejected = read_jsonl(root.exports / REJECTED_FILE)
    assert [r["id"] for r in rejected] == ["kv02"]
    assert rejected[0]["verifier_flags"] == ["side: description says left, ROI is right"]
    assert stats["rejected_unverified"] == 1 and stats["rejected_fraction"] == pytest.approx(0.5)
    assert "50.0% of 2 non-duplicate rows" in (root.exports / CARD_FILE).read_text(encoding="utf-8")


def test_build_dataset_with_no_sources_writes_empty_outputs(tmp_path):
    stats = build_dataset([], tmp_path / "dataset.parquet", tmp_path / "exports")
    assert stats["rows"] == 0 and stats["rejected_fraction"] == 0.0
    assert pq.read_table(tmp_path / "dataset.parquet").schema.names == schemas.DATASET.names
    assert (tmp_path / "exports" / llava_file("train")).read_text() == ""
    # No rows, no shard: `datasets` refuses a split of zero rows.
    assert list((tmp_path / "exports" / "hf").iterdir()) == [] and list((tmp_path / "exports" / "webdataset").iterdir()) == []


def test_slices_of_one_volume_are_not_near_duplicates_of_each_other():
    from medtrinity_assets.dataset.dedup import volume_group

    close = "0f0f0f0f0f0f0f0f"
    one_bit_off = "0f0f0f0f0f0f0f0e"
    vol1, vol2 = volume_group("mri", "case1/flair.nii.gz", 70), volume_group("mri", "case2/flair.nii.gz", 70)
    rows = rows_of([
        ("mri", "a", "sha-a", close, vol1),
        ("mri", "b", "sha-b", one_bit_off, vol1),  # neighbouring slice: not even a candidate
        ("mri", "c", "sha-c", one_bit_off, vol2),  # another volume: near candidate
        ("mri", "d", "sha-a", close, vol1),  # identical bytes: exact candidate
    ])
    found = find_duplicates(rows, same_pixels)
    assert set(found.duplicates) == {"c", "d"}
    assert found.duplicates["c"].kind == "near" and found.duplicates["d"].kind == "exact"
    # c matches b exactly (0 bits), the closest kept row, rather than a (1 bit).
    assert {(p.row.record_id, p.kept.record_id) for p in found.pairs} == {("c", "b"), ("d", "a")}


def test_label_states_decide_what_a_conflict_is():
    from medtrinity_assets.dataset.dedup import label_difference

    def row(labels, state=None):
        return DedupRow("s", "r", "sha", None, labels=tuple(labels), label_state=state)

    assert label_difference(row(["benign"]), row(["malignant"])) == "labels ['malignant'] vs ['benign']"
    assert label_difference(row(["benign", "cyst"]), row(["cyst", "benign"])) is None
    assert label_difference(row([], "normal"), row(["mass"], "finding")) == "label state 'finding' vs 'normal'"
    assert label_difference(row(["mass"], "finding"), row(["calcification"], "finding")) is not None
    # A copy that says nothing about the picture contradicts nothing.
    assert label_difference(row([], "unknown"), row(["mass"], "finding")) is None
    # Confirmed pixels with a conflict: neither row dropped, both reported.
    rows = [DedupRow("a", "a1", "sha", "00", labels=("benign",)), DedupRow("b", "b1", "sha", "00", labels=("malignant",))]
    result = find_duplicates(rows, same_pixels)
    assert result.duplicates == {} and result.conflicts == {"a1": ["b1"], "b1": ["a1"]}
    assert [(p.verdict, p.kind) for p in result.pairs] == [("conflict", "exact")]


def test_volume_group_keeps_dicom_series_and_volumes_together_and_2d_images_apart():
    from medtrinity_assets.dataset.dedup import volume_group

    # A DICOM series is one file per slice in one folder; a NIfTI volume is one file.
    assert volume_group("s", "dicom/STS_001/CT/image/000012.dcm", 12) == volume_group("s", "dicom/STS_001/CT/image/000013.dcm", 13)
    assert volume_group("s", "nifti/STS_001/CT_image.nii.gz", 10) == "s/nifti/STS_001"
    assert volume_group("s", "dicom/STS_002/CT/image/000012.dcm", 12) != volume_group("s", "dicom/STS_001/CT/image/000012.dcm", 12)
    # 2D images (slice_index -1 or null) belong to no volume, even side by side in one folder.
    assert volume_group("s", "benign/images/benign (1).png", -1) is None
    assert volume_group("s", "benign/images/benign (2).png", None) is None
