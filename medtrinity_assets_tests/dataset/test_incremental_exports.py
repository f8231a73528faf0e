"""The final dataset assembled incrementally from per-partition parts, and exports that are
usable as they are: JSONL image paths that resolve from the JSONL's folder, Hugging Face
Parquet that ``datasets`` loads with the images inside, WebDataset tar shards.

The triplets files are real Parquet files in the TRIPLETS schema, with real PNG images in a
content-addressed folder, for three sources; one of them is split into two shards
(``<source>.s0of2``), as the shards contract names them.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from medtrinity_assets.dataset.exports import (
    CARD_FILE,
    CONFLICTS_FILE,
    FLAGGED_FILE,
    REJECTED_FILE,
    build_dataset,
    llava_file,
)
from medtrinity_assets.dataset.parts import MANIFEST_FILE, PARTS_FOLDER, PIXEL_MATCHES_FILE
from medtrinity_assets.dataset.training_files import HF_FOLDER, WEBDATASET_FOLDER
from medtrinity_assets.paths import DataRoot
from medtrinity_assets.splits import SPLIT_NAMES
from triplet_factory import seed_of, triplet, write_triplets


@pytest.fixture
def three_sources(tmp_path):
    """alpha (with a held-back and an unverified row), beta (one row byte-identical to alpha's
    first: a confirmed duplicate) and gamma in two shards (one row a near candidate of alpha's)."""
    root = DataRoot(tmp_path / "var")
    alpha = [triplet(root, "alpha", n) for n in range(6)]
    alpha.append(triplet(root, "alpha", 6, flags=["burned_in_text"]))
    alpha.append(triplet(root, "alpha", 7, verified=False))
    beta = [triplet(root, "beta", n) for n in range(5)]
    beta.append({**triplet(root, "beta", 5, seed=seed_of("alpha", 0)), "patient_hash": alpha[0]["patient_hash"]})
    write_triplets(root, "alpha", alpha)
    write_triplets(root, "beta", beta)
    gamma = [triplet(root, "gamma.s0of2", n) for n in range(4)]
    # A near-duplicate candidate of alpha's second row (phash one bit away), other pixels: the
    # dedup pass compares the two images and rejects the pair.
    gamma[0]["phash"] = f"{int(alpha[1]['phash'], 16) ^ 1:016x}"
    write_triplets(root, "gamma.s0of2", gamma)
    write_triplets(root, "gamma.s1of2", [triplet(root, "gamma.s1of2", n) for n in range(3)])
    return root


def triplet_files(root: DataRoot) -> list[Path]:
    return sorted(root.table("triplets", "_").parent.glob("*.parquet"))


def build(root: DataRoot, **kwargs) -> dict:
    return build_dataset(triplet_files(root), root.table("medtrinity_dataset"), root.exports, **kwargs)


def outputs(root: DataRoot) -> dict[str, bytes]:
    """Every file the dataset step writes, by path under the data root."""
    files = [root.table("medtrinity_dataset"), root.table("duplicate_pairs"), *sorted(root.exports.rglob("*"))]
    return {str(p.relative_to(root.root)): p.read_bytes() for p in files if p.is_file()}


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def exported_ids(root: DataRoot) -> list[str]:
    return [r["id"] for s in SPLIT_NAMES for r in read_jsonl(root.exports / llava_file(s))]


def test_one_changed_source_rebuilds_one_part_and_matches_a_full_rebuild(three_sources):
    root = three_sources
    first = build(root)
    assert first["parts"]["built"] == ["alpha", "beta", "gamma.s0of2", "gamma.s1of2"]
    assert first["duplicates"] == 1 and first["rows"] == 21
    parts_dir = root.table(PARTS_FOLDER, "_").parent
    untouched = {name: os.stat(parts_dir / f"{name}.parquet").st_mtime_ns for name in ("alpha", "gamma.s0of2", "gamma.s1of2")}

    # beta changes: a new row and a rewritten description.
    beta = pq.read_table(root.table("triplets", "beta")).to_pylist()
    beta[1]["description"] = "Rewritten: a polyp in the lower right."
    beta.append(triplet(root, "beta", 9))
    write_triplets(root, "beta", beta)
    second = build(root)
    assert second["parts"] == {"built": ["beta"], "reused": ["alpha", "gamma.s0of2", "gamma.s1of2"], "removed": []}
    assert {name: os.stat(parts_dir / f"{name}.parquet").st_mtime_ns for name in untouched} == untouched
    assert second["rows"] == 22
    llava = {r["id"]: r for s in SPLIT_NAMES for r in read_jsonl(root.exports / llava_file(s))}
    assert llava["beta_001"]["conversations"][1]["value"] == "Rewritten: a polyp in the lower right."
    assert "beta_009" in llava
    incremental = outputs(root)

    # A full rebuild from nothing: the same bytes in every output file.
    for path in (parts_dir, root.exports):
        shutil.rmtree(path)
    root.table("medtrinity_dataset").unlink()
    root.table("duplicate_pairs").unlink()
    full = build(root)
    assert full["parts"]["built"] == ["alpha", "beta", "gamma.s0of2", "gamma.s1of2"]
    assert set(outputs(root)) == set(incremental)
    assert [name for name, data in outputs(root).items() if incremental[name] != data] == []


def test_a_removed_partition_leaves_the_dataset_and_its_part_goes(three_sources):
    root = three_sources
    build(root)
    root.table("triplets", "gamma.s1of2").unlink()
    stats = build(root)
    assert stats["parts"]["removed"] == ["gamma.s1of2"] and stats["parts"]["built"] == []
    assert not (root.table(PARTS_FOLDER, "_").parent / "gamma.s1of2.parquet").exists()
    assert stats["by_source"] == {"alpha": 8, "beta": 6, "gamma": 4}
    manifest = json.loads((root.table(PARTS_FOLDER, "_").parent / MANIFEST_FILE).read_text())
    assert sorted(manifest["parts"]) == ["alpha", "beta", "gamma.s0of2"]
    incremental = outputs(root)
    shutil.rmtree(root.table(PARTS_FOLDER, "_").parent)
    build(root)
    assert outputs(root) == incremental


def test_every_jsonl_image_path_opens_from_the_jsonl_folder(three_sources):
    root = three_sources
    build(root)
    opened = 0
    for jsonl in root.exports.glob("*.jsonl"):
        for record in read_jsonl(jsonl):
            assert not os.path.isabs(record["image"])
            with Image.open(jsonl.parent / record["image"]) as image:
                assert image.size == (24, 24)
            opened += 1
    # 18 exported + 1 held back + 1 unverified (the confirmed duplicate is in no file).
    assert opened == 20 and len(exported_ids(root)) == 18
    card = (root.exports / CARD_FILE).read_text(encoding="utf-8")
    assert "relative to the folder holding this card" in card and "`..` from here (the data root)" in card
    assert "load_dataset('parquet'" in card and "import pandas as pd" in card


def test_exports_follow_the_exports_folder_wherever_it_is(three_sources, tmp_path):
    root = three_sources
    elsewhere = tmp_path / "elsewhere" / "deep" / "exports"
    build_dataset(triplet_files(root), root.table("medtrinity_dataset"), elsewhere, images_root=root.root)
    records = read_jsonl(elsewhere / llava_file("train"))
    assert records and all((elsewhere / r["image"]).is_file() for r in records)


def test_hugging_face_parquet_loads_with_datasets_and_holds_the_image_bytes(three_sources, tmp_path):
    datasets = pytest.importorskip("datasets")
    root = three_sources
    build(root)
    loaded = datasets.load_dataset(
        "parquet",
        data_files={s: str(root.exports / HF_FOLDER / f"{s}-*.parquet") for s in SPLIT_NAMES},
        cache_dir=str(tmp_path / "hf_cache"),
    )
    llava = {s: read_jsonl(root.exports / llava_file(s)) for s in SPLIT_NAMES}
    for split in SPLIT_NAMES:
        assert loaded[split]["id"] == [r["id"] for r in llava[split]]
        assert isinstance(loaded[split].features["image"], datasets.Image)
    some = next(s for s in SPLIT_NAMES if len(loaded[s]))
    row, record = loaded[some][0], llava[some][0]
    assert row["image"].size == (24, 24)
    assert row["conversations"] == record["conversations"] and row["roi"] == record["roi"]
    with Image.open(root.exports / record["image"]) as image:
        assert np.array_equal(np.asarray(row["image"]), np.asarray(image))
    # Undecoded: the PNG bytes exactly as stored, and no held-back or unverified image anywhere.
    raw = loaded[some].cast_column("image", datasets.Image(decode=False))[0]["image"]
    assert raw["bytes"] == (root.exports / record["image"]).read_bytes()
    held = {r["id"] for name in (FLAGGED_FILE, REJECTED_FILE, CONFLICTS_FILE) for r in read_jsonl(root.exports / name)}
    assert held == {"alpha_006", "alpha_007"}
    assert not held & {i for s in SPLIT_NAMES for i in loaded[s]["id"]}


def test_webdataset_shards_hold_png_json_txt_and_respect_the_shard_size(three_sources):
    root = three_sources
    shard_bytes = 8 * 1024
    build(root, shard_bytes=shard_bytes)
    llava = {r["id"]: r for s in SPLIT_NAMES for r in read_jsonl(root.exports / llava_file(s))}
    seen = {}
    for split in SPLIT_NAMES:
        shards = sorted((root.exports / WEBDATASET_FOLDER).glob(f"{split}-*.tar"))
        assert shards, split
        for shard in shards:
            with tarfile.open(shard) as tar:
                members = tar.getmembers()
                assert all(m.mtime == 0 and m.uid == 0 for m in members)
                samples = {}
                for member in members:
                    key, ext = member.name.split(".", 1)
                    samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
            data_bytes = sum(-(-m.size // 512) * 512 + 512 for m in members)
            assert data_bytes <= shard_bytes or len(samples) == 1
            for key, sample in samples.items():
                assert sorted(sample) == ["json", "png", "txt"]
                record = llava[key]
                assert json.loads(sample["json"]) == record
                assert sample["txt"].decode() == record["conversations"][1]["value"]
                assert sample["png"] == (root.exports / record["image"]).read_bytes()
                seen[key] = split
    assert sorted(seen) == sorted(llava)
    assert len(list((root.exports / WEBDATASET_FOLDER).glob("*.tar"))) > len(SPLIT_NAMES)

    # A rebuild with bigger shards leaves no shard of the earlier, finer export behind.
    build(root)
    assert sorted(p.name for p in (root.exports / WEBDATASET_FOLDER).iterdir()) == sorted(f"{s}-000000.tar" for s in SPLIT_NAMES)
    assert sorted(p.name for p in (root.exports / HF_FOLDER).iterdir()) == sorted(f"{s}-00000.parquet" for s in SPLIT_NAMES)


def test_webdataset_package_reads_the_shards(three_sources):
    wds = pytest.importorskip("webdataset")
    root = three_sources
    build(root)
    urls = [str(p) for p in sorted((root.exports / WEBDATASET_FOLDER).glob("*.tar"))]
    samples = list(wds.WebDataset(urls, shardshuffle=False).decode("pil"))
    assert sorted(s["__key__"] for s in samples) == sorted(exported_ids(root))
    assert all(s["png"].size == (24, 24) and s["json"]["id"] == s["__key__"] for s in samples)


def test_missing_image_of_an_exportable_row_names_the_file(three_sources):
    root = three_sources
    row = pq.read_table(root.table("triplets", "gamma.s1of2")).to_pylist()[0]
    (root.root / row["image_path"]).unlink()
    with pytest.raises(FileNotFoundError, match=rf"{row['record_id']} \(from .*gamma\.s1of2\.parquet\)"):
        build(root)
    # Nothing half-written: no export files appeared.
    assert not root.exports.exists() or not any(root.exports.glob("*.jsonl"))


def test_pixel_comparisons_are_remembered_between_runs(three_sources):
    root = three_sources
    first = build(root)
    assert first["pairs_by_verdict"] == {"confirmed": 1, "conflict": 0, "rejected": 1}
    assert first["images_compared"] == 1
    pairs = root.table("duplicate_pairs").read_bytes()
    # The same candidate pair again (beta changed, not the pair's images): not decoded again.
    beta = pq.read_table(root.table("triplets", "beta")).to_pylist()
    write_triplets(root, "beta", beta[:-1] + [triplet(root, "beta", 7)])
    second = build(root)
    assert second["images_compared"] == 0 and second["pairs_by_verdict"]["rejected"] == 1
    assert root.table("duplicate_pairs").read_bytes() != pairs  # beta's duplicate is gone...
    rows = {r["record_id"]: r for r in pq.read_table(root.table("duplicate_pairs")).to_pylist()}
    assert rows["gamma_s0of2_000"]["kept_record_id"] == "alpha_001" and rows["gamma_s0of2_000"]["ssim"] < 0.5
    remembered = outputs(root)
    # ...and forgetting the comparisons changes no output byte.
    (root.table(PARTS_FOLDER, "_").parent / PIXEL_MATCHES_FILE).unlink()
    third = build(root)
    assert third["images_compared"] == 1 and outputs(root) == remembered


def test_the_cards_loader_snippet_runs_as_written(three_sources, tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    pytest.importorskip("webdataset")
    root = three_sources
    build(root)
    card = (root.exports / CARD_FILE).read_text(encoding="utf-8")
    code = card.split("```python\n", 1)[1].split("```", 1)[0]
    assert "folder = 'path/to/exports'" in code
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    names: dict = {}
    exec(code.replace("'path/to/exports'", repr(str(root.exports))), names)
    assert Path(names["first_image"]).is_file()
    assert names["ds"][names["splits"][0]][0]["image"].size == (24, 24)
    assert names["table"].num_rows == len(names["rows"])
    assert len(list(names["samples"])) == len(names["rows"])


def test_triplets_fingerprint_follows_content_not_file_times(three_sources):
    from medtrinity_assets.dataset.parts import triplets_files, triplets_fingerprint

    root = three_sources
    folder = root.table("triplets", "_").parent
    files = triplets_files(folder, ["alpha", "beta", "gamma"])
    assert [p.stem for p in files] == ["alpha", "beta", "gamma.s0of2", "gamma.s1of2"]
    assert [p.stem for p in triplets_files(folder, ["gamma"])] == ["gamma.s0of2", "gamma.s1of2"]
    version, known = triplets_fingerprint(files, {})
    # Rewritten with the same bytes (a partition re-run that changed nothing): same version.
    path = root.table("triplets", "beta")
    path.write_bytes(path.read_bytes())
    assert triplets_fingerprint(files, known)[0] == version
    # New content, or a partition gone: a new version each time.
    beta = pq.read_table(path).to_pylist()
    write_triplets(root, "beta", beta[:-1])
    changed, known = triplets_fingerprint(files, known)
    assert changed != version
    fewer, _ = triplets_fingerprint(files[:-1], known)
    assert fewer not in (version, changed)


def test_a_source_split_anew_enters_the_dataset_once(tmp_path):
    """After a source goes from 2 shards to 4, the older set's files stay on disk until removed:
    the dataset reads only the set written last (and a set still being written, as far as it is)."""
    import os

    from medtrinity_assets.dataset.parts import triplets_files

    folder = tmp_path / "triplets"
    folder.mkdir()
    for name, when in [("polyps.s0of2", 100), ("polyps.s1of2", 110), ("polyps.s0of4", 200), ("polyps.s2of4", 210),
                       ("other", 50), ("unlisted", 300)]:
        path = folder / f"{name}.parquet"
        path.write_bytes(b"")
        os.utime(path, (when, when))
    assert [p.stem for p in triplets_files(folder, ["polyps", "other"])] == ["other", "polyps.s0of4", "polyps.s2of4"]
