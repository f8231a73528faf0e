"""Downloads against a real HTTP server on loopback: resume with Range (206, or a server that
ignores it), checksums, the recorded sha256 where the publisher gives none, safe extraction,
HTTP errors, and gated sources that never touch the network."""

from __future__ import annotations

import hashlib
import io
import json
import re
import socket
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import yaml
from spec_factory import build_spec

from medtrinity_assets import cli
from medtrinity_assets.catalog.acquire import (
    ACQUISITION_RECORD,
    ChecksumMismatch,
    DownloadError,
    GatedSourceError,
    UnsafeArchiveError,
    fetch_downloads,
    fetch_source,
)

# Incompressible bytes, big enough that a dropped connection leaves a real partial file.
PAYLOAD = np.random.default_rng(7).integers(0, 256, 300_000, dtype=np.uint8).tobytes()


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        state = self.server.state
        state["requests"].append({"path": self.path, "range": self.headers.get("Range")})
        body = state["files"].get(self.path)
        if body is None:
            self.send_error(404, "Not Found")
            return
        start = 0
        wanted = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if wanted and not state["ignore_range"]:
            start = int(wanted.group(1))
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        payload = body[start:]
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if state["drops_left"] > 0:
            # Promise the whole file, send part of it, hang up: a broken download.
            state["drops_left"] -= 1
            self.wfile.write(payload[: len(payload) // 3])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(payload)


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.state = {"files": {}, "requests": [], "ignore_range": False, "drops_left": 0}
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    httpd.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def _download_spec(*downloads, **fields):
    return build_spec(acquisition={"method": "download", "downloads": list(downloads)}, **fields)


def _fetch(spec, dest, lines=None, **kwargs):
    kwargs.setdefault("retry_delay_s", 0)
    return fetch_downloads(spec, dest, log=(lines.append if lines is not None else lambda line: None), **kwargs)


def test_full_download_verified_then_skipped(server, tmp_path):
    server.state["files"]["/data/scans.bin"] = PAYLOAD
    spec = _download_spec(
        {
            "url": f"{server.base}/data/scans.bin",
            "to": "archive",
            "sha256": hashlib.sha256(PAYLOAD).hexdigest(),
            "md5": hashlib.md5(PAYLOAD).hexdigest(),
            "size_bytes": len(PAYLOAD),
        }
    )
    lines = []
    [path] = _fetch(spec, tmp_path, lines)
    assert path == tmp_path / "archive" / "scans.bin"
    assert path.read_bytes() == PAYLOAD
    assert not list(path.parent.glob(".*.part"))
    assert any("publisher checksum verified" in line for line in lines)
    record = json.loads((tmp_path / ACQUISITION_RECORD).read_text())
    assert record["files"]["archive/scans.bin"]["sha256"] == hashlib.sha256(PAYLOAD).hexdigest()

    mtime = path.stat().st_mtime_ns
    lines.clear()
    _fetch(spec, tmp_path, lines)
    assert len(server.state["requests"]) == 1  # present and verified: not fetched again
    assert path.stat().st_mtime_ns == mtime  # untouched, so the raw-files sensor sees no change
    assert any("already present, verified" in line for line in lines)


def test_broken_download_resumes_with_a_range_request(server, tmp_path):
    server.state["files"]["/scans.bin"] = PAYLOAD
    server.state["drops_left"] = 1
    url = f"{server.base}/scans.bin"
    spec = _download_spec({"url": url, "sha256": hashlib.sha256(PAYLOAD).hexdigest()})

    with pytest.raises(DownloadError) as failure:
        _fetch(spec, tmp_path, attempts=1)
    assert url in str(failure.value) and "resumes" in str(failure.value)
    part = tmp_path / ".scans.bin.part"
    partial_size = part.stat().st_size
    assert 0 < partial_size < len(PAYLOAD)
    assert not (tmp_path / "scans.bin").exists()

    [path] = _fetch(spec, tmp_path)
    assert server.state["requests"][-1]["range"] == f"bytes={partial_size}-"
    assert path.read_bytes() == PAYLOAD
    assert not part.exists()


def test_retry_within_one_run_resumes_where_the_connection_broke(server, tmp_path):
    server.state["files"]["/scans.bin"] = PAYLOAD
    server.state["drops_left"] = 1
    spec = _download_spec({"url": f"{server.base}/scans.bin", "md5": hashlib.md5(PAYLOAD).hexdigest()})
    lines = []
    [path] = _fetch(spec, tmp_path, lines, attempts=2)
    first, second = server.state["requests"]
    assert first["range"] is None and second["range"] == f"bytes={len(PAYLOAD) // 3}-"
    assert path.read_bytes() == PAYLOAD
    assert any("attempt 2 of 2" in line for line in lines)


def test_server_ignoring_range_restarts_cleanly(server, tmp_path):
    server.state["files"]["/scans.bin"] = PAYLOAD
    server.state["ignore_range"] = True
    (tmp_path / ".scans.bin.part").write_bytes(PAYLOAD[:1000])
    spec = _download_spec({"url": f"{server.base}/scans.bin", "sha256": hashlib.sha256(PAYLOAD).hexdigest()})
    lines = []
    [path] = _fetch(spec, tmp_path, lines)
    assert server.state["requests"][0]["range"] == "bytes=1000-"
    assert path.read_bytes() == PAYLOAD  # the 200 body replaced the part; nothing doubled
    assert any("ignored the range request" in line for line in lines)


def test_complete_part_left_by_a_killed_run_is_verified_not_fetched_again(server, tmp_path):
    server.state["files"]["/scans.bin"] = PAYLOAD
    (tmp_path / ".scans.bin.part").write_bytes(PAYLOAD)  # killed after the last byte, before the rename
    spec = _download_spec({"url": f"{server.base}/scans.bin", "sha256": hashlib.sha256(PAYLOAD).hexdigest()})
    [path] = _fetch(spec, tmp_path)
    assert server.state["requests"] == [{"path": "/scans.bin", "range": f"bytes={len(PAYLOAD)}-"}]  # answered 416
    assert path.read_bytes() == PAYLOAD


def test_checksum_mismatch_deletes_the_download(server, tmp_path):
    server.state["files"]["/scans.bin"] = PAYLOAD
    url = f"{server.base}/scans.bin"
    expected = hashlib.sha256(b"what the publisher released").hexdigest()
    spec = _download_spec({"url": url, "sha256": expected})
    with pytest.raises(ChecksumMismatch) as failure:
        _fetch(spec, tmp_path)
    message = str(failure.value)
    assert url in message and expected in message and hashlib.sha256(PAYLOAD).hexdigest() in message
    assert [p.name for p in tmp_path.iterdir()] == []  # neither the file nor its part is kept


def test_without_publisher_checksum_the_first_sha256_is_recorded_and_enforced(server, tmp_path):
    server.state["files"]["/scans.bin"] = PAYLOAD
    spec = _download_spec({"url": f"{server.base}/scans.bin"})
    digest = hashlib.sha256(PAYLOAD).hexdigest()
    lines = []
    _fetch(spec, tmp_path, lines)
    assert any(f"publisher gives no checksum; recorded sha256 {digest}" in line for line in lines)
    assert json.loads((tmp_path / ACQUISITION_RECORD).read_text())["files"]["scans.bin"]["sha256"] == digest

    # Same bytes again (file lost locally): verified against the record.
    (tmp_path / "scans.bin").unlink()
    lines.clear()
    _fetch(spec, tmp_path, lines)
    assert any("recorded sha256 verified" in line for line in lines)

    # The publisher silently changed the file: refused, and the good copy is kept.
    server.state["files"]["/scans.bin"] = PAYLOAD[::-1]
    (tmp_path / "scans.bin").unlink()
    with pytest.raises(ChecksumMismatch, match="recorded at the first download"):
        _fetch(spec, tmp_path)
    assert not (tmp_path / "scans.bin").exists() and not (tmp_path / ".scans.bin.part").exists()


def _zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        for name, data in members.items():
            bundle.writestr(name, data)
    return buffer.getvalue()


def test_zip_is_extracted_once_after_verification(server, tmp_path):
    archive = _zip_bytes({"kvasir/images/a.jpg": b"jpeg a", "kvasir/masks/a.jpg": b"mask a"})
    server.state["files"]["/kvasir.zip"] = archive
    spec = _download_spec(
        {"url": f"{server.base}/kvasir.zip", "sha256": hashlib.sha256(archive).hexdigest(), "extract": True}
    )
    _fetch(spec, tmp_path)
    image = tmp_path / "kvasir" / "images" / "a.jpg"
    assert image.read_bytes() == b"jpeg a"
    assert (tmp_path / "kvasir" / "masks" / "a.jpg").read_bytes() == b"mask a"
    mtime = image.stat().st_mtime_ns
    _fetch(spec, tmp_path)
    assert image.stat().st_mtime_ns == mtime  # not unpacked again on a rerun


def test_archive_members_escaping_the_folder_are_refused(server, tmp_path):
    dest = tmp_path / "raw"
    archive = _zip_bytes({"fine.txt": b"ok", "../escaped.txt": b"evil"})
    server.state["files"]["/evil.zip"] = archive
    spec = _download_spec({"url": f"{server.base}/evil.zip", "extract": True})
    with pytest.raises(UnsafeArchiveError, match=r"\.\./escaped\.txt"):
        _fetch(spec, dest)
    assert not (tmp_path / "escaped.txt").exists()
    assert not (dest / "fine.txt").exists()  # checked before anything is written

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as bundle:
        link = tarfile.TarInfo("data/passwd")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        bundle.addfile(link)
    server.state["files"]["/links.tar.gz"] = buffer.getvalue()
    spec = _download_spec({"url": f"{server.base}/links.tar.gz", "extract": True})
    with pytest.raises(UnsafeArchiveError, match="link"):
        _fetch(spec, dest)
    assert not (dest / "data").exists()


def test_http_error_names_the_url(server, tmp_path):
    url = f"{server.base}/moved-away.zip"
    spec = _download_spec({"url": url})
    with pytest.raises(DownloadError) as failure:
        _fetch(spec, tmp_path)
    assert url in str(failure.value) and "404" in str(failure.value)
    assert len(server.state["requests"]) == 1  # a 404 is not retried


def test_network_failure_names_the_url(tmp_path):
    with socket.socket() as probe:  # a port nothing listens on once closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/scans.bin"
    with pytest.raises(DownloadError) as failure:
        _fetch(_download_spec({"url": url}), tmp_path, attempts=2)
    assert url in str(failure.value) and "network failure" in str(failure.value)


GATED = {
    "id": "gated_source",
    "access": "registration",
    "license": "CC BY-NC 4.0",
    "homepage": "https://example.org/derm-atlas",
    "acquisition": {"method": "manual", "instructions": "Register at the atlas site and accept its terms."},
}


def test_gated_source_prints_instructions_and_never_touches_the_network(server, tmp_path, isolated_env, capsys):
    class RefusingOpener:
        def open(self, *args, **kwargs):
            raise AssertionError("a gated source must not reach the network")

    spec = build_spec(**GATED)
    dest = tmp_path / "raw" / "gated_source"
    with pytest.raises(GatedSourceError) as failure:
        fetch_source(spec, dest, opener=RefusingOpener())
    message = str(failure.value)
    for expected in ("Register at the atlas site", "https://example.org/derm-atlas", "CC BY-NC 4.0", str(dest)):
        assert expected in message
    assert not dest.exists()

    # Through the CLI, with download URLs present: access 'registration' still wins.
    gated_with_urls = {**GATED, "acquisition": {**GATED["acquisition"], "method": "download",
                                                "downloads": [{"url": f"{server.base}/atlas.zip"}]}}
    spec_path = tmp_path / "gated_source.yaml"
    spec_path.write_text(yaml.safe_dump(build_spec(**gated_with_urls).model_dump(mode="json", exclude_none=True)))
    assert cli.main(["fetch", str(spec_path)]) != 0
    printed = capsys.readouterr().err
    assert "Register at the atlas site" in printed and str(isolated_env["raw"] / "gated_source") in printed
    assert server.state["requests"] == []


def test_cli_fetch_downloads_into_the_source_folder(server, tmp_path, isolated_env, capsys):
    server.state["files"]["/release/scans.bin"] = PAYLOAD
    spec = _download_spec({"url": f"{server.base}/release/scans.bin", "to": "release"}, id="open_scans")
    spec_path = tmp_path / "open_scans.yaml"
    spec_path.write_text(yaml.safe_dump(spec.model_dump(mode="json", exclude_none=True)))
    assert cli.main(["fetch", str(spec_path)]) == 0
    assert (isolated_env["raw"] / "open_scans" / "release" / "scans.bin").read_bytes() == PAYLOAD
    out = capsys.readouterr().out
    assert "publisher gives no checksum; recorded sha256" in out and "check-source open_scans" in out
