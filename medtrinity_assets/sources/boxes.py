"""The ``boxes`` layout family (YOLO text, Pascal VOC XML, CSV rows, circles) and the
``extra_boxes`` overlay that adds boxes from a second file to any family's records.

YOLO and VOC sources list their images by ``image_glob`` and find each image's annotation file
by ``annotation_template``; CSV and circle tables list the images themselves (unique ids in
first-appearance order), and ``image_glob`` optionally adds the images no row names. Parsing
lives in ``box_formats``; this module decodes the images, turns boxes into pixels on the decoded
size and yields the records.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medtrinity_assets.catalog.layouts.boxes import BoxAnnotations, BoxesLayout
from medtrinity_assets.imaging.deid import patient_identifier
from medtrinity_assets.imaging.dicom_io import (
    PixelDecodeError,
    check_is_image,
    check_size,
    decode_frame,
    read_dicom,
    read_header,
)
from medtrinity_assets.imaging.limits import TooLarge
from medtrinity_assets.sources.base import (
    IngestContext,
    IngestStream,
    Quarantined,
    in_unit,
    make_record,
    record_id_for,
    shard_path_of,
)
from medtrinity_assets.sources.box_formats import (
    BoxTable,
    ParsedBox,
    parse_for_images,
    parse_listed,
    resolve_boxes,
)
from medtrinity_assets.imaging.geometry import dicom_frame_kind
from medtrinity_assets.sources.dicom_common import deidentify_dataset, dicom_geometry
from medtrinity_assets.sources.image_common import (
    decode_image,
    iter_image_files,
    outside_source,
    path_labels,
    patient_id_for,
)
from medtrinity_assets.sources.label_state import FINDING

DICOM_SUFFIXES = {".dcm", ".dicom"}

# --------------------------------------------------------------------------- decoding


def _is_dicom(path: Path) -> bool:
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as handle:
            return handle.read(132)[128:] == b"DICM"
    except OSError:
        return False


@dataclass(frozen=True)
class DecodedImage:
    pixels: np.ndarray
    photometric: str
    pixel_units: str
    dicom_modality: str | None = None
    pixel_spacing_mm: list[float] | None = None
    dicom_patient_id: str | None = None  # in memory only; hashed by make_record
    geometry: dict = field(default_factory=dict)  # make_record's image_axes / view / laterality / frame_kind


def _decode(ctx: IngestContext, rel: str, absent_reason: str) -> DecodedImage | Quarantined:
    """Pixels of one image file: PNG/JPEG/TIFF/PGM via image_common, or DICOM (RSNA's .dcm rows)."""
    outside = outside_source(ctx, rel)
    if outside is not None:
        return outside
    if not (ctx.root / rel).is_file():
        return Quarantined(rel, absent_reason, kind="orphan")
    if not _is_dicom(ctx.root / rel):
        decoded = decode_image(ctx, rel)
        if isinstance(decoded, Quarantined):
            return decoded
        pixels, photometric = decoded
        return DecodedImage(pixels, photometric, "rgb" if photometric == "RGB" else "raw")
    try:
        dataset = read_dicom(ctx.root / rel)
        header = read_header(dataset)  # the PHI allowlist: nothing else of the header is used
        check_is_image(header)
        check_size(header, ctx.limits)
        if header.burned_in_annotation:
            # Box tables have no per-source policy: text burned into pixels is never kept.
            return Quarantined(rel, "BurnedInAnnotation is YES: text (possibly identifying) is burned into the pixels", kind="held_back")
        frame = decode_frame(deidentify_dataset(ctx, dataset, header), header, None)
    except TooLarge as error:
        return Quarantined(rel, str(error), kind="too_large")
    except Exception as error:  # one unreadable file must not stop the source
        kind = error.kind if isinstance(error, PixelDecodeError) else "unreadable"
        return Quarantined(rel, f"not a readable DICOM image: {type(error).__name__}: {error}", kind=kind)
    return DecodedImage(
        frame.pixels, frame.photometric, frame.pixel_units, header.modality, header.pixel_spacing_mm, header.patient_id,
        dicom_geometry(header, None, dicom_frame_kind(header.modality, 1, None, has_orientation=header.orientation is not None)),
    )


def _record(
    ctx: IngestContext, rel: str, image: DecodedImage, labels: list[str], annotations: list[dict], row: dict | None
) -> dict:
    spec = ctx.spec
    if spec.patient.source == "dicom":
        patient = patient_identifier(spec.patient.key_rule(), rel, image.dicom_patient_id)
    else:
        patient = patient_id_for(spec, rel, row)
    return make_record(
        ctx,
        source_file=rel,
        pixels=image.pixels,
        patient_id=patient,
        labels=labels,
        annotations=annotations,
        pixel_units=image.pixel_units,
        photometric=image.photometric,
        dicom_modality=image.dicom_modality,
        pixel_spacing_mm=image.pixel_spacing_mm,
        **image.geometry,
    )


# --------------------------------------------------------------------------- boxes on an image


def boxes_on_image(
    ctx: IngestContext,
    settings: BoxAnnotations,
    table: BoxTable,
    rel: str,
    width: int,
    height: int,
    record_id: str,
) -> tuple[list[dict], list[str], list[Quarantined]]:
    """Pixel annotations and labels of one image from ``table``; problems as Quarantined.

    Boxes are in the frame of the size the file declares (COCO width/height, VOC <size>); on
    an image of another size they would point at the wrong pixels, so they are dropped.
    """
    parsed: list[ParsedBox] = table.boxes.get(rel, [])
    declared = table.sizes.get(rel)
    if parsed and declared and declared != (width, height):
        reason = f"image is {width}x{height} but {table.source} declares {declared[0]}x{declared[1]}; its boxes are dropped"
        return [], [], [Quarantined(rel, reason, record_id, kind="invalid_annotation")]
    return resolve_boxes(ctx.spec, parsed, rel, width, height, record_id, settings.known_labels)


# --------------------------------------------------------------------------- the family reader


def read(ctx: IngestContext) -> IngestStream:
    spec = ctx.spec
    layout: BoxesLayout = spec.layout
    settings = layout.boxes
    if settings.listed:
        table = parse_listed(ctx.root, settings, ctx.spec.encoding)
        if layout.image_glob:
            # Images no row names are kept too (as images without finding).
            for rel in iter_image_files(ctx.root, layout.image_glob):
                table.note_image(rel, rel)
    else:
        table = parse_for_images(ctx.root, settings, list(iter_image_files(ctx.root, layout.image_glob or "")), ctx.spec.encoding)
    yield from table.problems

    for rel in table.boxes:
        if not ctx.owns(rel):
            continue  # another shard's image: its boxes follow it there
        image = _decode(ctx, rel, f"listed in {table.first_seen[rel]} but file is absent")
        if isinstance(image, Quarantined):
            yield image
            continue
        height, width = image.pixels.shape[:2]
        record_id = record_id_for(spec.id, rel, None, -1)
        annotations, box_labels, problems = boxes_on_image(ctx, settings, table, rel, width, height, record_id)
        yield from problems
        yield _record(ctx, rel, image, path_labels(spec, rel) + box_labels, annotations, table.rows.get(rel))


# --------------------------------------------------------------------------- the overlay


NOT_IN_SOURCE = "box annotation names an image the source does not have"


def apply_extra_boxes(ctx: IngestContext, stream: IngestStream) -> IngestStream:
    """Add the boxes of ``spec.extra_boxes`` to the records of ``stream``, matched by the
    image path relative to the source root; labels of the boxes join the record's labels.

    Images the overlay file names that the stream never yields are reported at the end, so a
    box never silently disappears (covid-chestxray: a lung box of an image that is absent).
    """
    settings = ctx.spec.extra_boxes
    listed = settings.listed
    table = parse_listed(ctx.root, settings, ctx.spec.encoding) if listed else None
    if table is not None:
        yield from table.problems
    yielded: set[str] = set()
    for item in stream:
        if not isinstance(item, dict):
            # The reader already reported this file: a second report for its boxes adds nothing.
            yielded.add(item.source_file)
            yield item
            continue
        rel = item["source_file"]
        yielded.add(rel)
        image_table = table
        if image_table is None:
            # yolo / voc: the record's own annotation file, found by the template.
            image_table = parse_for_images(ctx.root, settings, [rel], ctx.spec.encoding)
            # Problems of this image's own box file go to the shard that holds the image.
            yield from in_unit(shard_path_of(item), image_table.problems)
        if image_table.boxes.get(rel):
            annotations, labels, problems = boxes_on_image(
                ctx, settings, image_table, rel, item["width"], item["height"], item["record_id"]
            )
            yield from in_unit(shard_path_of(item), problems)
            reference = settings.role == "reference"
            if reference:
                # Publisher boxes beside masks: kept for grounding's cross-check, not findings.
                annotations = [{**annotation, "reference": True} for annotation in annotations]
            item = {
                **item,
                "annotations": json.dumps(json.loads(item["annotations"] or "[]") + annotations, sort_keys=True),
                "labels": sorted(set(item["labels"]) | set(labels))
                if settings.boxes_are_findings and not reference
                else item["labels"],
            }
            if settings.boxes_are_findings and labels:
                item["label_state"] = FINDING  # a finding box makes a finding, whatever the family said
        yield item
    if table is not None:
        for rel in table.boxes:
            if rel not in yielded:
                yield Quarantined(rel, NOT_IN_SOURCE, kind="orphan")
