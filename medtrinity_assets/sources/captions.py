"""Image-caption and visual-question-answer sets (ROCO, MedICaT, VQA-RAD, SLAKE, PathVQA).

The annotation file is JSON (a list, or a list under ``records_key``), JSON Lines, or a
delimited text file (with a header row, or header-less with ``columns``: ROCO's
"ROCO_00002<TAB>caption"). Every row names one image; the rows of one image (VQA sets ask many
questions about one image) become ONE record whose ``source_text`` holds the publisher's text in
file order: {"captions": [...], "qa": [{"question", "answer"}]}. That text sits beside the
description the pipeline writes; it is never pasted into it. Every caption, question and answer
passes through the free-text de-identification pass first (imaging/deid_text.py): publisher
captions quote case reports that name patients, hospitals and dates.

Rows in a language the spec does not keep (SLAKE's "zh" rows) are skipped by design. Rows that
cannot be used are quarantined with their position in the file: no image value, no text, a
modality the map does not know. An image that rows name but that is not on disk is quarantined
once, with the number of rows naming it.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from typing import Iterator

from medtrinity_assets.catalog.spec import CaptionsLayout
from medtrinity_assets.imaging.deid_text import deidentify_text
from medtrinity_assets.sources.base import IngestContext, IngestStream, Quarantined, contained_path
from medtrinity_assets.sources.image_common import (
    UNDECODABLE,
    UndecodableText,
    decode_image,
    decode_publisher_text,
    image_record,
    path_labels,
    patient_id_for,
    read_csv_rows,
    undecodable_reason,
)

ABSENT_IMAGE = "annotation rows name an absent image"


@dataclass
class ImageText:
    """The publisher's text gathered for one image, in file order."""

    first_ref: str
    first_row: dict
    captions: list[str] = field(default_factory=list)
    qa: list[dict] = field(default_factory=list)
    modalities: dict[str, str] = field(default_factory=dict)  # catalog modality -> first row ref
    organs: dict[str, None] = field(default_factory=dict)  # ordered set of mapped organs
    rows: int = 0

    def source_text(self) -> dict:
        return {"captions": self.captions, "qa": self.qa}


def as_text(value) -> str:
    """A field's value as text: VQA answers may be numbers or lists in the publisher's JSON."""
    if value is None:
        return ""
    if isinstance(value, list):
        return ", ".join(as_text(v) for v in value if as_text(v))
    return str(value).strip()


def iter_rows(ctx: IngestContext, layout: CaptionsLayout) -> Iterator[tuple[str, object] | Quarantined]:
    """(row reference, row) for each row of the annotation file, or a Quarantined for the file."""
    path = ctx.root / layout.annotations
    if not path.is_file():
        yield Quarantined(layout.annotations, "annotation file is absent", kind="not_found")
        return
    encoding = ctx.spec.encoding
    if layout.format == "csv":
        try:
            _, rows, undecodable = read_csv_rows(path, encoding, layout.delimiter, layout.columns or None)
        except UndecodableText as error:
            reason = undecodable_reason(layout.annotations, error.line, encoding, "header row")
            yield Quarantined(layout.annotations, reason, kind="bad_label")
            return
        except (OSError, csv.Error, LookupError) as error:
            yield Quarantined(layout.annotations, f"unreadable annotation table: {error}", kind="unreadable")
            return
        for line_number in undecodable:
            reason = undecodable_reason(layout.annotations, line_number, encoding)
            yield Quarantined(f"{layout.annotations}:{line_number}", reason, kind="bad_label")
        for line_number, row in rows:
            yield f"{layout.annotations}:{line_number}", row
        return
    try:
        text = decode_publisher_text(path.read_bytes(), encoding)
    except (OSError, LookupError) as error:
        yield Quarantined(layout.annotations, f"unreadable annotation file: {error}", kind="unreadable")
        return
    if layout.format == "jsonl":
        for line_number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            if UNDECODABLE.search(line):
                reason = undecodable_reason(layout.annotations, line_number, encoding)
                yield Quarantined(f"{layout.annotations}:{line_number}", reason, kind="bad_label")
                continue
            try:
                yield f"{layout.annotations}:{line_number}", json.loads(line)
            except json.JSONDecodeError as error:
                yield Quarantined(f"{layout.annotations}:{line_number}", f"line is not valid JSON: {error}", kind="unreadable")
        return
    bad = UNDECODABLE.search(text)
    if bad:
        # One JSON document: its rows have no lines of their own to quarantine one by one.
        line = text.count("\n", 0, bad.start()) + 1
        yield Quarantined(layout.annotations, undecodable_reason(layout.annotations, line, encoding, "the file"), kind="bad_label")
        return
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        yield Quarantined(layout.annotations, f"annotation file is not valid JSON: {error}", kind="unreadable")
        return
    if layout.records_key:
        if not isinstance(data, dict) or layout.records_key not in data:
            yield Quarantined(layout.annotations, f"annotation file has no top-level key {layout.records_key!r}", kind="invalid_annotation")
            return
        data = data[layout.records_key]
    if not isinstance(data, list):
        where = f"under {layout.records_key!r}" if layout.records_key else "at the top level"
        yield Quarantined(layout.annotations, f"expected a list of rows {where}, found {type(data).__name__}", kind="invalid_annotation")
        return
    for index, row in enumerate(data):
        yield f"{layout.annotations}[{index}]", row


