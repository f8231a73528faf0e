"""The data root on an object store: telling a local root from a remote one, opening the remote
one's filesystem (fsspec, through ``universal_pathlib``), and making a finished local file
appear at its key in one step.

A local root stays a plain ``pathlib.Path`` and every caller keeps its local code path (rename
into place, POSIX modes); only a URL root (``s3://bucket/prefix``, ``gs://...``, ``memory://``
in tests) becomes a ``UPath``. ``file://`` URLs are local paths.

Why writes are atomic on an object store without a rename: S3 and the stores that copy its API
(MinIO, Ceph RGW, R2), Google Cloud Storage and Azure Blob make an object visible only when its
upload completes: a single PUT is all or nothing, and a multipart upload shows nothing until its
CompleteMultipartUpload. So a table is written to a local temporary file, and only once it is
complete is it uploaded to its final key; a writer killed before or during the upload leaves no
object there (a killed multipart upload leaves invisible parts, which a bucket lifecycle rule
aborts). Filesystems without that guarantee (sftp, webdav, ...) are refused, not half-trusted.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path, PurePosixPath

ROOT_ENV = "MEDTRINITY_HOME"
LOCAL_ENV = "MEDTRINITY_LOCAL_HOME"
OPTIONS_ENV = "MEDTRINITY_STORAGE_OPTIONS"

# Protocols whose uploads become visible all at once (see the module docstring). memory:// is
# fsspec's in-process store: a process that dies takes it along, so no half object outlives it.
ATOMIC_PUT_PROTOCOLS = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "memory"})

# Part size of a multipart upload to S3; None keeps s3fs's choice (50 MiB, grown to stay within
# 10,000 parts). Files under twice the part size go up in one PUT.
MULTIPART_CHUNK_BYTES: int | None = None

# Cached directory listings would hide a table another worker wrote after this process listed
# its folder (a glob over the tables): existence checks ask the store each time instead.
_DEFAULT_OPTIONS = {"s3": {"use_listings_cache": False}, "s3a": {"use_listings_cache": False},
                    "gs": {"use_listings_cache": False}, "gcs": {"use_listings_cache": False}}

_LOCAL_PROTOCOLS = ("", "file", "local")
_lock = threading.Lock()
# One filesystem per protocol, handed to every DuckDB connection (duckdb_sql.connect) so SQL can
# read the remote tables by their URLs.
_filesystems: dict[str, object] = {}


class ObjectStoreError(ValueError):
    """A data root URL this project cannot write to safely, or unreadable storage options."""


def is_url(location) -> bool:
    return isinstance(location, str) and "://" in location


def is_remote(path) -> bool:
    """Whether ``path`` lives on an object store (a UPath with a non-local protocol)."""
    # upath (and fsspec under it) is imported only once a URL root is opened: a local run does
    # not pay its import time, and nothing can be a UPath before then.
    upath = sys.modules.get("upath")
    return upath is not None and isinstance(path, upath.UPath) and path.protocol not in _LOCAL_PROTOCOLS


def storage_options_from_env() -> dict:
    """``MEDTRINITY_STORAGE_OPTIONS``: a JSON object of fsspec options (e.g. ``{"endpoint_url":
    "http://minio:9000"}``); credentials are better left to the provider's own variables."""
    raw = os.environ.get(OPTIONS_ENV, "").strip()
    if not raw:
        return {}
    try:
        options = json.loads(raw)
    except json.JSONDecodeError as error:
        raise ObjectStoreError(f"{OPTIONS_ENV} is not valid JSON ({error.msg} at {error.pos})") from None
    if not isinstance(options, dict):
        raise ObjectStoreError(f"{OPTIONS_ENV} must be a JSON object of fsspec options, not {type(options).__name__}")
    return options


