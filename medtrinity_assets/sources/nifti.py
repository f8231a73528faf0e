"""NIfTI layout family: 3D volumes, and 4D multi-channel ones, with label volumes, sliced by rule.

Publishers lay NIfTI data out in three ways; each is turned into the same unit, a *case*: at
most one label volume and the image volumes that share it.

- ``image_glob`` + ``label_replace``: one image file, its label file found by replacements;
- ``dataset_json`` (Medical Segmentation Decathlon): the JSON lists image/label pairs, names the
  label values, and names the channels of 4D images (BrainTumour, Prostate): each channel is
  one MR sequence and becomes its own records;
- ``case_glob`` + ``sequences`` (BraTS): one folder per case, one file per MR sequence, one
  label file, found by templates with ``{case}``;
- ``image_glob`` + ``structure_glob`` (TotalSegmentator): the label volume is split into one
  binary file per structure in a folder beside the image. Up to 117 full-resolution masks per
  case are never held together: each file is streamed once in slabs for its per-slice presence
  (only when the slicing rule needs it), then once more for the chosen slices' planes only, and
  each structure's masks are stored before the next one is read.

Slices are chosen ONCE per case from its label volume, so every sequence of a case yields
records for the same slices with the same ROI masks (stored once: the blob store is
content-addressed).

Volumes are read in canonical RAS orientation (what ``nibabel.as_closest_canonical`` gives) and
each kept slice is turned to the radiological display: anterior (or superior) up, patient right
on the image left. Each record's ``image_axes`` (``imaging.geometry.nifti_display_axes``) places
the displayed pixels in patient coordinates through the affine, so patient sides come from the
affine, not from this display convention. Memory holds one case at a time: its label volume whole (choosing slices
needs to know which slices it cuts) and, per image file and channel, slabs of at most
``SLAB_SLICES`` slices read through nibabel's array proxy in file order, so a 4D file is never
copied whole per channel and a gzip file is decompressed in one forward pass. The NIfTI
header's free-text fields (``descrip``, ``aux_file``, ``intent_name``) are never read: they are
where converters copy DICOM patient names.
"""

from __future__ import annotations

import json
import posixpath
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional

import nibabel as nib
import numpy as np
from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation

from medtrinity_assets.containment import contained_glob, inside_file, is_inside
from medtrinity_assets.imaging.deid import patient_identifier
from medtrinity_assets.imaging.geometry import nifti_display_axes
from medtrinity_assets.imaging.limits import PixelLimits, TooLarge
from medtrinity_assets.imaging.slicing import label_presence, label_value_masks, select_slices
from medtrinity_assets.sources.base import (
    IngestContext,
    IngestStream,
    Quarantined,
    describe_error,
    in_unit,
    list_files,
    make_record,
    record_id_for,
    store_mask,
)
from medtrinity_assets.sources.image_common import path_labels
from medtrinity_assets.sources.image_common import rename_label
from medtrinity_assets.sources.label_state import ANNOTATED, CONTEXT

# Slices read from the file in one proxy access: bounds memory for big volumes while keeping
# the number of reads (and gzip seeks) small.
SLAB_SLICES = 16


@dataclass(frozen=True)
class _Volume:
    """One image file of a case."""

    source_file: str  # relative to the source root
    sequence: Optional[str] = None  # the MR sequence of a 3D file
    # 4D files: channel index -> sequence name (dataset.json "modality"); None: not splittable.
    channel_names: Optional[tuple[tuple[int, str], ...]] = None


@dataclass(frozen=True)
class _Case:
    name: str  # what quarantine reasons about the whole case name: image file or case folder
    volumes: tuple[_Volume, ...]
    label_file: Optional[str]
    patient: str  # raw patient key, hashed by make_record


@dataclass(frozen=True)
class _LabelVolume:
    canonical: np.ndarray  # integer labels in RAS voxel order
    file_shape: tuple[int, ...]


def _is_data_file(relative_path: str) -> bool:
    """False for AppleDouble "._" files and anything in a hidden folder."""
    return not any(part.startswith(".") for part in relative_path.split("/"))


