"""Decode 2D image files (PNG, JPEG, TIFF, BMP) and masks into plain numpy arrays.

Only pixels leave this module: PNG text chunks, EXIF and TIFF tags can carry names, dates and
device serials, so nothing of the file's metadata is returned. EXIF orientation is the one
piece of metadata applied (to the pixels), because a rotated photo would put the lesion on
the wrong side of the description.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from medtrinity_assets.imaging.limits import PixelLimits, TooLarge

TIFF_SUFFIXES = {".tif", ".tiff"}
TEXT_MASK_SUFFIXES = {".txt"}


class ImageReadError(ValueError):
    """A file that cannot be decoded as an image or mask; the message names file and cause.

    ``kind``: the quarantine kind (sources.base.QUARANTINE_KINDS): "unreadable", "too_large"
    (over the pixel limit, nothing decoded) or "unsupported" (a codec that is not installed).
    """

    def __init__(self, path: Path | str, cause: str, kind: str = "unreadable"):
        self.path = str(path)
        self.cause = cause
        self.kind = kind
        super().__init__(f"{path}: {cause}")


class MaskValuesError(ValueError):
    """A lossless mask read as binary holds more than one non-zero value: a class, id or
    resampled mask the spec calls binary. ``values`` are its distinct values, sorted."""

    def __init__(self, values: list[int]):
        self.values = values
        super().__init__(f"mask holds values {', '.join(str(v) for v in values)}")


# How a binary mask's non-zero values count (layout.binarize of the image_mask family).
BINARIZE_RULES = ("single_value", "threshold", "any_nonzero")


def _check_not_empty(path: Path) -> None:
    if not path.is_file():
        raise ImageReadError(path, "file does not exist")
    if path.stat().st_size == 0:
        raise ImageReadError(path, "file is empty (0 bytes)")


# A grayscale X-ray saved as colour JPEG differs between channels by chroma rounding only
# (a few levels); a real colour image (skin, stain, a coloured arrow) differs far more.
JPEG_CHROMA_NOISE = 6
MAX_COLOURED_FRACTION = 0.0005


def _is_jpeg_gray(rgb: np.ndarray) -> bool:
    signed = rgb.astype(np.int16)
    spread = np.maximum(np.abs(signed[:, :, 0] - signed[:, :, 1]), np.abs(signed[:, :, 0] - signed[:, :, 2]))
    return np.count_nonzero(spread > JPEG_CHROMA_NOISE) <= spread.size * MAX_COLOURED_FRACTION


def _rgb_or_gray(array: np.ndarray) -> tuple[np.ndarray, str]:
    """(H, W) stays grayscale; (H, W, 3) whose channels are all equal becomes (H, W)."""
    if array.ndim == 2:
        return array, "MONOCHROME2"
    if array.ndim == 3 and array.shape[2] == 1:
        return array[:, :, 0], "MONOCHROME2"
    if array.ndim == 3 and array.shape[2] >= 3:
        rgb = array[:, :, :3]
        # Many grayscale scans (BUSI ultrasound, TBX11K X-rays) are saved as 3 equal channels.
        if np.array_equal(rgb[:, :, 0], rgb[:, :, 1]) and np.array_equal(rgb[:, :, 0], rgb[:, :, 2]):
            return np.ascontiguousarray(rgb[:, :, 0]), "MONOCHROME2"
        if rgb.dtype == np.uint8 and _is_jpeg_gray(rgb):
            return rgb.mean(axis=2).round().astype(np.uint8), "MONOCHROME2"
        if rgb.dtype != np.uint8:
            # 16-bit colour is rare; scale to 8 bits so every RGB record has one dtype.
            rgb = (rgb.astype(np.float64) / max(float(rgb.max()), 1.0) * 255.0).round().astype(np.uint8)
        return np.ascontiguousarray(rgb), "RGB"
    raise ValueError(f"unsupported pixel array shape {array.shape}")


def _missing_tiff_codec(compression) -> str:
    # tifffile alone decodes deflate, PackBits and LZMA; LZW, JPEG, JPEG 2000, zstd... come
    # from imagecodecs (pinned in requirements.lock), which may lack a rare codec even when installed.
    name = getattr(compression, "name", str(compression))
    if importlib.util.find_spec("imagecodecs") is None:
        return f"TIFF compression {name} needs the 'imagecodecs' package, which is not installed"
    return f"TIFF compression {name}: the installed imagecodecs has no decoder for it"


def _read_tiff(path: Path, limits: PixelLimits) -> np.ndarray:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            # The first page is the image; further pages (pyramids, thumbnails) are not frames
            # of the same picture in the 2D sources this reads.
            page = tif.pages[0]
            limits.check_image(page.imagelength, page.imagewidth, "TIFF page")
            if page.compression not in tifffile.TIFF.DECOMPRESSORS:
                raise ImageReadError(path, _missing_tiff_codec(page.compression), kind="unsupported")
            array = page.asarray()
    except TooLarge as error:
        raise ImageReadError(path, str(error), kind="too_large") from None
    except ImageReadError:
        raise
    except Exception as error:  # tifffile raises many types for broken files
        raise ImageReadError(path, f"not a readable TIFF ({type(error).__name__}: {error})") from error
    array = np.squeeze(array) if array.ndim > 3 else array
    if array.ndim == 3 and array.shape[0] in (3, 4) and array.shape[2] not in (3, 4):
        array = np.moveaxis(array, 0, -1)  # planar (C, H, W) storage
    return array


def _decode_with_pillow(path: Path, limits: PixelLimits) -> Image.Image:
    try:
        with Image.open(path) as image:
            width, height = image.size  # from the header: nothing decoded yet
            limits.check_image(height, width)
            image.load()  # decode now so a truncated file fails here, inside the try
            return ImageOps.exif_transpose(image)
    except TooLarge as error:
        raise ImageReadError(path, str(error), kind="too_large") from None
    except Image.DecompressionBombError as error:
        # Pillow's own guard (twice Image.MAX_IMAGE_PIXELS) fires inside open(), before the
        # size can be read here: only a spec limit above it reaches this.
        raise ImageReadError(path, f"over Pillow's decompression-bomb limit ({error})", kind="too_large") from None
    except UnidentifiedImageError as error:
        raise ImageReadError(path, "not an image file Pillow can identify") from error
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageReadError(path, f"corrupt or truncated image ({error})") from error


def _pillow_to_array(image: Image.Image) -> np.ndarray:
    mode = image.mode
    if mode in ("P", "PA"):
        image = image.convert("RGBA" if "transparency" in image.info or mode == "PA" else "RGB")
        mode = image.mode
    if mode in ("RGBA", "LA"):
        # Composite on black: the transparent border of a cut-out tile is background.
        background = Image.new(mode, image.size, (0, 0, 0, 255) if mode == "RGBA" else (0, 255))
        image = Image.alpha_composite(background, image).convert("RGB" if mode == "RGBA" else "L")
    elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        image = image.convert("RGB")
    elif mode == "1":
        image = image.convert("L")
    return np.asarray(image)


def read_image(path: Path | str, limits: PixelLimits = PixelLimits()) -> tuple[np.ndarray, str]:
    """Pixels of a 2D image file as (H, W) grayscale (dtype kept) or (H, W, 3) RGB uint8.

    Returns ``(pixels, photometric)`` with photometric "MONOCHROME2" or "RGB". Raises
    ``ImageReadError`` for empty, truncated or non-image files, and for images whose header
    declares more pixels than ``limits`` allow (kind "too_large", nothing decoded).
    """
    path = Path(path)
    _check_not_empty(path)
    if path.suffix.lower() in TIFF_SUFFIXES:
        array = _read_tiff(path, limits)
    else:
        array = _pillow_to_array(_decode_with_pillow(path, limits))
    if array.ndim == 3 and array.shape[2] == 4:
        array = array[:, :, :3]  # TIFF alpha: dropped, it carries no anatomy
    try:
        pixels, photometric = _rgb_or_gray(array)
    except ValueError as error:
        raise ImageReadError(path, str(error)) from error
    if pixels.ndim == 2 and pixels.dtype == bool:
        pixels = pixels.astype(np.uint8) * 255
    if min(pixels.shape[:2]) == 0:
        raise ImageReadError(path, f"image has no pixels (shape {pixels.shape})")
    return np.ascontiguousarray(pixels), photometric


def _read_text_mask(path: Path, limits: PixelLimits) -> np.ndarray:
    """MICCAI 2015 nucleus format: "W H", then W*H integers in row-major (x fastest) order."""
    try:
        with open(path, "r", encoding="ascii") as handle:
            header = handle.readline(64).split()
            if len(header) == 2 and all(part.isdigit() for part in header):
                limits.check_image(int(header[1]), int(header[0]), "text mask")
            # One split + int conversion: about 10x faster than np.loadtxt on the million
            # lines of a 1000x1000 tile.
            body = np.array(handle.read().split(), dtype=np.int64)
    except TooLarge as error:
        raise ImageReadError(path, str(error), kind="too_large") from None
    except (UnicodeDecodeError, ValueError, OverflowError) as error:
        raise ImageReadError(path, f"not an ASCII integer mask ({error})") from error
    if len(header) != 2 or not all(part.isdigit() for part in header):
        raise ImageReadError(path, f"first line must be 'W H', got {' '.join(header)!r}")
    width, height = int(header[0]), int(header[1])
    if body.size != width * height:
        raise ImageReadError(path, f"header says {width}x{height} = {width * height} values, file has {body.size}")
    if body.size and body.min() < 0:
        raise ImageReadError(path, "negative label values")
    return body.reshape(height, width)


# Formats whose encoder changes pixel values: their masks hold noise around every edge.
LOSSY_FORMATS = {"JPEG", "MPO"}


def _decode_mask_with_pillow(path: Path, limits: PixelLimits) -> tuple[np.ndarray, bool]:
    """(array, lossy) of a mask file Pillow reads; palette indices kept where they are the ids."""
    try:
        with Image.open(path) as opened:
            lossy = opened.format in LOSSY_FORMATS
    except Image.DecompressionBombError as error:
        raise ImageReadError(path, f"over Pillow's decompression-bomb limit ({error})", kind="too_large") from None
    except UnidentifiedImageError as error:
        raise ImageReadError(path, "not an image file Pillow can identify") from error
    except OSError as error:
        raise ImageReadError(path, f"corrupt or truncated image ({error})") from error
    image = _decode_with_pillow(path, limits)
    if image.mode in ("P", "PA"):
        # A grey palette (DRIVE GIF, REFUGE BMP) stores the value in the colour; a colour
        # palette (VOC-style class masks) stores the class id in the index.
        grey = np.asarray(image.convert("RGB"))
        if np.array_equal(grey[:, :, 0], grey[:, :, 1]) and np.array_equal(grey[:, :, 0], grey[:, :, 2]):
            return np.ascontiguousarray(grey[:, :, 0]), lossy
        return np.asarray(image.convert("P") if image.mode == "PA" else image), lossy
    return _pillow_to_array(image), lossy


def _colour_ids(rgb: np.ndarray) -> np.ndarray:
    """Colour-coded instance mask -> integer ids (black = 0), numbered in colour order."""
    colours, inverse = np.unique(rgb.reshape(-1, rgb.shape[2]), axis=0, return_inverse=True)
    ids = inverse.reshape(rgb.shape[:2]).astype(np.int64)
    if not np.any(colours[0]):  # black sorts first: keep it 0, others 1..n
        return ids
    return ids + 1


def read_mask(
    path: Path | str,
    binarize: bool,
    threshold: int = 128,
    colour_instances: bool = False,
    text_format: bool = False,
    rule: str = "single_value",
    limits: PixelLimits = PixelLimits(),
) -> np.ndarray:
    """A 2D mask: uint8 0/1 when ``binarize``, else the integer labels as stored.

    Binarized: an RGB mask is reduced to its brightest channel (a lesion drawn in red is
    still inside). Lossy JPEG masks are always thresholded, grey >= ``threshold`` inside
    (ringing leaves values near 0 and 255, never a clean 0/255). Lossless masks follow
    ``rule``: "single_value" (0 and one other value, 0/255, 0/1 or 0/38, inside wherever
    non-zero; more values raise ``MaskValuesError``: thresholding {1, 2, 77, 200} would keep
    the 200 region and drop the rest without a word), "threshold" (graded or anti-aliased
    masks: grey >= ``threshold`` is inside) or "any_nonzero" (every non-zero value is inside).

    No speck removal: thresholding a JPEG-compressed 0/255 mask at mid-grey leaves no isolated
    islands (ringing stays far from 128, measured down to quality 15, also with blurred
    edges), while tiny true lesions exist (IDRiD microaneurysms are a few pixels): removing
    small components would delete findings to clean noise that is not there.

    Not binarized: grey masks give their values; an RGB mask whose channels are equal gives
    one channel; a colour RGB mask gives ids per colour when ``colour_instances``, else is an
    error (class values cannot be read from colours the spec does not name).

    ``text_format``: read as MICCAI 2015 text whatever the suffix (".txt" always is).
    ``limits``: as for ``read_image``, checked from the header before decoding.
    """
    path = Path(path)
    _check_not_empty(path)
    lossy = False
    if text_format or path.suffix.lower() in TEXT_MASK_SUFFIXES:
        labels = _read_text_mask(path, limits)
    elif path.suffix.lower() in TIFF_SUFFIXES:
        labels = _read_tiff(path, limits)
    else:
        labels, lossy = _decode_mask_with_pillow(path, limits)
    if labels.ndim == 3 and labels.shape[2] >= 3:
        rgb = labels[:, :, :3]
        if np.array_equal(rgb[:, :, 0], rgb[:, :, 1]) and np.array_equal(rgb[:, :, 0], rgb[:, :, 2]):
            labels = rgb[:, :, 0]
        elif binarize:
            labels = rgb.max(axis=2)
        elif lossy and _is_jpeg_gray(rgb):
            labels = rgb.mean(axis=2).round().astype(rgb.dtype)
        elif colour_instances:
            labels = _colour_ids(rgb)
        else:
            raise ImageReadError(path, "colour mask: class values must be stored as grey levels or palette indices")
    elif labels.ndim == 3 and labels.shape[2] == 1:
        labels = labels[:, :, 0]
    if labels.ndim != 2:
        raise ImageReadError(path, f"mask must be 2D, got shape {labels.shape}")
    if min(labels.shape) == 0:
        raise ImageReadError(path, f"mask has no pixels (shape {labels.shape})")
    if not binarize:
        return np.ascontiguousarray(labels)
    if labels.dtype == bool:
        return labels.astype(np.uint8)
    if lossy or rule == "threshold":
        return (labels >= threshold).astype(np.uint8)
    if rule == "single_value":
        values = np.unique(labels)
        if np.count_nonzero(values) > 1:
            raise MaskValuesError([int(v) for v in values])
    elif rule != "any_nonzero":
        raise ValueError(f"rule {rule!r} is not one of {BINARIZE_RULES}")
    return (labels > 0).astype(np.uint8)
