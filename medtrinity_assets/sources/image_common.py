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
from medtrinity_assets.imaging.image_io import ImageReadError, read_image
from medtrinity_assets.sources.base import IngestContext, Quarantined, make_record

# Files a publisher ships beside the images that no glob should turn into records.
NOT_IMAGES = {".md", ".txt", ".csv", ".json", ".html", ".pdf", ".xlsx", ".zip"}


def iter_image_files(root: Path, pattern: str) -> Iterator[str]:
    """Image files under ``root`` matching ``pattern``, as sorted POSIX paths relative to it.

    Sorted so a rerun yields records in the same order; hidden files (.DS_Store, ._x.png from
    macOS archives) are not data.
    """
    found = []
    for path in root.glob(pattern):
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


def decode_image(
    ctx: IngestContext, relative_path: str, absent_reason: str | None = None
) -> tuple[np.ndarray, str] | Quarantined:
    """Pixels of one image file, or the Quarantined saying why it cannot be read.

    ``absent_reason``: for an image an annotation file names, the reason given when the file is
    not there (which says where it was listed), instead of a decoder error.
    """
    if absent_reason is not None and not (ctx.root / relative_path).is_file():
        return Quarantined(relative_path, absent_reason, kind="orphan")
    try:
        return read_image(ctx.root / relative_path)
    except ImageReadError as error:
        return Quarantined(relative_path, f"unreadable image: {error.cause}", kind="unreadable")
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

REPLACEMENT_CHAR = "\ufffd"


def read_csv_rows(
    path: Path, encoding: str, delimiter: str = ",", columns: list[str] | None = None
) -> tuple[list[str], list[tuple[int, dict[str, str]]], bool]:
    """Header, (line number, row) pairs, and whether undecodable bytes were replaced.

    ``columns`` names the fields of a file without header row (ROCO's captions.txt); a row with
    more fields than names keeps the surplus in its last field, since a caption may hold the
    delimiter. A wrongly declared encoding must not lose the whole file: it is re-read with
    undecodable bytes replaced (U+FFFD), and the caller drops only rows whose key fields carry them.
    """
    try:
        text = path.read_text(encoding=encoding)
        replaced = False
    except UnicodeDecodeError:
        text = path.read_text(encoding=encoding, errors="replace")
        replaced = True
    text = text.lstrip("\ufeff")  # Excel writes a BOM that would stick to the first header
    # Tab-separated files are not quoted by their publishers; a caption opening with a quote
    # mark must not swallow the lines after it.
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    # StringIO keeps quoted multi-line fields (clinical notes) inside their row.
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting)
    if columns:
        header = list(columns)
    else:
        header = [name.strip() for name in next(reader, [])]
    rows = []
    for fields in reader:
        if not any(field.strip() for field in fields):
            continue  # blank line
        if columns and len(fields) > len(header):
            fields = [*fields[: len(header) - 1], delimiter.join(fields[len(header) - 1 :])]
        row = dict(zip(header, fields))
        rows.append((reader.line_num, row))  # line where the row ends, for error messages
    return header, rows, replaced


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