def _wanted(sequence: Optional[str], use_sequences: list[str]) -> bool:
    if not use_sequences or sequence is None:
        return True
    return sequence.lower() in {name.lower() for name in use_sequences}


# --- orientation -------------------------------------------------------------------------


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


def canonical_affine(image) -> np.ndarray:
    """Voxel -> RAS (mm) affine of the volume in canonical order, as ``canonical_planes`` reads it."""
    ornt = io_orientation(image.affine)
    return image.affine @ inv_ornt_aff(ornt, image.shape[:3])


def has_world_coordinates(image) -> bool:
    """Whether the affine places voxels in the patient: qform or sform code set. With both 0
    (NIfTI "method 1") the affine is only the voxel size, with no orientation to trust."""
    header = image.header
    codes = [header.get(key) for key in ("qform_code", "sform_code")]
    return any(code is not None and int(code) > 0 for code in codes)


def _file_plane_to_canonical(plane: np.ndarray, mapping: list[tuple[int, bool]], axis: int) -> np.ndarray:
    """A plane cut across file axis ``mapping[axis][0]``, reordered and flipped into RAS."""
    file_axis = mapping[axis][0]
    in_plane = [c for c in range(3) if c != axis]  # canonical axes of the plane, ascending
    remaining_file_axes = [a for a in range(3) if a != file_axis]
    plane = plane.transpose([remaining_file_axes.index(mapping[c][0]) for c in in_plane])
    for position, c in enumerate(in_plane):
        if mapping[c][1]:
            plane = np.flip(plane, axis=position)
    return plane


def _slabs(sorted_file_indices: list[int]) -> Iterable[list[int]]:
    group: list[int] = []
    for index in sorted_file_indices:
        if group and index - group[0] >= SLAB_SLICES:
            yield group
            group = []
        group.append(index)
    if group:
        yield group


def canonical_planes(image, axis: int, indices: list[int], channel: Optional[int] = None) -> dict[int, np.ndarray]:
    """The planes at canonical ``indices`` along canonical ``axis`` (of one channel of a 4D file).

    Read through the array proxy in slabs, in ascending file order: only the slices asked for
    (and the gaps inside a slab) are decoded, and a gzip stream is never rewound.
    """
    mapping = canonical_axes(image.affine)
    file_axis, reversed_axis = mapping[axis]
    size = image.shape[file_axis]
    canonical_of = {(size - 1 - i if reversed_axis else i): i for i in indices}
    planes = {}
    for group in _slabs(sorted(canonical_of)):
        selector: list = [slice(None)] * 3
        selector[file_axis] = slice(group[0], group[-1] + 1)
        if channel is not None:
            selector.append(channel)
        slab = np.asanyarray(image.dataobj[tuple(selector)])
        for file_index in group:
            plane = np.take(slab, file_index - group[0], axis=file_axis)
            planes[canonical_of[file_index]] = _file_plane_to_canonical(plane, mapping, axis)
    return planes


def _canonical_shape(image) -> tuple[int, int, int]:
    mapping = canonical_axes(image.affine)
    return tuple(int(image.shape[mapping[c][0]]) for c in range(3))


def _in_plane_spacing(image, axis: int) -> list[float]:
    zooms = [float(z) for z in image.header.get_zooms()[:3]]
    mapping = canonical_axes(image.affine)
    in_plane = [c for c in range(3) if c != axis]
    # Display rows run along the higher in-plane axis, columns along the lower (see to_display).
    return [zooms[mapping[in_plane[1]][0]], zooms[mapping[in_plane[0]][0]]]


def _pixels(plane: np.ndarray) -> np.ndarray:
    # Integral volumes stay integers; scaled or float volumes become float32 (half of float64).
    if plane.dtype.kind in "iu":
        return np.ascontiguousarray(plane)
    return plane.astype(np.float32)


# --- one case ------------------------------------------------------------------------------


def _pixel_units(layout, rel: str, modality: str) -> str:
    # NIfTI headers do not say what the voxel values mean; the spec may (IBSI PET is SUV).
    for pattern, units in layout.pixel_units.items():
        if re.search(pattern, rel):
            return units
    return "HU" if modality == "ct" else "raw"


