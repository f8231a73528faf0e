"""Parsers of the box annotation formats: COCO JSON, YOLO text, Pascal VOC XML, CSV rows, circles.

Each parser turns the publisher's file(s) into a ``BoxTable``: for each image path (relative to
the source root) the boxes the file gives, in file order, plus the problems met while parsing
(each a ``Quarantined`` naming the annotation file, and the line where there is one). Boxes stay
in the file's own frame (fractions when normalized, y counted from the bottom for MIAS) until
``resolve_boxes`` meets the decoded image: only then are the width and height known that turn
them into pixel boxes [x0, y0, x1, y1] (x1, y1 exclusive), clamped to the image.

Circles (MIAS) become their bounding box [cx-r, cy-r, cx+r+1, cy+r+1] and keep the circle as a
``circle`` field [cx, cy, r] in top-left pixel coordinates, so grounding can draw the disc
rather than the square; no mask is stored here.
"""

from __future__ import annotations

import csv
import io
import json
import math
import posixpath
import re
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import yaml
from defusedxml import DefusedXmlException
from defusedxml import ElementTree as SafeElementTree

from medtrinity_assets.bounded_yaml import YamlLimitError, load_yaml_text
from medtrinity_assets.catalog.layouts.boxes import BoxAnnotations, XmlShapes
from medtrinity_assets.catalog.spec import SourceSpec
from medtrinity_assets.containment import inside_file
from medtrinity_assets.sources.base import Quarantined, contained_path
from medtrinity_assets.sources.image_common import (
    UNDECODABLE,
    clamp_box,
    decode_publisher_text,
    rename_label,
    template_fields,
    undecodable_reason,
)

# A delimiter of one space means "runs of whitespace" (MIAS Info.txt aligns with several spaces).
WHITESPACE_DELIMITERS = {" "}


@dataclass(frozen=True)
class ParsedBox:
    """One object as its annotation file gives it, before the image size is known."""

    label: str  # the raw label, as the file writes it (renamed by the spec later)
    where: str  # where it was read, for messages: "labels/a.txt:3", "ann.json annotation 12"
    box: tuple[float, float, float, float] | None = None  # x0, y0, x1, y1 in the file's frame
    circle: tuple[float, float, float] | None = None  # cx, cy, r in pixels, file's frame
    normalized: bool = False  # coordinates are fractions of the image width / height
    y_from_bottom: bool = False  # y counts up from the image's bottom edge (MIAS)
    polygons: tuple = ()  # COCO polygons ((x, y), ...) in pixels; kept as contours
    fields: dict = field(default_factory=dict, compare=False)  # kept on the annotation: coco_id, difficult
    # Labels of further columns (spec column_labels), already catalog names: they join the
    # image's labels with this object's own.
    extra_labels: tuple = ()

    @property
    def image_level(self) -> bool:
        """A finding the file names without any location: a label of the image, no ROI."""
        return self.box is None and self.circle is None and not self.polygons


@dataclass
class BoxTable:
    """Boxes per image from one annotation source; images in first-appearance order."""

    source: str  # the annotation file, relative to the source root
    boxes: dict[str, list[ParsedBox]] = field(default_factory=dict)
    # Where each image is first named ("metadata.csv line 4"), for "file is absent" messages.
    first_seen: dict[str, str] = field(default_factory=dict)
    # The first table row of each image (csv / circles), for patient-column rules.
    rows: dict[str, dict[str, str]] = field(default_factory=dict)
    # (width, height) the file declares for an image (COCO, VOC <size>).
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)
    problems: list[Quarantined] = field(default_factory=list)

    def note_image(self, image: str, where: str, row: dict[str, str] | None = None) -> None:
        if image not in self.boxes:
            self.boxes[image] = []
            self.first_seen[image] = where
            if row is not None:
                self.rows[image] = row

    def add(self, image: str, parsed: ParsedBox, row: dict[str, str] | None = None) -> None:
        self.note_image(image, parsed.where, row)
        self.boxes[image].append(parsed)

    def problem(self, where: str, reason: str, kind: str) -> None:
        self.problems.append(Quarantined(where, reason, kind=kind))


