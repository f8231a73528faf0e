"""DICOM annotation objects (RTSTRUCT, SEG) turned into per-slice masks of the images they reference.

An annotation object names its images by UID; where those UIDs are absent among the files (a
publisher that cropped or re-exported the images, as the IBSI sarcoma copy did), it falls back
to the referenced series, then to the Frame of Reference plus the slice position: a shared
Frame of Reference means a shared patient coordinate system, so a contour at a given position
lies on the slice at that position.

- RTSTRUCT: each CLOSED_PLANAR contour (patient coordinates, mm) is projected onto the pixel
  grid of the slice it lies on (ImagePositionPatient, ImageOrientationPatient, PixelSpacing) and
  filled with ``skimage.draw.polygon`` (pixel centres inside the polygon). The contours of one
  ROI on one slice combine by XOR (even-odd rule), so a contour inside another is a hole.
- SEG: each frame's pixels (BINARY, or FRACTIONAL thresholded at 50% of MaximumFractionalValue)
  go to the segment it identifies and to the source frame it was derived from (by SOP Instance
  UID, else by its plane position).

What cannot be placed (an object that references no image among the files, a contour on no
slice or outside the grid, a frame on another pixel grid) is quarantined with the reason; the
images are still read. Reasons name ROI / segment numbers and the catalog label, never the
object's free-text names or UIDs (free-text DICOM fields do not leave ingest).
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels import pixel_array
from skimage import draw

from medtrinity_assets.catalog.layouts import DicomLayout
from medtrinity_assets.imaging.dicom_io import DicomHeader, functional_group_value, read_dicom
from medtrinity_assets.sources.base import Quarantined

# (source file, frame index); frame None for a single-frame file.
PlaneKey = tuple[str, Optional[int]]
# Plane key -> finding label -> boolean mask of the plane's pixel grid.
PlaneMasks = dict[PlaneKey, dict[str, np.ndarray]]


@dataclass(frozen=True, eq=False)
class ImagePlane:
    """One 2D image (a single-frame file or one frame) with what is needed to place annotations."""

    source_file: str
    frame: Optional[int]
    sop_instance_uid: Optional[str]
    series_key: str  # SeriesInstanceUID of a single-frame file, else "file:<path>"
    series_uid: Optional[str]
    frame_of_reference_uid: Optional[str]
    rows: int
    columns: int
    # Patient geometry (mm); None when the header has none (then only UID matching works).
    origin: Optional[np.ndarray] = None  # centre of the first pixel (ImagePositionPatient)
    row_direction: Optional[np.ndarray] = None  # direction of increasing column index
    column_direction: Optional[np.ndarray] = None  # direction of increasing row index
    spacing: Optional[tuple[float, float]] = None  # (between rows, between columns)
    slice_thickness: Optional[float] = None

    @property
    def key(self) -> PlaneKey:
        return (self.source_file, self.frame)

    @property
    def has_geometry(self) -> bool:
        return self.origin is not None and self.row_direction is not None and self.spacing is not None

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.row_direction, self.column_direction)

    def pixel_coordinates(self, points_mm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(row, column, distance from the plane in mm) of patient points (N, 3)."""
        offset = np.asarray(points_mm, dtype=np.float64) - self.origin
        rows = offset @ self.column_direction / self.spacing[0]
        columns = offset @ self.row_direction / self.spacing[1]
        return rows, columns, offset @ self.normal


def planes_of(source_file: str, header: DicomHeader) -> list[ImagePlane]:
    """The image planes of one image file: one, or one per frame of a multi-frame file."""
    multi_frame = header.n_frames > 1
    series_key = header.series_uid if header.series_uid and not multi_frame else f"file:{source_file}"
    common = dict(
        source_file=source_file,
        sop_instance_uid=header.sop_instance_uid,
        series_key=series_key,
        series_uid=header.series_uid,
        frame_of_reference_uid=header.frame_of_reference_uid,
        rows=header.rows,
        columns=header.columns,
        slice_thickness=header.slice_thickness,
    )
    geometry = header.orientation is not None and header.pixel_spacing_mm is not None
    directions = {}
    if geometry:
        directions = dict(
            row_direction=np.asarray(header.orientation[:3], dtype=np.float64),
            column_direction=np.asarray(header.orientation[3:6], dtype=np.float64),
            spacing=(float(header.pixel_spacing_mm[0]), float(header.pixel_spacing_mm[1])),
        )
    if not multi_frame:
        origin = np.asarray(header.position, dtype=np.float64) if geometry and header.position else None
        return [ImagePlane(frame=None, origin=origin, **common, **directions)]
    positions = header.frame_positions if geometry else None
    return [
        ImagePlane(frame=frame, origin=np.asarray(positions[frame], dtype=np.float64) if positions else None,
                   **common, **directions)
        for frame in range(header.n_frames)
    ]


