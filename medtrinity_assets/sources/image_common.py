"""What the 2D layout families share: file walking, labels, patients, one image → one record."""

from __future__ import annotations

import csv
import io
import re
import string
from pathlib import Path, PurePosixPath
from typing import Iterator, Mapping

import numpy as np

from medtrinity_assets.catalog.spec import SourceSpec
from medtrinity_assets.containment import contained_glob, inside_file
from medtrinity_assets.imaging.image_io import ImageReadError, read_image
from medtrinity_assets.sources.base import IngestContext, Quarantined, make_record

# Files a publisher ships beside the images that no glob should turn into records.
NOT_IMAGES = {".md", ".txt", ".csv", ".json", ".html", ".pdf", ".xlsx", ".zip"}


def iter_image_files(root: Path, pattern: str) -> Iterator[str]:
    """Image files under ``root`` matching ``pattern``, as sorted POSIX paths relative to it.

    Sorted so a rerun yields records in the same order; hidden files (.DS_Store, ._x.png from
    macOS archives) are not data; links leading outside ``root`` are never matched (read_source
    quarantines them).
    """
    found = []
    for path in contained_glob(root, pattern):
        relative = path.relative_to(root)
        if not path.is_file() or any(part.startswith(".") for part in relative.parts):
            continue
        if path.suffix.lower() in NOT_IMAGES:
            continue
        found.append(relative.as_posix())
    yield from sorted(found)


def rename_label(spec: SourceSpec, raw: str) -> str | None:
    """Catalog name of a raw label; None when it names no finding (renamed to "", or a value
    of ``labels.normal``)."""
    raw = raw.strip()
    if not raw or raw in spec.labels.normal:
        return None
    name = spec.labels.rename.get(raw, raw)
    return name.strip().lower() or None


def says_normal(spec: SourceSpec, raw: str | None) -> bool:
    """Whether a raw label value is one the spec declares as the publisher's "normal"."""
    return raw is not None and raw.strip() in spec.labels.normal


def path_label_value(spec: SourceSpec, relative_path: str) -> str | None:
    """The raw label a path carries under the spec's folder / regex rule, or None."""
    rule = spec.labels
    if rule.source == "folder":
        parts = PurePosixPath(relative_path).parts[:-1]
        if rule.folder_depth < len(parts):
            return parts[rule.folder_depth]
    elif rule.source == "regex":
        match = re.search(rule.pattern, relative_path)
        return match.group(1) if match else None
    return None


def path_labels(spec: SourceSpec, relative_path: str) -> list[str]:
    """Labels of an image from its path (class folder) or the spec's fixed labels."""
    if spec.labels.source == "fixed":
        return [label.lower() for label in spec.labels.fixed]
    raw = path_label_value(spec, relative_path)
    label = rename_label(spec, raw) if raw is not None else None
    return [label] if label else []


def path_says_normal(spec: SourceSpec, relative_path: str) -> bool:
    """Whether the image's class folder / file-name label is one the spec declares normal."""
    return says_normal(spec, path_label_value(spec, relative_path))


def patient_id_for(spec: SourceSpec, relative_path: str, row: Mapping[str, str] | None = None) -> str:
    """The raw patient id (hashed by make_record, never stored) of one image.

    Rules that cannot apply to this file (no CSV row, no folder that deep, regex no match)
    fall back to the file itself, so unrelated images never share a patient by accident.
    """
    rule = spec.patient
    if rule.source == "column" and row is not None and rule.column and (row.get(rule.column) or "").strip():
        return f"column:{row[rule.column].strip()}"
    if rule.source == "folder":
        parts = PurePosixPath(relative_path).parts[:-1]
        if rule.folder_depth < len(parts):
            return f"folder:{parts[rule.folder_depth]}"
    if rule.source == "regex" and rule.pattern:
        match = re.search(rule.pattern, relative_path)
        if match:
            return f"regex:{match.group(1) if match.groups() else match.group(0)}"
    return f"file:{relative_path}"


def outside_source(ctx: IngestContext, relative_path: str) -> Quarantined | None:
    """The quarantine of an image path from a table or a template that leaves the source folder
    ("../x", a link to a file elsewhere): such a file is never opened. None when it stays inside."""
    if inside_file(ctx.root, relative_path) is not None:
        return None
    return Quarantined(relative_path, "image path leads outside the source folder; not read", kind="outside_source")


def decode_image(
    ctx: IngestContext, relative_path: str, absent_reason: str | None = None
) -> tuple[np.ndarray, str] | Quarantined:
    """Pixels of one image file, or the Quarantined saying why it cannot be read.

    ``absent_reason``: for an image an annotation file names, the reason given when the file is
    not there (which says where it was listed), instead of a decoder error.
    """
    outside = outside_source(ctx, relative_path)
    if outside is not None:
        return outside
    if absent_reason is not None and not (ctx.root / relative_path).is_file():
        return Quarantined(relative_path, absent_reason, kind="orphan")
    try:
        return read_image(ctx.root / relative_path, ctx.limits)
    except ImageReadError as error:
        what = "image too large" if error.kind == "too_large" else "unreadable image"
        return Quarantined(relative_path, f"{what}: {error.cause}", kind=error.kind)
    except Exception as error:  # a decoder bug on one file must not stop the source
        return Quarantined(relative_path, f"unreadable image: {type(error).__name__}: {error}", kind="unreadable")


