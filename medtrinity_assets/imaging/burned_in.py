"""Burned-in text and overlay markers in a 2D display image: a classical detector.

DICOM says when text is burned into its pixels (BurnedInAnnotation); ultrasound screenshots,
endoscopy frames and photographs say nothing, yet carry dates, patient fields, side labels,
calipers and coloured boxes. Text may identify a patient, and markers teach a model to look
for the marker instead of the lesion, so such images are flagged and held back from training.

Why a pixel rule and not OCR: the rule needs only numpy and scipy, so the pipeline decides the
same way on every machine (no Tesseract install, no language data), and at a few milliseconds
per 512 px image it runs on every image. What it looks for:

- **text**: bright, thin strokes (a pixel brighter than the pixels a few steps away on both
  sides, horizontally or vertically) whose connected pieces have glyph sizes and line up in a
  row of similar heights with letter-sized gaps. A row counts when it has four glyphs or more
  and is brighter in every channel than what surrounds it (white gaps in H&E and glints on red
  mucosa are not: their surroundings' red channel is as bright); when three or more rows
  stack left-aligned (an on-screen patient/date panel, even over tissue); or, in a grey image
  of 256 px or more, a three-glyph label ("RT 2") that stands out strongly. In a grey image the
  strokes of a row must also share one grey level (or, antialiased, sit on a flat background),
  as drawn type does and bright anatomy (fat, vessels, bone in MR and CT) does not.
- **marker**: caliper crosses ("+" and "x" shaped pieces: thin, square, hollow) in pairs.
- **overlay**: saturated colour that the image itself cannot contain: any strongly coloured
  pixel in a grey image (yellow calipers and boxes on ultrasound), green or teal in a colour
  photograph (the endoscope position panel; no tissue seen in these modalities is green).

Returned boxes are in the display image's pixel coordinates (x1, y1 exclusive).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

DETECTOR_VERSION = "burned_in_v1"

# A stroke pixel is this much brighter (0-255) than pixels STROKE_STEPS away on both sides.
STROKE_CONTRAST = 45
STROKE_MIN_LEVEL = 110
STROKE_STEPS = (2, 3)
# Glyph size in display pixels (512 px images: text of a few to ~30 px height).
GLYPH_MIN_HEIGHT = 5
GLYPH_MAX_HEIGHT = 40
GLYPH_MIN_PIXELS = 6
# A text line: at least this many glyphs, centres within half a glyph height, gaps within
# LINE_GAP glyph heights, heights within a factor LINE_HEIGHT_RATIO, and glyph heights that vary
# little (coefficient of variation): type has one size, sparkles on wet mucosa do not.
LINE_MIN_GLYPHS = 3
LINE_STRONG_GLYPHS = 4
LINE_MAX_HEIGHT_CV = 0.3
# A block of text: this many lines stacked left-aligned, at most BLOCK_LINE_GAP line heights apart.
BLOCK_MIN_LINES = 3
BLOCK_LINE_GAP = 3.0
# In a grey image (ultrasound, radiograph) a short label (three glyphs) counts when it is this
# much brighter than its surroundings; in colour photographs glints do that, so there it does not.
SHORT_LINE_CONTRAST = 80
SHORT_LINE_MIN_SIDE = 256
# Type in a grey image is drawn in one grey: the spread (90th - 10th percentile) of its stroke
# values is small (<= 25 measured on BUSI labels), while bright anatomy that happens to line up
# (fat and vessels in MR and CT) spreads 50-140. Small antialiased type on a radiograph spreads
# more (60-110) but sits on a flatter background (interquartile range <= 55 around it), which
# anatomy does not.
GREY_TYPE_SPREAD = 40
GREY_BLURRED_TYPE_SPREAD = 110
FLAT_BACKGROUND_IQR = 55
# Type against its surroundings: the strokes' darkest channel minus the lower quartile of the
# brightest channel around them (measured: >= 28 for most Kvasir and BUSI lines, <= 23 for
# the white gaps of H&E tiles that otherwise line up like glyphs).
LINE_CONTRAST = 30
LINE_GAP = 1.6
LINE_HEIGHT_RATIO = 1.8
# Strongly coloured pixels: channel spread (max - min) at least this in a grey image.
OVERLAY_CHROMA = 80
# A grey image: at most this fraction of pixels have a channel spread over GREY_CHROMA.
GREY_CHROMA = 25
GREY_FRACTION = 0.02
OVERLAY_MIN_PIXELS = 12
# In a colour photograph a few greenish pixels happen (lens fringes, JPEG colour bleeding at a
# highlight); a drawn panel or box outline has hundreds.
OVERLAY_MIN_PIXELS_COLOUR = 60
# Green in a colour photograph: green leads red by this much and is at least blue (pure green
# and the teal of an endoscope's position panel; tissue, blood, bile and stains lead with red,
# or with blue for hematoxylin).
GREEN_LEAD = 70
# The glyph pairing compares every pair (n x n booleans): beyond this many glyph-like pieces
# (texture, not type) only the first, in label order (top to bottom), are paired.
MAX_CANDIDATES = 4000


@dataclass(frozen=True)
class BurnedIn:
    present: bool
    score: float  # 0..1, grows with the evidence (glyph lines, crosses, overlay pixels)
    boxes: list[list[int]] = field(default_factory=list)  # [[x0, y0, x1, y1], ...]
    kinds: list[str] = field(default_factory=list)  # one per box: text | marker | overlay

    def to_json(self) -> str:
        return json.dumps(
            {"present": self.present, "score": round(self.score, 3), "boxes": self.boxes, "kinds": self.kinds},
            separators=(",", ":"),
        )

    @staticmethod
    def from_json(text: str | None) -> "BurnedIn | None":
        if not text:
            return None
        value = json.loads(text)
        return BurnedIn(bool(value["present"]), float(value["score"]), value.get("boxes", []), value.get("kinds", []))


def _stroke_mask(grey: np.ndarray) -> np.ndarray:
    """Pixels of thin bright strokes: brighter than the pixels a few steps away on both sides,
    horizontally or vertically (a cheap top-hat: a few array shifts, no morphology)."""
    g = grey.astype(np.int16)
    mask = np.zeros(g.shape, dtype=bool)
    for step in STROKE_STEPS:
        centre = g[:, step:-step]
        mask[:, step:-step] |= (centre - np.maximum(g[:, : -2 * step], g[:, 2 * step :])) >= STROKE_CONTRAST
        centre = g[step:-step, :]
        mask[step:-step, :] |= (centre - np.maximum(g[: -2 * step, :], g[2 * step :, :])) >= STROKE_CONTRAST
    mask &= grey >= STROKE_MIN_LEVEL
    return mask


def _drawn_in_one_grey(line: list[int], strokes: np.ndarray, darkest: np.ndarray) -> bool:
    """Whether a grey image's line looks like type: strokes of one grey level, or strokes of a
    few levels (antialiased) on a flat background."""
    x0, y0, x1, y1 = line
    inside = strokes[y0:y1, x0:x1]
    values = darkest[y0:y1, x0:x1]
    if not inside.any() or inside.all():
        return False
    low, high = np.percentile(values[inside], [10, 90])
    spread = high - low
    if spread <= GREY_TYPE_SPREAD:
        return True
    q1, q3 = np.percentile(values[~inside], [25, 75])
    return bool(spread <= GREY_BLURRED_TYPE_SPREAD and q3 - q1 <= FLAT_BACKGROUND_IQR)


def _contrast(line: list[int], strokes: np.ndarray, darkest: np.ndarray, brightest: np.ndarray) -> float:
    """Whether a line's strokes are brighter in every channel than most of what lies around
    them: true of white or grey type on any background, false of white gaps between pink H&E
    tissue and of glints on red mucosa, whose brightest channel is as bright as the glint."""
    x0, y0, x1, y1 = line
    inside = strokes[y0:y1, x0:x1]
    around = brightest[y0:y1, x0:x1][~inside]
    if around.size == 0 or not inside.any():
        return 255.0 if inside.any() else 0.0
    return float(np.median(darkest[y0:y1, x0:x1][inside])) - float(np.percentile(around, 25))


def _components(mask: np.ndarray):
    """(labels, boxes array [n, 4] as y0, x0, y1, x1, pixel counts) of the 8-connected pieces."""
    if not mask.any():
        # Most photographs have no stroke at all: labelling an empty image still costs a
        # millisecond, a third of the detector's time on them. The same result, without it.
        return np.zeros(mask.shape, dtype=np.int32), np.zeros((0, 4), dtype=np.int64), np.zeros(0, dtype=np.int64)
    labels, count = ndi.label(mask, structure=np.ones((3, 3), dtype=bool))
    if count == 0:
        return labels, np.zeros((0, 4), dtype=np.int64), np.zeros(0, dtype=np.int64)
    slices = ndi.find_objects(labels)
    boxes = np.array([[s[0].start, s[1].start, s[0].stop, s[1].stop] for s in slices], dtype=np.int64)
    sizes = np.bincount(labels[mask], minlength=count + 1)[1:]
    return labels, boxes, sizes


def _text_lines(boxes: np.ndarray, sizes: np.ndarray) -> list[tuple[list[int], int]]:
    """([x0, y0, x1, y1], glyph count) of rows of glyph-like pieces."""
    heights = boxes[:, 2] - boxes[:, 0]
    widths = boxes[:, 3] - boxes[:, 1]
    fill = sizes / np.maximum(heights * widths, 1)
    glyph = (
        (heights >= GLYPH_MIN_HEIGHT)
        & (heights <= GLYPH_MAX_HEIGHT)
        & (widths <= 2 * heights)
        & (widths >= 1)
        & (sizes >= GLYPH_MIN_PIXELS)
        & (fill >= 0.12)
        & (fill <= 0.85)
    )
    g = boxes[glyph]
    if len(g) < LINE_MIN_GLYPHS:
        return []
    if len(g) > MAX_CANDIDATES:
        g = g[:MAX_CANDIDATES]
    y0, x0, y1, x1 = g[:, 0], g[:, 1], g[:, 2], g[:, 3]
    h = (y1 - y0).astype(np.float64)
    cy = (y0 + y1) / 2.0
    # Pairwise: same row, similar height, close horizontally (the gap may be negative: overlap).
    hmax = np.maximum(h[:, None], h[None, :])
    same_row = np.abs(cy[:, None] - cy[None, :]) <= 0.5 * hmax
    similar = hmax <= LINE_HEIGHT_RATIO * np.minimum(h[:, None], h[None, :])
    gap = np.maximum(x0[:, None], x0[None, :]) - np.minimum(x1[:, None], x1[None, :])
    near = gap <= LINE_GAP * hmax
    linked = same_row & similar & near
    np.fill_diagonal(linked, False)
    count, group = _connected(linked)
    lines = []
    for index in range(count):
        members = np.nonzero(group == index)[0]
        if len(members) < LINE_MIN_GLYPHS or h[members].std() > LINE_MAX_HEIGHT_CV * h[members].mean():
            continue
        box = [int(x0[members].min()), int(y0[members].min()), int(x1[members].max()), int(y1[members].max())]
        lines.append((box, len(members)))
    return lines


def _blocks(lines: list[list[int]]) -> set[int]:
    """Indices of lines in a block: at least BLOCK_MIN_LINES lines of similar height stacked
    one under the other (a skipped line allowed) with their left edges aligned, as an on-screen patient/date panel is.
    Sparkles on mucosa may line up in one row; they do not stack left-aligned three deep."""
    if len(lines) < BLOCK_MIN_LINES:
        return set()
    box = np.array(lines, dtype=np.float64)
    h = box[:, 3] - box[:, 1]
    hmax = np.maximum(h[:, None], h[None, :])
    aligned = np.abs(box[:, None, 0] - box[None, :, 0]) <= np.maximum(3.0, 0.4 * hmax)
    similar = hmax <= 1.5 * np.minimum(h[:, None], h[None, :])
    vertical_gap = np.maximum(box[:, None, 1], box[None, :, 1]) - np.minimum(box[:, None, 3], box[None, :, 3])
    stacked = (vertical_gap >= -0.3 * hmax) & (vertical_gap <= BLOCK_LINE_GAP * hmax)
    linked = aligned & similar & stacked
    np.fill_diagonal(linked, False)
    count, group = _connected(linked)
    sizes = np.bincount(group, minlength=count)
    return {int(i) for i in np.nonzero(sizes[group] >= BLOCK_MIN_LINES)[0]}


def _connected(adjacency: np.ndarray) -> tuple[int, np.ndarray]:
    """(number of groups, group of each node) of a symmetric adjacency matrix (union-find:
    the pairs are few, and scipy.sparse costs more to set up than this takes)."""
    parent = list(range(len(adjacency)))

    def root(node: int) -> int:
        while parent[node] != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    for a, b in zip(*np.nonzero(np.triu(adjacency))):
        parent[root(int(a))] = root(int(b))
    roots = [root(node) for node in range(len(parent))]
    _, group = np.unique(roots, return_inverse=True)
    return int(group.max()) + 1 if len(group) else 0, group


def _crosses(labels: np.ndarray, boxes: np.ndarray, sizes: np.ndarray) -> list[list[int]]:
    """Boxes of caliper crosses: square, thin, hollow pieces whose pixels lie on the centre
    row and column ("+") or on the two diagonals ("x")."""
    heights = boxes[:, 2] - boxes[:, 0]
    widths = boxes[:, 3] - boxes[:, 1]
    square = (heights >= 7) & (heights <= 25) & (np.abs(heights - widths) <= 2) & (sizes <= 0.5 * heights * widths)
    found = []
    for index in np.nonzero(square)[0]:
        y0, x0, y1, x1 = boxes[index]
        piece = labels[y0:y1, x0:x1] == index + 1
        h, w = piece.shape
        ys, xs = np.nonzero(piece)
        plus = (np.abs(ys - (h - 1) / 2) <= 1.5) | (np.abs(xs - (w - 1) / 2) <= 1.5)
        diag = (np.abs(ys - xs * (h - 1) / max(w - 1, 1)) <= 1.5) | (np.abs(ys - (w - 1 - xs) * (h - 1) / max(w - 1, 1)) <= 1.5)
        # All four arms must reach the box edges, so a blob, a bar or an "L" is not a cross.
        mid_r, mid_c = slice(max(h // 2 - 1, 0), h // 2 + 2), slice(max(w // 2 - 1, 0), w // 2 + 2)
        plus_arms = piece[0, mid_c].any() and piece[-1, mid_c].any() and piece[mid_r, 0].any() and piece[mid_r, -1].any()
        diag_arms = piece[:2, :2].any() and piece[:2, -2:].any() and piece[-2:, :2].any() and piece[-2:, -2:].any()
        if (plus.mean() >= 0.9 and plus_arms) or (diag.mean() >= 0.9 and diag_arms):
            found.append([int(x0), int(y0), int(x1), int(y1)])
    return found


def _is_grey(darkest: np.ndarray, brightest: np.ndarray) -> bool:
    """A grey image, or an RGB copy of one: few pixels with any colour (sampled 1 in 16)."""
    spread = brightest[::4, ::4] - darkest[::4, ::4]  # brightest >= darkest: no uint8 wrap
    return float((spread > GREY_CHROMA).mean()) <= GREY_FRACTION


def _overlay(display: np.ndarray, darkest: np.ndarray, brightest: np.ndarray, grey: bool) -> list[list[int]]:
    """Boxes of colour no tissue in the image can have: any strong colour in a grey image,
    green or teal in a colour photograph."""
    if display.ndim != 3 or display.shape[2] < 3:
        return []
    if grey:
        mask = (brightest - darkest) >= OVERLAY_CHROMA
    else:
        # Green is rare: look on a quarter of the pixels first, and only where some is
        # found on the whole image (channel by channel: reductions over interleaved RGB are slow).
        def green(step: int) -> np.ndarray:
            r, g, b = (display[::step, ::step, i].astype(np.int16) for i in range(3))
            return ((g - r) >= GREEN_LEAD) & (g >= b)

        if green(2).sum() < OVERLAY_MIN_PIXELS // 4:
            return []
        mask = green(1)
    min_pixels = OVERLAY_MIN_PIXELS if grey else OVERLAY_MIN_PIXELS_COLOUR
    if mask.sum() < min_pixels:
        return []
    labels, boxes, sizes = _components(mask)
    keep = sizes >= min_pixels
    return [[int(b[1]), int(b[0]), int(b[3]), int(b[2])] for b in boxes[keep]]


def channel_extremes(display: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(darkest, brightest) channel per pixel; both the image itself when it is grey."""
    if display.ndim == 2:
        return display, display
    r, g, b = display[:, :, 0], display[:, :, 1], display[:, :, 2]
    return np.minimum(np.minimum(r, g), b), np.maximum(np.maximum(r, g), b)


