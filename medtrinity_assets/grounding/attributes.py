"""Measured attributes of one ROI over the normalized display image.

Every word a description may use about a region (where it is, how big, what shape, brighter or
darker than its surroundings, smooth or mottled, sharp or blurred edge, what colour) is derived
here from pixels with a stated threshold, so the verifier can check the text against numbers.
Values that cannot be measured are None, never a guess.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage
from skimage import color, measure
from skimage.filters import sobel

# --- thresholds (each is what a description's word is checked against) -------------------
SIZE_SMALL = 0.01  # area fraction below which an ROI is "small"
SIZE_MEDIUM = 0.10  # below this "medium", else "large"
ISO_CONTRAST = 0.05  # |mean inside - mean ring| / 255 below this: no visible contrast
HETEROGENEOUS_RATIO = 1.2  # fine-texture std inside / std ring above this: heterogeneous
HETEROGENEOUS_STD = 0.12  # std of the ROI core / 255 above this: heterogeneous whatever the ring
# Boundary gradient / ring gradient at or above this: well-defined margin. On the 16 BUSI
# lesions of the shared real-data sample (speckled ultrasound), benign masses (usually
# circumscribed) scored 1.33-1.98 and malignant ones 1.07-1.48; a sharp synthetic disk scores
# > 10 and a Gaussian-blurred one (sigma 3-6 px) 1.1-1.4.
WELL_DEFINED = 1.5
# Floor of the ring gradient: on a noise-free background the ratio would divide by ~0 and call
# any faint edge "well-defined"; with the floor a margin needs a boundary gradient >= 0.04.
RING_GRADIENT_FLOOR = 0.02
# Shape: solidity < 0.80 is concave / lobulated; eccentricity >= 0.92 is an axis ratio below
# ~0.4; a round ROI has axis ratio > 0.8 (eccentricity < 0.6) and a smooth outline.
IRREGULAR_SOLIDITY = 0.80
MIN_SHAPE_PIXELS = 16
IRREGULAR_CIRCULARITY = 0.55
ELONGATED_ECCENTRICITY = 0.92
ROUND_ECCENTRICITY = 0.60
ROUND_CIRCULARITY = 0.75

INTENSITY_WORDS: dict[str, tuple[str, str, str]] = {  # (higher, lower, similar)
    "ct": ("hyperdense", "hypodense", "isodense"),
    "mri": ("hyperintense", "hypointense", "isointense"),
    "ultrasound": ("hyperechoic", "hypoechoic", "isoechoic"),
    "xray": ("more opaque", "more lucent", "similar density"),
    "mammography": ("more opaque", "more lucent", "similar density"),
    "pet": ("increased uptake", "decreased uptake", "similar uptake"),
    "nuclear_medicine": ("increased uptake", "decreased uptake", "similar uptake"),
}
PHOTO_WORDS = ("brighter", "darker", "similar brightness")

# Colour names and a representative sRGB value each; an ROI gets the nearest in CIE Lab,
# where distance follows perceived colour difference better than in RGB.
PALETTE_RGB: dict[str, tuple[int, int, int]] = {
    "red": (200, 30, 35),
    "pink": (235, 150, 175),
    "brown": (150, 90, 50),
    "dark brown": (80, 45, 25),
    "black": (20, 20, 20),
    "purple": (120, 60, 150),
    "blue": (40, 70, 190),
    "white": (245, 245, 245),
    "yellow": (230, 210, 50),
    "orange": (240, 140, 30),
    "grey": (128, 128, 128),
}
_PALETTE_NAMES = list(PALETTE_RGB)
_PALETTE_LAB = color.rgb2lab(np.array([[PALETTE_RGB[n] for n in _PALETTE_NAMES]], dtype=np.float64) / 255.0)[0]


def grey_of(display: np.ndarray) -> np.ndarray:
    """Luminance (0-255, float32) of a grey or RGB display image."""
    if display.ndim == 3:
        rgb = display[:, :, :3].astype(np.float32)
        return rgb[:, :, 0] * 0.299 + rgb[:, :, 1] * 0.587 + rgb[:, :, 2] * 0.114
    return display.astype(np.float32)


def colour_name(mean_rgb) -> str:
    lab = color.rgb2lab(np.asarray(mean_rgb, dtype=np.float64).reshape(1, 1, 3) / 255.0)[0, 0]
    return _PALETTE_NAMES[int(np.argmin(np.linalg.norm(_PALETTE_LAB - lab, axis=1)))]


def position_words(cx: float, cy: float) -> dict:
    """Where the ROI sits in the picture (thirds of width and height). Image-frame words only:
    the patient's side needs geometry (grounding.patient_side), never the frame position."""
    horizontal = "left" if cx < 1 / 3 else "right" if cx > 2 / 3 else "center"
    vertical = "upper" if cy < 1 / 3 else "lower" if cy > 2 / 3 else "middle"
    return {"horizontal": horizontal, "vertical": vertical}


