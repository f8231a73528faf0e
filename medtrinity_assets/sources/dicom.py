"""DICOM layout family: single images, multi-frame files, series stacked into volumes, and the
RTSTRUCT / SEG objects among them, whose contours and segments become mask annotations of the
slices they lie on (``sources.dicom_annotations``) and steer which slices are kept.

Every header value passes through ``imaging.dicom_io.read_header`` (the PHI allowlist); the
patient id is hashed the moment the record is made. One bad file is quarantined with its
reason, and the rest of the source goes on.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Iterable

import numpy as np

from medtrinity_assets.imaging.deid import patient_identifier
from medtrinity_assets.imaging.dicom_io import (
    ANNOTATION_MODALITIES,
    NON_IMAGE_MODALITIES,
    DicomHeader,
    NotAnImageObject,
    PixelDecodeError,
    check_is_image,
    check_size,
    decode_frame,
    pixel_data_problem,
    read_dicom,
    read_header,
)
from medtrinity_assets.imaging.geometry import dicom_frame_kind
from medtrinity_assets.imaging.limits import TooLarge
from medtrinity_assets.imaging.slicing import select_slices
from medtrinity_assets import parallel
from medtrinity_assets.sources.base import (
    FileTask,
    IngestContext,
    IngestStream,
    Quarantined,
    describe_error,
    file_task_reader,
    in_unit,
    list_files,
    make_record,
    record_id_for,
    store_mask,
)
from medtrinity_assets.sources.dicom_annotations import PlaneMasks, collect_annotations, planes_of
from medtrinity_assets.sources.dicom_common import deidentify_dataset, dicom_geometry
from medtrinity_assets.sources.image_common import path_labels
from medtrinity_assets.sources.label_state import ANNOTATED, CONTEXT
from medtrinity_assets.sources.lidc_xml import collect_lidc_annotations


def _relative(ctx: IngestContext, path: Path) -> str:
    return path.relative_to(ctx.root).as_posix()


def _burned_in(ctx: IngestContext, rel: str, header: DicomHeader, frame_in_file: int) -> Quarantined | list[str]:
    """The record flags of an image, or its Quarantined when burned-in text is not wanted."""
    if not header.burned_in_annotation:
        return []
    if ctx.spec.layout.burned_in_annotation == "flag":
        return ["burned_in_annotation"]
    return Quarantined(
        rel,
        "BurnedInAnnotation is YES: text (possibly identifying) is burned into the pixels; "
        "left out by layout.burned_in_annotation: quarantine (set 'flag' to keep it flagged)",
        record_id_for(ctx.spec.id, rel, None, frame_in_file),
        kind="held_back",
    )


def _mask_annotations(ctx: IngestContext, plane_masks: dict[str, np.ndarray] | None) -> list[dict]:
    return [
        {"kind": "mask", "label": label, "mask_ref": store_mask(ctx, plane_masks[label].astype(np.uint8))}
        for label in sorted(plane_masks or {})
    ]


def _record(
    ctx: IngestContext, rel: str, header: DicomHeader, decoded, slice_index: int, slice_count: int,
    plane_masks: dict[str, np.ndarray] | None, flags: list[str], geometry: dict, annotated_volume: bool = False,
    frame_in_file: int | None = None,
) -> dict:
    # A slice of an annotated series / multi-frame file cuts the annotation or is context.
    role = (ANNOTATED if plane_masks else CONTEXT) if annotated_volume else None
    return make_record(
        ctx,
        source_file=rel,
        pixels=decoded.pixels,
        patient_id=patient_identifier(ctx.spec.patient.key_rule(), rel, header.patient_id),
        labels=path_labels(ctx.spec, rel) + sorted(plane_masks or {}),
        annotations=_mask_annotations(ctx, plane_masks),
        pixel_units=decoded.pixel_units,
        photometric=decoded.photometric,
        slice_index=slice_index,
        slice_count=slice_count,
        dicom_modality=header.modality,
        pixel_spacing_mm=header.pixel_spacing_mm,
        flags=flags,
        slice_role=role,
        frame_in_file=frame_in_file,
        **geometry,
    )


def _not_an_image_kind(header: DicomHeader) -> str:
    """check_is_image refused the object: a modality without an image (SR, RTPLAN...) is
    unsupported; an image modality without its pixel data was cut off, so it is unreadable."""
    return "unsupported" if header.modality in NON_IMAGE_MODALITIES | ANNOTATION_MODALITIES else "unreadable"


def _masks_by_file(masks: PlaneMasks) -> dict[str, PlaneMasks]:
    """The plane masks grouped by file: a file's task carries its own masks, not the source's."""
    by_file: dict[str, PlaneMasks] = defaultdict(dict)
    for key, plane in masks.items():
        by_file[key[0]][key] = plane
    return by_file


def _read_single_file(ctx: IngestContext, path: Path, masks: PlaneMasks, header: DicomHeader | None = None) -> IngestStream:
    """The records of one file; ``header``: the header pass's reading of it (not read twice)."""
    rel = _relative(ctx, path)
    try:
        ds = read_dicom(path)
        header = header or read_header(ds)
        check_is_image(header)
        deidentify_dataset(ctx, ds, header)
    except NotAnImageObject as error:
        yield Quarantined(rel, str(error), kind=_not_an_image_kind(header))
        return
    except Exception as error:  # truncated, not DICOM, empty: quarantine, never stop the source
        yield Quarantined(rel, f"not a readable DICOM file: {describe_error(error)}", kind="unreadable")
        return
    if header.n_frames > 1:
        # Multi-frame (cine, enhanced MR/CT): frames are slices of one acquisition; annotated
        # frames (SEG, RTSTRUCT) steer the selection like labelled slices of a volume.
        presence = np.array([(rel, f) in masks for f in range(header.n_frames)]) if masks else None
        selected = select_slices(header.n_frames, presence, ctx.spec.slicing.slice_rule())
        frames = [(index, index, header.n_frames) for index in selected]
    else:
        frames = [(None, -1, 1)]
        presence = None
    # A cine loop's frames are moments, not slices; a single cross-section is a slice.
    frame_kind = dicom_frame_kind(
        header.modality, header.n_frames, header.frame_positions, header.frame_increment_pointers,
        has_orientation=header.orientation is not None,
    )
    for frame, slice_index, slice_count in frames:
        flags = _burned_in(ctx, rel, header, slice_index)
        if isinstance(flags, Quarantined):
            yield flags
            continue
        try:
            decoded = decode_frame(ds, header, frame)
            yield _record(
                ctx, rel, header, decoded, slice_index, slice_count, masks.get((rel, frame)), flags,
                dicom_geometry(header, frame, frame_kind),
                annotated_volume=presence is not None and bool(np.any(presence)),
            )
        except Exception as error:
            yield Quarantined(rel, describe_error(error), record_id_for(ctx.spec.id, rel, None, slice_index), kind=_decode_kind(error))


