"""Where the stored 2D pixel array lies in the patient: the ``image_axes`` of a record.

Patient-side words ("the patient's left thigh") may only come from geometry the source itself
states (DICOM orientation and position, DICOM PatientOrientation, the NIfTI affine) or from a
view the spec declares, never from where a region sits in the frame. Ingest describes each
stored pixel array with one JSON object (RAW_RECORDS ``image_axes``):

- ``column_direction`` / ``row_direction``: the patient direction of increasing column index
  (moving right across the stored image) and of increasing row index (moving down), as DICOM
  PatientOrientation letters in the LPS frame: ``L`` / ``R`` (patient left / right), ``A`` /
  ``P`` (anterior / posterior), ``H`` / ``F`` (head / foot). Only the dominant letter is given;
  the cosines below are exact.
- ``origin_mm``: the patient position (LPS, mm) of the centre of pixel (row 0, column 0);
  ``column_cosines`` / ``row_cosines``: unit LPS vectors of increasing column / row;
  ``spacing_mm``: [between rows, between columns]. These are null when only directions are
  known (projection radiographs, declared views).
- ``source``: ``dicom_orientation`` (ImageOrientationPatient + ImagePositionPatient),
  ``dicom_patient_orientation`` (PatientOrientation of a projection image), ``nifti_affine``
  (the affine, after the reader's turn to the radiological display), ``declared_view`` (the
  spec or the publisher's table names a PA/AP radiograph, shown in the standard display).

LPS is DICOM's patient coordinate system: +x towards the patient's left, +y posterior, +z head.
NIfTI's RAS is turned into it by negating x and y. Everything here is plain numpy.
"""

from __future__ import annotations

import json
import re
from typing import Optional, Sequence

import numpy as np

# LPS axis -> (letter for the + direction, letter for the - direction)
_AXIS_LETTERS = (("L", "R"), ("P", "A"), ("H", "F"))
RAS_TO_LPS = np.array([-1.0, -1.0, 1.0])

# Direction letters a PatientOrientation value may use (PS3.3 C.7.6.1.1.1).
_ORIENTATION_LETTERS = set("LRAPHF")

# Views of a projection radiograph shown in the standard display, where the patient faces the
# viewer (PA and AP alike): increasing column runs towards the patient's left, rows downwards.
# "frontal": PA or AP, the publisher does not say which (the display is the same).
FRONTAL_VIEWS = frozenset({"PA", "AP", "frontal"})

# ViewPosition / declared spellings -> one name per view.
_VIEW_NAMES = {
    "PA": "PA", "POSTEROANTERIOR": "PA", "AP": "AP", "ANTEROPOSTERIOR": "AP", "FRONTAL": "frontal",
    "LL": "lateral", "RL": "lateral", "LAT": "lateral", "LATERAL": "lateral", "LLD": "lateral", "RLD": "lateral",
    "APSUPINE": "AP", "APERECT": "AP", "APSEMIERECT": "AP",
    "CC": "CC", "MLO": "MLO", "ML": "ML", "LM": "LM", "XCCL": "XCCL", "XCCM": "XCCM", "LMO": "LMO", "SIO": "SIO",
}
_LATERALITY_NAMES = {
    "L": "left", "LEFT": "left", "R": "right", "RIGHT": "right", "B": "bilateral", "BOTH": "bilateral",
    "BILATERAL": "bilateral",
}

# Modalities whose multi-frame files are time series (cine loops) when nothing else says so.
CINE_MODALITIES = frozenset({"US", "XA", "RF", "ES", "IVUS", "XC", "GM", "OCT"})
# Cross-sectional modalities: one image is a slice of the patient's volume.
TOMOGRAPHIC_MODALITIES = frozenset({"CT", "MR", "PT", "NM"})
# FrameIncrementPointer targets that step frames in time, by tag.
_TIME_POINTERS = frozenset({0x00181063, 0x00181065, 0x00181055})  # FrameTime, FrameTimeVector, TimeSlotVector