def detect_burned_in(display: np.ndarray) -> BurnedIn:
    """Look for burned-in text, caliper crosses and colour overlays in an 8-bit display image."""
    display = np.asarray(display)
    if display.dtype != np.uint8:
        raise ValueError(f"burned-in detection needs a uint8 display image, got {display.dtype}")
    if display.ndim not in (2, 3) or min(display.shape[:2]) < 16:
        return BurnedIn(False, 0.0)
    darkest, brightest = channel_extremes(display)
    strokes = _stroke_mask(darkest)
    labels, boxes, sizes = _components(strokes)
    candidates = _text_lines(boxes, sizes) if len(sizes) else []
    in_block = _blocks([box for box, _ in candidates])
    grey = display.ndim == 2 or _is_grey(darkest, brightest)
    lines = []
    for index, (box, glyphs) in enumerate(candidates):
        contrast = _contrast(box, strokes, darkest, brightest)
        strong = glyphs >= LINE_STRONG_GLYPHS and contrast >= LINE_CONTRAST
        short = grey and contrast >= SHORT_LINE_CONTRAST and max(display.shape[:2]) >= SHORT_LINE_MIN_SIDE
        if not (strong or short or index in in_block):
            continue
        if grey and not _drawn_in_one_grey(box, strokes, darkest):
            continue
        lines.append(box)
    crosses = [
        box for box in (_crosses(labels, boxes, sizes) if len(sizes) else [])
        if _contrast(box, strokes, darkest, brightest) >= LINE_CONTRAST
    ]
    overlays = _overlay(display, darkest, brightest, grey)

    found: list[list[int]] = []
    kinds: list[str] = []
    for box in lines:
        found.append(box)
        kinds.append("text")
    # One cross alone is too easily a speckle; calipers come in pairs.
    if len(crosses) >= 2:
        found.extend(crosses)
        kinds.extend(["marker"] * len(crosses))
    for box in overlays:
        found.append(box)
        kinds.append("overlay")
    score = min(
        1.0, 0.4 * len(lines) + 0.2 * (len(crosses) if len(crosses) >= 2 else 0) + 0.5 * bool(overlays)
    )
    return BurnedIn(bool(found), float(score), found, kinds)
