"""The data root on an object store: a real S3 API (moto's server on loopback, reached by s3fs
over HTTP) holds the blobs and tables; they are the same as on a local root, and a killed or
failed write leaves no object at its final key."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from medtrinity_assets import objectstore, stages
from medtrinity_assets.duckdb_sql import connect, read_parquet
from medtrinity_assets.paths import DataRoot
from medtrinity_assets.settings import load_or_create_salt
from medtrinity_assets.storage import BlobStore, TableWriter
from s3_server import BUCKET, s3_server

DEMO_SOURCE = "demo_mri_brain_mni"  # a demo source with a label volume: ingest, normalize and rois all do work


@pytest.fixture(scope="module")
def s3_endpoint():
    with s3_server() as options:
        yield options


@pytest.fixture
def s3_root(s3_endpoint, tmp_path, monkeypatch):
    """A fresh prefix of the bucket as data root; the local home (temporaries, blob cache) in tmp_path."""
    monkeypatch.setenv("MEDTRINITY_LOCAL_HOME", str(tmp_path / "local"))
    monkeypatch.setenv("MEDTRINITY_STORAGE_OPTIONS", json.dumps(s3_endpoint))
    return DataRoot(f"s3://{BUCKET}/{uuid.uuid4().hex}")


def _object_keys(root: DataRoot) -> list[str]:
    prefix = objectstore.key(root.root)
    return sorted(path[len(prefix) + 1 :] for path in root.root.fs.find(prefix))


# --- the data root ---------------------------------------------------------------------------


def test_data_root_from_env_takes_a_url_and_keeps_local_paths_local(s3_endpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("MEDTRINITY_STORAGE_OPTIONS", json.dumps(s3_endpoint))
    monkeypatch.setenv("MEDTRINITY_LOCAL_HOME", str(tmp_path / "scratch"))
    monkeypatch.setenv("MEDTRINITY_HOME", f"s3://{BUCKET}/prefix")
    root = DataRoot.from_env()
    assert root.remote and str(root.table("rois", "x")) == f"s3://{BUCKET}/prefix/tables/rois/x.parquet"
    # What needs a local filesystem goes to the local home, not into the bucket.
    assert root.warehouse == tmp_path / "scratch" / "warehouse.duckdb"
    assert root.chroma.parent == root.models.parent == root.exports.parent == root.llm_cache.parent == tmp_path / "scratch"

    # A file:// URL and a plain path are local roots, kept as pathlib paths (the fast code paths).
    monkeypatch.setenv("MEDTRINITY_HOME", f"file://{tmp_path}/var")
    local = DataRoot.from_env()
    assert type(local.root) is type(tmp_path) and local.root == tmp_path / "var" and local.local == local.root
    assert not local.remote and isinstance(BlobStore(local.root).data_root, Path)


def test_a_protocol_without_atomic_uploads_is_refused():
    with pytest.raises(objectstore.ObjectStoreError, match="'sftp'.*half table"):
        DataRoot("sftp://127.0.0.1:1/data")


def test_storage_options_must_be_a_json_object(monkeypatch):
    monkeypatch.setenv("MEDTRINITY_STORAGE_OPTIONS", "[1, 2]")
    with pytest.raises(objectstore.ObjectStoreError, match="JSON object"):
        DataRoot("s3://bucket/prefix")


def test_an_object_store_root_needs_a_shared_salt(s3_root, monkeypatch):
    monkeypatch.delenv("MEDTRINITY_SALT", raising=False)
    with pytest.raises(RuntimeError, match="MEDTRINITY_SALT"):
        load_or_create_salt(s3_root.root)
    monkeypatch.setenv("MEDTRINITY_SALT", "shared")
    assert load_or_create_salt(s3_root.root) == "shared"


# --- blobs -----------------------------------------------------------------------------------


def test_blobs_on_s3_have_the_local_sha_path_and_bytes_and_are_put_once(s3_root, tmp_path, monkeypatch):
    local = BlobStore(tmp_path / "var")
    remote = BlobStore(s3_root.root)
    assert remote.remote
    payload = np.random.default_rng(0).bytes(70_000)
    array = np.arange(4 * 5 * 3, dtype=np.int16).reshape(4, 5, 3)

    digest, rel = remote.put("images", payload, "png")
    assert (digest, rel) == local.put("images", payload, "png")
    assert digest == hashlib.sha256(payload).hexdigest()
    assert remote.read_bytes(rel) == payload == local.path(rel).read_bytes()
    assert remote.put_array("pixels", array) == local.put_array("pixels", array)
    np.testing.assert_array_equal(remote.get_array(remote.put_array("pixels", array)[1]), array)

    # A second put of the same content uploads nothing: counted at the filesystem's PUT.
    fs = s3_root.root.fs
    puts = []
    original = fs.pipe_file
    with monkeypatch.context() as patch:
        patch.setattr(fs, "pipe_file", lambda path, value, **kw: (puts.append(path), original(path, value, **kw))[1])
        assert remote.put("images", payload, "png") == (digest, rel)
        other = remote.put("images", payload + b"!", "png")
    assert puts == [f"{objectstore.key(s3_root.root)}/{other[1]}"]
    assert _object_keys(s3_root) == sorted([rel, other[1], remote.put_array("pixels", array)[1]])

    # path() hands a local copy (what PIL and other file readers take), equal to the blob.
    cached = remote.path(rel)
    assert isinstance(cached, Path) and cached.read_bytes() == payload
    assert cached.is_relative_to(tmp_path / "local")


def test_a_blob_altered_in_the_store_is_refused(s3_root):
    store = BlobStore(s3_root.root)
    _, rel = store.put("images", b"original bytes", "png")
    (s3_root.root / rel).write_bytes(b"altered bytes!")
    with pytest.raises(ValueError, match="does not hash to the sha256"):
        store.read_bytes(rel)
    with pytest.raises(FileNotFoundError, match="does not exist in the object store"):
        store.read_bytes("blobs/images/00/" + "0" * 64 + ".png")


def test_blobs_on_fsspec_memory_store(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDTRINITY_LOCAL_HOME", str(tmp_path / "local"))
    root = DataRoot(f"memory://{uuid.uuid4().hex}/root")
    store = BlobStore(root.root)
    digest, rel = store.put("masks", b"\x00\x01" * 100, "npy")
    assert store.read_bytes(rel) == b"\x00\x01" * 100 and digest == hashlib.sha256(b"\x00\x01" * 100).hexdigest()


# --- tables ----------------------------------------------------------------------------------

SCHEMA = pa.schema([("record_id", pa.string()), ("payload", pa.binary())])


def test_a_failed_table_write_leaves_no_object_and_no_temporary(s3_root):
    final = s3_root.table("raw_records", "failing")
    with pytest.raises(RuntimeError, match="reader broke"):
        with TableWriter(final, SCHEMA, batch_rows=2) as writer:
            for i in range(5):
                writer.write({"record_id": str(i), "payload": b"x"})
            raise RuntimeError("reader broke")
    assert not final.exists()
    assert _object_keys(s3_root) == []
    assert not list((objectstore.local_home() / "tmp").iterdir())

    with TableWriter(final, SCHEMA, batch_rows=2) as writer:
        writer.write_all({"record_id": str(i), "payload": b"x"} for i in range(5))
    assert pq.read_table(io.BytesIO(final.read_bytes())).num_rows == 5


def test_a_writer_killed_mid_upload_leaves_no_object_at_the_final_key(s3_root, s3_endpoint):
    """The table goes up as a multipart upload (5 MiB parts); the writer dies by SIGKILL as its
    second part starts. S3 shows an object only at CompleteMultipartUpload, so nothing appears."""
    final = s3_root.table("raw_records", "killed")
    script = textwrap.dedent(
        f"""
        import os, signal
        import pyarrow as pa
        import s3fs
        from medtrinity_assets import objectstore
        from medtrinity_assets.paths import DataRoot
        from medtrinity_assets.storage import TableWriter

        objectstore.MULTIPART_CHUNK_BYTES = 5 * 2**20
        call = s3fs.S3FileSystem._call_s3

        async def dying_call(self, method, *args, **kwargs):
            if method == "upload_part" and kwargs.get("PartNumber") == 2:
                print("killing", flush=True)
                os.kill(os.getpid(), signal.SIGKILL)
            return await call(self, method, *args, **kwargs)

        s3fs.S3FileSystem._call_s3 = dying_call
        root = DataRoot({str(s3_root.root)!r})
        schema = pa.schema([("record_id", pa.string()), ("payload", pa.binary())])
        with TableWriter(root.table("raw_records", "killed"), schema, batch_rows=4) as writer:
            for i in range(16):  # 16 MiB of incompressible bytes: four parts
                writer.write({{"record_id": str(i), "payload": os.urandom(2**20)}})
        print("finished", flush=True)
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent.parent), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == -9, done.stderr[-2000:]
    assert "killing" in done.stdout and "finished" not in done.stdout
    fs = s3_root.root.fs
    # It died inside the upload: the store holds an unfinished multipart upload for the key...
    bucket, key = objectstore.key(final).split("/", 1)
    uploads = fs.call_s3("list_multipart_uploads", Bucket=bucket, Prefix=key).get("Uploads", [])
    assert [u["Key"] for u in uploads] == [key]
    # ...and no object at the final key.
    assert not final.exists()
    assert _object_keys(s3_root) == []