def _as_volume(image):
    """A 2D NIfTI image (CAMUS stores one echocardiography frame per file) as a volume of one
    slice along the third file axis, so it slices like any other; 3D and 4D files are returned
    as they are. A 2D file is small, so reading it whole here costs nothing."""
    if len(image.shape) != 2:
        return image
    plane = np.asanyarray(image.dataobj)
    return nib.Nifti1Image(plane[:, :, np.newaxis], image.affine, image.header)


def check_volume_size(image, axis: int, limits: PixelLimits, what: str) -> None:
    """Raise TooLarge when the header's shape is over ``limits``: slice plane, slice count
    along canonical ``axis``, all voxels of one channel. nib.load reads only the header, so
    call this before any voxel is read (``_as_volume`` reads a 2D file whole)."""
    shape = [int(n) for n in image.shape[:3]] + [1] * max(0, 3 - len(image.shape))
    file_axis = canonical_axes(image.affine)[axis][0]
    plane = [n for a, n in enumerate(shape) if a != file_axis]
    limits.check_volume(plane[0], plane[1], shape[file_axis], what, unit="slices")


def _load_label_volume(path: Path, threshold: Optional[float], axis: int, limits: PixelLimits) -> _LabelVolume:
    label_image = nib.load(str(path))
    check_volume_size(label_image, axis, limits, "label volume")  # read whole below
    label_image = _as_volume(label_image)
    values = np.asanyarray(label_image.dataobj)
    if values.ndim == 4 and values.shape[3] == 1:
        values = values[..., 0]
    if values.ndim != 3:
        raise ValueError(f"label volume has shape {values.shape}, expected 3D")
    if threshold is not None:
        values = (values >= threshold).astype(np.uint8)
    elif values.dtype.kind not in "iu":
        values = np.rint(values).astype(np.int32)
    canonical = apply_orientation(values, io_orientation(label_image.affine))
    return _LabelVolume(canonical=canonical, file_shape=tuple(int(n) for n in label_image.shape[:3]))


def _channels(image, volume: _Volume, use_sequences: list[str]) -> list[tuple[Optional[int], Optional[str]]] | str:
    """(channel, sequence) pairs to slice from one image file, or why it cannot be sliced."""
    shape = tuple(image.shape)
    if len(shape) == 3:
        return [(None, volume.sequence)]
    if len(shape) == 4 and shape[3] == 1:
        return [(0, volume.sequence)]
    if len(shape) == 4 and volume.channel_names is not None:
        names = dict(volume.channel_names)
        pairs = [(c, names.get(c, f"channel {c}")) for c in range(shape[3])]
        return [(c, name) for c, name in pairs if _wanted(name, use_sequences)]
    return f"volume has shape {shape}: only 3D volumes, or 4D ones whose channels a dataset.json names, are sliced"


def _open_volume(ctx: IngestContext, volume: _Volume):
    """(image, canonical shape, channels to slice) of one image file, or why it cannot be used."""
    rel = volume.source_file
    try:
        image = nib.load(str(ctx.root / rel), keep_file_open=True)
        check_volume_size(image, ctx.spec.layout.slice_axis, ctx.limits, "NIfTI volume")
        image = _as_volume(image)
        # A degenerate affine (a zero column) has no orientation: found here, per volume.
        shape = _canonical_shape(image)
    except TooLarge as error:
        return Quarantined(rel, str(error), kind="too_large")
    except Exception as error:
        return Quarantined(rel, f"not a readable NIfTI volume: {describe_error(error)}", kind="unreadable")
    channels = _channels(image, volume, ctx.spec.layout.use_sequences)
    if isinstance(channels, str):
        return Quarantined(rel, channels, kind="unsupported")
    return image, shape, channels


