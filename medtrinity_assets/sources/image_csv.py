"""Image folders described by a label table, one row per image (ISIC, HAM10000, ChestX-ray14,
covid-chestxray-dataset).

A row's image is found by ``path_template`` (any column in braces) or, where the publisher
splits the images over several folders (HAM10000_images_part_1/_part_2, ChestX-ray14's
images_001..012), by its id among the file stems or names of ``path_index_glob``. Only the columns the spec names are read: id, path fields,
labels, modality and the patient column (hashed). Free-text columns the spec declares
(``text_columns``: clinical notes, reports) pass through the free-text de-identification pass
into ``source_text``; the values of ``identifying_columns`` and the patient id are scrubbed from
that text and never stored. ``metadata_columns`` fill ``view``, ``sex`` and ``age_band``
(sources/publisher_text.py); undeclared columns are never read.

What cannot be used is quarantined, one entry per row or file, so the table and the folder can
be reconciled from the quarantine alone: a row naming an absent image ("metadata row names an
absent image"), an id matching several files, an unmapped modality, a row with bytes invalid in the spec's ``encoding``, and
(unless ``unlisted_images: ignore``) every image file no row names ("image has no metadata row").
"""

from __future__ import annotations

import ast
import csv
from collections import defaultdict
from dataclasses import dataclass
from pathlib import PurePosixPath

from medtrinity_assets.catalog.spec import ImageCsvLayout, SourceSpec
from medtrinity_assets.sources.base import IngestContext, IngestStream, Quarantined, contained_path
from medtrinity_assets.sources.publisher_text import row_known_identifiers, row_metadata, row_source_text
from medtrinity_assets.sources.image_common import (
    UndecodableText,
    decode_image,
    image_record,
    iter_image_files,
    patient_id_for,
    read_csv_rows,
    rename_label,
    says_normal,
    template_fields,
    template_glob,
    undecodable_reason,
)
from medtrinity_assets.sources.label_state import decide_label_state

ABSENT_IMAGE = "metadata row names an absent image"
UNLISTED_IMAGE = "image has no metadata row"
# check-source groups quarantine reasons that start with this by column and value.
UNEXPECTED_VALUE = "unexpected label value"


class UnexpectedLabelValue(ValueError):
    """A flag or grade cell whose value the spec does not declare; the row is quarantined."""

    def __init__(self, field: str, column: str, value: str, allowed: list[str]):
        self.field, self.column, self.value = field, column, value
        super().__init__(
            f"{UNEXPECTED_VALUE} {value!r} in column {column!r} ({field}); the spec allows "
            f"{', '.join(repr(v) for v in allowed)} or blank"
        )


@dataclass(frozen=True)
class RowLabels:
    labels: list[str]
    label_state: str
    grades: list[str]


def list_literal(cell: str) -> list[str]:
    """The strings of a Python-style list cell (PadChest "['pleural effusion', 'cardiomegaly']").

    Parsed as a literal, never evaluated as code; raises ValueError when the cell is not a list
    of strings (the row is then quarantined with the cell named).
    """
    text = cell.strip()
    if not text:
        return []
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError) as error:
        raise ValueError(f"label cell {text[:60]!r} is not a list literal") from error
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"label cell {text[:60]!r} is not a list of strings")
    return [v.strip() for v in value]


def _flag(layout: ImageCsvLayout, field: str, column: str, cell: str | None) -> str:
    """One 0/1 cell as "positive", "negative", "uncertain" or "blank"."""
    value = (cell or "").strip()
    if not value:
        return "blank"
    rule = layout.flag_values
    state = rule.state_of(value.lower())
    if state is not None:
        return state
    raise UnexpectedLabelValue(field, column, value, [*rule.positive, *rule.negative, *rule.uncertain])


def _grade_value(value: str) -> str:
    # Grades written as floats by some exports ("2.0") are the integer grade.
    return value[:-2] if value.endswith(".0") and value[:-2].lstrip("-").isdigit() else value