def test_a_table_another_worker_wrote_is_seen_after_a_listing(s3_root, s3_endpoint):
    """This process lists the tables (a check's glob), then another worker writes one: the next
    existence check and glob must see it (no listing cache on the root's filesystem)."""
    import s3fs

    with TableWriter(s3_root.table("raw_records", "first"), SCHEMA) as writer:
        writer.write({"record_id": "1", "payload": b"x"})
    assert [u.rsplit("/", 1)[1] for u in objectstore.existing_files(s3_root.table_glob("raw_records"))] == ["first.parquet"]
    other_worker = s3fs.S3FileSystem(skip_instance_cache=True, **s3_endpoint)
    second = s3_root.table("raw_records", "second")
    other_worker.pipe_file(objectstore.key(second), s3_root.table("raw_records", "first").read_bytes())
    assert second.exists()
    assert [u.rsplit("/", 1)[1] for u in objectstore.existing_files(s3_root.table_glob("raw_records"))] == ["first.parquet", "second.parquet"]


def test_a_data_root_sent_to_another_process_opens_its_store_there(s3_root, tmp_path):
    """A process pool or a Dagster step gets the root pickled: it must reach the same bucket
    (endpoint and credentials travel with it) and DuckDB there must read the tables by URL."""
    final = s3_root.table("raw_records", "sent")
    with TableWriter(final, SCHEMA) as writer:
        writer.write_all({"record_id": str(i), "payload": b"x"} for i in range(7))
    pickled = tmp_path / "root.pickle"
    pickled.write_bytes(pickle.dumps(s3_root))
    script = textwrap.dedent(
        f"""
        import pickle
        from medtrinity_assets.duckdb_sql import connect, literal
        root = pickle.loads(open({str(pickled)!r}, "rb").read())
        con = connect()
        print(con.sql("SELECT count(*) FROM read_parquet(" + literal(root.table("raw_records", "sent")) + ")").fetchall()[0][0])
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "MEDTRINITY_STORAGE_OPTIONS"}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent.parent), os.environ.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "7"


# --- stages ----------------------------------------------------------------------------------


def _sorted_rows(con, path) -> list[tuple]:
    return con.sql(f"SELECT * FROM {read_parquet(path)} ORDER BY ALL").fetchall()


def test_ingest_normalize_and_rois_on_s3_give_the_rows_of_a_local_root(isolated_env, s3_root):
    from medtrinity_assets.catalog import load_catalog
    from medtrinity_assets.catalog.acquire import fetch_package_files

    spec = load_catalog()[DEMO_SOURCE]
    fetch_package_files(spec, isolated_env["raw"] / spec.id)
    local = DataRoot(isolated_env["var"])
    for root in (local, s3_root):
        ingest = stages.run_ingest(spec, root, "test-salt")
        normalize = stages.run_normalize(spec, root)
        rois = stages.run_ground(spec, root)
        assert ingest.rows > 0 and normalize.rows == ingest.rows and rois.rows >= normalize.rows

    con = connect()
    try:
        for stage in ("raw_records", "normalized_images", "rois"):
            local_rows = _sorted_rows(con, local.table(stage, spec.id))
            assert local_rows and _sorted_rows(con, s3_root.table(stage, spec.id)) == local_rows, stage
            assert _sorted_rows(con, s3_root.quarantine(stage, spec.id)) == _sorted_rows(con, local.quarantine(stage, spec.id))
        # Globs over the store go through the registered filesystem as well.
        assert con.sql(f"SELECT count(*) FROM {read_parquet(s3_root.table_glob('rois'))}").fetchall()[0][0] == len(
            _sorted_rows(con, local.table("rois", spec.id))
        )
    finally:
        con.close()

    # The stages' DuckDB checks (what Dagster reports after each stage) find and read the tables
    # in the store and reach the same verdicts.
    from medtrinity_assets.pipeline import STAGES
    from medtrinity_assets.quality.checks import run_check_set

    for stage in (s for s in STAGES if s.name in ("raw_records", "normalized_images", "rois")):
        verdicts = [
            [(o.name, o.passed) for o in run_check_set(stage.checks, stage.check_target(root, spec.id))] for root in (local, s3_root)
        ]
        assert verdicts[0] and verdicts[0] == verdicts[1], stage.name
        assert not any("missing" in o.description for o in run_check_set(stage.checks, stage.check_target(s3_root, spec.id)))

    # The same content-addressed blobs, byte for byte.
    local_blobs = sorted(p.relative_to(local.root).as_posix() for p in (local.root / "blobs").rglob("*") if p.is_file())
    remote_keys = [k for k in _object_keys(s3_root) if k.startswith("blobs/")]
    assert remote_keys == local_blobs
    store = BlobStore(s3_root.root)
    for rel in local_blobs[:: max(1, len(local_blobs) // 10)]:
        assert store.read_bytes(rel) == (local.root / rel).read_bytes()
    # Nothing but tables and blobs went to the bucket.
    assert {k.split("/", 1)[0] for k in _object_keys(s3_root)} == {"blobs", "tables"}
