"""The CPU stages in worker processes (medtrinity_assets/parallel.py): the same tables and blobs,
byte for byte, as in one process, on real files; a file no decoder can read is quarantined by the
worker that tried, and the partition finishes."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
from conftest import REALDATA, needs_realdata
from spec_factory import build_spec

from medtrinity_assets import parallel, stages
from medtrinity_assets.catalog.load import load_spec
from medtrinity_assets.paths import REPO_ROOT, DataRoot
from medtrinity_assets.stage_work import NormalizeJob, normalize_record

DATA_STORE = Path(__import__("data_store").__file__).parent / "data"
# Real CT, MR, CR and RGB files of pydicom-data, compressed and not, single and multi-frame.
PYDICOM_FILES = ["693_UNCR.dcm", "693_J2KR.dcm", "MR2_UNCR.dcm", "RG1_UNCR.dcm", "SC_rgb_2frame.dcm", "JPEG-LL.dcm", "OBXXXX1A_rle.dcm"]


def _tree(root: Path) -> dict[str, str]:
    """Every file under a data root (tables, quarantine, blobs) with the sha256 of its bytes."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.suffix != ".tmp"
    }


def _run(spec, root: Path, workers: int, monkeypatch) -> tuple[dict[str, str], list]:
    monkeypatch.setenv(parallel.WORKERS_ENV, str(workers))
    data_root = DataRoot(root)
    reports = [stages.run_ingest(spec, data_root, "salt"), stages.run_normalize(spec, data_root), stages.run_ground(spec, data_root)]
    return _tree(root), reports


def _same_in_one_and_two_workers(spec, tmp_path, monkeypatch):
    # Small test folders would otherwise stay in this process (parallel.MIN_ITEMS_FOR_POOL).
    monkeypatch.setattr(parallel, "MIN_ITEMS_FOR_POOL", 0)
    started = parallel.pools_started
    one, one_reports = _run(spec, tmp_path / "one", 1, monkeypatch)
    assert parallel.pools_started == started, "MEDTRINITY_WORKERS=1 must not start processes"
    two, two_reports = _run(spec, tmp_path / "two", 2, monkeypatch)
    assert parallel.pools_started > started, "the stages did not use worker processes"
    assert one == two
    for a, b in zip(one_reports, two_reports):
        assert (a.stage, a.rows, a.inputs, a.quarantined, dict(a.kinds)) == (b.stage, b.rows, b.inputs, b.quarantined, dict(b.kinds))
    return one, one_reports


@needs_realdata
def test_kvasir_subset_with_a_truncated_jpeg_is_identical_in_two_workers(tmp_path, monkeypatch):
    source = tmp_path / "src" / "Kvasir-SEG"
    (source / "images").mkdir(parents=True)
    (source / "masks").mkdir()
    names = sorted(p.name for p in (REALDATA / "kvasir_seg" / "images").glob("*.jpg"))[:20]
    for name in names:
        shutil.copy(REALDATA / "kvasir_seg" / "images" / name, source / "images" / name)
        shutil.copy(REALDATA / "kvasir_seg" / "masks" / name, source / "masks" / name)
    # A copy cut off after 2 kB, as an interrupted download leaves it: unreadable in the worker.
    broken = source / "images" / "zz_truncated.jpg"
    broken.write_bytes((source / "images" / names[0]).read_bytes()[:2048])
    shutil.copy(source / "masks" / names[0], source / "masks" / "zz_truncated.jpg")
    spec = build_spec(
        id="kvasir_subset", modality="endoscopy", organs=["colon"], diseases=["colorectal polyp"], root=str(tmp_path / "src"),
        layout={"family": "image_mask", "image_glob": "Kvasir-SEG/images/*.jpg", "mask_template": "Kvasir-SEG/masks/{stem}.jpg", "mask_threshold": 128},
    )
    tree, (ingest, normalize, ground) = _same_in_one_and_two_workers(spec, tmp_path, monkeypatch)
    assert ingest.rows == 20 and normalize.rows == 20 and ground.rows >= 20
    assert dict(ingest.kinds) == {"unreadable": 1}
    assert sum(path.startswith("blobs/pixels/") for path in tree) == 20
    assert sum(path.startswith("blobs/masks/") for path in tree) >= 20

    import pyarrow.parquet as pq

    quarantine = pq.read_table(tmp_path / "two" / "tables" / "quarantine" / "raw_records" / "kvasir_subset.parquet").to_pylist()
    assert [(q["source_file"], q["kind"]) for q in quarantine] == [("Kvasir-SEG/images/zz_truncated.jpg", "unreadable")]
    assert "unreadable image" in quarantine[0]["reason"]


def test_pydicom_files_with_a_truncated_one_are_identical_in_two_workers(tmp_path, monkeypatch):
    source = tmp_path / "src"
    source.mkdir()
    for name in PYDICOM_FILES:
        shutil.copy(DATA_STORE / name, source / name)
    # Cut inside the pixel data: the header pass reads it, the pixels are not all there.
    (source / "zz_cut.dcm").write_bytes((DATA_STORE / "693_UNCR.dcm").read_bytes()[:60_000])
    spec = build_spec(id="pydicom_files", modality="ct", organs=["head"], annotation_kinds=["none"], root=str(source),
                      layout={"family": "dicom", "glob": "*.dcm"})
    _, (ingest, normalize, ground) = _same_in_one_and_two_workers(spec, tmp_path, monkeypatch)
    assert ingest.quarantined >= 1 and ingest.kinds["unreadable"] >= 1
    assert ingest.rows >= len(PYDICOM_FILES) - 1  # a codec missing here quarantines that file, in both runs alike
    assert normalize.rows == ingest.rows and ground.inputs == normalize.rows