def _number(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


# --------------------------------------------------------------------------- COCO


def polygon_points(segmentation) -> list[list[list[float]]]:
    """Polygons of a COCO segmentation as [[x, y], ...] lists; RLE (crowd) masks give none."""
    if not isinstance(segmentation, list):
        return []
    polygons = []
    for flat in segmentation:
        if isinstance(flat, list) and len(flat) >= 6 and len(flat) % 2 == 0:
            polygons.append([[float(flat[i]), float(flat[i + 1])] for i in range(0, len(flat), 2)])
    return polygons


def parse_coco(root: Path, json_file: str, image_root: str = ".") -> BoxTable:
    """Every image the JSON lists (with or without objects) and its objects' boxes/polygons.

    COCO boxes are [x, y, width, height] in pixels. A JSON that cannot be read leaves the table
    empty with one problem; a bad object is a problem and the rest of the file is kept.
    """
    table = BoxTable(json_file)
    try:
        coco = json.loads((root / json_file).read_text(encoding="utf-8"))
        images = list(coco["images"])
        objects = list(coco.get("annotations") or [])
        categories = {c["id"]: c["name"] for c in coco.get("categories") or []}
    except FileNotFoundError:
        table.problem(json_file, "COCO annotation file is absent", kind="not_found")
        return table
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as error:
        table.problem(json_file, f"not a COCO annotation file: {type(error).__name__}: {error}", kind="unreadable")
        return table

    path_of_id: dict[object, str] = {}
    for image in images:
        file_name = str(image.get("file_name") or "") if isinstance(image, dict) else ""
        if not file_name:
            table.problem(json_file, "an image entry has no file_name", kind="invalid_annotation")
            continue
        relative_path = contained_path(image_root, file_name)
        if relative_path is None:
            table.problem(json_file, "an image file_name points outside the source folder", kind="outside_source")
            continue
        try:
            path_of_id[image.get("id")] = relative_path
        except TypeError:  # an id that is a list or object cannot name an image
            table.problem(json_file, f"image entry for {relative_path} has an unusable id {image.get('id')!r:.40}", kind="invalid_annotation")
            continue
        table.note_image(relative_path, f"{json_file} image id {image.get('id')}")
        width, height = image.get("width"), image.get("height")
        if isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0:
            table.sizes[relative_path] = (width, height)

    for obj in objects:
        if not isinstance(obj, dict):
            table.problem(json_file, "an annotation entry is not an object", kind="invalid_annotation")
            continue
        try:
            _add_coco_object(table, json_file, obj, path_of_id, categories)
        except (TypeError, ValueError) as error:  # e.g. null coordinates, unhashable ids
            table.problem(json_file, f"annotation {obj.get('id')!r:.40} is malformed: {type(error).__name__}: {error}", kind="invalid_annotation")
    return table


def _add_coco_object(table: BoxTable, json_file: str, obj: dict, path_of_id: dict, categories: dict) -> None:
    """One COCO object into the table, or one problem saying why it cannot be used."""
    where = f"{json_file} annotation {obj.get('id')}"
    image_path = path_of_id.get(obj.get("image_id"))
    if image_path is None:
        table.problem(json_file, f"annotation {obj.get('id')} names image id {obj.get('image_id')} that is not listed", kind="orphan")
        return
    name = categories.get(obj.get("category_id"))
    if name is None:
        table.problem(json_file, f"annotation {obj.get('id')} of {image_path} has unknown category id {obj.get('category_id')}", kind="bad_label")
        return
    polygons = tuple(tuple(tuple(p) for p in poly) for poly in polygon_points(obj.get("segmentation")))
    bbox = obj.get("bbox")
    box = None
    if isinstance(bbox, (list, tuple)) and len(bbox) == 4 and all(_number(v) is not None for v in bbox):
        x, y, w, h = (float(v) for v in bbox)
        box = (x, y, x + w, y + h)
    if box is None and not polygons:
        table.problem(json_file, f"annotation {obj.get('id')} of {image_path} has neither a bbox [x, y, w, h] nor a polygon", kind="invalid_annotation")
        return
    table.add(image_path, ParsedBox(str(name), where, box=box, polygons=polygons, fields={"coco_id": obj.get("id")}))


# --------------------------------------------------------------------------- YOLO / VOC


def annotation_file_for(template: str, image_path: str) -> str:
    """The annotation file of an image from a template with {stem}, {name}, {parent}."""
    image = PurePosixPath(image_path)
    parent = image.parent.as_posix()
    filled = template.format(stem=image.stem, name=image.name, parent="" if parent == "." else parent)
    return posixpath.normpath(filled.lstrip("/"))


def load_class_names(root: Path, settings: BoxAnnotations, encoding: str) -> dict[int, str] | Quarantined:
    """YOLO class index -> name, from ``class_names`` or ``class_names_file``.

    The file is either plain text, one name per line (classes.txt, obj.names), or an
    Ultralytics data.yaml whose ``names`` is a list or an {index: name} mapping, in the spec's
    ``encoding``; a name that cannot be decoded in it makes the file unusable (every box's
    label would shift or be wrong).
    """
    if settings.class_names:
        return dict(enumerate(settings.class_names))
    name_file = settings.class_names_file or ""
    path = root / name_file
    try:
        text = decode_publisher_text(path.read_bytes(), encoding)
    except FileNotFoundError:
        return Quarantined(name_file, "YOLO class names file is absent", kind="not_found")
    except (OSError, LookupError) as error:
        return Quarantined(name_file, f"unreadable YOLO class names file: {error}", kind="unreadable")
    bad = UNDECODABLE.search(text)
    if bad:
        line = text.count("\n", 0, bad.start()) + 1
        return Quarantined(name_file, undecodable_reason(name_file, line, encoding, "class name"), kind="bad_label")
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            names = (load_yaml_text(text, name_file) or {}).get("names")
        except YamlLimitError as error:
            return Quarantined(name_file, f"not a YOLO data.yaml: {error}", kind="too_large")
        except (yaml.YAMLError, AttributeError) as error:
            # Where, not what: a YAML error message quotes the offending lines of the file.
            mark = getattr(error, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            return Quarantined(name_file, f"not a YOLO data.yaml: {type(error).__name__}{where}", kind="unreadable")
        if isinstance(names, list):
            return {index: str(name) for index, name in enumerate(names)}
        if isinstance(names, dict) and all(isinstance(k, int) for k in names):
            return {int(k): str(v) for k, v in names.items()}
        return Quarantined(name_file, "data.yaml has no 'names' list or {index: name} mapping", kind="invalid_annotation")
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        return Quarantined(name_file, "YOLO class names file is empty", kind="invalid_annotation")
    return dict(enumerate(names))


def parse_yolo(root: Path, image_paths: list[str], template: str, class_names: dict[int, str]) -> BoxTable:
    """YOLO text boxes, one "class cx cy w h" line per object, normalized to the image size.

    An image without a label file, or with an empty one, has no object (YOLO's background
    images); each malformed line or class index out of range is a problem of its own.
    """
    table = BoxTable(template)
    for image_path in image_paths:
        label_file = annotation_file_for(template, image_path)
        table.note_image(image_path, image_path)
        if inside_file(root, label_file) is None:
            table.problem(label_file, f"YOLO label file of {image_path} leads outside the source folder; not read", kind="outside_source")
            continue
        try:
            text = (root / label_file).read_text(encoding="utf-8")
        except FileNotFoundError:
            continue
        except (OSError, UnicodeDecodeError) as error:
            table.problem(label_file, f"unreadable YOLO label file of {image_path}: {error}", kind="unreadable")
            continue
        for line_number, line in enumerate(text.splitlines(), start=1):
            fields = line.split()
            if not fields:
                continue
            where = f"{label_file}:{line_number}"
            numbers = [_number(value) for value in fields[1:]]
            if len(fields) != 5 or None in numbers or not fields[0].isdigit():
                table.problem(where, "malformed YOLO line (expected 'class cx cy w h')", kind="invalid_annotation")
                continue
            class_index = int(fields[0])
            if class_index not in class_names:
                table.problem(where, f"class index {class_index} is out of range ({len(class_names)} class names)", kind="bad_label")
                continue
            cx, cy, w, h = numbers
            box = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
            table.add(image_path, ParsedBox(class_names[class_index], where, box=box, normalized=True))
    return table


def _read_xml(root: Path, xml_file: str, table: BoxTable, what: str):
    """The document root, or None with a problem. defusedxml refuses entity declarations and
    external references: an annotation file must not expand into gigabytes or read other files."""
    try:
        return SafeElementTree.parse(root / xml_file).getroot()
    except FileNotFoundError:
        table.problems.append(Quarantined(xml_file, f"{what} is absent", kind="not_found"))
    except DefusedXmlException as error:
        table.problems.append(Quarantined(xml_file, f"{what} declares entities or external references ({type(error).__name__}): refused", kind="unsupported"))
    except (SafeElementTree.ParseError, OSError) as error:
        table.problems.append(Quarantined(xml_file, f"malformed {what}: {type(error).__name__}: {error}", kind="unreadable"))
    return None


def _image_xml(root: Path, template: str, image_path: str, table: BoxTable, what: str):
    """The parsed per-image XML of ``image_path`` (found by ``template``); None when the image has
    none (no annotation), or with a problem when it leads outside the source or cannot be parsed."""
    xml_file = annotation_file_for(template, image_path)
    table.note_image(image_path, image_path)
    if not (root / xml_file).is_file():
        return xml_file, None
    if inside_file(root, xml_file) is None:
        table.problem(xml_file, f"{what} of {image_path} leads outside the source folder; not read", kind="outside_source")
        return xml_file, None
    return xml_file, _read_xml(root, xml_file, table, f"{what} of {image_path}")


def parse_voc(root: Path, image_paths: list[str], template: str) -> BoxTable:
    """Pascal VOC XML: <object><name>, <bndbox> xmin ymin xmax ymax, <difficult>.

    VOC pixel indices are 1-based and xmax/ymax inclusive (the devkit's convention), so the box
    in 0-based, end-exclusive pixels is [xmin - 1, ymin - 1, xmax, ymax].
    """
    table = BoxTable(template)
    for image_path in image_paths:
        xml_file, document = _image_xml(root, template, image_path, table, "VOC XML")
        if document is None:
            continue
        width, height = _number(document.findtext("size/width")), _number(document.findtext("size/height"))
        if width and height and width > 0 and height > 0:
            table.sizes[image_path] = (int(width), int(height))
        for index, obj in enumerate(document.iter("object"), start=1):
            where = f"{xml_file} object {index}"
            name = (obj.findtext("name") or "").strip()
            corners = [_number(obj.findtext(f"bndbox/{tag}")) for tag in ("xmin", "ymin", "xmax", "ymax")]
            if not name or None in corners:
                table.problem(where, "VOC object lacks <name> or a numeric <bndbox> xmin ymin xmax ymax", kind="invalid_annotation")
                continue
            xmin, ymin, xmax, ymax = corners
            fields = {}
            difficult = (obj.findtext("difficult") or "").strip()
            if difficult:
                fields["difficult"] = difficult in ("1", "true")
            table.add(image_path, ParsedBox(name, where, box=(xmin - 1, ymin - 1, xmax, ymax), fields=fields))
    return table


# --------------------------------------------------------------------------- tables (CSV, circles)


def _read_table(root: Path, settings: BoxAnnotations, table: BoxTable, encoding: str) -> list[tuple[int, dict[str, str]]]:
    """(line number, row) pairs of the box table; [] with a problem when it cannot be read.

    Not image_common.read_csv_rows: box tables may be whitespace-aligned (MIAS), and a row with
    more fields than columns is reported here, never merged into its last field as a caption is.
    A row with bytes invalid in ``encoding`` is reported (bad_label), an undecodable header
    makes the table unusable.
    """
    path = root / (settings.file or "")
    try:
        text = decode_publisher_text(path.read_bytes(), encoding)
    except FileNotFoundError:
        table.problem(table.source, "box table is absent", kind="not_found")
        return []
    except (OSError, LookupError) as error:
        table.problem(table.source, f"unreadable box table: {error}", kind="unreadable")
        return []
    if settings.preamble_until or settings.row_regex:
        lines = _table_lines(settings, text, table)
    elif settings.delimiter in WHITESPACE_DELIMITERS:
        lines = [(number, line.split()) for number, line in enumerate(text.splitlines(), start=1)]
    else:
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=settings.delimiter)
        lines = []
        try:
            for fields in reader:
                lines.append((reader.line_num, fields))
        except csv.Error as error:
            table.problem(f"{table.source}:{reader.line_num}", f"malformed CSV: {error}", kind="unreadable")
    lines = [(number, fields) for number, fields in lines if any(f.strip() for f in fields)]
    if settings.has_header:
        if not lines:
            table.problem(table.source, "box table is empty", kind="invalid_annotation")
            return []
        number, names = lines[0]
        if any(UNDECODABLE.search(name) for name in names):
            table.problem(table.source, undecodable_reason(table.source, number, encoding, "header row"), kind="bad_label")
            return []
        header = [name.strip() for name in names]
        lines = lines[1:]
    else:
        header = list(settings.columns)
    rows = []
    for number, fields in lines:
        if any(UNDECODABLE.search(value) for value in fields):
            table.problem(f"{table.source}:{number}", undecodable_reason(table.source, number, encoding), kind="bad_label")
            continue
        if len(fields) > len(header):
            table.problem(f"{table.source}:{number}", f"row has {len(fields)} fields, the table has {len(header)} columns", kind="invalid_annotation")
            continue
        values = [value.strip() for value in fields] + [""] * (len(header) - len(fields))
        rows.append((number, dict(zip(header, values))))
    needed = [settings.id_column, settings.label_column, *settings.box_columns, *settings.center_columns, settings.radius_column]
    needed += [*settings.column_labels, *settings.column_fields]
    needed += [name for name in template_fields(settings.path_template) if name != "id"]
    missing = [column for column in needed if column and column not in header]
    if missing:
        # The columns present are not listed: a header line is the file's contents.
        table.problem(table.source, f"box table lacks column(s) {', '.join(missing)}", kind="invalid_annotation")
        return []
    return rows


def _split_line(settings: BoxAnnotations, line: str) -> list[str]:
    if settings.delimiter in WHITESPACE_DELIMITERS:
        return line.split()
    return next(csv.reader([line], delimiter=settings.delimiter), [])


def _table_lines(settings: BoxAnnotations, text: str, table: BoxTable) -> list[tuple[int, list[str]]]:
    """(line number, fields) of a table behind a free-text preamble, one line per row.

    Lines before the first match of ``preamble_until`` are skipped; then, with ``row_regex``,
    only matching lines are rows: the column legend and numbered notes of MIAS Info.txt would
    otherwise read as rows of images called "1st" or "CALC".
    """
    numbered = list(enumerate(text.splitlines(), start=1))
    if settings.preamble_until:
        start = re.compile(settings.preamble_until)
        first = next((index for index, (_, line) in enumerate(numbered) if start.search(line)), None)
        if first is None:
            table.problem(table.source, "no line of the box table matches preamble_until: the table was not found", kind="invalid_annotation")
            return []
        numbered = numbered[first:]
    lines = []
    if settings.has_header and numbered:
        number, line = numbered.pop(0)
        lines.append((number, _split_line(settings, line)))
    row = re.compile(settings.row_regex) if settings.row_regex else None
    for number, line in numbered:
        if row is None or row.search(line):
            lines.append((number, _split_line(settings, line)))
    return lines


def _column_values(settings: BoxAnnotations, row: dict[str, str], where: str, table: BoxTable) -> tuple[tuple, dict]:
    """The labels (spec column_labels) and annotation fields (column_fields) of one row; a value
    the mapping does not name is reported, never guessed."""
    labels, fields = [], {}
    for mappings, into in ((settings.column_labels, "labels"), (settings.column_fields, "fields")):
        for column, mapping in mappings.items():
            value = row.get(column, "")
            if value not in mapping:
                reason = f"value in column {column!r} is not in the spec's column_{into} mapping ({', '.join(sorted(mapping))})"
                table.problems.append(Quarantined(where, reason, kind="bad_label"))
                continue
            if into == "labels" and mapping[value]:
                labels.append(mapping[value].strip().lower())
            elif into == "fields" and mapping[value]:
                fields[column] = mapping[value]
    return tuple(labels), fields


def _row_image(settings: BoxAnnotations, row: dict[str, str]) -> str | None:
    image_id = row.get(settings.id_column or "", "")
    if not image_id:
        return None
    try:
        relative = settings.path_template.format(**{**row, "id": image_id})
    except (KeyError, IndexError, ValueError):
        return None
    return contained_path(settings.image_root, relative)


def _row_label(settings: BoxAnnotations, row: dict[str, str]) -> str:
    if settings.label_column:
        return row.get(settings.label_column, "")
    return settings.fixed_label or ""


def _to_xyxy(box_format: str, a: float, b: float, c: float, d: float) -> tuple[float, float, float, float]:
    if box_format == "xywh":
        return (a, b, a + c, b + d)
    if box_format == "cxcywh":
        return (a - c / 2, b - d / 2, a + c / 2, b + d / 2)
    return (a, b, c, d)


def parse_table(root: Path, settings: BoxAnnotations, encoding: str) -> BoxTable:
    """Box rows (format "csv") or circle rows (format "circles"); several rows per image.

    A row whose label is in ``empty_labels`` names an image without finding (RSNA Target 0,
    VinDr "No finding", MIAS NORM): the image is kept, no box is made. Any other row without
    coordinates is reported, and its image is still kept.
    """
    table = BoxTable(settings.file or "")
    circles = settings.format == "circles"
    coordinate_columns = [*settings.center_columns, settings.radius_column] if circles else list(settings.box_columns)
    for line_number, row in _read_table(root, settings, table, encoding):
        where = f"{table.source}:{line_number}"
        image = _row_image(settings, row)
        if image is None:
            table.problem(where, f"row has no image id in column {settings.id_column!r} (or path_template cannot be filled)", kind="invalid_annotation")
            continue
        table.note_image(image, f"{table.source} (line {line_number})", row)
        label = _row_label(settings, row)
        if label in settings.empty_labels:
            continue
        values = [row.get(column or "", "") for column in coordinate_columns]
        numbers = [_number(value) for value in values]
        if not label:
            table.problem(where, f"row for {image} has no label (column {settings.label_column!r}, no fixed_label)", kind="invalid_annotation")
            continue
        extra_labels, fields = _column_values(settings, row, where, table)
        if settings.rows_without_coordinates == "image_label" and all(number is None for number in numbers):
            # The publisher names the finding but not where (MIAS *NOTE 3*): a label, no ROI.
            table.add(image, ParsedBox(label, where, extra_labels=extra_labels), row)
            continue
        if not any(values):
            table.problem(where, f"row for {image} ({label}) gives no coordinates; the image is kept without this box", kind="invalid_annotation")
            continue
        if None in numbers:
            table.problem(where, f"row for {image} has non-numeric coordinates", kind="invalid_annotation")
            continue
        if circles:
            cx, cy, radius = numbers
            parsed = ParsedBox(
                label, where, circle=(cx, cy, radius), y_from_bottom=settings.y_origin == "bottom",
                fields=fields, extra_labels=extra_labels,
            )
        else:
            parsed = ParsedBox(
                label,
                where,
                box=_to_xyxy(settings.box_format, *numbers),
                normalized=settings.normalized,
                y_from_bottom=settings.y_origin == "bottom",
                fields=fields,
                extra_labels=extra_labels,
            )
        table.add(image, parsed, row)
    return table


def parse_keyed_json(root: Path, settings: BoxAnnotations) -> BoxTable:
    """A JSON object keyed by image id whose values list boxes under ``boxes_key`` (Kvasir-SEG).

    Each box is an object with the four ``box_columns`` keys (read by ``box_format``) and the
    label under ``label_column``; an entry's ``width`` / ``height``, when given, are the frame
    of its boxes and are checked against the decoded image like COCO's.
    """
    json_file = settings.file or ""
    table = BoxTable(json_file)
    try:
        document = json.loads((root / json_file).read_text(encoding="utf-8"))
    except FileNotFoundError:
        table.problem(json_file, "box annotation file is absent", kind="not_found")
        return table
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        table.problem(json_file, f"not a JSON box file: {type(error).__name__}: {error}", kind="unreadable")
        return table
    if not isinstance(document, dict):
        table.problem(json_file, f"expected a JSON object keyed by image id, got {type(document).__name__}", kind="invalid_annotation")
        return table
    for image_id, entry in document.items():
        where = f"{json_file} id {image_id}"
        try:
            image = contained_path(settings.image_root, settings.path_template.format(id=image_id))
        except (KeyError, IndexError, ValueError):  # a template naming fields a JSON key cannot fill
            image = None
        if image is None or not isinstance(entry, dict):
            table.problem(where, "entry is not an object, or its id gives no image path inside the source", kind="invalid_annotation")
            continue
        table.note_image(image, where)
        width, height = entry.get("width"), entry.get("height")
        if isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0:
            table.sizes[image] = (width, height)
        boxes = entry.get(settings.boxes_key)
        if not isinstance(boxes, list):
            table.problem(where, f"entry has no list under {settings.boxes_key!r}", kind="invalid_annotation")
            continue
        for index, box in enumerate(boxes):
            box_where = f"{where} box {index}"
            numbers = [_number(box.get(key)) if isinstance(box, dict) else None for key in settings.box_columns]
            if None in numbers:
                table.problem(box_where, f"box lacks numeric {', '.join(settings.box_columns)}", kind="invalid_annotation")
                continue
            label = str(box.get(settings.label_column) or "") if settings.label_column else settings.fixed_label or ""
            if not label:
                table.problem(box_where, f"box has no label under {settings.label_column!r}", kind="invalid_annotation")
                continue
            parsed = ParsedBox(label, box_where, box=_to_xyxy(settings.box_format, *numbers), normalized=settings.normalized)
            table.add(image, parsed)
    return table


# --------------------------------------------------------------------------- XML polygons


def _xml_shapes(table: BoxTable, shapes: XmlShapes, fixed_label: str | None, scope, image: str, where: str) -> None:
    """The polygons under ``scope`` (the document or one image element) into ``table``."""
    for index, shape in enumerate(scope.findall(shapes.shape_path), start=1):
        shape_where = f"{where} shape {index}"
        label = (shape.get(shapes.label_attribute) or "").strip() if shapes.label_attribute else fixed_label or ""
        points = shape.findall(shapes.point_path)
        if shapes.order_attribute:
            orders = [_number(point.get(shapes.order_attribute)) for point in points]
            if None not in orders:
                points = [point for _, point in sorted(zip(orders, points), key=lambda pair: pair[0])]
        coordinates = [(_number(point.get(shapes.x_attribute)), _number(point.get(shapes.y_attribute))) for point in points]
        if not label:
            table.problems.append(Quarantined(shape_where, f"shape has no label attribute {shapes.label_attribute!r}", kind="invalid_annotation"))
            continue
        if len(coordinates) < 3 or any(x is None or y is None for x, y in coordinates):
            reason = f"shape has {len(coordinates)} points, not 3 or more with numeric {shapes.x_attribute} / {shapes.y_attribute}"
            table.problems.append(Quarantined(shape_where, reason, kind="invalid_annotation"))
            continue
        table.add(image, ParsedBox(label, shape_where, polygons=(tuple(coordinates),)))


def parse_xml_polygons_file(root: Path, settings: BoxAnnotations) -> BoxTable:
    """One XML for many images: each ``xml.image_path`` element names its image by
    ``xml.image_attribute`` (filled into ``path_template`` as {id}) and holds its shapes."""
    xml_file, shapes = settings.file or "", settings.xml
    table = BoxTable(xml_file)
    document = _read_xml(root, xml_file, table, "polygon annotation file")
    if document is None:
        return table
    for number, element in enumerate(document.findall(shapes.image_path or ""), start=1):
        where = f"{xml_file} image {number}"
        name = (element.get(shapes.image_attribute or "") or "").strip()
        try:
            image = contained_path(settings.image_root, settings.path_template.format(id=name)) if name else None
        except (KeyError, IndexError, ValueError):
            image = None
        if image is None:
            reason = f"image element has no usable {shapes.image_attribute!r} attribute (or it points outside the source)"
            table.problems.append(Quarantined(where, reason, kind="invalid_annotation"))
            continue
        table.note_image(image, where)
        _xml_shapes(table, shapes, settings.fixed_label, element, image, where)
    return table


def parse_xml_polygons(root: Path, image_paths: list[str], settings: BoxAnnotations) -> BoxTable:
    """One XML per image, found by ``annotation_template`` (ASAP / CAMELYON); an image without
    one has no annotation."""
    template = settings.annotation_template or ""
    table = BoxTable(template)
    for image_path in image_paths:
        xml_file, document = _image_xml(root, template, image_path, table, "polygon annotation file")
        if document is not None:
            _xml_shapes(table, settings.xml, settings.fixed_label, document, image_path, xml_file)
    return table


def parse_listed(root: Path, settings: BoxAnnotations, encoding: str) -> BoxTable:
    """The formats whose file lists the images (coco, csv, circles, keyed_json, xml_polygons
    with one file): every image the file names."""
    if settings.format == "coco":
        return parse_coco(root, settings.file or "", settings.image_root)
    if settings.format == "keyed_json":
        return parse_keyed_json(root, settings)
    if settings.format == "xml_polygons":
        return parse_xml_polygons_file(root, settings)
    return parse_table(root, settings, encoding)


def parse_for_images(root: Path, settings: BoxAnnotations, image_paths: list[str], encoding: str) -> BoxTable:
    """The per-image formats (yolo, voc, xml_polygons by template): the annotation files of the given images."""
    if settings.format == "voc":
        return parse_voc(root, image_paths, settings.annotation_template or "")
    if settings.format == "xml_polygons":
        return parse_xml_polygons(root, image_paths, settings)
    class_names = load_class_names(root, settings, encoding)
    if isinstance(class_names, Quarantined):
        table = BoxTable(settings.annotation_template or "")
        table.problems.append(class_names)
        for image in image_paths:
            table.note_image(image, image)
        return table
    return parse_yolo(root, image_paths, settings.annotation_template or "", class_names)


# --------------------------------------------------------------------------- to pixels


def pixel_geometry(parsed: ParsedBox, width: int, height: int) -> tuple[list[float], list[float] | None]:
    """The box [x0, y0, x1, y1] in top-left pixel coordinates and the circle [cx, cy, r], if any."""
    if parsed.circle is not None:
        cx, cy, radius = parsed.circle
        if parsed.y_from_bottom:
            # The centre is a pixel index counted up from the bottom row (row height - 1).
            cy = height - 1 - cy
        return [cx - radius, cy - radius, cx + radius + 1, cy + radius + 1], [cx, cy, radius]
    x0, y0, x1, y1 = parsed.box
    if parsed.normalized:
        x0, x1, y0, y1 = x0 * width, x1 * width, y0 * height, y1 * height
    if parsed.y_from_bottom:
        # Box edges are continuous coordinates: an edge at y from the bottom is at height - y.
        y0, y1 = height - y1, height - y0
    # Fractions times the size carry float noise (0.15 * 100 = 15.000000000000002), which
    # clamp_box's ceil would turn into one pixel more: snap to a micro-pixel first.
    return [round(v, 6) for v in (x0, y0, x1, y1)], None


def resolve_boxes(
    spec: SourceSpec,
    parsed_boxes: list[ParsedBox],
    image_path: str,
    width: int,
    height: int,
    record_id: str | None,
    known_labels: Collection[str] = (),
) -> tuple[list[dict], list[str], list[Quarantined]]:
    """Annotations, labels and problems of one image's parsed boxes, on its decoded size.

    Labels are renamed by the spec; a label renamed to "" means "no finding" and makes no box.
    When ``known_labels`` is given, a raw label neither in it nor in the spec's rename table is
    reported (a typo or a class the spec did not expect) and its box dropped. A box of zero or
    negative size, or wholly outside the image, is reported and dropped; the image is kept.
    """
    annotations: list[dict] = []
    labels: list[str] = []
    problems: list[Quarantined] = []
    known = set(known_labels)
    for parsed in parsed_boxes:
        if known and parsed.label not in known and parsed.label not in spec.labels.rename:
            reason = f"{parsed.where}: label {parsed.label!r} is not among the known labels {sorted(known)}"
            problems.append(Quarantined(image_path, reason, record_id, kind="bad_label"))
            continue
        label = rename_label(spec, parsed.label)
        if label is None:
            continue
        if parsed.image_level:
            labels += [label, *parsed.extra_labels]
            continue
        if parsed.polygons:
            # COCO polygons are kept as contours (the box follows from them in grounding).
            for points in parsed.polygons:
                clipped = [[min(max(x, 0.0), float(width)), min(max(y, 0.0), float(height))] for x, y in points]
                annotations.append({"kind": "contour", "label": label, "points": clipped, **parsed.fields})
            labels += [label, *parsed.extra_labels]
            continue
        box, circle = pixel_geometry(parsed, width, height)
        if circle is not None and circle[2] <= 0:
            problems.append(Quarantined(image_path, f"{parsed.where}: circle radius {circle[2]:g} is not positive", record_id, kind="invalid_annotation"))
            continue
        if box[2] <= box[0] or box[3] <= box[1]:
            reason = f"{parsed.where}: box {_rounded(box)} ({label}) has zero or negative size"
            problems.append(Quarantined(image_path, reason, record_id, kind="invalid_annotation"))
            continue
        clamped = clamp_box(box, width, height)
        if clamped is None:
            reason = f"{parsed.where}: box {_rounded(box)} ({label}) lies outside the {width}x{height} image"
            problems.append(Quarantined(image_path, reason, record_id, kind="invalid_annotation"))
            continue
        annotation = {"kind": "box", "label": label, "box": clamped, **parsed.fields}
        if circle is not None:
            annotation["circle"] = [float(v) for v in circle]
        annotations.append(annotation)
        labels += [label, *parsed.extra_labels]
    return annotations, labels, problems


def _rounded(box: list[float]) -> list[float]:
    return [round(v, 2) for v in box]