def finding_label(name: str, mapping: dict[str, str], number: int) -> Optional[str]:
    """Catalog label of an ROI / segment name: the first regex of ``mapping`` that matches
    (case-insensitive); None when it is not wanted. With an empty mapping every ROI is kept as
    "structure <number>": ROI names are free text typed at the planning console ("GTV_Smith"),
    so they never become labels unless the spec maps them to catalog names."""
    if not mapping:
        return f"structure {number}"
    for pattern, label in mapping.items():
        if re.search(pattern, name, flags=re.IGNORECASE):
            return label.strip().lower() or None
    return None


class PlaneIndex:
    """The image planes of a source, looked up by UID, series and Frame of Reference."""

    def __init__(self, planes: Iterable[ImagePlane]):
        self.by_sop: dict[str, list[ImagePlane]] = defaultdict(list)
        self.series: dict[str, list[ImagePlane]] = defaultdict(list)
        self.keys_by_series_uid: dict[str, set[str]] = defaultdict(set)
        self.keys_by_frame_of_reference: dict[str, set[str]] = defaultdict(set)
        for plane in planes:
            if plane.sop_instance_uid:
                self.by_sop[plane.sop_instance_uid].append(plane)
            self.series[plane.series_key].append(plane)
            if plane.series_uid:
                self.keys_by_series_uid[plane.series_uid].add(plane.series_key)
            if plane.frame_of_reference_uid:
                self.keys_by_frame_of_reference[plane.frame_of_reference_uid].add(plane.series_key)
        self._tolerance = {key: _slice_tolerance(members) for key, members in self.series.items()}
        # Per series, the placed planes with their origins and normals stacked, so finding the
        # slice of a contour is one array operation (structure sets hold thousands of contours).
        self._placed: dict[str, tuple[list[ImagePlane], np.ndarray, np.ndarray]] = {}
        for key, members in self.series.items():
            placed = [p for p in members if p.has_geometry and p.origin is not None]
            if placed:
                self._placed[key] = (placed, np.stack([p.origin for p in placed]), np.stack([p.normal for p in placed]))

    def candidate_series(
        self, sop_uids: Iterable[str], series_uids: Iterable[str], frame_of_reference_uids: Iterable[str]
    ) -> list[str]:
        """Series an annotation object applies to: those holding its referenced images, else its
        referenced series, else every series sharing its Frame of Reference."""
        for found in (
            {plane.series_key for uid in sop_uids for plane in self.by_sop.get(uid, [])},
            {key for uid in series_uids for key in self.keys_by_series_uid.get(uid, ())},
            {key for uid in frame_of_reference_uids for key in self.keys_by_frame_of_reference.get(uid, ())},
        ):
            if found:
                return sorted(found)
        return []

    def plane_by_sop(self, sop_uid: Optional[str], frame_number: Optional[int]) -> Optional[ImagePlane]:
        """The plane of a referenced SOP instance (``frame_number`` is 1-based, for multi-frame)."""
        planes = self.by_sop.get(sop_uid or "", [])
        if len(planes) == 1 and planes[0].frame is None:
            return planes[0]
        if frame_number and 1 <= frame_number <= len(planes):
            return planes[frame_number - 1]
        return None

    def planes_at(self, series_keys: Iterable[str], points_mm: np.ndarray) -> list[ImagePlane]:
        """Per series, the slice whose plane the points lie on (within half the slice gap)."""
        points = np.asarray(points_mm, dtype=np.float64)
        found = []
        for key in series_keys:
            if key not in self._placed:
                continue
            placed, origins, normals = self._placed[key]
            # (plane, point) signed distances; a plane fits when its farthest point is near.
            distances = np.einsum("pnk,pk->pn", points[np.newaxis] - origins[:, np.newaxis], normals)
            worst = np.abs(distances).max(axis=1)
            best = int(np.argmin(worst))
            if worst[best] <= self._tolerance[key]:
                found.append(placed[best])
        return found