def _read_case(ctx: IngestContext, case: _Case, names: dict[int, str]) -> IngestStream:
    layout = ctx.spec.layout
    axis = layout.slice_axis
    labels: Optional[_LabelVolume] = None
    # Every path of a case (a sequence template, a dataset.json entry, a link) must stay inside
    # the source folder: such a case is refused whole, nothing of it read.
    outside = [rel for rel in (*(v.source_file for v in case.volumes), case.label_file) if rel is not None and inside_file(ctx.root, rel) is None]
    if outside:
        yield Quarantined(outside[0], "path leads outside the source folder; case not read", kind="outside_source")
        return
    if case.label_file is not None:
        try:
            labels = _load_label_volume(ctx.root / case.label_file, layout.label_threshold, axis, ctx.limits)
        except TooLarge as error:
            yield Quarantined(case.name, f"{case.label_file}: {error}", kind="too_large")
            return
        except Exception as error:
            yield Quarantined(case.name, f"label volume {case.label_file} not readable: {describe_error(error)}", kind="unreadable")
            return

    reference_shape = labels.canonical.shape if labels is not None else None
    indices: Optional[list[int]] = None
    annotations_cache: dict[int, tuple[list[dict], list[str]]] = {}

    def annotations_for(index: int) -> tuple[list[dict], list[str]]:
        if labels is None:
            return [], []
        if index not in annotations_cache:
            label_plane = to_display(np.take(labels.canonical, index, axis=axis))
            annotations, found = [], []
            for _, name, mask in label_value_masks(label_plane, names):
                annotations.append({"kind": "mask", "label": name, "mask_ref": store_mask(ctx, mask)})
                if layout.finding_labels is None or name in layout.finding_labels:
                    found.append(name)
            annotations_cache[index] = (annotations, found)
        return annotations_cache[index]

    for volume in case.volumes:
        rel = volume.source_file
        opened = _open_volume(ctx, volume)
        if isinstance(opened, Quarantined):
            yield opened
            continue
        image, shape, channels = opened
        if labels is not None and shape != labels.canonical.shape:
            yield Quarantined(
                rel, f"label volume shape {labels.file_shape} differs from image shape {tuple(image.shape[:3])} ({case.label_file})", kind="invalid_annotation"
            )
            continue
        if reference_shape is None:
            reference_shape = shape  # no label volume: the case's first readable volume rules
        elif shape != reference_shape:
            yield Quarantined(rel, f"volume shape {shape} differs from the case's first volume shape {reference_shape} (RAS order)", kind="unsupported")
            continue
        if indices is None:
            presence = label_presence(labels.canonical, axis) if labels is not None else None
            indices = select_slices(shape[axis], presence, ctx.spec.slicing.slice_rule())
        for channel, sequence in channels:
            yield from _volume_records(ctx, image, rel, channel, sequence, indices, shape[axis], annotations_for, case.patient)


def _volume_records(
    ctx: IngestContext,
    image,
    rel: str,
    channel: Optional[int],
    sequence: Optional[str],
    indices: list[int],
    slice_count: int,
    annotations_for: Callable[[int], tuple[list[dict], list[str]]],
    patient: str,
) -> IngestStream:
    axis = ctx.spec.layout.slice_axis
    try:
        planes = canonical_planes(image, axis, indices, channel)
        spacing = _in_plane_spacing(image, axis)
        affine = canonical_affine(image) if has_world_coordinates(image) else None
        plane_shape = tuple(n for c, n in enumerate(_canonical_shape(image)) if c != axis)
    except Exception as error:
        what = f"sequence {sequence}" if sequence else "volume"
        yield Quarantined(rel, f"{what}: voxel data not readable: {describe_error(error)}", kind="unreadable")
        return
    modality = ctx.spec.modality_for(rel)
    # A slice of a volume with annotations either cuts them or was kept beside them (context).
    try:
        annotated_volume = any(annotations_for(index)[0] for index in indices)
    except Exception:
        annotated_volume = True  # the failing slice is quarantined below, with its reason
    for index in indices:
        try:
            annotations, found = annotations_for(index)
            yield make_record(
                ctx,
                source_file=rel,
                pixels=_pixels(to_display(planes.pop(index))),
                patient_id=patient,
                labels=path_labels(ctx.spec, rel) + found,
                annotations=annotations,
                pixel_units=_pixel_units(ctx.spec.layout, rel, modality),
                photometric="MONOCHROME2",
                sequence=sequence,
                slice_index=index,
                slice_count=slice_count,
                pixel_spacing_mm=spacing,
                slice_role=(ANNOTATED if annotations else CONTEXT) if annotated_volume else None,
                image_axes=nifti_display_axes(affine, axis, index, plane_shape) if affine is not None else None,
                # A 2D file (one echo frame per file) is an image, not a slice of a volume.
                frame_kind="slice" if slice_count > 1 else None,
            )
        except Exception as error:
            yield Quarantined(rel, f"slice {index}: {describe_error(error)}", record_id_for(ctx.spec.id, rel, sequence, index), kind="unreadable")