def _decode_kind(error: Exception) -> str:
    # A codec that is not installed is "unsupported"; a decoder that failed, "unreadable".
    return error.kind if isinstance(error, PixelDecodeError) else "unreadable"


def _series_order(members: list[tuple[Path, DicomHeader]]) -> list[tuple[Path, DicomHeader]]:
    """Sort a series along its slice normal; fall back to InstanceNumber, then file name."""
    normal = members[0][1].slice_normal
    if normal is not None and all(h.position is not None for _, h in members):
        return sorted(members, key=lambda m: (float(normal @ m[1].position), m[0].name))
    if all(h.instance_number is not None for _, h in members):
        return sorted(members, key=lambda m: (m[1].instance_number, m[0].name))
    return sorted(members, key=lambda m: m[0].name)


def _read_series(ctx: IngestContext, images: list[tuple[Path, DicomHeader]], masks: PlaneMasks) -> IngestStream:
    series: dict[str, list[tuple[Path, DicomHeader]]] = defaultdict(list)
    multi_frame: list[Path] = []
    for path, header in images:
        rel = _relative(ctx, path)
        if header.n_frames > 1:
            multi_frame.append(path)  # already a volume on its own
        else:
            # A file without a SeriesInstanceUID is its own series (keyed by path, in memory only).
            series[header.series_uid or f"file:{rel}"].append((path, header))
    by_file = _masks_by_file(masks)
    for path in multi_frame:
        rel = _relative(ctx, path)
        if ctx.owns(rel):
            yield FileTask(rel, _read_single_file, (path, by_file.get(rel, {})))

    for key in sorted(series, key=lambda k: _relative(ctx, series[k][0][0])):
        # A series is stacked from all its files, so it is one unit, placed by the path of its
        # first file in name order (every header was read: series form across shards).
        unit = min(_relative(ctx, path) for path, _ in series[key])
        if ctx.owns(unit):
            yield from in_unit(unit, _read_one_series(ctx, series[key], masks))


def _read_one_series(ctx: IngestContext, members: list[tuple[Path, DicomHeader]], masks: PlaneMasks) -> IngestStream:
    shapes = defaultdict(list)
    for path, header in members:
        shapes[(header.rows, header.columns)].append((path, header))
    # Slices of another size than the series' majority cannot be stacked with it.
    main_shape = max(shapes, key=lambda s: (len(shapes[s]), s))
    for shape, odd in shapes.items():
        if shape != main_shape:
            for path, _ in odd:
                yield Quarantined(_relative(ctx, path), f"slice size {shape} differs from its series' {main_shape}", kind="unsupported")
    ordered = _series_order(shapes[main_shape])
    count = len(ordered)
    keys = [(_relative(ctx, path), None) for path, _ in ordered]
    # Slices cut by an RTSTRUCT / SEG annotation drive annotated_plus_context.
    presence = np.array([key in masks for key in keys]) if any(key in masks for key in keys) else None
    for index in select_slices(count, presence, ctx.spec.slicing.slice_rule()):
        path, header = ordered[index]
        rel = keys[index][0]
        # The id comes from the file alone (one slice per file: frame -1), the series order
        # stays in slice_index: a file added to or removed from the series changes no id.
        flags = _burned_in(ctx, rel, header, -1)
        if isinstance(flags, Quarantined):
            yield flags
            continue
        yield FileTask(rel, _read_series_slice, (path, header, index, count, masks.get(keys[index]), flags, presence is not None))