def image_record(
    ctx: IngestContext,
    relative_path: str,
    pixels: np.ndarray,
    photometric: str,
    *,
    labels: list[str],
    annotations: list[dict],
    patient_id: str,
    modality: str | None = None,
    source_text: dict | None = None,
    flags: list[str] | None = None,
    organs: list[str] | None = None,
    label_state: str | None = None,
    grades: list[str] | None = None,
    view: str | None = None,
) -> dict:
    return make_record(
        ctx,
        source_file=relative_path,
        pixels=pixels,
        patient_id=patient_id,
        labels=labels,
        annotations=annotations,
        pixel_units="rgb" if photometric == "RGB" else "raw",
        photometric=photometric,
        modality=modality,
        source_text=source_text,
        flags=flags,
        organs=organs,
        label_state=label_state,
        grades=grades,
        view=view,
    )


def clamp_box(box: list[float], width: int, height: int) -> list[int] | None:
    """[x0, y0, x1, y1] clamped into the image (x1, y1 exclusive); None when nothing is left."""
    x0, y0, x1, y1 = box
    x0, x1 = sorted((x0, x1))
    y0, y1 = sorted((y0, y1))
    cx0 = int(np.clip(np.floor(x0), 0, width))
    cy0 = int(np.clip(np.floor(y0), 0, height))
    cx1 = int(np.clip(np.ceil(x1), 0, width))
    cy1 = int(np.clip(np.ceil(y1), 0, height))
    if cx1 <= cx0 or cy1 <= cy0:
        return None
    return [cx0, cy0, cx1, cy1]


# --- metadata tables (label CSVs, caption TSVs) ------------------------------------------

# Bytes that are not valid in the declared encoding are decoded as lone surrogates
# (surrogateescape): the table keeps its rows, and a row holding them is quarantined instead
# of being read with U+FFFD in place of its letters (a label no reader can trust).
UNDECODABLE = re.compile("[\udc80-\udcff]")


class UndecodableText(ValueError):
    """A publisher file that cannot be used at all in its declared encoding: ``line`` (its
    header row) holds bytes that are not valid in it."""

    def __init__(self, line: int):
        self.line = line
        super().__init__(f"line {line} cannot be decoded")


def decode_publisher_text(data: bytes, encoding: str) -> str:
    """A publisher file's text in the spec's encoding, a byte-order mark dropped (Excel writes
    one that would stick to the first header); invalid bytes are left for ``UNDECODABLE``."""
    return data.decode(encoding, errors="surrogateescape").lstrip("\ufeff")


def undecodable_reason(file: str, line: int, encoding: str, what: str = "row") -> str:
    """The quarantine reason of a row (or file) with bytes invalid in the declared encoding;
    never the text itself."""
    return (
        f"{file} line {line}: {what} holds bytes that are not valid {encoding}; "
        "declare the publisher's encoding in the spec (encoding: latin-1, cp1252, ...)"
    )


def read_csv_rows(
    path: Path, encoding: str, delimiter: str = ",", columns: list[str] | None = None
) -> tuple[list[str], list[tuple[int, dict[str, str]]], list[int]]:
    """Header, (line number, row) pairs, and the line numbers of rows that cannot be decoded.

    ``columns`` names the fields of a file without header row (ROCO's captions.txt); a row with
    more fields than names keeps the surplus in its last field, since a caption may hold the
    delimiter. A row with bytes that are not valid in ``encoding`` is left out and its line
    listed, so the caller quarantines it and the rest of the table is read; a header row that
    cannot be decoded raises ``UndecodableText``: no column can then be trusted.
    """
    text = decode_publisher_text(path.read_bytes(), encoding)
    # Tab-separated files are not quoted by their publishers; a caption opening with a quote
    # mark must not swallow the lines after it.
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    # StringIO keeps quoted multi-line fields (clinical notes) inside their row.
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting)
    if columns:
        header = list(columns)
    else:
        header = [name.strip() for name in next(reader, [])]
        if any(UNDECODABLE.search(name) for name in header):
            raise UndecodableText(reader.line_num)
    rows = []
    undecodable = []
    for fields in reader:
        if not any(field.strip() for field in fields):
            continue  # blank line
        if any(UNDECODABLE.search(field) for field in fields):
            undecodable.append(reader.line_num)
            continue
        if columns and len(fields) > len(header):
            fields = [*fields[: len(header) - 1], delimiter.join(fields[len(header) - 1 :])]
        row = dict(zip(header, fields))
        rows.append((reader.line_num, row))  # line where the row ends, for error messages
    return header, rows, undecodable


def template_fields(template: str) -> list[str]:
    """Names in braces of a str.format template: "{folder}/{id}" -> ["folder", "id"]."""
    return [name for _, name, _, _ in string.Formatter().parse(template) if name]


def template_glob(template: str) -> str:
    """The glob matching every path a template can produce ("images/{id}.png" -> "images/*.png")."""
    parts = []
    for literal, name, _, _ in string.Formatter().parse(template):
        parts.append(glob_escape(literal))
        if name is not None:
            parts.append("*")
    return "".join(parts)


def glob_escape(text: str) -> str:
    """Literal text inside a glob: brackets and wildcards of a folder name match only themselves."""
    return re.sub(r"([*?\[])", r"[\1]", text)