def row_labels(spec: SourceSpec, layout: ImageCsvLayout, row: dict[str, str]) -> RowLabels:
    """Labels, label state and grades of one table row, by the spec's label declarations.

    Raises ValueError (UnexpectedLabelValue for an undeclared flag or grade value) when the row
    cannot be read; the caller quarantines the row.
    """
    labels: list[str] = []
    says_normal_any = False
    flags: list[str] = []
    for i, column in enumerate(layout.label_columns):
        flag = _flag(layout, f"layout.label_columns[{i}]", column, row.get(column))
        flags.append(flag)
        counts = flag == "positive" or (flag == "uncertain" and layout.flag_values.uncertain_means == "finding")
        if counts:
            name = rename_label(spec, column)
            if name:
                labels.append(name)
    for i, column in enumerate(layout.normal_columns):
        if _flag(layout, f"layout.normal_columns[{i}]", column, row.get(column)) == "positive":
            says_normal_any = True
    grades: list[str] = []
    for i, grade in enumerate(layout.grade_columns):
        value = _grade_value((row.get(grade.column) or "").strip())
        if not value:
            continue
        if value not in grade.values:
            raise UnexpectedLabelValue(f"layout.grade_columns[{i}]", grade.column, value, grade.values)
        grades.append(f"{grade.column}={value}")
        if value in grade.normal:
            says_normal_any = True
        elif grade.findings.get(value, "").strip():
            labels.append(grade.findings[value].strip().lower())
    if layout.label_column:
        raw = row.get(layout.label_column) or ""
        if layout.label_list_literal:
            values = list_literal(raw)
        else:
            values = raw.split(layout.label_separator) if layout.label_separator else [raw]
        for value in values:
            says_normal_any = says_normal_any or says_normal(spec, value)
            name = rename_label(spec, value)
            if name:
                labels.append(name)
    rule = layout.all_negative
    if not labels and rule is not None and flags and all(flag == "negative" for flag in flags):
        if rule.state == "finding":
            labels.append(rule.label.strip().lower())
        else:
            says_normal_any = True
    state = decide_label_state(bool(labels), says_normal_any)
    return RowLabels(labels=labels, label_state=state, grades=grades)


def missing_label_fields(layout: ImageCsvLayout, header: list[str]) -> list[str]:
    """"<spec field> names column '<column>'" for every declared label column the header lacks."""
    present = set(header)
    return [f"{field} names column {column!r}" for field, column in layout.label_fields() if column not in present]


def files_by_id(root, pattern: str) -> dict[str, list[str]]:
    """Image files of a glob under the ids a table may name them by: the file stem (HAM10000
    "ISIC_0024306") and the file name (ChestX-ray14 "00000001_000.png")."""
    index: dict[str, list[str]] = defaultdict(list)
    for relative_path in iter_image_files(root, pattern):
        path = PurePosixPath(relative_path)
        for key in dict.fromkeys([path.stem, path.name]):
            index[key].append(relative_path)
    return index


