"""Training files with the images inside: Hugging Face Parquet and WebDataset tar shards.

The LLaVA JSONL names each image by path; these two formats carry the PNG bytes, so a folder of
them can be copied to a training machine alone.

- ``hf/<split>-NNNNN.parquet``: the ``datasets`` layout. The ``image`` column is the struct
  ``{bytes, path}`` of the ``datasets`` Image feature, and the schema's ``huggingface``
  metadata names the features, so ``datasets.load_dataset("parquet", data_files=...)`` decodes
  the images as PIL images. The feature JSON uses the long-standing forms (a list literal for
  lists of records, ``Sequence`` for lists of values) that old and new ``datasets`` releases
  both read.
- ``webdataset/<split>-NNNNNN.tar``: per sample ``<key>.png`` (the image), ``<key>.json`` (the
  LLaVA record) and ``<key>.txt`` (the description); the key is the record id.

Both are sharded by size: a shard is closed before a sample would take it past ``shard_bytes``
(a sample larger than that gets a shard of its own). A split without rows gets no shard (the
``datasets`` library refuses a split of zero rows; the card's loader names the splits that have
shards). Shard files are written beside their
final name and renamed into place; shards left from a larger earlier export are removed.
Tar members carry fixed owner, mode and time, so the same rows give the same bytes.
"""

from __future__ import annotations

import json
import re
import tarfile
from contextlib import ExitStack
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from medtrinity_assets.storage import atomic_path, make_dirs

HF_FOLDER = "hf"
WEBDATASET_FOLDER = "webdataset"
SHARD_BYTES = 256 * 1024 * 1024
# Rows per Parquet row group: small enough that a reader holds few images at once.
HF_ROW_GROUP = 64
_KEY = re.compile(r"^[A-Za-z0-9_-]+$")

HF_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
        ("conversations", pa.list_(pa.struct([("from", pa.string()), ("value", pa.string())]))),
        ("description", pa.string()),
        ("roi", pa.list_(pa.int64())),
        ("roi_origin", pa.string()),
        ("source_id", pa.string()),
        ("modality", pa.string()),
        ("organs", pa.list_(pa.string())),
        ("label_state", pa.string()),
        ("license", pa.string()),
        ("source_text", pa.string()),  # the publisher's own text, JSON (null when none)
        ("facts", pa.string()),  # JSON list of the facts the description was written from
    ]
)


def _value(dtype: str) -> dict:
    return {"dtype": dtype, "_type": "Value"}


HF_FEATURES = {
    "id": _value("string"),
    "image": {"_type": "Image"},
    "conversations": [{"from": _value("string"), "value": _value("string")}],
    "description": _value("string"),
    "roi": {"feature": _value("int64"), "_type": "Sequence"},
    "roi_origin": _value("string"),
    "source_id": _value("string"),
    "modality": _value("string"),
    "organs": {"feature": _value("string"), "_type": "Sequence"},
    "label_state": _value("string"),
    "license": _value("string"),
    "source_text": _value("string"),
    "facts": _value("string"),
}
HF_SCHEMA = HF_SCHEMA.with_metadata({"huggingface": json.dumps({"info": {"features": HF_FEATURES}})})


HF_COMPRESSION = {name: "zstd" for name in HF_SCHEMA.names if name != "image"} | {
    "image.bytes": "none", "image.path": "zstd"}


def hf_shard_name(split: str, index: int) -> str:
    return f"{split}-{index:05d}.parquet"


def webdataset_shard_name(split: str, index: int) -> str:
    return f"{split}-{index:06d}.tar"


def hf_row(part_row: dict) -> dict:
    """The Hugging Face row of an exported part row (dataset/parts.py)."""
    return {
        "id": part_row["record_id"],
        "image": {"bytes": part_row["image_bytes"], "path": part_row["image_ref"]},
        "conversations": part_row["conversations"],
        "description": part_row["description"],
        "roi": part_row["roi"],
        "roi_origin": part_row["roi_origin"],
        "source_id": part_row["source_id"],
        "modality": part_row["modality"],
        "organs": part_row["organs"],
        "label_state": part_row["label_state"],
        "license": part_row["license"],
        "source_text": part_row["source_text"],
        "facts": part_row["facts"],
    }


def _tar_header(name: str, size: int) -> bytes:
    """One member's header block(s), with fixed owner, mode and time."""
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def _padded(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % tarfile.BLOCKSIZE)


def webdataset_blocks(key: str, png_size: int, record_json: str, text: str) -> tuple[bytes, bytes]:
    """A sample's tar blocks, built once per row (dataset/parts.py keeps them): the PNG member's
    header, and the JSON and text members whole. The shard writer puts the PNG between them."""
    if not _KEY.match(key):
        # WebDataset splits a member name at its first dot: a key must be a plain word.
        raise ValueError(f"record id {key!r} cannot be a WebDataset key (letters, digits, '_' and '-' only)")
    record, caption = record_json.encode("utf-8"), text.encode("utf-8")
    tail = (_tar_header(f"{key}.json", len(record)) + _padded(record)
            + _tar_header(f"{key}.txt", len(caption)) + _padded(caption))
    return _tar_header(f"{key}.png", png_size), tail


class _Discarded(Exception):
    """Raised into a shard's atomic write to drop its temporary instead of renaming it."""


