"""Getting a source's files into ``data/raw/<id>/``: package copies, verified downloads, instructions.

- ``package`` (the demo sources): files an installed Python package ships are copied, never
  linked, so the pipeline reads them exactly as it reads a downloaded source. A file already
  there with the same bytes is left untouched: a rerun changes nothing, so the raw-folder
  fingerprint (and the sensor watching it) stays the same.
- ``download`` (open sources): each URL is fetched into a hidden ``.<name>.part`` file, resumed
  with an HTTP Range request after a broken connection, verified against the publisher's
  checksum (or, where the publisher gives none, against the sha256 recorded at the first
  download in ``.acquisition.json``) and only then renamed into place. Part and record files are
  hidden so that neither the readers nor the raw-files sensor ever see a half download.
- ``manual``, or access ``registration`` / ``credentialed``: nothing is fetched; the user is told
  what to do (the spec's instructions), where the dataset lives and where to put it.
"""

from __future__ import annotations

import filecmp
import hashlib
import http.client
import importlib.util
import json
import os
import re
import shutil
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

from medtrinity_assets.catalog.spec import Download, PackageFile, SourceSpec
from medtrinity_assets.containment import climbs_out, contained_glob, is_inside
from medtrinity_assets.storage import atomic_path, write_bytes_atomic

# Hidden, so that folder_fingerprint (the sensor) and the readers' file walks ignore it.
ACQUISITION_RECORD = ".acquisition.json"
GATED_ACCESS = ("registration", "credentialed")
CHUNK_BYTES = 1 << 20
USER_AGENT = "medtrinity-assets (dataset acquisition)"

Log = Callable[[str], None]


class AcquisitionError(RuntimeError):
    """A source's files cannot be acquired; the message says which file and why."""


class DownloadError(AcquisitionError):
    """An HTTP error, a network failure or a wrong size; the message names the URL."""


class ChecksumMismatch(DownloadError):
    """Downloaded bytes differ from the expected checksum; the download was deleted."""


class GatedSourceError(AcquisitionError):
    """The source needs the user to act (register, sign an agreement); the message says what."""


class UnsafeArchiveError(AcquisitionError):
    """An archive member would land outside the target folder (or is a link); nothing was extracted."""


# --- package files (demo sources) ---------------------------------------------------------


def package_folder(package: str) -> Path:
    """The folder of an importable package, found without importing it (no side effects)."""
    try:
        found = importlib.util.find_spec(package)
    except (ImportError, ValueError) as error:
        found, reason = None, str(error)
    else:
        reason = "not installed"
    if found is None or not found.submodule_search_locations:
        raise AcquisitionError(f"package '{package}' is {reason}: install it (pip install) to fetch this demo source")
    return Path(list(found.submodule_search_locations)[0])


def target_folder(dest: Path, to: str) -> Path:
    """``dest/<to>``, checked again when writing (the spec validator refuses such a ``to`` too):
    an absolute ``to``, one climbing with "..", or a link in ``dest`` leading elsewhere would make
    a fetch write outside the source folder."""
    folder = Path(dest) / to if to else Path(dest)
    if climbs_out(to) or not is_inside(dest, folder):
        raise AcquisitionError(f"'to: {to}' leads outside the source folder {dest}; nothing written")
    return folder


def _package_files(entry: PackageFile) -> list[Path]:
    base = package_folder(entry.package)
    # Only files of the package itself: a pattern or link leading elsewhere is never copied.
    matches = sorted(p for p in contained_glob(base, entry.path) if p.is_file())
    if not matches:
        raise AcquisitionError(f"package '{entry.package}' ({base}) has no file matching '{entry.path}'")
    return matches


def fetch_package_files(spec: SourceSpec, dest: Path) -> list[Path]:
    """Copy the spec's package files into ``dest/<to>/``; return the destination paths."""
    if spec.acquisition.method != "package":
        raise AcquisitionError(f"source '{spec.id}' is acquired by {spec.acquisition.method}, not from a package")
    dest = Path(dest)
    written: list[Path] = []
    for entry in spec.acquisition.files:
        folder = target_folder(dest, entry.to)
        for source in _package_files(entry):
            target = folder / source.name
            if not (target.is_file() and filecmp.cmp(source, target, shallow=False)):
                with atomic_path(target) as tmp:
                    shutil.copyfile(source, tmp)
            written.append(target)
    return written


def fetch_demo_sources(catalog: Mapping[str, SourceSpec], raw_dir: Path) -> dict[str, list[Path]]:
    """Fetch every demo source of the catalog into ``raw_dir/<id>/``."""
    return {
        source_id: fetch_package_files(spec, Path(raw_dir) / source_id)
        for source_id, spec in sorted(catalog.items())
        if spec.demo and spec.acquisition.method == "package"
    }