def _read_series_slice(
    ctx: IngestContext, path: Path, header: DicomHeader, index: int, count: int,
    plane_masks: dict | None, flags: list[str], annotated_volume: bool,
) -> list:
    """One chosen slice of a series as a record (a ``FileTask``: decoded and stored where the stage runs it)."""
    rel = _relative(ctx, path)
    try:
        decoded = decode_frame(deidentify_dataset(ctx, read_dicom(path), header), header, None)
        frame_kind = "slice" if count > 1 else dicom_frame_kind(header.modality, 1, None, has_orientation=header.orientation is not None)
        return [_record(
            ctx, rel, header, decoded, index, count, plane_masks, flags,
            dicom_geometry(header, None, frame_kind), annotated_volume=annotated_volume, frame_in_file=-1,
        )]
    except Exception as error:
        return [Quarantined(rel, describe_error(error), record_id_for(ctx.spec.id, rel, None, -1), kind=_decode_kind(error))]


def _scan_file(ctx: IngestContext, path: Path) -> tuple[str, object]:
    """One file's header pass: ("image", header), ("annotation", modality) or ("quarantined", Quarantined)."""
    rel = _relative(ctx, path)
    header = None
    try:
        ds = read_dicom(path, with_pixels=False)
        header = read_header(ds)
        # Before any pixel is read, for images and SEG objects alike.
        check_size(header, ctx.limits)
        if header.modality in ANNOTATION_MODALITIES:
            return "annotation", header.modality
        check_is_image(header)
        # Checked before series are formed: a broken slice must not join (and renumber) one.
        problem = pixel_data_problem(ds)
    except NotAnImageObject as error:
        return "quarantined", Quarantined(rel, str(error), kind=_not_an_image_kind(header))
    except TooLarge as error:
        return "quarantined", Quarantined(rel, str(error), kind="too_large")
    except Exception as error:
        return "quarantined", Quarantined(rel, f"not a readable DICOM file: {describe_error(error)}", kind="unreadable")
    if problem:
        return "quarantined", Quarantined(rel, problem, kind="unreadable")
    return "image", header


# Headers read per worker call: a header takes about a millisecond, so one call per file would
# spend as much on the hand-over to the worker as on the reading.
SCAN_CHUNK = 32


def _scan_files(ctx: IngestContext, paths: list[Path]) -> list[tuple[str, object]]:
    return [_scan_file(ctx, path) for path in paths]


def _scan(ctx: IngestContext, files: Iterable[Path]):
    """Read every header once (no pixels): sort files into images and annotation objects, and
    quarantine the rest. Yields Quarantined items; fills and returns the two lists at the end.
    The headers are read by the stage's worker processes when it has them, in file order."""
    images: list[tuple[Path, DicomHeader]] = []
    annotation_objects: list[tuple[str, str]] = []
    files = list(files)
    chunks = (files[start : start + SCAN_CHUNK] for start in range(0, len(files), SCAN_CHUNK))
    for chunk, outcomes in parallel.map_with(ctx, _scan_files, chunks, describe=lambda c: _relative(ctx, c[0]), min_items=2):
        if isinstance(outcomes, parallel.Failed):  # _scan_file catches each file's errors: this is the pool's
            outcomes = [("quarantined", Quarantined(_relative(ctx, path), f"not a readable DICOM file: {outcomes.error}", kind="unreadable"))
                        for path in chunk]
        for path, (what, value) in zip(chunk, outcomes):
            if what == "annotation":
                annotation_objects.append((_relative(ctx, path), value))
            elif what == "quarantined":
                yield value
            else:
                images.append((path, value))
    return images, annotation_objects


@file_task_reader
def read(ctx: IngestContext) -> IngestStream:
    layout = ctx.spec.layout
    files = list_files(ctx.root, layout.glob, layout.exclude_glob)
    images, annotation_objects = yield from _scan(ctx, files)
    masks: PlaneMasks = {}
    # LIDC-IDRI nodule reads: XML files beside the series, one more source of slice masks.
    lidc_files = [_relative(ctx, p) for p in list_files(ctx.root, layout.lidc_xml_glob)] if layout.lidc_xml_glob else []
    if annotation_objects or lidc_files:
        planes = [plane for path, header in images for plane in planes_of(_relative(ctx, path), header)]
        masks, problems = collect_annotations(ctx.root, layout, annotation_objects, planes)
        yield from problems
        yield from collect_lidc_annotations(ctx.root, layout, lidc_files, planes, masks)
    if layout.stack_series:
        yield from _read_series(ctx, images, masks)
    else:
        by_file = _masks_by_file(masks)
        for path, header in images:
            rel = _relative(ctx, path)
            if ctx.owns(rel):
                yield FileTask(rel, _read_single_file, (path, by_file.get(rel, {}), header))
