"""A real S3 API for tests: moto's server on 127.0.0.1 (a free port), reached over HTTP by s3fs
exactly as a MinIO or AWS endpoint would be, with one bucket."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Iterator

from moto.server import ThreadedMotoServer

from medtrinity_assets import objectstore

BUCKET = "medtrinity-test"


@contextmanager
def s3_server(bucket: str = BUCKET) -> Iterator[dict]:
    """Start the server, create ``bucket``, yield the fsspec storage options that reach it
    (what ``MEDTRINITY_STORAGE_OPTIONS`` would hold); stop it after."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    options = {"endpoint_url": f"http://{host}:{port}", "key": "testing", "secret": "testing"}
    try:
        # moto keeps its buckets in the process, not in the server: a second server started in
        # the same test session finds the bucket of the first.
        objectstore.as_root(f"s3://{bucket}", options).fs.makedirs(bucket, exist_ok=True)
        yield options
    finally:
        server.stop()
