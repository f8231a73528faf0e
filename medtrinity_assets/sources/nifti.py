"""NIfTI layout family: 3D volumes, each with an optional label volume, sliced by rule.

Volumes are read in canonical RAS orientation (what ``nibabel.as_closest_canonical`` gives) and
each kept slice is turned to the radiological display: anterior (or superior) up, patient right
on the image left. The image is read slice by slice through nibabel's array proxy, so a large
volume is never held whole; the label volume is read whole because choosing slices needs to
know which slices it cuts. The NIfTI header's free-text fields (``descrip``, ``aux_file``,
``intent_name``) are never read: they are where converters copy DICOM patient names.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import nibabel as nib
import numpy as np
from nibabel.orientations import apply_orientation, io_orientation

from medtrinity_assets.imaging.deid import patient_identifier
from medtrinity_assets.imaging.slicing import select_slices
from medtrinity_assets.sources.base import (
    IngestContext,
    IngestStream,
    Quarantined,
    make_record,
    record_id_for,
    store_mask,
)
from medtrinity_assets.sources.dicom import list_files, spec_labels


def _describe(error: Exception) -> str:
    return f"{type(error).__name__}: {error}"


def label_path_for(relative_path: str, layout) -> Optional[str]:
    """The label volume's relative path: the layout's replacements applied in order."""
    if not layout.label_replace:
        return None
    label = relative_path
    for rule in layout.label_replace:
        label = label.replace(rule.old, rule.new)
    return None if label == relative_path else label


def canonical_axes(affine: np.ndarray) -> list[tuple[int, bool]]:
    """For each canonical RAS axis: (the file's axis that holds it, whether it runs reversed)."""
    ornt = io_orientation(affine)
    mapping: list[tuple[int, bool]] = [(0, False)] * 3
    for file_axis, (canonical_axis, direction) in enumerate(ornt):
        mapping[int(canonical_axis)] = (file_axis, direction < 0)
    return mapping


def to_display(canonical_plane: np.ndarray) -> np.ndarray:
    """A slice of a RAS volume, axes in ascending canonical order, as a radiologist views it.

    The higher canonical axis (anterior for axial, superior for coronal and sagittal) goes up;
    the lower one (patient right for axial and coronal, anterior for sagittal) goes to the left.
    """
    return np.ascontiguousarray(canonical_plane.T[::-1, ::-1])


def canonical_slice(image: nib.spatialimages.SpatialImage, axis: int, index: int) -> np.ndarray:
    """One slice of the canonical volume, read through the proxy without loading the volume."""
    mapping = canonical_axes(image.affine)
    file_axis, reversed_axis = mapping[axis]
    size = image.shape[file_axis]
    selector: list = [slice(None)] * 3
    selector[file_axis] = size - 1 - index if reversed_axis else index
    plane = np.asanyarray(image.dataobj[tuple(selector)])
    in_plane = [c for c in range(3) if c != axis]  # canonical axes of the plane, ascending
    remaining_file_axes = [a for a in range(3) if a != file_axis]
    order = [remaining_file_axes.index(mapping[c][0]) for c in in_plane]
    plane = plane.transpose(order)
    for position, c in enumerate(in_plane):
        if mapping[c][1]:
            plane = np.flip(plane, axis=position)
    return plane


def _canonical_shape(image) -> tuple[int, int, int]:
    mapping = canonical_axes(image.affine)
    return tuple(int(image.shape[mapping[c][0]]) for c in range(3))


def _sequence(layout, relative_path: str) -> Optional[str]:
    if layout.sequence_regex:
        match = re.search(layout.sequence_regex, relative_path)
        if match:
            return (match.group(1) if match.groups() else match.group(0)).upper()
    return None


def _pixels(plane: np.ndarray) -> np.ndarray:
    # Integral volumes stay integers; scaled or float volumes become float32 (half of float64).
    if plane.dtype.kind in "iu":
        return plane
    return plane.astype(np.float32)


def _read_volume(ctx: IngestContext, path: Path) -> IngestStream:
    layout = ctx.spec.layout
    rel = path.relative_to(ctx.root).as_posix()
    try:
        image = nib.load(str(path), keep_file_open=True)
        if len(image.shape) == 4 and image.shape[3] == 1:
            image = image.slicer[..., 0]
        if len(image.shape) != 3:
            yield Quarantined(rel, f"volume has shape {image.shape}: only 3D volumes are sliced (4D series are a later issue)")
            return
    except Exception as error:
        yield Quarantined(rel, f"not a readable NIfTI volume: {_describe(error)}")
        return

    label_rel = label_path_for(rel, layout)
    labels_canonical = None
    if label_rel and (ctx.root / label_rel).is_file():
        try:
            label_image = nib.load(str(ctx.root / label_rel))
            label_shape = tuple(label_image.shape[:3])
            if label_shape != tuple(image.shape) or _canonical_shape(label_image) != _canonical_shape(image):
                yield Quarantined(
                    rel, f"label volume shape {tuple(label_image.shape)} differs from image shape {tuple(image.shape)} ({label_rel})"
                )
                return
            values = np.asanyarray(label_image.dataobj)
            if values.ndim == 4:
                values = values[..., 0]
            if layout.label_threshold is not None:
                values = (values >= layout.label_threshold).astype(np.uint8)
            else:
                values = np.rint(values).astype(np.int32)
            labels_canonical = apply_orientation(values, io_orientation(label_image.affine))
        except Exception as error:
            yield Quarantined(rel, f"label volume {label_rel} not readable: {_describe(error)}")
            return

    axis = layout.slice_axis
    canonical_shape = _canonical_shape(image)
    n_slices = canonical_shape[axis]
    presence = None
    if labels_canonical is not None:
        other_axes = tuple(a for a in range(3) if a != axis)
        presence = np.any(labels_canonical != 0, axis=other_axes)
    names = dict(layout.label_names) or {1: ctx.spec.diseases[0] if ctx.spec.diseases else "annotated region"}

    zooms = [float(z) for z in image.header.get_zooms()[:3]]
    mapping = canonical_axes(image.affine)
    in_plane = [c for c in range(3) if c != axis]
    # Display rows run along the higher in-plane axis, columns along the lower (see to_display).
    spacing = [zooms[mapping[in_plane[1]][0]], zooms[mapping[in_plane[0]][0]]]
    sequence = _sequence(layout, rel)
    patient = patient_identifier(ctx.spec.patient, rel)

    for index in select_slices(n_slices, presence, ctx.spec.slicing):
        try:
            pixels = _pixels(to_display(canonical_slice(image, axis, index)))
            annotations, found = [], []
            if labels_canonical is not None:
                label_plane = to_display(np.take(labels_canonical, index, axis=axis))
                for value in sorted(int(v) for v in np.unique(label_plane) if v != 0):
                    name = names.get(value, f"label {value}")
                    mask = (label_plane == value).astype(np.uint8)
                    annotations.append({"kind": "mask", "label": name, "mask_ref": store_mask(ctx, mask)})
                    found.append(name)
            yield make_record(
                ctx,
                source_file=rel,
                pixels=pixels,
                patient_id=patient,
                labels=spec_labels(ctx.spec, rel) + found,
                annotations=annotations,
                pixel_units="HU" if ctx.spec.modality_for(rel) == "ct" else "raw",
                photometric="MONOCHROME2",
                sequence=sequence,
                slice_index=index,
                slice_count=n_slices,
                pixel_spacing_mm=spacing,
            )
        except Exception as error:
            yield Quarantined(rel, f"slice {index}: {_describe(error)}", record_id_for(ctx.spec.id, rel, sequence, index))


def read(ctx: IngestContext) -> IngestStream:
    layout = ctx.spec.layout
    for path in list_files(ctx.root, layout.image_glob, layout.exclude_glob):
        yield from _read_volume(ctx, path)
