"""The image a vision model sees: the normalized image with each ROI outlined and numbered.

``overlay_data_url`` draws every ROI of a record on its normalized image (the mask's edge when
the ROI has a mask, else its box), puts a numeric tag beside each (1, 2, ... in the order the
ROIs are given: the prompt calls them "region 1", "region 2" in that same order, so the caller
passes ``DescribeJob.rois`` unchanged), shrinks the result to ``max_side`` and returns it as a
PNG data URL for the OpenAI chat API (``vlm_user_content``).

What is drawn and why:
- Only outlines and digits. No label word is burned into the pixels: the model must take the
  labels from the prompt, and words drawn in the image could leak into OCR-based checks.
- A whole-image entry (``origin`` "whole_image", made only when a record has no other ROI) has
  nothing to outline and gets no tag; it keeps its number, so numbers always match positions.
- Lime green with a black rim: the green is bright on grey ultrasound, X-ray and CT and stands
  out from the reds and browns of endoscopy, skin and stained slides; the rim keeps it visible
  on white bone or glare.
- Outlines are drawn after shrinking, so lines and digits keep their width whatever the scale.
- PNG, also for photographs: JPEG blurs the one-pixel-sharp lines and digits and rings around
  them, and hosted models bill an image by its pixel size, not its bytes. JPEG (quality 90)
  would be 3-5x smaller (measured on BUSI and Kvasir-SEG overlays at 512 px: PNG 156-371 kB,
  JPEG 50-71 kB), which matters for nothing but the request's upload.

Nothing outside the data root is read: the image and every mask path go through
``containment``. Anything that prevents drawing raises ``OverlayError`` naming the file and
why; the caller falls back to a writer that does not need the image. The same inputs give the
same bytes (Pillow writes no time chunk; resampling and fonts are Pillow's bundled ones).
"""

from __future__ import annotations

import base64
import hashlib
import io
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont, UnidentifiedImageError

from medtrinity_assets.containment import inside_file, is_inside

OUTLINE_COLOUR = (50, 255, 50)
RIM_COLOUR = (0, 0, 0)
# The coloured line covers the edge and one pixel either side; the rim one pixel more.
LINE_RADIUS = 1
RIM_RADIUS = 2
PNG_COMPRESS_LEVEL = 6
DATA_URL_PREFIX = "data:image/png;base64,"


class OverlayError(ValueError):
    """The overlay cannot be drawn (a file missing, unreadable, outside the data root, or a
    mask whose size is not the image's); the message names the file and the reason."""


def contained_path(data_root: Path, path: Path | str, what: str) -> Path:
    """``path`` (absolute, or relative to ``data_root``) when it lies inside the data root and
    exists; else ``OverlayError`` saying which ``what`` and why."""
    data_root = Path(data_root)
    if Path(path).is_absolute():
        found = Path(path) if is_inside(data_root, path) else None
    else:
        found = inside_file(data_root, str(path))
    if found is None:
        raise OverlayError(f"{what} {str(path)!r} lies outside the data root {str(data_root)!r}: not read")
    if not found.is_file():
        raise OverlayError(f"{what} {str(path)!r} does not exist under the data root {str(data_root)!r}")
    return found


def _open(path: Path, what: str) -> Image.Image:
    try:
        with Image.open(path) as opened:
            opened.load()
            return opened.copy()
    except (UnidentifiedImageError, OSError) as error:
        raise OverlayError(f"{what} {str(path)!r} cannot be read as an image: {error}") from error


def read_mask(data_root: Path, mask_path: str) -> np.ndarray:
    """An ROI mask PNG (relative to the data root, contained) as a boolean array."""
    path = contained_path(data_root, mask_path, "ROI mask")
    return np.asarray(_open(path, "ROI mask")) > 0


def inner_edge(mask: np.ndarray) -> np.ndarray:
    """The mask's pixels that touch a background pixel (4-neighbours): a one-pixel outline just
    inside the region. Pixels on the image border count as interior, so a region cut by the
    frame is not outlined along the frame."""
    interior = mask.copy()
    interior[1:-1, 1:-1] = mask[1:-1, 1:-1] & mask[:-2, 1:-1] & mask[2:, 1:-1] & mask[1:-1, :-2] & mask[1:-1, 2:]
    return mask & ~interior