def _slice_tolerance(planes: list[ImagePlane]) -> float:
    """Half the gap between neighbouring slices: a point closer than that lies on the slice."""
    with_geometry = [p for p in planes if p.has_geometry and p.origin is not None]
    if len(with_geometry) > 1:
        normal = with_geometry[0].normal
        heights = np.sort([float(p.origin @ normal) for p in with_geometry])
        gaps = np.diff(heights)
        gaps = gaps[gaps > 1e-3]
        if gaps.size:
            return 0.5 * float(np.median(gaps))
    thickness = next((p.slice_thickness for p in planes if p.slice_thickness), None)
    return 0.5 * thickness if thickness else 0.5


def rasterize_contour(points_mm: np.ndarray, plane: ImagePlane) -> Optional[np.ndarray]:
    """Boolean mask of a closed planar contour (N, 3 patient mm) on ``plane``; None when no
    part of it falls inside the image grid."""
    shape = (plane.rows, plane.columns)
    rows, columns, _ = plane.pixel_coordinates(points_mm)
    mask = np.zeros(shape, dtype=bool)
    # Clipped to the grid: a contour partly outside a cropped image keeps its inside part.
    rr, cc = draw.polygon(rows, columns, shape)
    mask[rr, cc] = True
    if mask.any():
        return mask
    r, c = np.rint(rows).astype(int), np.rint(columns).astype(int)
    inside = (r >= 0) & (r < shape[0]) & (c >= 0) & (c < shape[1])
    if not inside.any():
        return None
    # Smaller than a pixel (no pixel centre inside): keep the pixels its points fall in.
    mask[r[inside], c[inside]] = True
    return mask


def add_mask(masks: PlaneMasks, key: PlaneKey, label: str, mask: np.ndarray) -> None:
    per_label = masks.setdefault(key, {})
    per_label[label] = per_label[label] | mask if label in per_label else mask


def _uids(items: Iterable, keyword: str) -> set[str]:
    return {str(item.get(keyword)).strip() for item in items if item.get(keyword)}


def _seq(ds, keyword: str) -> list:
    value = ds.get(keyword) if ds is not None else None
    return list(value) if value else []


# --- RTSTRUCT -------------------------------------------------------------------------------


def _rtstruct_references(ds: Dataset) -> tuple[set[str], set[str], set[str]]:
    sop_uids, series_uids, frame_uids = set(), set(), set()
    for frame_ref in _seq(ds, "ReferencedFrameOfReferenceSequence"):
        frame_uids |= _uids([frame_ref], "FrameOfReferenceUID")
        for study in _seq(frame_ref, "RTReferencedStudySequence"):
            for series in _seq(study, "RTReferencedSeriesSequence"):
                series_uids |= _uids([series], "SeriesInstanceUID")
                sop_uids |= _uids(_seq(series, "ContourImageSequence"), "ReferencedSOPInstanceUID")
    frame_uids |= _uids(_seq(ds, "StructureSetROISequence"), "ReferencedFrameOfReferenceUID")
    for roi in _seq(ds, "ROIContourSequence"):
        for contour in _seq(roi, "ContourSequence"):
            sop_uids |= _uids(_seq(contour, "ContourImageSequence"), "ReferencedSOPInstanceUID")
    return sop_uids, series_uids, frame_uids


