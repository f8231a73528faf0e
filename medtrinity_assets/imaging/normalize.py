"""Stage 2 core: turn a de-identified pixel array into a bounded-size 8-bit display image.

Intensity handling depends on what the numbers mean: CT values are Hounsfield units, so a fixed
window per body region shows the same tissue the same way in every scan; MR, X-ray, ultrasound
and nuclear-medicine values have no absolute scale, so they are stretched between percentiles
of the non-background pixels; PET in SUV is clipped to a fixed uptake range so that a hot lesion
looks hot in every study; colour photographs already are display images and are only resized.

Why numpy + Pillow rather than MONAI transforms here: MONAI's ScaleIntensityRange(Percentiles)
and Resize do the same arithmetic but go through torch tensors and metadata wrapping. Measured
on the 2-core dev machine over pydicom-data files (window/percentile + resize + PNG encode, ms per
image; "plain" = scale to 8 bit + Pillow resize + default PNG encode): 512x512 CT: ours 4-6,
MONAI 11-20, plain 17-23; 1024x1024 MR: ours 13-16, MONAI 28-36, plain 25-30; 1955x1841 CR:
ours 23-36, MONAI 72-102, plain 47-65; 600x800 US: ours 6, MONAI 14, plain 6. MONAI would fall
near or under the required half of plain throughput on large radiographs, so the same operations
are written in numpy with MONAI's semantics (linear map of [a_min, a_max] to [0, 255], clip).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

# (level, width) in HU. Standard radiology display windows.
CT_WINDOWS: dict[str, tuple[int, int]] = {
    "brain": (40, 80),
    "lung": (-600, 1500),
    "mediastinum": (50, 350),
    "soft_tissue": (50, 350),
    "abdomen": (40, 400),
    "liver": (60, 160),
    "bone": (400, 1800),
}

# Organ words that choose a window when the spec says "auto"; first organ that matches wins.
_ORGAN_WINDOW_RULES: tuple[tuple[tuple[str, ...], str], ...] = (
    (("head", "brain", "skull", "cerebr"), "brain"),
    (("lung", "chest", "thorax", "pulmonary"), "lung"),
    (("liver", "hepat"), "liver"),
    (("abdomen", "pancrea", "kidney", "renal", "spleen", "colon", "bowel", "stomach"), "abdomen"),
    (("bone", "spine", "skelet", "vertebra"), "bone"),
)

PHOTO_MODALITIES = {"dermoscopy", "endoscopy", "fundus", "histopathology", "microscopy"}
SUV_RANGE = (0.0, 10.0)

# Percentiles are computed on at most this many pixels (a regular stride, so deterministic):
# the percentile of a 3.6 Mpx radiograph barely moves when estimated from 250k of its pixels,
# and it is the slowest step otherwise.
_PERCENTILE_SAMPLE = 250_000


@dataclass(frozen=True)
class IntensityRule:
    """What display scaling needs to know of a source (``SourceSpec.intensity_rule`` gives it)."""

    modality: str  # the source's modality, for records that name none
    organs: tuple[str, ...]  # pick the CT window when ``ct_window`` is "auto"
    ct_window: str = "auto"  # a CT_WINDOWS name or "auto"
    percentile_low: float = 0.5
    percentile_high: float = 99.5


@dataclass(frozen=True)
class NormalizedImage:
    display: np.ndarray  # uint8, (H', W') or (H', W', 3)
    scale: float  # normalized size / original size (<= 1)
    intensity_method: str


def ct_window_for(rule: IntensityRule) -> str:
    """The CT window name for a source: its explicit choice, else one picked from its organs."""
    if rule.ct_window != "auto":
        return rule.ct_window
    for organ in rule.organs:
        for keywords, window in _ORGAN_WINDOW_RULES:
            if any(word in organ for word in keywords):
                return window
    return "soft_tissue"


def _map_range(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Linear map of [low, high] to [0, 255] with clipping, as uint8."""
    if high <= low:  # a constant image carries no contrast to stretch
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = (values.astype(np.float32) - np.float32(low)) * np.float32(255.0 / (high - low))
    np.clip(scaled, 0, 255, out=scaled)
    return (scaled + 0.5).astype(np.uint8)