# --- what to tell the user ---------------------------------------------------------------


def needs_manual_acquisition(spec: SourceSpec) -> bool:
    return spec.access in GATED_ACCESS or spec.acquisition.method == "manual"


def acquisition_instructions(spec: SourceSpec, dest: Path) -> str:
    """What a person must do to get a source that cannot be fetched automatically."""
    if spec.access in GATED_ACCESS:
        why = f"access is '{spec.access}': the publisher hands the files out only after you act"
    else:
        why = "the spec gives no download URLs (acquisition.method is 'manual')"
    steps = spec.acquisition.instructions or f"Download the dataset from {spec.homepage}."
    return "\n".join(
        [
            f"{spec.id} ({spec.name}) cannot be fetched automatically: {why}.",
            "",
            *(f"  {line}" for line in steps.strip().splitlines()),
            "",
            f"  homepage: {spec.homepage}",
            f"  license:  {spec.license}",
            f"  put the files, unchanged and in the publisher's folder layout, in: {Path(dest)}",
            f"  then check them with: python -m medtrinity_assets.cli check-source {spec.id}",
        ]
    )


def fetch_source(spec: SourceSpec, dest: Path, *, opener=None, log: Log = print) -> list[Path]:
    """Acquire one source by its spec's method; raise GatedSourceError (with the instructions)
    for a source the user must fetch by hand. Nothing touches the network for those."""
    if needs_manual_acquisition(spec):
        raise GatedSourceError(acquisition_instructions(spec, dest))
    if spec.acquisition.method == "package":
        return fetch_package_files(spec, dest)
    return fetch_downloads(spec, dest, opener=opener, log=log)


# --- downloads -----------------------------------------------------------------------------


def _load_record(dest: Path) -> dict:
    path = dest / ACQUISITION_RECORD
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError):
        return {}  # a damaged record only costs re-hashing; the checksums in the spec still hold


def _save_record(dest: Path, record: dict) -> None:
    write_bytes_atomic(dest / ACQUISITION_RECORD, (json.dumps(record, indent=2, sort_keys=True) + "\n").encode())


def _digests(path: Path) -> tuple[str, str, int]:
    sha256, md5, size = hashlib.sha256(), hashlib.md5(usedforsecurity=False), 0
    with path.open("rb") as stream:
        while chunk := stream.read(CHUNK_BYTES):
            sha256.update(chunk)
            md5.update(chunk)
            size += len(chunk)
    return sha256.hexdigest(), md5.hexdigest(), size


def download_filename(entry: Download) -> str:
    name = entry.filename or unquote(PurePosixPath(urlsplit(str(entry.url)).path).name)
    if not name or name in (".", "..") or "/" in name or "\\" in name:
        raise AcquisitionError(f"{entry.url}: cannot name the file from the URL; set 'filename' in the spec")
    return name


class _RetryableError(Exception):
    """A failure a later attempt may not meet (dropped connection, timeout, 5xx)."""


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """(first byte, total size) of a Content-Range header such as "bytes 100-199/200" or "bytes */200"."""
    match = re.match(r"bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)", value or "")
    if not match:
        return None, None
    start = int(match.group(1)) if match.group(1) else None
    total = int(match.group(2)) if match.group(2) != "*" else None
    return start, total


def _open(opener, url: str, offset: int, timeout: float):
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    return opener.open(urllib.request.Request(url, headers=headers), timeout=timeout)