# --- one binary file per structure (TotalSegmentator) ---------------------------------------


def _inside(values: np.ndarray, threshold: Optional[float]) -> np.ndarray:
    return values >= threshold if threshold is not None else values != 0


def _structure_channel(image) -> Optional[int]:
    """None for a 3D structure file, 0 for a 4D one with a single channel; else ValueError."""
    if len(image.shape) == 3:
        return None
    if len(image.shape) == 4 and image.shape[3] == 1:
        return 0
    raise ValueError(f"structure file has shape {tuple(image.shape)}, expected 3D")


def canonical_presence(image, axis: int, channel: Optional[int], threshold: Optional[float]) -> np.ndarray:
    """One bool per canonical slice along ``axis``: does the structure cut it?

    Read in slabs along the file's LAST axis, which NIfTI stores contiguously (Fortran order),
    so a gzip file is decompressed in one forward pass whatever axis is sliced, and memory
    holds one slab.
    """
    file_axis, reversed_axis = canonical_axes(image.affine)[axis]
    presence = np.zeros(image.shape[file_axis], dtype=bool)
    depth = image.shape[2]
    for start in range(0, depth, SLAB_SLICES):
        stop = min(start + SLAB_SLICES, depth)
        selector: list = [slice(None), slice(None), slice(start, stop)]
        if channel is not None:
            selector.append(channel)
        inside = _inside(np.asanyarray(image.dataobj[tuple(selector)]), threshold)
        if file_axis == 2:
            presence[start:stop] = inside.any(axis=(0, 1))
        else:
            presence |= inside.any(axis=tuple(a for a in range(3) if a != file_axis))
    return presence[::-1] if reversed_axis else presence


def _structure_stem(relative_path: str) -> str:
    name = posixpath.basename(relative_path)
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return posixpath.splitext(name)[0]


def structure_files(root: Path, image_rel: str, structure_glob: str) -> list[str]:
    """The structure files of one image: ``structure_glob`` matched in the image's folder."""
    folder = posixpath.dirname(image_rel)
    found = sorted(
        p.relative_to(root).as_posix() for p in (root / folder).glob(structure_glob) if p.is_file() and is_inside(root, p)
    )
    return [rel for rel in found if _is_data_file(rel)]


def structures_by_label(layout, files: list[str]) -> dict[str, list[str]]:
    """Catalog label -> its structure files (several when the spec maps stems to one label)."""
    grouped: dict[str, list[str]] = {}
    for rel in files:
        stem = _structure_stem(rel)
        if layout.structure_names:
            label = layout.structure_names.get(stem)
            if label is None:
                continue  # a structure the spec does not name (no knowledge for it)
        else:
            label = stem.replace("_", " ")
        grouped.setdefault(label, []).append(rel)
    return dict(sorted(grouped.items()))


def _open_structures(ctx: IngestContext, image_rel: str, image, shape, grouped: dict[str, list[str]]):
    """Headers of every structure file (no voxel read yet): label -> [(rel, channel)].

    A file that is unreadable or whose shape differs from the image's is quarantined and its
    label left out of the case: a region missing one of its parts would be a wrong ROI.
    """
    opened: dict[str, list] = {}
    problems: list[Quarantined] = []
    for label, files in grouped.items():
        parts = []
        for rel in files:
            try:
                structure = nib.load(str(ctx.root / rel))
                channel = _structure_channel(structure)
                structure_shape = _canonical_shape(structure)
            except Exception as error:
                problems.append(Quarantined(rel, f"structure file not readable: {describe_error(error)}; '{label}' left out of {image_rel}", kind="unreadable"))
                break
            if structure_shape != shape:
                problems.append(Quarantined(
                    rel,
                    f"structure file shape {tuple(structure.shape[:3])} differs from image shape "
                    f"{tuple(image.shape[:3])} ({image_rel}); '{label}' left out of that image",
                    kind="invalid_annotation",
                ))
                break
            parts.append((rel, channel))
        else:
            opened[label] = parts
    return opened, problems