def thicken(edge: np.ndarray, radius: int) -> np.ndarray:
    """``edge`` grown by ``radius`` pixels in every direction (a square neighbourhood)."""
    grown = edge.copy()
    height, width = edge.shape
    ys, xs = np.nonzero(edge)
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            grown[np.clip(ys + dy, 0, height - 1), np.clip(xs + dx, 0, width - 1)] = True
    return grown


def _box_edge(shape: tuple[int, int], box: tuple[int, int, int, int]) -> np.ndarray:
    """The one-pixel outline of a box (x1, y1 exclusive), clipped to the image."""
    height, width = shape
    x0, y0, x1, y1 = box
    x0, y0 = min(max(x0, 0), width - 1), min(max(y0, 0), height - 1)
    x1, y1 = min(max(x1, x0 + 1), width), min(max(y1, y0 + 1), height)
    edge = np.zeros(shape, dtype=bool)
    edge[y0, x0:x1] = edge[y1 - 1, x0:x1] = True
    edge[y0:y1, x0] = edge[y0:y1, x1 - 1] = True
    return edge


def _scaled_box(roi: Mapping, scale: float) -> tuple[int, int, int, int]:
    return tuple(int(round(float(roi[key]) * scale)) for key in ("x0", "y0", "x1", "y1"))


