"""Measured attributes of one ROI over the normalized display image.

Every word a description may use about a region (where it is, how big, what shape, brighter or
darker than the tissue around it, smooth or mottled, circumscribed or not, what colour) is derived
here from pixels with a stated threshold, so the verifier can check the text against numbers.
Values that cannot be measured are None, never a guess; the margin and shape words carry a
confidence (how far their measures are from the thresholds) so a writer can hedge or omit them.
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
# Margin (BI-RADS sense: circumscribed = a smooth outline with a visible edge). Two measures,
# both needed for "well-defined":
#  - outline convexity = convex-hull perimeter / perimeter (1 for a convex outline; angular,
#    microlobulated or spiculated outlines are longer than their hull);
#  - boundary contrast-to-noise = |mean of the 10 px band outside - 10 px band inside| /
#    pooled std of the two bands (an edge that is really there, not just drawn).
# On BUSI (busi_train: 150 benign/malignant masses, thresholds fitted there; busi: 16, held
# out), "well-defined" agrees with "benign" for 141/150 (94%) and 16/16; benign masses called
# well-defined: 96/100 and 8/8. The former gradient-ratio rule (>= 1.5) agreed 85/150 and 13/16
# and called 60 of 100 benign masses ill-defined (grounding/validate.py busi).
WELL_DEFINED_CONVEXITY = 0.95
WELL_DEFINED_CNR = 0.3
MARGIN_BAND = 10
# margin_sharpness (kept as a measurement, no longer the margin word): boundary gradient /
# ring gradient, with the ring gradient floored so a noise-free background does not divide by ~0.
RING_GRADIENT_FLOOR = 0.02
# Blur alone does not decide the margin word: ultrasound edges at 512 px are as soft as a 4-5 px Gaussian
# blur (contrast in the 3 px beside the outline / in the 10 px bands: BUSI benign median 0.45,
# a 5 px blurred disk 0.37, a linear ramp 0.3), so a blur test would call cysts ill-defined.
# Scales that turn each measure's distance from its threshold into comparable units for the
# confidence: the spread of benign-vs-malignant medians on busi_train (convexity 0.987 vs 0.873,
# CNR 1.7 vs 0.5) over ~4.
CONVEXITY_SCALE = 0.03
CNR_SCALE = 0.3
# margin_confidence by |distance| bin (in the scaled units above): the share of BUSI lesions
# (busi_train + busi, 166) in that bin whose margin word agrees with their class (benign =
# well-defined): 12/16 below 0.5, 19/22 below 1, 126/128 beyond. The last is capped at 0.95:
# it was measured on the lesions the thresholds were fitted to, and the class is a proxy.
MARGIN_CONFIDENCE_BINS = ((0.5, 0.75), (1.0, 0.86), (math.inf, 0.95))
# Shape: solidity < IRREGULAR_SOLIDITY is lobulated / angular ("irregular"); eccentricity >=
# 0.92 is an axis ratio below ~0.4 ("elongated"); a round ROI has axis ratio > 0.8
# (eccentricity < 0.6) and a smooth outline. BUSI solidity medians: benign 0.978, malignant
# 0.862; with the line at 0.94 (not the former 0.80) busi_train gives malignant -> irregular
# 50/50, benign -> round/oval/elongated 99/100, and the held-out busi 16/16 (BI-RADS reads an
# irregular outline as suspicious, a round/oval one as probably benign).
IRREGULAR_SOLIDITY = 0.94
MIN_SHAPE_PIXELS = 16
IRREGULAR_CIRCULARITY = 0.55
ELONGATED_ECCENTRICITY = 0.92
ROUND_ECCENTRICITY = 0.60
ROUND_CIRCULARITY = 0.75
# Distances from the shape thresholds, in units where 1 is a clear call (solidity 0.02,
# eccentricity 0.05, circularity 0.05), map to shape_confidence by these bins. They are set
# below what BUSI gave (irregular vs malignant agreed 14/14, 28/28, 56/57, 67/67 by bin): one
# dataset with masks drawn by one team is no ground for near-certainty elsewhere.
SHAPE_SCALES = {"solidity": 0.02, "eccentricity": 0.05, "circularity": 0.05}
SHAPE_CONFIDENCE_BINS = ((0.5, 0.6), (1.0, 0.75), (2.0, 0.9), (math.inf, 0.95))
# Background / air: near-black pixels joined to the image border (outside the body on CT, MR,
# X-ray; outside the ultrasound fan; the black frame of endoscopy, dermoscopy and fundus
# photos) are not tissue. They are left out of the comparison ring, so a region is compared
# with the tissue around it (T1 grey matter against white matter, not against the black
# outside the brain). Not applied to microscopy and histopathology, where the dark
# background around a fluorescent nucleus is the comparison.
BACKGROUND_LEVEL = 8  # grey (0-255) at or below this may be background
BACKGROUND_MODALITIES = {
    "ct", "mri", "xray", "mammography", "pet", "nuclear_medicine", "ultrasound", "endoscopy", "dermoscopy", "fundus",
}
MIN_TISSUE_RING = 0.2  # below this share of the ring left as tissue, no contrast word is given

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

# Colour names from CIELAB bands (lightness L*, chroma C*, hue angle h in degrees) of the
# ROI's median colour, specular highlights (L* > 85, C* < 15) and background left out. The
# bands follow colour-name geometry (brown is dark orange-red: warm hue, low lightness), and
# were checked on real lesions (grounding/validate.py kvasir / colours): Kvasir-SEG polyps
# (mucosa, median L 60, C 45, h 46): 947 of 1,063 ROIs pink or red, 84 brown or dark brown
# (mostly dim, under-exposed frames; the nearest-palette rule called 814 of 1,000 brown);
# HAM10000 (5 masked lesions, L 50-56, h 12-35): red 3, pink 1, brown 1; ISIC 2017 (24, lesion
# by Otsu): brown 18, dark brown 1, black 2, grey 1, red 1, pink 1; IHC (skimage): DAB pixels
# (L 33, C 31, h 63) brown, haematoxylin pixels (L 61, C 15, h 285) blue.
ACHROMATIC_CHROMA = 10.0  # below: white / grey / black by lightness
WHITE_LIGHTNESS = 80.0
BLACK_LIGHTNESS = 25.0
DARK_BROWN_LIGHTNESS = 30.0  # warm hues darker than this: dark brown
BROWN_LIGHTNESS = 45.0  # warm hues darker than this (and C* < BROWN_MAX_CHROMA): brown
BROWN_MAX_CHROMA = 50.0
# Up to this lightness, yellower warm hues (h >= BROWN_HUE) are still brown (light brown);
# Kvasir mucosa sits at h 40-58 but L 47-74 (10th-90th percentile), mostly above it.
LIGHT_BROWN_LIGHTNESS, BROWN_HUE = 58.0, 55.0
PINK_LIGHTNESS = 65.0  # light warm hues, or soft ones (C* < PINK_CHROMA), are pink
PINK_CHROMA = 30.0
TAN_HUE = 62.0  # warm hues from here to 75 degrees: orange (C* >= 40) or tan
SPECULAR_LIGHTNESS, SPECULAR_CHROMA = 85.0, 15.0


def colour_from_lab(lightness: float, a: float, b: float) -> str:
    """The colour name of one CIELAB colour by lightness / chroma / hue-angle bands."""
    chroma = math.hypot(a, b)
    hue = math.degrees(math.atan2(b, a)) % 360
    if chroma < ACHROMATIC_CHROMA:
        return "white" if lightness >= WHITE_LIGHTNESS else "black" if lightness < BLACK_LIGHTNESS else "grey"
    if hue >= 345 or hue < 75:  # reds, pinks, browns, oranges
        if lightness < DARK_BROWN_LIGHTNESS:
            return "dark brown"
        # Brown is a dark, not very saturated orange-red; a saturated dark red stays red.
        if chroma < BROWN_MAX_CHROMA and (
            lightness < BROWN_LIGHTNESS or (lightness < LIGHT_BROWN_LIGHTNESS and hue >= BROWN_HUE)
        ):
            return "brown"
        if hue >= TAN_HUE and hue < 75:
            return "orange" if chroma >= 40 else "tan"
        return "pink" if lightness >= PINK_LIGHTNESS or chroma < PINK_CHROMA else "red"
    if hue < 105:
        return "yellow" if lightness >= 60 else "brown"
    if hue < 200:
        return "green"
    if hue < 300:
        return "blue"
    return "purple"


def grey_of(display: np.ndarray) -> np.ndarray:
    """Luminance (0-255, float32) of a grey or RGB display image."""
    if display.ndim == 3:
        rgb = display[:, :, :3].astype(np.float32)
        return rgb[:, :, 0] * 0.299 + rgb[:, :, 1] * 0.587 + rgb[:, :, 2] * 0.114
    return display.astype(np.float32)


def colour_name(rgb) -> str:
    """Colour name of an sRGB colour, or of the median CIELAB colour of an (N, 3) pixel array."""
    pixels = np.asarray(rgb, dtype=np.float64).reshape(-1, 3)
    lab = color.rgb2lab(pixels[None] / 255.0)[0]
    if len(lab) > 1:
        specular = (lab[:, 0] > SPECULAR_LIGHTNESS) & (np.hypot(lab[:, 1], lab[:, 2]) < SPECULAR_CHROMA)
        if (~specular).sum() >= max(1, len(lab) // 5):  # a white lesion stays white
            lab = lab[~specular]
    lightness, a, b = np.median(lab, axis=0)
    return colour_from_lab(float(lightness), float(a), float(b))


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


def _binned_confidence(distance: float, bins) -> float:
    for upper, confidence in bins:
        if abs(distance) < upper:
            return confidence
    return bins[-1][1]


def shape_confidence(circularity: float, solidity: float, eccentricity: float) -> float:
    """How clear the shape word is: the distance of the deciding measures from their thresholds.

    The word is decided by a chain of tests; the measures that decided it are those whose test
    fired, and those that had to fail for it to be reached. The nearest of them to its threshold
    sets the confidence, so a solidity of 0.945 ("oval", just) gets a low one.
    """
    sol = (solidity - IRREGULAR_SOLIDITY) / SHAPE_SCALES["solidity"]
    ecc = (ELONGATED_ECCENTRICITY - eccentricity) / SHAPE_SCALES["eccentricity"]
    circ = (circularity - IRREGULAR_CIRCULARITY) / SHAPE_SCALES["circularity"]
    word = shape_word(circularity, solidity, eccentricity)
    if word == "irregular" and sol < 0:
        distances = [sol]
    elif word == "elongated":
        distances = [sol, ecc]
    elif word == "irregular":
        distances = [sol, ecc, circ]
    else:
        round_ecc = (ROUND_ECCENTRICITY - eccentricity) / SHAPE_SCALES["eccentricity"]
        round_circ = (circularity - ROUND_CIRCULARITY) / SHAPE_SCALES["circularity"]
        # round needs both round tests to pass; oval needs at least one of them to fail.
        round_side = min(round_ecc, round_circ) if word == "round" else max(-round_ecc, -round_circ)
        distances = [sol, ecc, circ, round_side]
    return _binned_confidence(min(abs(d) for d in distances), SHAPE_CONFIDENCE_BINS)


def margin_call(convexity: float, contrast_to_noise: float) -> tuple[str, float]:
    """(margin word, confidence) from outline convexity and boundary contrast-to-noise."""
    score = min(
        (convexity - WELL_DEFINED_CONVEXITY) / CONVEXITY_SCALE,
        (contrast_to_noise - WELL_DEFINED_CNR) / CNR_SCALE,
    )
    word = "well-defined" if score >= 0 else "ill-defined"
    return word, _binned_confidence(score, MARGIN_CONFIDENCE_BINS)


def background_mask(display: np.ndarray, modality: str) -> np.ndarray | None:
    """Near-black pixels joined to the image border (outside the body), or None where the
    modality has no such background (see BACKGROUND_MODALITIES)."""
    if modality not in BACKGROUND_MODALITIES:
        return None
    dark = grey_of(display) <= BACKGROUND_LEVEL
    if not dark.any():
        return None
    labelled, _ = ndimage.label(dark)
    border = np.unique(np.concatenate([labelled[0], labelled[-1], labelled[:, 0], labelled[:, -1]]))
    border = border[border != 0]
    if border.size == 0:
        return None
    return np.isin(labelled, border)


def intensity_word(contrast: float, modality: str) -> str:
    higher, lower, similar = INTENSITY_WORDS.get(modality, PHOTO_WORDS)
    if abs(contrast) < ISO_CONTRAST:
        return similar
    return higher if contrast > 0 else lower


def _mm_per_pixel(pixel_spacing_mm, scale: float, axis_scales=None) -> tuple[float, float] | None:
    """(row mm, col mm) of one exported pixel, or None when the spacing is unknown."""
    if not pixel_spacing_mm or len(pixel_spacing_mm) < 2 or not scale:
        return None
    row_mm, col_mm = float(pixel_spacing_mm[0]), float(pixel_spacing_mm[1])
    if not (row_mm > 0 and col_mm > 0):
        return None
    # An exported pixel covers 1/scale original pixels along each axis; the exact per-axis
    # scales (rounding of the resized size) are used when known.
    sy, sx = axis_scales if axis_scales else (scale, scale)
    return row_mm / sy, col_mm / sx


def _area_mm2(area_px: int, pixel_spacing_mm, scale: float, axis_scales=None) -> float | None:
    mm = _mm_per_pixel(pixel_spacing_mm, scale, axis_scales)
    return None if mm is None else float(area_px * mm[0] * mm[1])


def max_diameter_mm(mask: np.ndarray, mm_per_pixel: tuple[float, float]) -> float:
    """Longest distance across the region (Feret diameter) in mm, from its pixels' corners."""
    rows, cols = np.nonzero(mask ^ ndimage.binary_erosion(mask))  # boundary pixels suffice
    corners = np.concatenate(
        [np.stack([rows + dr, cols + dc], axis=1) for dr in (0, 1) for dc in (0, 1)]
    ).astype(np.float64) * np.asarray(mm_per_pixel)
    if len(corners) > 3:
        try:
            from scipy.spatial import ConvexHull

            corners = corners[ConvexHull(corners).vertices]
        except Exception:  # collinear points: every corner is on the hull anyway
            pass
    differences = corners[:, None, :] - corners[None, :, :]
    return float(np.sqrt((differences**2).sum(axis=2)).max())