def rtstruct_masks(ds: Dataset, source_file: str, layout: DicomLayout, index: PlaneIndex, masks: PlaneMasks) -> list[Quarantined]:
    """Rasterize the wanted ROIs of an RTSTRUCT into ``masks``; return what could not be placed."""
    series_keys = index.candidate_series(*_rtstruct_references(ds))
    if not series_keys:
        return [Quarantined(source_file, "not an image object (Modality=RTSTRUCT): a structure set whose referenced images "
                            "(SOP instances, series and frame of reference) are not among the source's files", kind="orphan")]
    names = {
        int(item.ROINumber): str(item.get("ROIName") or "")
        for item in _seq(ds, "StructureSetROISequence")
        if item.get("ROINumber") is not None
    }
    problems: list[Quarantined] = []

    def report(text: str, kind: str) -> None:
        problems.append(Quarantined(source_file, text, kind=kind))

    for roi in _seq(ds, "ROIContourSequence"):
        number = int(roi.get("ReferencedROINumber") or 0)
        label = finding_label(names.get(number, ""), layout.rtstruct_rois, number)
        if label is None:
            continue  # not wanted (body outline, couch, planning structure) or unnamed
        where = f"ROI {number} (label '{label}')"
        # Even-odd rule per slice: a contour inside another of the same ROI is a hole.
        filled: dict[PlaneKey, np.ndarray] = {}
        for position, contour in enumerate(_seq(roi, "ContourSequence"), start=1):
            kind = str(contour.get("ContourGeometricType") or "CLOSED_PLANAR").upper()
            data = contour.get("ContourData")
            if kind != "CLOSED_PLANAR":
                report(f"contour {position} of {where} is {kind}, not an area (CLOSED_PLANAR); left out", kind="invalid_annotation")
                continue
            if not data or len(data) < 9 or len(data) % 3:
                report(f"contour {position} of {where} has {len(data or [])} coordinates, not 3 or more (x, y, z) points; left out", kind="invalid_annotation")
                continue
            points = np.asarray([float(v) for v in data], dtype=np.float64).reshape(-1, 3)
            planes = _referenced_planes(contour, index) or index.planes_at(series_keys, points)
            if not planes:
                height = float(points[:, 2].mean())
                report(f"contour {position} of {where} (z = {height:.1f} mm) lies on no slice of the referenced images: "
                       "outside the image grid; the images are kept without it", kind="orphan")
                continue
            for plane in planes:
                mask = rasterize_contour(points, plane)
                if mask is None:
                    report(f"contour {position} of {where} lies outside the pixel grid of its slice ({plane.source_file}); "
                           "the image is kept without it", kind="invalid_annotation")
                    continue
                filled[plane.key] = filled[plane.key] ^ mask if plane.key in filled else mask
        for key in sorted(filled, key=plane_sort_key):
            if filled[key].any():
                add_mask(masks, key, label, filled[key])
    return problems


def _referenced_planes(contour: Dataset, index: PlaneIndex) -> list[ImagePlane]:
    """The placed image planes a contour names in its ContourImageSequence (often none: a
    re-exported series has new UIDs)."""
    planes = []
    for item in _seq(contour, "ContourImageSequence"):
        plane = index.plane_by_sop(item.get("ReferencedSOPInstanceUID"), _int(item.get("ReferencedFrameNumber")))
        if plane is not None and plane.has_geometry and plane.origin is not None:
            planes.append(plane)
    return planes


# --- SEG ------------------------------------------------------------------------------------