def _open_stream(ctx: IngestContext, rel: str):
    # One open handle per pass over a file, so slab reads continue one gzip stream; it closes
    # when the image is dropped, never 117 at once.
    return nib.load(str(ctx.root / rel), keep_file_open=True)


def _read_structure_case(ctx: IngestContext, image_rel: str, grouped: dict[str, list[str]], patient: str) -> IngestStream:
    layout = ctx.spec.layout
    axis = layout.slice_axis
    opened_image = _open_volume(ctx, _Volume(image_rel, _sequence_from_path(layout, image_rel)))
    if isinstance(opened_image, Quarantined):
        yield opened_image
        return
    image, shape, channels = opened_image
    opened, problems = _open_structures(ctx, image_rel, image, shape, grouped)
    yield from problems

    # Presence is read only when the rule looks at it: every_k picks slices from the shape.
    presence: dict[str, np.ndarray] = {}
    if ctx.spec.slicing.rule == "annotated_plus_context":
        for label, parts in list(opened.items()):
            rel = parts[0][0]
            try:
                found = np.zeros(shape[axis], dtype=bool)
                for rel, channel in parts:
                    found |= canonical_presence(_open_stream(ctx, rel), axis, channel, layout.label_threshold)
                presence[label] = found
            except Exception as error:
                yield Quarantined(rel, f"structure voxels not readable: {describe_error(error)}; '{label}' left out of {image_rel}", kind="unreadable")
                del opened[label]
    union = np.logical_or.reduce(list(presence.values())) if presence else None
    indices = select_slices(shape[axis], union, ctx.spec.slicing.slice_rule())

    annotations: dict[int, list[dict]] = {index: [] for index in indices}
    findings: dict[int, list[str]] = {index: [] for index in indices}
    for label, parts in opened.items():
        if label in presence and not presence[label][indices].any():
            continue  # not in any kept slice: no need to decode its planes
        rel = parts[0][0]
        try:
            joined = {index: np.zeros((), dtype=bool) for index in indices}
            for rel, channel in parts:
                for index, plane in canonical_planes(_open_stream(ctx, rel), axis, indices, channel).items():
                    joined[index] = joined[index] | _inside(plane, layout.label_threshold)
        except Exception as error:
            yield Quarantined(rel, f"structure voxels not readable: {describe_error(error)}; '{label}' left out of {image_rel}", kind="unreadable")
            continue
        for index, mask in joined.items():
            if mask.any():
                ref = store_mask(ctx, to_display(mask).astype(np.uint8))
                annotations[index].append({"kind": "mask", "label": label, "mask_ref": ref})
                if label in layout.finding_structures:
                    findings[index].append(label)

    def annotations_for(index: int) -> tuple[list[dict], list[str]]:
        return annotations[index], findings[index]

    for channel, sequence in channels:
        yield from _volume_records(ctx, image, image_rel, channel, sequence, indices, shape[axis], annotations_for, patient)


def _read_structure_files(ctx: IngestContext) -> IngestStream:
    layout = ctx.spec.layout
    images = [p.relative_to(ctx.root).as_posix() for p in list_files(ctx.root, layout.image_glob, layout.exclude_glob)]
    images = [rel for rel in images if _is_data_file(rel)]
    structures = {rel: structure_files(ctx.root, rel, layout.structure_glob) for rel in images}
    # A glob wide enough to match the structure files too ("**/*.nii.gz") must not read a
    # structure as an image of its own.
    all_structures = {rel for files in structures.values() for rel in files}
    for rel in images:
        if rel in all_structures or not _wanted(_sequence_from_path(layout, rel), layout.use_sequences):
            continue
        if not ctx.owns(rel):
            continue  # another shard's case: its structure files follow it there
        folder = posixpath.dirname(rel) or "."
        if not structures[rel]:
            yield Quarantined(rel, f"no structure file matches '{layout.structure_glob}' in {folder}: image left out (incomplete download?)", kind="unpaired")
            continue
        grouped = structures_by_label(layout, structures[rel])
        if not grouped:
            yield Quarantined(rel, f"none of the {len(structures[rel])} structure files in {folder} is listed in layout.structure_names", kind="unpaired")
            continue
        yield from in_unit(rel, _read_structure_case(ctx, rel, grouped, patient_identifier(ctx.spec.patient.key_rule(), rel)))