def percentile_bounds(values: np.ndarray, low_pct: float, high_pct: float) -> tuple[float, float]:
    """Percentiles of the non-background pixels.

    Background is the image's minimum value (zero padding outside the body in MR, the black
    frame around an ultrasound sector): counting it would pull the low percentile onto it and
    waste the grey range on empty space. When nearly everything is at the minimum, all pixels
    are used instead.
    """
    flat = values.reshape(-1)
    stride = max(1, flat.size // _PERCENTILE_SAMPLE)
    sample = flat[::stride].astype(np.float32)
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return 0.0, 0.0
    foreground = sample[sample > sample.min()]
    if foreground.size >= 0.01 * sample.size:
        sample = foreground
    low, high = np.percentile(sample, [low_pct, high_pct])
    return float(low), float(high)


def _intensity(pixels: np.ndarray, record: dict, rule: IntensityRule) -> tuple[np.ndarray, str]:
    """8-bit display values at the original size, and the method used, in words."""
    modality = record.get("modality") or rule.modality
    units = (record.get("pixel_units") or "raw").lower()
    if pixels.ndim == 3:
        if pixels.shape[2] == 1:
            pixels = pixels[:, :, 0]
        elif pixels.shape[2] >= 3:
            rgb = pixels[:, :, :3]  # an alpha channel (RGBA tiles) carries no image content
            if rgb.dtype == np.uint8:
                return np.ascontiguousarray(rgb), "rgb_passthrough"
            low, high = percentile_bounds(rgb, rule.percentile_low, rule.percentile_high)
            return _map_range(rgb, low, high), _percentile_name(rule)
        else:
            raise ValueError(f"unsupported channel count {pixels.shape[2]} in pixel array {pixels.shape}")
    if pixels.ndim != 2:
        raise ValueError(f"expected a 2D or (H, W, 3) pixel array, got shape {pixels.shape}")
    if pixels.dtype.kind == "f":
        pixels = np.nan_to_num(pixels, nan=0.0, posinf=0.0, neginf=0.0)

    if modality == "ct" and units == "hu":
        window = ct_window_for(rule)
        level, width = CT_WINDOWS[window]
        return _map_range(pixels, level - width / 2, level + width / 2), f"ct_window:{window}(L{level},W{width})"
    if modality == "pet" and units == "suv":
        low, high = SUV_RANGE
        return _map_range(pixels, low, high), f"suv_clip({low:g},{high:g})"
    if modality in PHOTO_MODALITIES and pixels.dtype == np.uint8:
        # An 8-bit grey photograph (e.g. a grey fundus or brightfield tile) is already a display image.
        return pixels, "gray_passthrough"
    low, high = percentile_bounds(pixels, rule.percentile_low, rule.percentile_high)
    return _map_range(pixels, low, high), _percentile_name(rule)


def _percentile_name(rule: IntensityRule) -> str:
    return f"percentile({rule.percentile_low:g},{rule.percentile_high:g})"


def bounded_shape(height: int, width: int, max_side: int) -> tuple[int, int, float]:
    """Target (height, width, scale) with the longer side <= max_side; never upscales."""
    longer = max(height, width)
    if longer <= max_side:
        return height, width, 1.0
    scale = max_side / longer
    return max(1, round(height * scale)), max(1, round(width * scale)), scale


def normalize_pixels(pixels: np.ndarray, record: dict, rule: IntensityRule, max_side: int = 512) -> NormalizedImage:
    pixels = np.asarray(pixels)
    display, method = _intensity(pixels, record, rule)
    height, width = display.shape[:2]
    new_h, new_w, scale = bounded_shape(height, width, max_side)
    if (new_h, new_w) != (height, width):
        # BOX = area averaging: the right filter for downscaling (no aliasing of fine texture
        # such as ultrasound speckle or nuclei), and Pillow's fastest antialiased one.
        image = Image.fromarray(display)
        display = np.asarray(image.resize((new_w, new_h), Image.Resampling.BOX))
    return NormalizedImage(display=np.ascontiguousarray(display), scale=float(scale), intensity_method=method)


PNG_COMPRESS_LEVEL = 2  # see encode_png; the benchmark's floor encodes at the same level


def encode_png(display: np.ndarray, compress_level: int = PNG_COMPRESS_LEVEL) -> bytes:
    """PNG bytes that depend only on the pixels (Pillow writes no time or text chunks unless asked).

    compress_level 2: measured on six 512 px images (CT, MR, CR, US, histology, fundus), level 6
    (Pillow's default) took 3.3x the time of level 2 for files only 7% smaller; level 1 saved
    another 14% of time for 1% larger files. The bytes depend on the zlib build, so hashes are
    stable on one installation, not necessarily across zlib versions.
    """
    display = np.asarray(display)
    if display.dtype != np.uint8:
        raise ValueError(f"display image must be uint8, got {display.dtype}")
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(display)).save(buffer, format="PNG", compress_level=compress_level)
    return buffer.getvalue()


def resize_mask(mask: np.ndarray, shape) -> np.ndarray:
    """Nearest-neighbour resize of a 2D label mask to ``shape`` (H, W), labels kept exactly.

    Index arithmetic instead of an image library: it works for any integer dtype (instance masks
    can exceed 255 labels) and samples each target pixel at the source pixel under its centre.
    """
    mask = np.asarray(mask)
    target_h, target_w = int(shape[0]), int(shape[1])
    src_h, src_w = mask.shape[:2]
    if (src_h, src_w) == (target_h, target_w):
        return mask.copy()
    rows = np.minimum(((np.arange(target_h) + 0.5) * (src_h / target_h)).astype(np.int64), src_h - 1)
    cols = np.minimum(((np.arange(target_w) + 0.5) * (src_w / target_w)).astype(np.int64), src_w - 1)
    return mask[rows[:, None], cols[None, :]]