def direction_letter(cosines: Sequence[float]) -> Optional[str]:
    """The LPS letter of a direction's largest component; None for a zero vector."""
    vector = np.asarray(cosines, dtype=np.float64)
    if vector.shape != (3,) or not np.any(vector):
        return None
    axis = int(np.argmax(np.abs(vector)))
    positive, negative = _AXIS_LETTERS[axis]
    return positive if vector[axis] > 0 else negative


def _axes(column_cosines, row_cosines, origin, spacing, source: str) -> dict:
    column_cosines = np.asarray(column_cosines, dtype=np.float64)
    row_cosines = np.asarray(row_cosines, dtype=np.float64)
    return {
        "column_direction": direction_letter(column_cosines),
        "row_direction": direction_letter(row_cosines),
        "origin_mm": [round(float(v), 4) for v in origin],
        "column_cosines": [round(float(v), 6) for v in column_cosines],
        "row_cosines": [round(float(v), 6) for v in row_cosines],
        "spacing_mm": [round(float(spacing[0]), 6), round(float(spacing[1]), 6)],
        "source": source,
    }


def dicom_axes(
    orientation: Optional[Sequence[float]],
    position: Optional[Sequence[float]],
    spacing: Optional[Sequence[float]],
    patient_orientation: Optional[Sequence[str]] = None,
) -> Optional[dict]:
    """``image_axes`` of a DICOM frame as decoded (pydicom keeps the stored row/column order).

    ImageOrientationPatient gives the direction of increasing column first, then of increasing
    row (PS3.3 C.7.6.2.1.1); with ImagePositionPatient and PixelSpacing every pixel has a
    patient position. Without them, a projection image's PatientOrientation still gives the two
    directions. Anything incomplete or degenerate gives None: no geometry is better than a guess.
    """
    if orientation is not None and len(orientation) == 6 and position is not None and len(position) >= 3 and spacing:
        column_cosines, row_cosines = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
        if np.linalg.norm(column_cosines) > 0.5 and np.linalg.norm(row_cosines) > 0.5:
            column_cosines /= np.linalg.norm(column_cosines)
            row_cosines /= np.linalg.norm(row_cosines)
            return _axes(column_cosines, row_cosines, position[:3], spacing, "dicom_orientation")
    letters = [str(v).strip().upper() for v in (patient_orientation or [])]
    if len(letters) == 2 and all(v and set(v) <= _ORIENTATION_LETTERS for v in letters):
        # Several letters (e.g. "LF" for an oblique) are ordered by weight: the first dominates.
        return {"column_direction": letters[0][0], "row_direction": letters[1][0], "origin_mm": None,
                "column_cosines": None, "row_cosines": None, "spacing_mm": None, "source": "dicom_patient_orientation"}
    return None


def nifti_display_axes(canonical_affine: np.ndarray, slice_axis: int, slice_index: int, plane_shape: tuple[int, int]) -> dict:
    """``image_axes`` of a slice as the NIfTI reader stores it.

    The reader takes plane ``slice_index`` across canonical (RAS) axis ``slice_axis`` and turns it
    with ``to_display`` (transpose, then flip both axes): display column c is canonical index
    ``Na - 1 - c`` along the lower in-plane axis a, display row r is ``Nb - 1 - r`` along the
    higher one b. ``plane_shape`` is (Na, Nb), the canonical plane's shape before that turn.
    """
    affine = np.asarray(canonical_affine, dtype=np.float64)
    lower, higher = [axis for axis in range(3) if axis != slice_axis]
    n_lower, n_higher = plane_shape
    voxel = np.zeros(4)
    voxel[3] = 1.0
    voxel[slice_axis] = slice_index
    voxel[lower] = n_lower - 1
    voxel[higher] = n_higher - 1
    origin = (affine @ voxel)[:3] * RAS_TO_LPS
    column_step = -affine[:3, lower] * RAS_TO_LPS  # one display column = one canonical step back
    row_step = -affine[:3, higher] * RAS_TO_LPS
    spacing = (float(np.linalg.norm(row_step)), float(np.linalg.norm(column_step)))
    return _axes(column_step / spacing[1], row_step / spacing[0], origin, spacing, "nifti_affine")