def _roi_edge(roi: Mapping, data_root: Path, source_size: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """The one-pixel outline of one ROI in the output frame (``size``: width, height)."""
    width, height = size
    scale = width / source_size[0]
    mask_path = roi.get("mask_path")
    if not mask_path:
        return _box_edge((height, width), _scaled_box(roi, scale))
    mask = read_mask(data_root, mask_path)
    if mask.shape != (source_size[1], source_size[0]):
        raise OverlayError(
            f"ROI mask {mask_path!r} of {roi.get('roi_id')!r} is {mask.shape[1]}x{mask.shape[0]}, "
            f"not the image's {source_size[0]}x{source_size[1]}"
        )
    if size != source_size:
        # Shrunk as grey levels then cut at half: the outline follows the region's true edge
        # instead of the staircase a nearest-neighbour shrink leaves.
        shrunk = Image.fromarray(mask.astype(np.uint8) * 255).resize(size, Image.Resampling.BILINEAR)
        mask = np.asarray(shrunk) >= 128
    return inner_edge(mask)


def _tag_font(size: tuple[int, int]) -> ImageFont.FreeTypeFont:
    # A 21 px font on a 512 px image (digits about 15 px high), 32 px at 768: legible to a
    # model at high detail, small beside most lesions.
    return ImageFont.load_default(size=max(16, max(size) // 24))


def _place_tag(edge: np.ndarray, tag: tuple[int, int], taken: list[tuple[int, int, int, int]], lines: np.ndarray) -> tuple[int, int]:
    """Top-left corner for a ``tag`` (width, height) box beside the region's outline: above
    its topmost point, else left of its leftmost, below its lowest, right of its rightmost.
    The first spot inside the image that covers no earlier tag and no drawn outline (``lines``)
    wins; if none, the first that does so once clamped into the image, else the first, clamped."""
    height, width = edge.shape
    ys, xs = np.nonzero(edge)
    tag_w, tag_h = tag
    gap = RIM_RADIUS + 1
    top, left, bottom, right = ys.argmin(), xs.argmin(), ys.argmax(), xs.argmax()
    spots = [
        (int(xs[top]) - tag_w // 2, int(ys[top]) - gap - tag_h),
        (int(xs[left]) - gap - tag_w, int(ys[left]) - tag_h // 2),
        (int(xs[bottom]) - tag_w // 2, int(ys[bottom]) + gap + 1),
        (int(xs[right]) + gap + 1, int(ys[right]) - tag_h // 2),
    ]
    clamped = [(max(min(x, width - tag_w), 0), max(min(y, height - tag_h), 0)) for x, y in spots]

    def free(spot):
        x, y = spot
        if lines[y : y + tag_h, x : x + tag_w].any():
            return False
        return not any(x < bx1 and bx0 < x + tag_w and y < by1 and by0 < y + tag_h for bx0, by0, bx1, by1 in taken)

    for spot, wanted in zip(clamped, spots):
        if spot == wanted and free(spot):
            return spot
    return next((spot for spot in clamped if free(spot)), clamped[0])


def draw_roi_outlines(image: np.ndarray, rois: Sequence[Mapping], data_root: Path, source_size: tuple[int, int] | None = None) -> np.ndarray:
    """``image`` (H x W x 3 uint8) with each ROI's outline and its number (1-based position in
    ``rois``) drawn. ROI coordinates and masks are in the frame ``source_size`` (width, height;
    default the image's own), scaled to the image's size."""
    pixels = np.array(image, dtype=np.uint8, copy=True)
    size = (pixels.shape[1], pixels.shape[0])
    source_size = source_size or size
    edges = [
        (number, _roi_edge(roi, data_root, source_size, size))
        for number, roi in enumerate(rois, start=1)
        if roi.get("origin") != "whole_image"
    ]
    edges = [(number, edge) for number, edge in edges if edge.any()]
    # Every rim first, then every line: one region's rim never cuts through another's line.
    lines = np.zeros(pixels.shape[:2], dtype=bool)
    for _, edge in edges:
        rim = thicken(edge, RIM_RADIUS)
        pixels[rim] = RIM_COLOUR
        lines |= rim
    for _, edge in edges:
        pixels[thicken(edge, LINE_RADIUS)] = OUTLINE_COLOUR
    canvas = Image.fromarray(pixels)
    draw = ImageDraw.Draw(canvas)
    font = _tag_font(size)
    taken: list[tuple[int, int, int, int]] = []
    for number, edge in edges:
        text = str(number)
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        pad = 3
        tag = (right - left + 2 * pad, bottom - top + 2 * pad)
        x, y = _place_tag(edge, tag, taken, lines)
        taken.append((x, y, x + tag[0], y + tag[1]))
        draw.rectangle([x, y, x + tag[0] - 1, y + tag[1] - 1], fill=RIM_COLOUR, outline=OUTLINE_COLOUR)
        draw.text((x + pad - left, y + pad - top), text, fill=OUTLINE_COLOUR, font=font)
    return np.asarray(canvas)


def overlay_png(image_path: Path | str, rois: Sequence[Mapping], data_root: Path, max_side: int = 768) -> bytes:
    """PNG bytes of the normalized image shrunk to fit ``max_side`` (aspect kept, never
    enlarged) with the ROI outlines and numbers drawn (``draw_roi_outlines``)."""
    path = contained_path(data_root, image_path, "image")
    image = _open(path, "image").convert("RGB")
    source_size = image.size
    scale = min(1.0, max_side / max(source_size))
    size = (max(1, round(source_size[0] * scale)), max(1, round(source_size[1] * scale)))
    if size != source_size:
        image = image.resize(size, Image.Resampling.LANCZOS)
    drawn = draw_roi_outlines(np.asarray(image), rois, data_root, source_size)
    buffer = io.BytesIO()
    Image.fromarray(drawn).save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def overlay_data_url(image_path: Path | str, rois: Sequence[Mapping], data_root: Path, max_side: int = 768) -> str:
    """``overlay_png`` as a "data:image/png;base64,..." URL for an ``image_url`` content part."""
    return DATA_URL_PREFIX + base64.b64encode(overlay_png(image_path, rois, data_root, max_side)).decode("ascii")


def image_digest(data_url: str) -> str:
    """sha256 of the image bytes a data URL carries: what a response cache key holds in place
    of the megabytes of the URL itself."""
    header, sep, payload = data_url.partition(",")
    if not (sep and header.startswith("data:") and header.endswith(";base64")):
        raise ValueError(f"not a base64 data URL: {data_url[:40]!r}")
    return hashlib.sha256(base64.b64decode(payload, validate=True)).hexdigest()


def vlm_user_content(text: str, data_url: str) -> list[dict]:
    """The user message's content parts for an OpenAI-compatible vision model: the prompt text,
    then the overlay at high detail (small lesions and thin outlines need the full tiles)."""
    return [
        {"type": "text", "text": text},
        {"type": "image_url", "image_url": {"url": data_url, "detail": "high"}},
    ]