def read(ctx: IngestContext) -> IngestStream:
    spec = ctx.spec
    layout: CaptionsLayout = spec.layout
    kept_languages = set(layout.languages)
    by_image: dict[str, ImageText] = {}  # insertion order = order of first mention in the file
    for item in iter_rows(ctx, layout):
        if isinstance(item, Quarantined):
            yield item
            continue
        row_ref, row = item
        if not isinstance(row, dict):
            yield Quarantined(row_ref, f"row is not an object but {type(row).__name__}", kind="invalid_annotation")
            continue
        if layout.language_field and kept_languages and as_text(row.get(layout.language_field)) not in kept_languages:
            continue
        image_value = as_text(row.get(layout.image_field))
        if not image_value:
            yield Quarantined(row_ref, f"row has no image ({layout.image_field!r} is empty or missing)", kind="invalid_annotation")
            continue
        relative_path = contained_path(layout.image_template.format(value=image_value))
        if relative_path is None:
            yield Quarantined(row_ref, f"image path from field {layout.image_field!r} points outside the source folder", kind="outside_source")
            continue

        caption = as_text(row.get(layout.caption_field)) if layout.caption_field else ""
        question = as_text(row.get(layout.question_field)) if layout.question_field else ""
        answer = as_text(row.get(layout.answer_field)) if layout.answer_field else ""
        has_qa = bool(question and answer)
        if not caption and not has_qa:
            yield Quarantined(row_ref, f"row about {relative_path} has no caption and no question with answer", kind="invalid_annotation")
            continue

        modality = None
        if layout.modality_field:
            raw_modality = as_text(row.get(layout.modality_field))
            modality = layout.modality_map.get(raw_modality)
            if modality is None:
                yield Quarantined(
                    row_ref, f"modality {raw_modality!r} (field {layout.modality_field}) is not in modality_map", kind="bad_label"
                )
                continue

        gathered = by_image.setdefault(relative_path, ImageText(first_ref=row_ref, first_row=row))
        gathered.rows += 1
        if caption:
            gathered.captions.append(deidentify_text(caption))
        if has_qa:
            gathered.qa.append({"question": deidentify_text(question), "answer": deidentify_text(answer)})
        if modality:
            gathered.modalities.setdefault(modality, row_ref)
        if layout.organ_field:
            for organ in layout.organ_map.get(as_text(row.get(layout.organ_field)), []):
                gathered.organs.setdefault(organ.strip().lower(), None)

    for relative_path, gathered in by_image.items():
        if not ctx.owns(relative_path):
            continue  # another shard's image: its rows follow it there
        if len(gathered.modalities) > 1:
            disagreement = ", ".join(f"{m} ({ref})" for m, ref in gathered.modalities.items())
            yield Quarantined(relative_path, f"rows of this image disagree on modality: {disagreement}", kind="invalid_annotation")
            continue
        absent = f"{ABSENT_IMAGE}: {gathered.rows} row(s) of {layout.annotations}, first {gathered.first_ref}"
        decoded = decode_image(ctx, relative_path, absent)
        if isinstance(decoded, Quarantined):
            yield decoded
            continue
        pixels, photometric = decoded
        # The patient rule reads text fields; JSON rows may hold numbers.
        row_as_text = {key: as_text(value) for key, value in gathered.first_row.items()}
        yield image_record(
            ctx,
            relative_path,
            pixels,
            photometric,
            labels=path_labels(spec, relative_path),
            annotations=[],
            patient_id=patient_id_for(spec, relative_path, row_as_text),
            modality=next(iter(gathered.modalities), None),
            source_text=gathered.source_text(),
            organs=list(gathered.organs) or None,
        )