# --- the three layouts ---------------------------------------------------------------------


def _default_label_names(ctx: IngestContext) -> dict[int, str]:
    layout = ctx.spec.layout
    return dict(layout.label_names) or {1: ctx.spec.diseases[0] if ctx.spec.diseases else "annotated region"}


def _sequence_from_path(layout, relative_path: str) -> Optional[str]:
    if layout.sequence_regex:
        match = re.search(layout.sequence_regex, relative_path)
        if match:
            return (match.group(1) if match.groups() else match.group(0)).upper()
    return None


def _read_image_glob(ctx: IngestContext) -> IngestStream:
    layout = ctx.spec.layout
    names = _default_label_names(ctx)
    files = [p.relative_to(ctx.root).as_posix() for p in list_files(ctx.root, layout.image_glob, layout.exclude_glob)]
    # A glob wide enough to match the label volumes too ("**/*.nii.gz") must not read a label
    # as an image of its own.
    label_files = {label_path_for(rel, layout) for rel in files} - {None}
    for rel in files:
        if not _is_data_file(rel) or rel in label_files or not ctx.owns(rel):
            continue  # (not owned: another shard's image; its label volume follows it there)
        label_rel = label_path_for(rel, layout)
        if label_rel is not None and not (ctx.root / label_rel).is_file():
            label_rel = None  # an image without its label file is kept, unannotated
        sequence = _sequence_from_path(layout, rel)
        if not _wanted(sequence, layout.use_sequences):
            continue
        case = _Case(rel, (_Volume(rel, sequence),), label_rel, patient_identifier(ctx.spec.patient.key_rule(), rel))
        yield from in_unit(rel, _read_case(ctx, case, names))


def _read_case_folders(ctx: IngestContext) -> IngestStream:
    layout = ctx.spec.layout
    names = _default_label_names(ctx)
    folders = sorted(
        p.relative_to(ctx.root).as_posix() for p in contained_glob(ctx.root, layout.case_glob) if p.is_dir()
    )
    folders = [folder for folder in folders if _is_data_file(folder)]
    if not folders:
        yield Quarantined(".", f"no case folder matches layout.case_glob '{layout.case_glob}'", kind="not_found")
    for case_rel in folders:
        if ctx.owns(case_rel):
            # A case is one unit: its sequences, label file and problems go to one shard.
            yield from in_unit(case_rel, _read_case_folder(ctx, case_rel, names))


def _read_case_folder(ctx: IngestContext, case_rel: str, names: dict[int, str]) -> IngestStream:
    layout = ctx.spec.layout
    case_name = posixpath.basename(case_rel)
    volumes = []
    for sequence, template in layout.sequences.items():
        if not _wanted(sequence, layout.use_sequences):
            continue
        rel = posixpath.join(case_rel, template.replace("{case}", case_name))
        if (ctx.root / rel).is_file():
            volumes.append(_Volume(rel, sequence))
        else:
            yield Quarantined(rel, f"sequence '{sequence}' of case {case_name} is missing; the case's other sequences are kept", kind="unpaired")
    label_rel = None
    if layout.label_template:
        label_rel = posixpath.join(case_rel, layout.label_template.replace("{case}", case_name))
        if not (ctx.root / label_rel).is_file():
            yield Quarantined(case_rel, f"label file {label_rel} is missing: case {case_name} left out", kind="unpaired")
            return
    if not volumes:
        return
    # Every sequence of a case is the same patient: the default "file" rule would make
    # each sequence file its own patient and let one case straddle the splits.
    if ctx.spec.patient.source == "file":
        patient = case_rel
    else:
        patient = patient_identifier(ctx.spec.patient.key_rule(), label_rel or volumes[0].source_file)
    yield from _read_case(ctx, _Case(case_rel, tuple(volumes), label_rel, patient), names)