def size_class(area_fraction: float) -> str:
    return "small" if area_fraction < SIZE_SMALL else "medium" if area_fraction < SIZE_MEDIUM else "large"


def shape_word(circularity: float, solidity: float, eccentricity: float) -> str:
    if solidity < IRREGULAR_SOLIDITY:
        return "irregular"
    if eccentricity >= ELONGATED_ECCENTRICITY:
        return "elongated"
    if circularity < IRREGULAR_CIRCULARITY:
        return "irregular"
    if eccentricity < ROUND_ECCENTRICITY and circularity >= ROUND_CIRCULARITY:
        return "round"
    return "oval"


def intensity_word(contrast: float, modality: str) -> str:
    higher, lower, similar = INTENSITY_WORDS.get(modality, PHOTO_WORDS)
    if abs(contrast) < ISO_CONTRAST:
        return similar
    return higher if contrast > 0 else lower


def _area_mm2(area_px: int, pixel_spacing_mm, scale: float) -> float | None:
    if not pixel_spacing_mm or len(pixel_spacing_mm) < 2 or not scale:
        return None
    row_mm, col_mm = float(pixel_spacing_mm[0]), float(pixel_spacing_mm[1])
    if not (row_mm > 0 and col_mm > 0):
        return None
    # A display pixel covers 1/scale original pixels along each axis.
    return float(area_px * (row_mm / scale) * (col_mm / scale))


def _empty_measures() -> dict:
    return {
        key: None
        for key in (
            "shape circularity solidity eccentricity intensity_contrast intensity_word texture "
            "texture_ratio margin margin_sharpness"
        ).split()
    }


# High-pass residuals respond to an edge within ~3 sigma of it; texture is measured beyond that.
_TEXTURE_SIGMA = 1.5
_EDGE_CLEARANCE = 4
_RESIDUAL_FLOOR = 2.0


def _texture(grey: np.ndarray, mask: np.ndarray, outside_distance: np.ndarray, ring_width: int) -> tuple[float | None, float]:
    """(fine-texture std ratio inside/around, std of the ROI core / 255).

    Both stay clear of the outline: the core is the ROI eroded by the clearance (or the ring
    width if larger), the surroundings a band just beyond the clearance, and the ratio compares
    high-pass residuals (grey minus a Gaussian), so neither a sharp edge's response nor the
    intensity ramp of a blurred edge is mistaken for texture. The core std catches coarse
    heterogeneity (e.g. a necrotic centre) that the high-pass misses.
    """
    inside_distance = ndimage.distance_transform_edt(mask)
    core = inside_distance > max(_EDGE_CLEARANCE, ring_width)
    if core.sum() < 16:  # too small to erode: use the whole ROI
        core = mask
    around = (outside_distance > _EDGE_CLEARANCE) & (outside_distance <= _EDGE_CLEARANCE + max(ring_width, 4))
    residual = grey - ndimage.gaussian_filter(grey, _TEXTURE_SIGMA)
    if around.sum() < 16:  # the ROI fills its neighbourhood: no surroundings to compare with
        return None, float(grey[core].std()) / 255.0
    # Variation under the floor (2 grey levels) is invisible; without it a noise-free image
    # would compare rounding errors and the curvature of smooth ramps.
    ratio = max(float(residual[core].std()), _RESIDUAL_FLOOR) / max(float(residual[around].std()), _RESIDUAL_FLOOR)
    return ratio, float(grey[core].std()) / 255.0


