"""The patient's side of an ROI, from geometry the source states, never from the frame alone.

An ROI's centroid (a fraction of the display image) is taken back to the stored pixel array
(normalize only resizes the whole frame: no crop, pad or flip, so fractions carry over), then
into patient coordinates with the record's ``image_axes`` (``imaging.geometry``):

- with a position in millimetres (DICOM orientation/position, NIfTI affine) the side is the
  sign of the patient x coordinate (LPS: + is the patient's left) relative to the midline;
  within ``MIDLINE_TOLERANCE_MM`` of it the ROI is "midline". Where is the midline? When the
  whole cross-section of the body lies inside the image (it touches no edge), the centre of the
  body's left-right extent, measured on the display image; otherwise x = 0. Scanners place the
  patient coordinate origin on the isocentre / table centre line and the patient is laid on
  that line, so x = 0 is the best estimate when the image is a crop (the IBSI sarcoma CT shows
  x = -23...+170 mm: the left thigh and a sliver across the midline; its centre would be wrong).
- with directions only (a projection radiograph's PatientOrientation, or a declared PA/AP view)
  the frontal radiograph is centred on the midsagittal plane by positioning, so the middle fifth
  of the image along the left-right direction is "midline" and the rest follows the direction.
- no geometry, a lateral view (no left-right direction in the image), or an image of one paired
  part (a mammogram, a record with laterality left/right): no patient side. The image-frame words
  (``horizontal``, ``vertical``) still say where the ROI is in the picture.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
from scipy import ndimage

from medtrinity_assets.imaging.geometry import decode_axes, patient_position_mm

MIDLINE_TOLERANCE_MM = 10.0
# Frontal projections without millimetres: the middle fifth along the left-right direction.
FRONTAL_MIDLINE_BAND = (0.4, 0.6)
# Display grey level above which a pixel is body, not air/background (CT windows map air to 0,
# MR/PET percentile scaling maps the background minimum to 0).
BODY_GREY = 10
# The body is the largest bright component (at least this fraction of the image) and any other
# of at least BODY_PART_RATIO of its size (two legs, two arms); smaller ones are head holders,
# tubing, table edges or noise, which would shift the centre (the pydicom CT head's holder does).
BODY_MIN_FRACTION = 0.005
BODY_PART_RATIO = 0.2
SINGLE_PART_MODALITIES = frozenset({"mammography"})
NO_SIDE = {"patient_side": None, "patient_side_source": None}


def _side_word(offset: float, tolerance: float) -> str:
    if abs(offset) <= tolerance:
        return "midline"
    return "left" if offset > 0 else "right"


def body_midline_x_mm(axes: dict, display: np.ndarray, height: int, width: int) -> Optional[float]:
    """Patient x (LPS mm) of the body's left-right centre, or None when the body is cut by the
    image edge (or cannot be told from the background)."""
    grey = display.mean(axis=2) if display.ndim == 3 else display
    body = grey > BODY_GREY
    labels, count = ndimage.label(body)
    if count == 0:
        return None
    sizes = np.bincount(labels.ravel())[1:]
    if sizes.max() < BODY_MIN_FRACTION * body.size:
        return None
    keep = np.flatnonzero(sizes >= BODY_PART_RATIO * sizes.max()) + 1
    body = np.isin(labels, keep)
    if body[0, :].any() or body[-1, :].any() or body[:, 0].any() or body[:, -1].any():
        return None
    rows, cols = np.nonzero(body)
    # Display pixel centres back to stored-pixel coordinates; x is linear in (row, col), so the
    # extremes over the body pixels are its left-right extent.
    row_scale, col_scale = height / display.shape[0], width / display.shape[1]
    stored_rows = (rows + 0.5) * row_scale - 0.5
    stored_cols = (cols + 0.5) * col_scale - 0.5
    origin = np.asarray(axes["origin_mm"], float)
    row_step = np.asarray(axes["row_cosines"], float) * axes["spacing_mm"][0]
    col_step = np.asarray(axes["column_cosines"], float) * axes["spacing_mm"][1]
    x = origin[0] + stored_rows * row_step[0] + stored_cols * col_step[0]
    if float(x.max() - x.min()) < 2 * MIDLINE_TOLERANCE_MM:
        return None  # the plane holds no left-right extent (sagittal): the body's centre is unknown here
    return float((x.max() + x.min()) / 2.0)


def patient_side_locator(record: dict, display: np.ndarray) -> Callable[[float, float], dict]:
    """A function (centroid_x, centroid_y as fractions of the image) -> the two ROIS columns
    ``patient_side`` and ``patient_side_source`` for every ROI of one record."""
    axes = decode_axes(record.get("image_axes"))
    single_part = record.get("laterality") in ("left", "right") or record.get("modality") in SINGLE_PART_MODALITIES
    if axes is None or single_part:
        return lambda cx, cy: dict(NO_SIDE)
    height = int(record.get("height") or display.shape[0])
    width = int(record.get("width") or display.shape[1])
    source = "declared_view" if axes.get("source") == "declared_view" else "geometry"

    if axes.get("origin_mm") is not None:
        midline = body_midline_x_mm(axes, np.asarray(display), height, width)
        midline = 0.0 if midline is None else midline

        def from_position(cx: float, cy: float) -> dict:
            position = patient_position_mm(axes, cy * height - 0.5, cx * width - 0.5)
            return {"patient_side": _side_word(float(position[0]) - midline, MIDLINE_TOLERANCE_MM), "patient_side_source": source}

        return from_position

    def from_directions(cx: float, cy: float) -> dict:
        for direction, fraction in ((axes.get("column_direction"), cx), (axes.get("row_direction"), cy)):
            if direction in ("L", "R"):
                towards_left = fraction if direction == "L" else 1.0 - fraction
                low, high = FRONTAL_MIDLINE_BAND
                side = "right" if towards_left < low else "left" if towards_left > high else "midline"
                return {"patient_side": side, "patient_side_source": source}
        return dict(NO_SIDE)  # lateral projection: no left-right direction in the image

    return from_directions