def _empty_measures() -> dict:
    return {
        key: None
        for key in (
            "shape circularity solidity eccentricity intensity_contrast intensity_word texture "
            "texture_ratio margin margin_sharpness margin_confidence shape_confidence convexity edge_contrast "
            "ring_excluded_fraction max_diameter_mm"
        ).split()
    }


# High-pass residuals respond to an edge within ~3 sigma of it; texture is measured beyond that.
_TEXTURE_SIGMA = 1.5
_EDGE_CLEARANCE = 4
_RESIDUAL_FLOOR = 2.0


def _texture(
    grey: np.ndarray, mask: np.ndarray, outside_distance: np.ndarray, ring_width: int, tissue: np.ndarray | None = None
) -> tuple[float | None, float]:
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
    if tissue is not None:
        around &= tissue  # flat background would make any tissue look heterogeneous
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
    axis_scales: tuple[float, float] | None = None,
    background: np.ndarray | None | bool = True,
) -> dict:
    """ROIS attribute columns for a boolean ``mask`` (same H, W as ``display``).

    ``outline_is_exact`` is False for box ROIs: a rectangle is the annotator's frame, not the
    lesion's outline, so shape and margin are left None rather than describing the rectangle.
    ``axis_scales`` are the exact (row, col) scales original -> exported, for sizes in mm.
    ``background`` is the image's background mask (``background_mask``; computed when True,
    none when None), left out of the comparison ring.
    """
    mask = np.asarray(mask, dtype=bool)
    height, width = mask.shape
    area_px = int(mask.sum())
    if area_px == 0:
        raise ValueError("ROI mask is empty")
    if background is True:
        background = background_mask(display, modality)
    rows, cols = np.nonzero(mask)
    cx = float((cols.mean() + 0.5) / width)
    cy = float((rows.mean() + 0.5) / height)
    area_fraction = area_px / (height * width)
    mm_per_pixel = _mm_per_pixel(pixel_spacing_mm, scale, axis_scales)
    y0, y1, x0, x1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    out = {
        "area_px": area_px,
        "area_fraction": float(area_fraction),
        "area_mm2": _area_mm2(area_px, pixel_spacing_mm, scale, axis_scales),
        "width_px": int(x1 - x0),
        "height_px": int(y1 - y0),
        "centroid_x": cx,
        "centroid_y": cy,
        **position_words(cx, cy),
        "size_class": size_class(area_fraction),
        **_empty_measures(),
        "colour": None,
    }

    # Work on a crop around the ROI plus its ring: the measures are local, and the crop keeps
    # the distance transform and gradient cheap for small ROIs in large images.
    ring_width = max(2, round(0.1 * max(y1 - y0, x1 - x0)))
    pad = max(ring_width + _EDGE_CLEARANCE + 6, MARGIN_BAND + 2)  # room for the texture and margin bands
    cy0, cy1 = max(0, y0 - pad), min(height, y1 + pad)
    cx0, cx1 = max(0, x0 - pad), min(width, x1 + pad)
    crop_mask = mask[cy0:cy1, cx0:cx1]
    crop_display = display[cy0:cy1, cx0:cx1]
    grey = grey_of(crop_display)
    tissue = np.ones_like(crop_mask) if background is None else ~np.asarray(background)[cy0:cy1, cx0:cx1]
    if mm_per_pixel is not None:
        out["max_diameter_mm"] = max_diameter_mm(crop_mask, mm_per_pixel)

    # Below MIN_SHAPE_PIXELS the pixel grid, not the region, decides perimeter and axes.
    shaped = outline_is_exact and area_px >= MIN_SHAPE_PIXELS
    if shaped:
        props = measure.regionprops(crop_mask.astype(np.uint8))[0]
        perimeter = float(props.perimeter)
        circularity = min(1.0, 4 * math.pi * area_px / perimeter**2) if perimeter > 0 else 0.0
        solidity = float(props.solidity)
        eccentricity = float(props.eccentricity)
        hull_perimeter = float(measure.regionprops(props.image_convex.astype(np.uint8))[0].perimeter)
        out.update(
            circularity=circularity,
            solidity=solidity,
            eccentricity=eccentricity,
            convexity=min(1.0, hull_perimeter / perimeter) if perimeter > 0 else None,
            shape=shape_word(circularity, solidity, eccentricity),
            shape_confidence=shape_confidence(circularity, solidity, eccentricity),
        )

    outside_distance = ndimage.distance_transform_edt(~crop_mask)
    full_ring = (outside_distance > 0) & (outside_distance <= ring_width)
    ring = full_ring & tissue
    inside_values = grey[crop_mask]
    if full_ring.any():
        out["ring_excluded_fraction"] = float(1.0 - ring.sum() / full_ring.sum())
    if ring.sum() >= max(4, MIN_TISSUE_RING * full_ring.sum()):
        ring_values = grey[ring]
        contrast = float((inside_values.mean() - ring_values.mean()) / 255.0)
        out["intensity_contrast"] = contrast
        out["intensity_word"] = intensity_word(contrast, modality)
        texture_ratio, core_std = _texture(grey, crop_mask, outside_distance, ring_width, tissue)
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
                out["margin_sharpness"] = float(
                    gradient[band].mean() / max(float(gradient[outer_ring].mean()), RING_GRADIENT_FLOOR)
                )
            edge_contrast = _edge_contrast(grey, crop_mask, outside_distance, tissue)
            out["edge_contrast"] = edge_contrast
            if shaped and edge_contrast is not None and out["convexity"] is not None:
                out["margin"], out["margin_confidence"] = margin_call(out["convexity"], edge_contrast)
    elif not full_ring.any():
        # The ROI fills its neighbourhood (e.g. the whole image): only its own spread is known.
        out["texture"] = "heterogeneous" if inside_values.std() / 255.0 > HETEROGENEOUS_STD else "homogeneous"

    if display.ndim == 3:
        out["colour"] = colour_name(crop_display[crop_mask & tissue][:, :3] if (crop_mask & tissue).any() else crop_display[crop_mask][:, :3])
    return out