def measure_roi(
    mask: np.ndarray,
    display: np.ndarray,
    *,
    modality: str,
    pixel_spacing_mm=None,
    scale: float = 1.0,
    outline_is_exact: bool = True,
) -> dict:
    """ROIS attribute columns for a boolean ``mask`` (same H, W as ``display``).

    ``outline_is_exact`` is False for box ROIs: a rectangle is the annotator's frame, not the
    lesion's outline, so shape and margin are left None rather than describing the rectangle.
    """
    mask = np.asarray(mask, dtype=bool)
    height, width = mask.shape
    area_px = int(mask.sum())
    if area_px == 0:
        raise ValueError("ROI mask is empty")
    rows, cols = np.nonzero(mask)
    cx = float((cols.mean() + 0.5) / width)
    cy = float((rows.mean() + 0.5) / height)
    area_fraction = area_px / (height * width)
    out = {
        "area_px": area_px,
        "area_fraction": float(area_fraction),
        "area_mm2": _area_mm2(area_px, pixel_spacing_mm, scale),
        "centroid_x": cx,
        "centroid_y": cy,
        **position_words(cx, cy),
        "size_class": size_class(area_fraction),
        **_empty_measures(),
        "colour": None,
    }

    # Work on a crop around the ROI plus its ring: the measures are local, and the crop keeps
    # the distance transform and gradient cheap for small ROIs in large images.
    y0, y1, x0, x1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    ring_width = max(2, round(0.1 * max(y1 - y0, x1 - x0)))
    pad = ring_width + _EDGE_CLEARANCE + 6  # room for the texture band beyond the ring
    cy0, cy1 = max(0, y0 - pad), min(height, y1 + pad)
    cx0, cx1 = max(0, x0 - pad), min(width, x1 + pad)
    crop_mask = mask[cy0:cy1, cx0:cx1]
    crop_display = display[cy0:cy1, cx0:cx1]
    grey = grey_of(crop_display)

    # Below MIN_SHAPE_PIXELS the pixel grid, not the region, decides perimeter and axes.
    if outline_is_exact and area_px >= MIN_SHAPE_PIXELS:
        props = measure.regionprops(crop_mask.astype(np.uint8))[0]
        perimeter = float(props.perimeter)
        circularity = min(1.0, 4 * math.pi * area_px / perimeter**2) if perimeter > 0 else 0.0
        solidity = float(props.solidity)
        eccentricity = float(props.eccentricity)
        out.update(
            circularity=circularity,
            solidity=solidity,
            eccentricity=eccentricity,
            shape=shape_word(circularity, solidity, eccentricity),
        )

    outside_distance = ndimage.distance_transform_edt(~crop_mask)
    ring = (outside_distance > 0) & (outside_distance <= ring_width)
    inside_values = grey[crop_mask]
    if ring.any():
        ring_values = grey[ring]
        contrast = float((inside_values.mean() - ring_values.mean()) / 255.0)
        out["intensity_contrast"] = contrast
        out["intensity_word"] = intensity_word(contrast, modality)
        texture_ratio, core_std = _texture(grey, crop_mask, outside_distance, ring_width)
        out["texture_ratio"] = texture_ratio
        heterogeneous = (texture_ratio is not None and texture_ratio > HETEROGENEOUS_RATIO) or core_std > HETEROGENEOUS_STD
        out["texture"] = "heterogeneous" if heterogeneous else "homogeneous"
        if outline_is_exact:
            gradient = sobel(grey / 255.0)
            # The boundary band straddles the outline (1 px out, 1 px in) so a step edge is
            # caught whichever side of the outline the annotator drew it.
            band = ndimage.binary_dilation(crop_mask) & ~ndimage.binary_erosion(crop_mask)
            outer_ring = ring & ~band
            if band.any() and outer_ring.any():
                sharpness = float(gradient[band].mean() / max(float(gradient[outer_ring].mean()), RING_GRADIENT_FLOOR))
                out["margin_sharpness"] = sharpness
                out["margin"] = "well-defined" if sharpness >= WELL_DEFINED else "ill-defined"
    else:
        # The ROI fills its neighbourhood (e.g. the whole image): only its own spread is known.
        out["texture"] = "heterogeneous" if inside_values.std() / 255.0 > HETEROGENEOUS_STD else "homogeneous"

    if display.ndim == 3:
        out["colour"] = colour_name(crop_display[crop_mask][:, :3].mean(axis=0))
    return out


def measure_whole_image(display: np.ndarray, *, pixel_spacing_mm=None, scale: float = 1.0) -> dict:
    """Attributes of a whole-image ROI: only what describes the image, nothing that implies a lesion.

    Position, size class, shape, contrast and margin words would read as a finding in a
    description, so they stay None; area, centroid and (for photos) the dominant colour are facts.
    """
    height, width = display.shape[:2]
    area_px = height * width
    out = {
        "area_px": area_px,
        "area_fraction": 1.0,
        "area_mm2": _area_mm2(area_px, pixel_spacing_mm, scale),
        "centroid_x": 0.5,
        "centroid_y": 0.5,
        "horizontal": None,
        "vertical": None,
        "patient_side": None,
        "size_class": None,
        **_empty_measures(),
        "colour": None,
    }
    if display.ndim == 3:
        out["colour"] = colour_name(display[:, :, :3].reshape(-1, 3).mean(axis=0))
    return out