def read(ctx: IngestContext) -> IngestStream:
    spec = ctx.spec
    layout: ImageCsvLayout = spec.layout
    csv_path = ctx.root / layout.csv
    if not csv_path.is_file():
        yield Quarantined(layout.csv, "label CSV is absent", kind="not_found")
        return
    try:
        header, rows, undecodable = read_csv_rows(csv_path, spec.encoding, layout.delimiter)
    except UndecodableText as error:
        yield Quarantined(layout.csv, undecodable_reason(layout.csv, error.line, spec.encoding, "header row"), kind="bad_label")
        return
    except (OSError, csv.Error, LookupError) as error:
        yield Quarantined(layout.csv, f"unreadable CSV: {error}", kind="unreadable")
        return
    for line_number in undecodable:
        yield Quarantined(f"{layout.csv}:{line_number}", undecodable_reason(layout.csv, line_number, spec.encoding), kind="bad_label")

    template = layout.path_template
    path_fields = [name for name in template_fields(template) if name != "id"] if template else []
    needed = [layout.id_column, *path_fields]
    needed += [c for c in (layout.modality_column,) if c]
    needed += layout.declared_text_and_metadata_columns()
    missing = [column for column in needed if column not in header]
    missing_labels = missing_label_fields(layout, header)
    if missing or missing_labels:
        # Read without a declared label column, every row's label state would be a guess.
        what = [f"column(s) {', '.join(missing)}"] if missing else []
        what += [f"label column(s) the spec declares: {'; '.join(missing_labels)}"] if missing_labels else []
        # The header itself is not echoed: it is the file's first line, whatever the file is.
        yield Quarantined(layout.csv, f"CSV {layout.csv} lacks {' and '.join(what)}", kind="invalid_annotation")
        return

    index = files_by_id(ctx.root, layout.path_index_glob) if layout.path_index_glob else None
    named: set[str] = set()  # image paths some row names, usable or not
    line_of_path: dict[str, int] = {}
    for line_number, row in rows:
        row_ref = f"{layout.csv}:{line_number}"
        image_id = (row.get(layout.id_column) or "").strip()
        if not image_id:
            yield Quarantined(row_ref, f"empty {layout.id_column!r} field", kind="invalid_annotation")
            continue

        if index is not None:
            matches = index.get(image_id, [])
            named.update(matches)
            if not matches:
                yield Quarantined(
                    row_ref,
                    f"{ABSENT_IMAGE}: id {image_id!r} matches no file of "
                    f"path_index_glob {layout.path_index_glob!r}",
                    kind="orphan",
                )
                continue
            if len(matches) > 1:
                yield Quarantined(
                    row_ref,
                    f"image id {image_id!r} is ambiguous: {len(matches)} files of path_index_glob have that name "
                    f"({', '.join(matches)})",
                    kind="invalid_annotation",
                )
                continue
            relative_path = matches[0]
        else:
            try:
                relative_path = contained_path(template.format(id=image_id, **{f: (row.get(f) or "").strip() for f in path_fields}))
            except (KeyError, IndexError, ValueError) as error:
                yield Quarantined(row_ref, f"path_template {template!r} cannot be filled: {error}", kind="invalid_annotation")
                continue
            if relative_path is None:
                yield Quarantined(row_ref, f"image path from column {layout.id_column!r} points outside the source folder", kind="outside_source")
                continue
            named.add(relative_path)

        modality = None
        if layout.modality_column:
            raw_modality = (row.get(layout.modality_column) or "").strip()
            modality = layout.modality_map.get(raw_modality)
            if modality is None:
                yield Quarantined(
                    relative_path, f"modality {raw_modality!r} (column {layout.modality_column}) is not in modality_map", kind="bad_label"
                )
                continue

        if not (ctx.root / relative_path).is_file():
            # No line number: one reason per table lets the quarantine group thousands of
            # such rows (a partial download) under one entry; source_file names the image.
            yield Quarantined(relative_path, f"{ABSENT_IMAGE}: listed in {layout.csv} but file is absent", kind="orphan")
            continue
        if relative_path in line_of_path:
            # The record id comes from the path: a second row would make a second record with
            # the same id, and which row's labels are right cannot be known.
            yield Quarantined(
                row_ref, f"image {relative_path} is listed again (first at line {line_of_path[relative_path]}); row ignored", kind="duplicate"
            )
            continue
        line_of_path[relative_path] = line_number
        if not ctx.owns(relative_path):
            continue  # another shard's image (the whole table is read: duplicates span shards)
        decoded = decode_image(ctx, relative_path)
        if isinstance(decoded, Quarantined):
            yield decoded
            continue
        try:
            reading = row_labels(spec, layout, row)
        except ValueError as error:
            yield Quarantined(row_ref, str(error), kind="bad_label")
            continue
        pixels, photometric = decoded
        patient_column = spec.patient.column if spec.patient.source == "column" else None
        metadata = row_metadata(layout.metadata_columns, row)
        record = image_record(
            ctx,
            relative_path,
            pixels,
            photometric,
            labels=reading.labels,
            annotations=[],
            patient_id=patient_id_for(spec, relative_path, row),
            modality=modality,
            label_state=reading.label_state,
            grades=reading.grades,
            source_text=row_source_text(layout, row, row_known_identifiers(layout, row, patient_column)),
            # A declared frontal view gives the radiograph its patient sides (imaging.geometry).
            view=metadata.get("view"),
        )
        yield {**record, **metadata, "view": metadata.get("view") or record.get("view")}

    if layout.unlisted_images == "quarantine":
        if index is not None:
            on_disk = sorted({path for paths in index.values() for path in paths})
        else:
            on_disk = iter_image_files(ctx.root, template_glob(template))
        for relative_path in on_disk:
            if relative_path not in named:
                yield Quarantined(relative_path, f"{UNLISTED_IMAGE} in {layout.csv}", kind="unpaired")