def _frame_sources(ds: Dataset, frame: int) -> list[tuple[Optional[str], Optional[int]]]:
    """(SOP Instance UID, 1-based frame number) of the images a SEG frame was derived from."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    item = per_frame[frame] if frame < len(per_frame) else None
    found = []
    for derivation in _seq(item, "DerivationImageSequence"):
        for source in _seq(derivation, "SourceImageSequence"):
            found.append((source.get("ReferencedSOPInstanceUID"), _int(source.get("ReferencedFrameNumber"))))
    return found


def _int(value) -> Optional[int]:
    if isinstance(value, (list, tuple, MultiValue)):  # ReferencedFrameNumber may be multi-valued
        value = value[0] if len(value) else None
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _seg_references(ds: Dataset) -> tuple[set[str], set[str], set[str]]:
    sop_uids, series_uids = set(), set()
    for series in _seq(ds, "ReferencedSeriesSequence"):
        series_uids |= _uids([series], "SeriesInstanceUID")
        sop_uids |= _uids(_seq(series, "ReferencedInstanceSequence"), "ReferencedSOPInstanceUID")
    for frame in range(int(ds.get("NumberOfFrames") or 1)):
        sop_uids |= {uid for uid, _ in _frame_sources(ds, frame) if uid}
    return sop_uids, series_uids, _uids([ds], "FrameOfReferenceUID")


def seg_masks(ds: Dataset, source_file: str, layout: DicomLayout, index: PlaneIndex, masks: PlaneMasks) -> list[Quarantined]:
    """Map the wanted segments of a DICOM SEG onto their source frames in ``masks``."""
    series_keys = index.candidate_series(*_seg_references(ds))
    if not series_keys:
        return [Quarantined(source_file, "not an image object (Modality=SEG): a segmentation whose referenced images "
                            "(SOP instances, series and frame of reference) are not among the source's files", kind="orphan")]
    labels = {
        int(item.SegmentNumber): finding_label(str(item.get("SegmentLabel") or ""), layout.seg_segments, int(item.SegmentNumber))
        for item in _seq(ds, "SegmentSequence")
        if item.get("SegmentNumber") is not None
    }
    if not any(labels.values()):
        return []
    fractional = str(ds.get("SegmentationType") or "BINARY").upper() == "FRACTIONAL"
    threshold = 0.5 * float(ds.get("MaximumFractionalValue") or 255)
    shared_orientation = functional_group_value(ds, "PlaneOrientationSequence", "ImageOrientationPatient", None)
    unplaced, other_grid = 0, 0
    for frame in range(int(ds.get("NumberOfFrames") or 1)):
        segment = _int(functional_group_value(ds, "SegmentIdentificationSequence", "ReferencedSegmentNumber", frame))
        label = labels.get(segment)
        if label is None:
            continue  # a segment the spec does not want: its frames are not even decoded
        # One frame at a time: a whole-body SEG holds thousands of frames.
        pixels = pixel_array(ds, index=frame)
        frame_mask = pixels >= threshold if fractional else pixels != 0
        if not frame_mask.any():
            continue  # an empty frame adds nothing
        orientation = functional_group_value(ds, "PlaneOrientationSequence", "ImageOrientationPatient", frame) or shared_orientation
        planes = [
            plane for uid, number in _frame_sources(ds, frame) if (plane := index.plane_by_sop(uid, number)) is not None
        ]
        position = functional_group_value(ds, "PlanePositionSequence", "ImagePositionPatient", frame)
        if not planes and position is not None:
            planes = index.planes_at(series_keys, np.asarray([[float(v) for v in position]]))
        if not planes:
            unplaced += 1
            continue
        for plane in planes:
            if not _same_grid(plane, frame_mask.shape, position, orientation):
                other_grid += 1
                continue
            add_mask(masks, plane.key, label, frame_mask)
    problems = []
    if unplaced:
        problems.append(Quarantined(source_file, f"{unplaced} non-empty segment frame(s) reference no image among the source's "
                                    "files (neither by SOP instance nor by plane position); left out", kind="orphan"))
    if other_grid:
        problems.append(Quarantined(source_file, f"{other_grid} segment frame(s) lie on another pixel grid than their source "
                                    "image (rows, columns, position or orientation differ); left out", kind="invalid_annotation"))
    return problems


def _same_grid(plane: ImagePlane, shape: tuple[int, int], position, orientation) -> bool:
    """Whether a SEG frame's pixels map one to one onto the plane's pixels."""
    if shape != (plane.rows, plane.columns):
        return False
    if position is None or not plane.has_geometry or plane.origin is None:
        return True  # matched by UID without geometry to compare: the standard says same grid
    rows, columns, _ = plane.pixel_coordinates(np.asarray([[float(v) for v in position]]))
    if orientation is not None:
        directions = np.asarray([float(v) for v in orientation], dtype=np.float64)
        same_rows = np.allclose(directions[:3], plane.row_direction, atol=1e-3)
        if not (same_rows and np.allclose(directions[3:6], plane.column_direction, atol=1e-3)):
            return False
    return abs(rows[0]) < 0.5 and abs(columns[0]) < 0.5


# --- both -----------------------------------------------------------------------------------


def plane_sort_key(key: PlaneKey) -> tuple[str, int]:
    return (key[0], -1 if key[1] is None else key[1])


def collect_annotations(
    root: Path, layout: DicomLayout, objects: list[tuple[str, str]], planes: Iterable[ImagePlane]
) -> tuple[PlaneMasks, list[Quarantined]]:
    """Masks per image plane from every annotation object ((relative path, Modality), sorted),
    and the Quarantined for what could not be read or placed."""
    index = PlaneIndex(planes)
    masks: PlaneMasks = {}
    problems: list[Quarantined] = []
    for source_file, modality in objects:
        # Each object fills its own masks first, so one that fails half-way adds nothing.
        own: PlaneMasks = {}
        try:
            ds = read_dicom(root / source_file)
            read = rtstruct_masks if modality == "RTSTRUCT" else seg_masks
            problems.extend(read(ds, source_file, layout, index, own))
        except Exception as error:  # one malformed annotation object must not stop the source
            problems.append(Quarantined(source_file, f"unreadable {modality} object: {type(error).__name__}: {error}", kind="unreadable"))
            continue
        merge_masks(masks, own)
    return masks, problems


def merge_masks(masks: PlaneMasks, own: PlaneMasks) -> None:
    """Add one annotation object's masks to the source's, in a fixed order (reruns agree)."""
    for key in sorted(own, key=plane_sort_key):
        for label in sorted(own[key]):
            add_mask(masks, key, label, own[key][label])