def _edge_contrast(grey: np.ndarray, mask: np.ndarray, outside_distance: np.ndarray, tissue: np.ndarray) -> float | None:
    """|mean of the MARGIN_BAND px outside - the same band inside| / pooled std of the bands.

    A contrast-to-noise ratio across the outline: high for a cyst's dark interior against
    bright tissue, low where the region does not stand out from the speckle around it.
    Background is left out of the outer band; None when either band is too small to measure.
    """
    inside_distance = ndimage.distance_transform_edt(mask)
    smooth = ndimage.gaussian_filter(grey, 1.0)  # speckle and JPEG noise off the means
    inner = (inside_distance > 0) & (inside_distance <= MARGIN_BAND)
    outer = (outside_distance > 0) & (outside_distance <= MARGIN_BAND) & tissue
    if inner.sum() < 8 or outer.sum() < 8:
        return None
    pooled = math.sqrt((float(grey[inner].var()) + float(grey[outer].var())) / 2 + 1.0)
    return abs(float(smooth[outer].mean()) - float(smooth[inner].mean())) / pooled


def measure_whole_image(display: np.ndarray, *, pixel_spacing_mm=None, scale: float = 1.0, axis_scales=None) -> dict:
    """Attributes of a whole-image ROI: only what describes the image, nothing that implies a lesion.

    Position, size class, shape, contrast and margin words would read as a finding in a
    description, so they stay None; area, centroid and (for photos) the dominant colour are facts.
    """
    height, width = display.shape[:2]
    area_px = height * width
    out = {
        "area_px": area_px,
        "area_fraction": 1.0,
        "area_mm2": _area_mm2(area_px, pixel_spacing_mm, scale, axis_scales),
        "width_px": int(width),
        "height_px": int(height),
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
        out["colour"] = colour_name(display[:, :, :3].reshape(-1, 3))
    return out