def _int_keyed(mapping, what: str) -> dict[int, str]:
    if mapping is None:
        return {}
    if not isinstance(mapping, dict):
        raise ValueError(f'"{what}" is not a mapping')
    try:
        return {int(key): str(value) for key, value in mapping.items()}
    except (TypeError, ValueError):
        raise ValueError(f'"{what}" keys must be integers') from None


def _dataset_json_path(json_rel: str, listed: str) -> Optional[str]:
    """A path listed in dataset.json ("./imagesTr/x.nii.gz"), relative to the source root;
    None when it points outside the root."""
    joined = posixpath.normpath(posixpath.join(posixpath.dirname(json_rel), listed))
    if joined.startswith("../") or joined == ".." or posixpath.isabs(joined):
        return None
    return joined


def _read_dataset_json(ctx: IngestContext) -> IngestStream:
    layout = ctx.spec.layout
    json_rel = layout.dataset_json
    try:
        description = json.loads((ctx.root / json_rel).read_text(encoding="utf-8"))
        if not isinstance(description, dict) or not isinstance(description.get("training"), list):
            raise ValueError('no "training" list')
        label_names = _int_keyed(description.get("labels"), "labels")
        channel_names = _int_keyed(description.get("modality"), "modality")
    except (OSError, ValueError) as error:
        yield Quarantined(json_rel, f"dataset description not usable: {describe_error(error)}", kind="unreadable")
        return

    names = {}
    for value, raw in label_names.items():
        if value != 0:  # 0 is "background" in every Decathlon task
            names[value] = rename_label(ctx.spec, raw) or ""
    names.update(layout.label_names)
    if not names:
        names = _default_label_names(ctx)
    unmatched = [name for name in layout.use_sequences if not any(name.lower() == c.lower() for c in channel_names.values())]
    if unmatched and channel_names:
        yield Quarantined(json_rel, f"layout.use_sequences {unmatched} match no \"modality\" of {json_rel}: {sorted(channel_names.values())}", kind="invalid_annotation")

    entries = [(entry, True) for entry in description["training"]]
    if layout.include_test:
        entries += [(entry, False) for entry in description.get("test") or []]
    channels = tuple(sorted(channel_names.items()))
    for position, (entry, labelled) in enumerate(entries):
        # "training" entries are {"image", "label"}; "test" entries are bare image paths.
        listed_image = entry.get("image") if isinstance(entry, dict) else entry
        listed_label = entry.get("label") if labelled and isinstance(entry, dict) else None
        if not isinstance(listed_image, str):
            yield Quarantined(json_rel, f"entry {position} of {json_rel} has no image path", kind="invalid_annotation")
            continue
        image_rel = _dataset_json_path(json_rel, listed_image)
        label_rel = _dataset_json_path(json_rel, listed_label) if isinstance(listed_label, str) else None
        if image_rel is None or (isinstance(listed_label, str) and label_rel is None):
            yield Quarantined(json_rel, f"entry {position} of {json_rel} points outside the source folder", kind="outside_source")
            continue
        if not _is_data_file(image_rel) or not ctx.owns(image_rel):
            continue  # (not owned: another shard's image; its label file follows it there)
        if not (ctx.root / image_rel).is_file():
            yield Quarantined(image_rel, f"listed in {json_rel} but missing", kind="orphan")
            continue
        if labelled and label_rel is None:
            yield Quarantined(image_rel, f"training entry {position} of {json_rel} names no label file", kind="unpaired")
            continue
        if label_rel is not None and not (ctx.root / label_rel).is_file():
            yield Quarantined(image_rel, f"label file {label_rel} listed in {json_rel} is missing", kind="unpaired")
            continue
        case = _Case(image_rel, (_Volume(image_rel, channel_names=channels),), label_rel, patient_identifier(ctx.spec.patient.key_rule(), image_rel))
        yield from in_unit(image_rel, _read_case(ctx, case, names))


def read(ctx: IngestContext) -> IngestStream:
    layout = ctx.spec.layout
    if layout.dataset_json:
        yield from _read_dataset_json(ctx)
    elif layout.case_glob:
        yield from _read_case_folders(ctx)
    elif layout.structure_glob:
        yield from _read_structure_files(ctx)
    else:
        yield from _read_image_glob(ctx)