def declared_view_axes(view: Optional[str]) -> Optional[dict]:
    """Directions of a radiograph whose frontal view (PA / AP) is declared, standard display."""
    if view not in FRONTAL_VIEWS:
        return None
    return {"column_direction": "L", "row_direction": "F", "origin_mm": None, "column_cosines": None,
            "row_cosines": None, "spacing_mm": None, "source": "declared_view"}


def patient_position_mm(axes: dict, row: float, column: float) -> Optional[np.ndarray]:
    """LPS position (mm) of a point given in stored-pixel coordinates (pixel centres at integers)."""
    if not axes or axes.get("origin_mm") is None:
        return None
    row_mm, column_mm = axes["spacing_mm"]
    return (
        np.asarray(axes["origin_mm"], float)
        + column * column_mm * np.asarray(axes["column_cosines"], float)
        + row * row_mm * np.asarray(axes["row_cosines"], float)
    )


def anatomical_plane(axes: Optional[dict]) -> Optional[str]:
    """axial | coronal | sagittal from the image normal (column x row direction); None without
    cosines or for a plane more than 30 degrees oblique to all three."""
    if not axes or axes.get("column_cosines") is None:
        return None
    normal = np.cross(np.asarray(axes["column_cosines"], float), np.asarray(axes["row_cosines"], float))
    axis = int(np.argmax(np.abs(normal)))
    if abs(normal[axis]) < np.cos(np.radians(30)) * np.linalg.norm(normal):
        return None
    return ("sagittal", "coronal", "axial")[axis]


def encode_axes(axes: Optional[dict]) -> Optional[str]:
    return json.dumps(axes, sort_keys=True) if axes else None


def decode_axes(value) -> Optional[dict]:
    if not value:
        return None
    if isinstance(value, dict):
        return value
    try:
        parsed = json.loads(value)
    except (TypeError, ValueError):
        return None
    return parsed if isinstance(parsed, dict) else None


def normalize_view(value) -> Optional[str]:
    """One name per view (PA, AP, lateral, CC, MLO...); None for empty or unknown values."""
    if value is None:
        return None
    key = re.sub(r"[\s_-]+", "", str(value)).upper()
    return _VIEW_NAMES.get(key)


def normalize_laterality(value) -> Optional[str]:
    """left | right | bilateral; None for empty, "U" (unpaired) and anything else."""
    if value is None:
        return None
    return _LATERALITY_NAMES.get(str(value).strip().upper())


def dicom_frame_kind(
    modality: Optional[str],
    n_frames: int,
    frame_positions: Optional[Sequence[Sequence[float]]],
    frame_increment_pointers: Sequence[int] = (),
    has_orientation: bool = False,
) -> Optional[str]:
    """"frame" (a time frame of a cine loop), "slice" (a slice of a volume) or None (a 2D image).

    A multi-frame file is a volume when its frames lie at different positions, a cine loop when
    they share one position or the file steps frames in time (FrameIncrementPointer ->
    FrameTime / FrameTimeVector), and otherwise by modality (ultrasound and angiography loops
    are cines). A single-frame image is a slice when it is a cross-section with a plane in space.
    """
    modality = (modality or "").upper()
    if n_frames > 1:
        if frame_positions:
            distinct = {tuple(round(float(v), 3) for v in p) for p in frame_positions}
            return "slice" if len(distinct) > 1 else "frame"
        if any(int(p) in _TIME_POINTERS for p in frame_increment_pointers):
            return "frame"
        return "frame" if modality in CINE_MODALITIES else "slice"
    if has_orientation and modality in TOMOGRAPHIC_MODALITIES:
        return "slice"
    return None