class _Shards:
    """Numbered shard files of one split, each renamed into place when closed."""

    def __init__(self, folder: Path, split: str, name_of):
        self.folder, self.split, self.name_of = folder, split, name_of
        self.index = -1
        self.written: list[str] = []
        self.size = 0
        self._shard_stack: ExitStack | None = None

    def _open(self) -> Path:
        self.close()
        self.index += 1
        self.size = 0
        name = self.name_of(self.split, self.index)
        self.written.append(name)
        self._shard_stack = ExitStack()
        return self._shard_stack.enter_context(atomic_path(self.folder / name))

    def close(self) -> None:
        if self._shard_stack is not None:
            self._close_file()
            if self.size:
                self._shard_stack.close()  # renames the temporary onto the shard's name
            else:
                # A split without rows gets no shard: `datasets` refuses a split of zero rows.
                self.discard()
                self.written.remove(self.name_of(self.split, self.index))
            self._shard_stack = None

    def discard(self) -> None:
        """Drop the open shard's temporary (its final name keeps what it had)."""
        if self._shard_stack is not None:
            self._close_file()
            self._shard_stack.__exit__(_Discarded, _Discarded(), None)
            self._shard_stack = None

    def _close_file(self) -> None:  # overridden
        pass


class HfWriter(_Shards):
    def __init__(self, folder: Path, split: str, shard_bytes: int):
        super().__init__(folder, split, hf_shard_name)
        self.shard_bytes = shard_bytes
        self.rows: list[dict] = []
        self.writer: pq.ParquetWriter | None = None
        self._new_shard()

    def _new_shard(self) -> None:
        tmp = self._open()
        # PNG bytes are compressed already: zstd for the text columns only.
        self.writer = pq.ParquetWriter(tmp, HF_SCHEMA, compression=HF_COMPRESSION)

    def _flush(self) -> None:
        if self.rows:
            self.writer.write_table(pa.Table.from_pylist(self.rows, schema=HF_SCHEMA))
            self.rows = []

    def _close_file(self) -> None:
        self._flush()
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def add(self, row: dict) -> None:
        # PNG bytes dominate a row; text is counted too so text-only growth still shards.
        size = len(row["image"]["bytes"] or b"") + len(row["description"] or "") + len(row["facts"] or "") + 256
        if self.size and self.size + size > self.shard_bytes:
            self._new_shard()
        self.rows.append(row)
        self.size += size
        if len(self.rows) == HF_ROW_GROUP:
            self._flush()


class WebDatasetWriter(_Shards):
    """Tar shards written block by block (the members arrive as ready blocks), ended as tarfile
    ends an archive: two zero blocks, then zeros up to a whole 10 KiB record."""

    def __init__(self, folder: Path, split: str, shard_bytes: int):
        super().__init__(folder, split, webdataset_shard_name)
        self.shard_bytes = shard_bytes
        self.file = None
        self._new_shard()

    def _new_shard(self) -> None:
        tmp = self._open()
        self.file = self._shard_stack.enter_context(open(tmp, "wb"))

    def _close_file(self) -> None:
        if self.file is not None:
            end = b"\0" * (2 * tarfile.BLOCKSIZE)
            written = self.size + len(end)
            self.file.write(end + b"\0" * (-written % tarfile.RECORDSIZE))
            self.file = None  # closed by the shard's exit stack, before the rename

    def add(self, png_header: bytes, png: bytes, tail: bytes) -> None:
        sample = png_header + _padded(png) + tail
        if self.size and self.size + len(sample) > self.shard_bytes:
            self._new_shard()
        self.file.write(sample)
        self.size += len(sample)


class TrainingFiles:
    """The HF Parquet and WebDataset writers of every split, opened together, closed together."""

    def __init__(self, exports_dir: Path, splits: tuple[str, ...], shard_bytes: int = SHARD_BYTES):
        self.hf_dir = Path(exports_dir) / HF_FOLDER
        self.wds_dir = Path(exports_dir) / WEBDATASET_FOLDER
        self.splits, self.shard_bytes = splits, shard_bytes

    def __enter__(self) -> "TrainingFiles":
        make_dirs(self.hf_dir)
        make_dirs(self.wds_dir)
        self.hf = {s: HfWriter(self.hf_dir, s, self.shard_bytes) for s in self.splits}
        self.wds = {s: WebDatasetWriter(self.wds_dir, s, self.shard_bytes) for s in self.splits}
        return self

    def add(self, split: str, part_row: dict) -> None:
        self.hf[split].add(hf_row(part_row))
        self.wds[split].add(part_row["wds_png_header"], part_row["image_bytes"], part_row["wds_tail"])

    def __exit__(self, exc_type, exc, tb) -> None:
        writers = [*self.hf.values(), *self.wds.values()]
        if exc_type is not None:
            for writer in writers:  # drop the temporaries; the previous shards stay as they were
                writer.discard()
            return
        for writer in writers:
            writer.close()
        # Shards of an earlier, larger export would otherwise be read as part of this one.
        for folder, writers_of in ((self.hf_dir, self.hf), (self.wds_dir, self.wds)):
            current = {name for writer in writers_of.values() for name in writer.written}
            for path in folder.iterdir():
                if path.is_file() and not path.name.startswith(".") and path.name not in current:
                    path.unlink()

    def shards(self) -> dict:
        return {
            "hf": {s: w.written for s, w in self.hf.items()},
            "webdataset": {s: w.written for s, w in self.wds.items()},
        }