def as_root(location, storage_options: dict | None = None):
    """A data root as the pipeline uses it: a ``Path`` when local, a ``UPath`` on an object store.

    A ``Path`` is returned as it is (no resolving: callers decide that); a string without a
    scheme is a local path; ``file://`` is local; any other URL opens its filesystem with
    ``storage_options`` (default: ``MEDTRINITY_STORAGE_OPTIONS``)."""
    if isinstance(location, Path):
        return location
    upath = sys.modules.get("upath")
    if upath is not None and isinstance(location, upath.UPath):
        if not is_remote(location):
            return Path(location.path)
        _check_protocol(location)
        register_filesystem(location.fs)
        return location
    text = os.fspath(location)
    if not is_url(text):
        return Path(text)
    from upath import UPath

    options = storage_options_from_env() if storage_options is None else dict(storage_options)
    scheme = text.split("://", 1)[0].lower()
    root = UPath(text, **{**_DEFAULT_OPTIONS.get(scheme, {}), **options})
    if not is_remote(root):
        return Path(root.path)
    _check_protocol(root)
    register_filesystem(root.fs)
    return root


def _check_protocol(root) -> None:
    if root.protocol not in ATOMIC_PUT_PROTOCOLS:
        raise ObjectStoreError(
            f"data root {root}: protocol {root.protocol!r} does not make uploads visible all at once, so a killed "
            f"write could leave a half table; supported: {', '.join(sorted(ATOMIC_PUT_PROTOCOLS))} or a local path"
        )


def register_filesystem(fs) -> None:
    """Remember ``fs`` for DuckDB connections. One filesystem per protocol per process: a second
    root on the same protocol with other options replaces the first for SQL reads."""
    protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    with _lock:
        for protocol in protocols:
            _filesystems[protocol] = fs


def attach(con) -> None:
    """Make the remote filesystems opened in this process readable by DuckDB connection ``con``
    (``read_parquet('s3://...')`` then goes through fsspec, with the root's own options)."""
    with _lock:
        unique = list({id(fs): fs for fs in _filesystems.values()}.values())
    for fs in unique:
        con.register_filesystem(fs)


def filesystem_for(url: str):
    """The filesystem opened for ``url``'s protocol in this process (a data root must have been
    opened first: its options, e.g. the endpoint, are not in the URL)."""
    protocol = url.split("://", 1)[0].lower()
    with _lock:
        fs = _filesystems.get(protocol)
    if fs is None:
        raise ObjectStoreError(f"{url}: no {protocol}:// data root was opened in this process (DataRoot(...) opens it)")
    return fs


def existing_files(location) -> list[str]:
    """The objects a URL or glob names that exist now, as URLs DuckDB reads (sorted)."""
    text = str(location)
    fs = filesystem_for(text)
    if any(c in text for c in "*?["):
        return sorted(fs.unstrip_protocol(match) for match in fs.glob(text))
    return [text] if fs.exists(text) else []


def local_home() -> Path:
    """The local folder for what cannot live on an object store (the DuckDB warehouse file,
    Chroma, expert weights, the LLM cache, exports, temporaries, the blob read cache):
    ``MEDTRINITY_LOCAL_HOME``, default ``<repo>/var``."""
    value = os.environ.get(LOCAL_ENV)
    if value:
        return Path(value).expanduser().resolve()
    # paths.REPO_ROOT, computed here: paths imports this module, not the other way round.
    return Path(__file__).resolve().parents[1] / "var"


def key(path) -> str:
    """The filesystem-level path of ``path`` (``bucket/prefix/...`` for S3)."""
    return path.path


def upload_file(local: Path, final) -> None:
    """Upload the complete local file ``local`` to ``final`` (visible only once it is whole)."""
    fs = final.fs
    kwargs = {"chunksize": MULTIPART_CHUNK_BYTES} if MULTIPART_CHUNK_BYTES and "s3" in _protocols(fs) else {}
    fs.put_file(str(local), key(final), **kwargs)


def put_bytes(final, data: bytes) -> None:
    """Store ``data`` at ``final`` in one PUT."""
    final.fs.pipe_file(key(final), data)


def _protocols(fs) -> tuple:
    return tuple(fs.protocol) if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)


def cache_path(rel: str) -> Path:
    """Where a content-addressed blob read from an object store is kept locally: the same
    relative path under ``<local home>/cache``. The name holds the content's sha256, so a cached
    copy can never be stale, whichever root it came from."""
    relative = PurePosixPath(rel)
    if relative.is_absolute() or ".." in relative.parts:
        raise ValueError(f"blob path {rel!r} is not a relative path inside the blob store")
    return local_home() / "cache" / relative
