"""Image folders described by a CSV, one row per image (ISIC, covid-chestxray-dataset).

Only the columns the spec names are read: id, path fields, labels, modality and the patient
column (hashed). Free-text columns such as clinical notes may identify a person and are never
copied into a record.
"""

from __future__ import annotations

import csv
import io
import string
from pathlib import Path

from medtrinity_assets.catalog.spec import ImageCsvLayout, SourceSpec
from medtrinity_assets.sources.base import IngestContext, IngestStream, Quarantined
from medtrinity_assets.sources.image_common import (
    decode_image,
    image_record,
    patient_id_for,
    rename_label,
)

TRUTHY = {"1", "1.0", "yes", "y", "true", "t"}
REPLACEMENT_CHAR = "\ufffd"


def is_truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in TRUTHY


def read_csv_rows(path: Path, encoding: str) -> tuple[list[str], list[tuple[int, dict[str, str]]], bool]:
    """Header, (line number, row) pairs, and whether undecodable bytes were replaced.

    A wrongly declared encoding must not lose the whole CSV: the file is re-read with
    undecodable bytes replaced (U+FFFD), and only rows whose key fields carry them are dropped.
    """
    try:
        text = path.read_text(encoding=encoding)
        replaced = False
    except UnicodeDecodeError:
        text = path.read_text(encoding=encoding, errors="replace")
        replaced = True
    text = text.lstrip("\ufeff")  # Excel writes a BOM that would stick to the first header
    # StringIO keeps quoted multi-line fields (clinical notes) inside their row.
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = [name.strip() for name in (reader.fieldnames or [])]
    reader.fieldnames = header
    rows = []
    for row in reader:
        rows.append((reader.line_num, row))  # line where the row ends, for error messages
    return header, rows, replaced


def template_fields(template: str) -> list[str]:
    return [name for _, name, _, _ in string.Formatter().parse(template) if name]


def row_labels(spec: SourceSpec, layout: ImageCsvLayout, row: dict[str, str]) -> list[str]:
    labels: list[str] = []
    for column in layout.label_columns:
        if is_truthy(row.get(column)):
            name = rename_label(spec, column)
            if name:
                labels.append(name)
    if layout.label_column:
        raw = row.get(layout.label_column) or ""
        values = raw.split(layout.label_separator) if layout.label_separator else [raw]
        for value in values:
            name = rename_label(spec, value)
            if name:
                labels.append(name)
    return labels


def read(ctx: IngestContext) -> IngestStream:
    spec = ctx.spec
    layout: ImageCsvLayout = spec.layout
    csv_path = ctx.root / layout.csv
    if not csv_path.is_file():
        yield Quarantined(layout.csv, "label CSV is absent")
        return
    try:
        header, rows, _ = read_csv_rows(csv_path, layout.csv_encoding)
    except (OSError, csv.Error, LookupError) as error:
        yield Quarantined(layout.csv, f"unreadable CSV: {error}")
        return

    path_fields = [name for name in template_fields(layout.path_template) if name != "id"]
    needed = [layout.id_column, *path_fields, *layout.label_columns]
    needed += [c for c in (layout.label_column, layout.modality_column) if c]
    missing = [column for column in needed if column not in header]
    if missing:
        yield Quarantined(layout.csv, f"CSV lacks column(s) {', '.join(missing)}; header is {', '.join(header)}")
        return

    for line_number, row in rows:
        row_ref = f"{layout.csv}:{line_number}"
        key_values = [row.get(layout.id_column) or "", *(row.get(f) or "" for f in path_fields)]
        if any(REPLACEMENT_CHAR in value for value in key_values):
            yield Quarantined(row_ref, "non-UTF-8 text in metadata (id or path field cannot be decoded)")
            continue
        image_id = (row.get(layout.id_column) or "").strip()
        if not image_id:
            yield Quarantined(row_ref, f"empty {layout.id_column!r} field")
            continue
        try:
            relative_path = layout.path_template.format(
                id=image_id, **{f: (row.get(f) or "").strip() for f in path_fields}
            )
        except (KeyError, IndexError, ValueError) as error:
            yield Quarantined(row_ref, f"path_template {layout.path_template!r} cannot be filled: {error}")
            continue

        modality = None
        if layout.modality_column:
            raw_modality = (row.get(layout.modality_column) or "").strip()
            modality = layout.modality_map.get(raw_modality)
            if modality is None:
                yield Quarantined(
                    relative_path, f"modality {raw_modality!r} (column {layout.modality_column}) is not in modality_map"
                )
                continue

        if not (ctx.root / relative_path).is_file():
            yield Quarantined(relative_path, f"listed in {layout.csv} (line {line_number}) but file is absent")
            continue
        decoded = decode_image(ctx, relative_path)
        if isinstance(decoded, Quarantined):
            yield decoded
            continue
        pixels, photometric = decoded
        yield image_record(
            ctx,
            relative_path,
            pixels,
            photometric,
            labels=row_labels(spec, layout, row),
            annotations=[],
            patient_id=patient_id_for(spec, relative_path, row),
            modality=modality,
        )