def _download_to_part(url: str, part: Path, opener, timeout: float, log: Log) -> None:
    """Fill ``part`` with the whole file, continuing from the bytes it already holds."""
    offset = part.stat().st_size if part.is_file() else 0
    try:
        response = _open(opener, url, offset, timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:
            # The range starts at or past the end: the part is whole, or longer than the file.
            _, total = _content_range(error.headers.get("Content-Range"))
            if total == offset:
                return
            part.unlink()
            raise _RetryableError(f"server rejected resuming at byte {offset}; starting again") from error
        if error.code >= 500:
            raise _RetryableError(f"HTTP {error.code} {error.reason}") from error
        raise DownloadError(f"{url}: HTTP {error.code} {error.reason}") from None
    with response:
        status = getattr(response, "status", None) or response.getcode()
        if offset and status == 206:
            start, _ = _content_range(response.headers.get("Content-Range"))
            if start != offset:
                part.unlink()
                raise _RetryableError(f"server sent a range from byte {start}, not {offset}; starting again")
            mode = "ab"
        else:
            if offset:
                log(f"    server ignored the range request: downloading {url} from the start")
            mode = "wb"
        expected = response.headers.get("Content-Length")
        received = 0
        part.parent.mkdir(parents=True, exist_ok=True)
        with part.open(mode) as out:
            while chunk := response.read(CHUNK_BYTES):
                out.write(chunk)
                received += len(chunk)
        if expected is not None and expected.isdigit() and received < int(expected):
            raise _RetryableError(f"connection closed after {received} of {expected} bytes")


def _download(url: str, part: Path, opener, timeout: float, attempts: int, retry_delay_s: float, log: Log) -> None:
    failure = ""
    for attempt in range(1, attempts + 1):
        try:
            _download_to_part(url, part, opener, timeout, log)
            return
        except _RetryableError as error:
            failure = str(error)
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError) as error:
            failure = f"network failure: {getattr(error, 'reason', None) or error!r}"
        except OSError as error:  # e.g. disk full, TLS failure: retrying would not help
            raise DownloadError(f"{url}: {error}; the partial file {part} is kept") from error
        if attempt < attempts:
            kept = part.stat().st_size if part.is_file() else 0
            log(f"    {url}: {failure}; attempt {attempt + 1} of {attempts}, resuming from byte {kept}")
            time.sleep(retry_delay_s)
    kept = f"the partial file {part} is kept and the next run resumes from it" if part.is_file() else "nothing was kept"
    raise DownloadError(f"{url}: download failed after {attempts} attempts ({failure}); {kept}")


def _verify(entry: Download, url: str, path: Path, recorded: dict | None) -> tuple[str, str, int, str]:
    """Digests of ``path`` and how they were verified; ChecksumMismatch when they differ."""
    sha256, md5, size = _digests(path)

    def mismatch(what: str, expected, actual) -> ChecksumMismatch:
        return ChecksumMismatch(f"{url}: {what} mismatch: expected {expected}, got {actual}")

    if entry.size_bytes is not None and size != entry.size_bytes:
        raise mismatch("size (bytes)", entry.size_bytes, size)
    if entry.sha256 and sha256 != entry.sha256:
        raise mismatch("sha256", entry.sha256, sha256)
    if entry.md5 and md5 != entry.md5:
        raise mismatch("md5", entry.md5, md5)
    if entry.sha256 or entry.md5:
        return sha256, md5, size, "publisher checksum"
    if recorded and recorded.get("url") == url and recorded.get("sha256"):
        if recorded["sha256"] != sha256:
            raise mismatch(f"sha256 (recorded at the first download in {ACQUISITION_RECORD})", recorded["sha256"], sha256)
        return sha256, md5, size, "recorded sha256"
    return sha256, md5, size, "unverified"


def _unchanged_since_recorded(path: Path, recorded: dict | None, entry: Download, url: str) -> bool:
    """True when the record already verified this very file (same size and mtime) for this URL
    and the spec's checksums: saves re-hashing gigabytes on every run."""
    if not recorded or recorded.get("url") != url or not path.is_file():
        return False
    stat = path.stat()
    if (recorded.get("size_bytes"), recorded.get("mtime_ns")) != (stat.st_size, stat.st_mtime_ns):
        return False
    return (not entry.sha256 or recorded.get("sha256") == entry.sha256) and (not entry.md5 or recorded.get("md5") == entry.md5)