@needs_realdata
def test_a_dicom_series_with_its_structure_set_is_identical_in_two_workers(tmp_path, monkeypatch):
    # Series stacked, slices chosen by the RTSTRUCT contours, one task per chosen slice.
    spec = load_spec(REPO_ROOT / "data" / "sources" / "ibsi_sts_dicom.yaml")
    _, (ingest, normalize, _) = _same_in_one_and_two_workers(spec, tmp_path, monkeypatch)
    assert ingest.rows > 0 and ingest.quarantined == 0 and normalize.rows == ingest.rows


def test_results_come_back_in_input_order_and_errors_as_failed(tmp_path, monkeypatch):
    monkeypatch.setattr(parallel, "MIN_ITEMS_FOR_POOL", 0)
    spec = build_spec(root=str(tmp_path))
    job = NormalizeJob(spec, DataRoot(tmp_path), 64)
    # Records whose pixel blob does not exist: each is a "cannot normalize" problem, in order.
    records = [{"record_id": f"r{i:03d}", "pixel_ref": f"blobs/pixels/none/{i}.npy", "source_file": f"f{i}"} for i in range(30)]
    with parallel.workers(job, 2) as pool:
        out = list(pool.map(normalize_record, iter(records)))
    assert [record["record_id"] for record, _ in out] == [r["record_id"] for r in records]
    assert all("cannot normalize: FileNotFoundError" in problem.reason for _, problem in out)


def test_a_stream_error_comes_after_the_items_before_it(tmp_path, monkeypatch):
    monkeypatch.setattr(parallel, "MIN_ITEMS_FOR_POOL", 0)
    job = NormalizeJob(build_spec(root=str(tmp_path)), DataRoot(tmp_path), 64)

    def stream():
        for i in range(5):
            yield {"record_id": f"r{i}", "pixel_ref": "blobs/none.npy", "source_file": "f"}
        raise RuntimeError("reader bug")

    seen = []
    with parallel.workers(job, 2) as pool, pytest.raises(RuntimeError, match="reader bug"):
        for record, _ in pool.map(normalize_record, stream()):
            seen.append(record["record_id"])
    assert seen == ["r0", "r1", "r2", "r3", "r4"]


def test_worker_count_from_the_environment(monkeypatch):
    monkeypatch.setenv(parallel.WORKERS_ENV, "3")
    assert parallel.worker_count() == 3
    monkeypatch.setenv(parallel.WORKERS_ENV, "many")
    with pytest.raises(ValueError, match="MEDTRINITY_WORKERS='many'"):
        parallel.worker_count()
    monkeypatch.setenv(parallel.WORKERS_ENV, "0")
    with pytest.raises(ValueError, match="at least 1"):
        parallel.worker_count()
    monkeypatch.delenv(parallel.WORKERS_ENV)
    assert 1 <= parallel.worker_count() <= parallel.DEFAULT_MAX_WORKERS


def test_keep_drops_other_files_before_they_are_decoded(tmp_path):
    from medtrinity_assets.sources import IngestContext, Quarantined, read_source_in_workers
    from medtrinity_assets.storage import BlobStore

    source = tmp_path / "src"
    source.mkdir()
    for name in ("693_UNCR.dcm", "MR2_UNCR.dcm", "RG1_UNCR.dcm"):
        shutil.copy(DATA_STORE / name, source / name)
    spec = build_spec(id="keep", root=str(source), annotation_kinds=["none"], layout={"family": "dicom", "glob": "*.dcm"})
    ctx = IngestContext(spec=spec, root=source, blobs=BlobStore(tmp_path / "out"), salt="s")
    items = list(read_source_in_workers(ctx, workers=1, keep=lambda f: f == "MR2_UNCR.dcm"))
    assert [i["source_file"] for i in items if not isinstance(i, Quarantined)] == ["MR2_UNCR.dcm"]
    # Only the kept file's pixels were stored.
    assert len(list((tmp_path / "out" / "blobs" / "pixels").rglob("*.npy"))) == 1


def test_workers_write_to_an_object_store_root_as_one_process_does(tmp_path, monkeypatch):
    # Workers rebuild the DataRoot (and its store's filesystem) from its pickle: their blobs and
    # the stage's tables land in the bucket, the same keys and bytes as a one-process run's.
    import json
    import uuid

    from medtrinity_assets import objectstore
    from s3_server import BUCKET, s3_server

    source = tmp_path / "src"
    source.mkdir()
    for name in PYDICOM_FILES:
        shutil.copy(DATA_STORE / name, source / name)
    spec = build_spec(id="pydicom_s3", modality="ct", organs=["head"], annotation_kinds=["none"], root=str(source),
                      layout={"family": "dicom", "glob": "*.dcm"})
    monkeypatch.setattr(parallel, "MIN_ITEMS_FOR_POOL", 0)
    monkeypatch.setenv("MEDTRINITY_LOCAL_HOME", str(tmp_path / "local"))
    with s3_server() as options:
        monkeypatch.setenv("MEDTRINITY_STORAGE_OPTIONS", json.dumps(options))
        stored = {}
        for workers in (1, 2):
            monkeypatch.setenv(parallel.WORKERS_ENV, str(workers))
            root = DataRoot(f"s3://{BUCKET}/{uuid.uuid4().hex}")
            rows = [stages.run_ingest(spec, root, "salt").rows, stages.run_normalize(spec, root).rows, stages.run_ground(spec, root).rows]
            prefix = objectstore.key(root.root)
            fs = root.root.fs
            stored[workers] = (rows, {path[len(prefix):]: fs.cat_file(path) for path in fs.find(prefix)})
    assert stored[1][0][0] > 0 and stored[1] == stored[2]