def fetch_downloads(
    spec: SourceSpec,
    dest: Path,
    *,
    opener=None,
    log: Log = print,
    attempts: int = 3,
    timeout: float = 60.0,
    retry_delay_s: float = 2.0,
) -> list[Path]:
    """Download the spec's files into ``dest/<to>/<filename>``; return their paths.

    ``opener``: a ``urllib.request.OpenerDirector`` (default: ``build_opener()``), e.g. one with
    a proxy handler. Each file is verified before it is renamed into place; archives marked
    ``extract`` are unpacked beside it once, after verification.
    """
    if needs_manual_acquisition(spec):
        raise GatedSourceError(acquisition_instructions(spec, dest))
    if spec.acquisition.method != "download":
        raise AcquisitionError(f"source '{spec.id}' is acquired by {spec.acquisition.method}, not by download")
    dest = Path(dest)
    opener = opener or urllib.request.build_opener()
    record = _load_record(dest)
    files = record.setdefault("files", {})
    fetched: list[Path] = []
    for entry in spec.acquisition.downloads:
        url = str(entry.url)
        name = download_filename(entry)
        folder = target_folder(dest, entry.to)
        final = folder / name
        key = (PurePosixPath(entry.to) / name).as_posix()
        recorded = files.get(key)

        if _unchanged_since_recorded(final, recorded, entry, url):
            log(f"  {key}: already present, verified ({recorded['sha256'][:16]}...)")
        elif final.is_file() and _present_file_is_good(entry, url, final, recorded, files, key, log):
            _save_record(dest, record)
        else:
            part = folder / f".{name}.part"
            log(f"  {key}: downloading {url}")
            _download(url, part, opener, timeout, attempts, retry_delay_s, log)
            try:
                sha256, md5, size, how = _verify(entry, url, part, recorded)
            except ChecksumMismatch:
                part.unlink(missing_ok=True)  # never kept, never resumed: the bytes are wrong
                raise
            os.replace(part, final)
            stat = final.stat()
            files[key] = {"url": url, "sha256": sha256, "md5": md5, "size_bytes": size, "mtime_ns": stat.st_mtime_ns}
            _save_record(dest, record)
            if how == "unverified":
                log(f"  {key}: publisher gives no checksum; recorded sha256 {sha256} in {dest / ACQUISITION_RECORD}")
            else:
                log(f"  {key}: {size} bytes, {how} verified")
        fetched.append(final)

        if entry.extract and not files[key].get("extracted"):
            members = extract_archive(final, folder)
            files[key]["extracted"] = len(members)
            _save_record(dest, record)
            log(f"  {key}: extracted {len(members)} files into {folder}")
    return fetched


def _present_file_is_good(entry: Download, url: str, final: Path, recorded: dict | None, files: dict, key: str, log: Log) -> bool:
    """Hash a file already in place; keep it (and record it) when it verifies."""
    try:
        sha256, md5, size, how = _verify(entry, url, final, recorded)
    except ChecksumMismatch as error:
        log(f"  {key}: the file present does not verify ({error}); downloading again")
        return False
    stat = final.stat()
    previous = files.get(key) or {}
    files[key] = {"url": url, "sha256": sha256, "md5": md5, "size_bytes": size, "mtime_ns": stat.st_mtime_ns}
    if previous.get("sha256") == sha256 and previous.get("extracted"):
        files[key]["extracted"] = previous["extracted"]
    if how == "unverified":
        log(f"  {key}: already present; publisher gives no checksum; recorded sha256 {sha256}")
    else:
        log(f"  {key}: already present, {how} verified")
    return True


# --- archives ------------------------------------------------------------------------------


def _member_target(folder: Path, archive: Path, name: str) -> Path:
    """Where an archive member goes; UnsafeArchiveError when it would leave ``folder``."""
    relative = PurePosixPath(name.replace("\\", "/"))
    if relative.is_absolute() or ".." in relative.parts or re.match(r"^[A-Za-z]:", name):
        raise UnsafeArchiveError(f"{archive}: member {name!r} would be written outside {folder}; nothing extracted")
    target = (folder / relative).resolve()
    if not target.is_relative_to(folder.resolve()):
        raise UnsafeArchiveError(f"{archive}: member {name!r} resolves outside {folder}; nothing extracted")
    return target


def extract_archive(archive: Path, folder: Path) -> list[Path]:
    """Unpack a zip or tar(.gz/.bz2/.xz) archive into ``folder``; return the files written.

    Every member is checked before anything is written, so an archive with one escaping member
    (absolute path, "..", a link) writes nothing. Each file is written atomically.
    """
    archive, folder = Path(archive), Path(folder)
    written: list[Path] = []
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as bundle:
            members = [(info, _member_target(folder, archive, info.filename)) for info in bundle.infolist()]
            for info, target in members:
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                with bundle.open(info) as stream, atomic_path(target) as tmp, tmp.open("wb") as out:
                    shutil.copyfileobj(stream, out, CHUNK_BYTES)
                written.append(target)
        return written
    if tarfile.is_tarfile(archive):
        with tarfile.open(archive) as bundle:
            members = bundle.getmembers()
            for member in members:
                _member_target(folder, archive, member.name)
                if not (member.isfile() or member.isdir()):
                    # Links can point anywhere and device files have no place in a dataset.
                    raise UnsafeArchiveError(f"{archive}: member {member.name!r} is a link or special file; nothing extracted")
            for member in members:
                target = _member_target(folder, archive, member.name)
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                stream = bundle.extractfile(member)
                with stream, atomic_path(target) as tmp, tmp.open("wb") as out:
                    shutil.copyfileobj(stream, out, CHUNK_BYTES)
                written.append(target)
        return written
    raise AcquisitionError(f"{archive}: 'extract' is set but the file is neither a zip nor a tar archive")
