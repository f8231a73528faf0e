"""Cross-source deduplication: hash matches are candidates, pixels decide.

Public datasets re-publish each other's images (a challenge set inside a larger archive, the
same frame exported twice), and a duplicate split across train and test leaks the test set. But
a perceptual hash only summarises a 32x32 thumbnail: two different women's mammograms, two
frames of one ultrasound sweep or two neighbouring CT slices can lie within a few bits. So a hash
match (same ``image_sha256``, or phashes within ``NEAR_DUPLICATE_MAX_HAMMING`` bits) is only a
*candidate*; it is confirmed by comparing the normalized images at full resolution
(``compare_images``: best alignment by translation and a small rescale, then Pearson correlation
and SSIM on the overlap). Each candidate pair gets a verdict:

- ``confirmed``: the pixels match and the labels agree: the later row is dropped from training
  (``duplicate_of`` points at the kept row);
- ``conflict``: the pixels match but the labels (or label states) differ: the same picture is
  called benign in one place and malignant in another, so neither copy can be trusted for
  training; both are held back and reported, nothing is dropped silently;
- ``rejected``: the pixels do not match (or could not be compared): both rows stay.

Every candidate pair, whatever its verdict, is returned for the ``duplicate_pairs`` table.

Rows are visited in (source_id, record_id) order; the first of each group is kept and every
later copy points at it. Rows of one volume (slices, cine frames) are never *near* candidates of
each other: neighbouring slices look alike by nature and were chosen on purpose by the slicing
rule; identical bytes still count.

Candidate search: cut the 64-bit hash into k + 1 blocks. By the pigeonhole principle two hashes
that differ in at most k bits agree exactly on at least one block (with only k blocks, four
differing bits can fall one per block, so four 16-bit blocks would miss such pairs). Each kept
hash is filed under its blocks and a new hash is compared only with the kept hashes sharing a
block: near-linear, not all pairs.
"""

from __future__ import annotations

import posixpath
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

NEAR_DUPLICATE_MAX_HAMMING = 4
HASH_BITS = 64

# Confirmation thresholds, measured on the real-data sources (python -m medtrinity_assets.bench_dedup):
# the same picture (BUSI frames exported twice with a few columns cropped; Kvasir-SEG frames
# taken seconds apart by a still scope, only the burned-in clock differing) scores SSIM
# 0.936-0.982 and correlation >= 0.996 after alignment, while the
# closest different pictures (consecutive frames of one BUSI sweep, neighbouring PET/CT/MR
# slices, other polyps) reach SSIM 0.905 at most: SSIM separates them, correlation alone does
# not (consecutive BUSI frames reach 0.997). The SSIM cut sits in the middle of that gap.
MIN_CORRELATION = 0.98
MIN_SSIM = 0.92
# Alignment may leave this share of the smaller image outside the overlap (a few cropped rows).
MIN_OVERLAP = 0.85
# A row is compared with at most this many candidate kept rows, closest first, so a crowd of
# look-alike images (blank slices) cannot make the pass quadratic.
MAX_COMPARISONS_PER_ROW = 8
# Decoded images kept in memory while the pass runs.
IMAGE_CACHE_SIZE = 64

VERDICTS = ("confirmed", "conflict", "rejected")


@dataclass(frozen=True)
class DedupRow:
    """What the dedup pass needs to know about one dataset row."""

    source_id: str
    record_id: str
    image_sha256: str | None
    phash: str | None
    group: str | None = None  # the volume the row was sliced from (None: a 2D image)
    patient_hash: str | None = None
    labels: tuple[str, ...] = ()
    label_state: str | None = None
    image_path: str | None = None


@dataclass(frozen=True)
class PixelMatch:
    """How alike two images are at full resolution (None: they could not be compared)."""

    correlation: float | None
    ssim: float | None
    reason: str | None = None  # why they could not be compared, or what was found

    def matches(self, min_correlation: float = MIN_CORRELATION, min_ssim: float = MIN_SSIM) -> bool:
        return (
            self.correlation is not None and self.ssim is not None
            and self.correlation >= min_correlation and self.ssim >= min_ssim
        )


IDENTICAL = PixelMatch(1.0, 1.0, "same image bytes (sha256)")


@dataclass(frozen=True)
class Duplicate:
    record_id: str
    kept_record_id: str
    kind: str  # "exact" (same sha256) | "near" (phash)
    distance: int  # Hamming distance of the perceptual hashes (0 for exact)


@dataclass(frozen=True)
class CandidatePair:
    """One hash match and what the pixels said about it."""

    row: DedupRow
    kept: DedupRow
    kind: str  # "exact" | "near"
    distance: int | None
    match: PixelMatch
    verdict: str  # one of VERDICTS
    reason: str

    @property
    def cross_patient(self) -> bool:
        return bool(self.row.patient_hash and self.kept.patient_hash and self.row.patient_hash != self.kept.patient_hash)


@dataclass
class DedupResult:
    duplicates: dict[str, Duplicate] = field(default_factory=dict)  # record_id -> kept row
    pairs: list[CandidatePair] = field(default_factory=list)
    # record_id -> the record ids it conflicts with (both sides of every conflict pair)
    conflicts: dict[str, list[str]] = field(default_factory=dict)


Comparer = Callable[[DedupRow, DedupRow], PixelMatch]


def parse_phash(value: str | None) -> int | None:
    """The 64-bit hash from its hex text; None when absent or malformed (then only exact matching)."""
    if not value:
        return None
    try:
        number = int(value, 16)
    except ValueError:
        return None
    return number if 0 <= number < (1 << 64) else None


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


def block_layout(max_hamming: int) -> list[tuple[int, int]]:
    """(shift, mask) of the max_hamming + 1 blocks covering the 64 bits, as equal as possible."""
    count = max_hamming + 1
    widths = [HASH_BITS // count + (1 if i < HASH_BITS % count else 0) for i in range(count)]
    layout, shift = [], 0
    for width in widths:
        layout.append((shift, (1 << width) - 1))
        shift += width
    return layout


def _blocks(hash_value: int, layout: list[tuple[int, int]]) -> list[tuple[int, int]]:
    return [(i, (hash_value >> shift) & mask) for i, (shift, mask) in enumerate(layout)]


def volume_group(source_id: str, source_file: str | None, slice_index: int | None) -> str | None:
    """The volume a row was cut from, or None for a plain 2D image.

    A NIfTI volume or a multi-frame file is one file; a DICOM series is one file per slice in
    one folder. So sliced rows are grouped by their folder: that covers both, and at worst also
    groups two sequences of one case (a CT slice is never a duplicate of an MR slice anyway).
    """
    if slice_index is None or slice_index < 0 or not source_file:
        return None
    return f"{source_id}/{posixpath.dirname(source_file)}"


def label_difference(row: DedupRow, kept: DedupRow) -> str | None:
    """Why two copies of one picture disagree on what it shows, or None when they agree.

    A copy whose label state is ``unknown`` says nothing about the picture, so it contradicts
    nothing; ``finding`` against ``normal``, or two different findings, is a conflict. Without
    label states (older tables) the label sets are compared as they are.
    """
    if "unknown" in (row.label_state, kept.label_state):
        return None
    if row.label_state and kept.label_state and row.label_state != kept.label_state:
        return f"label state {kept.label_state!r} vs {row.label_state!r}"
    if sorted(set(row.labels)) != sorted(set(kept.labels)):
        return f"labels {sorted(set(kept.labels))} vs {sorted(set(row.labels))}"
    return None


def _judge(row: DedupRow, kept: DedupRow, kind: str, distance: int | None, compare: Comparer,
           min_correlation: float, min_ssim: float) -> CandidatePair:
    match = IDENTICAL if kind == "exact" else compare(row, kept)
    if not match.matches(min_correlation, min_ssim):
        if match.correlation is None:
            reason = f"not compared: {match.reason}"
        else:
            reason = (f"pixels differ: correlation {match.correlation:.3f} (min {min_correlation}), "
                      f"SSIM {match.ssim:.3f} (min {min_ssim})")
        return CandidatePair(row, kept, kind, distance, match, "rejected", reason)
    difference = label_difference(row, kept)
    if difference:
        return CandidatePair(row, kept, kind, distance, match, "conflict", f"same pixels, {difference}")
    return CandidatePair(row, kept, kind, distance, match, "confirmed", match.reason or "same pixels, same labels")


def find_duplicates(
    rows: Iterable[DedupRow],
    compare: Comparer,
    max_hamming: int = NEAR_DUPLICATE_MAX_HAMMING,
    *,
    min_correlation: float = MIN_CORRELATION,
    min_ssim: float = MIN_SSIM,
    max_comparisons: int = MAX_COMPARISONS_PER_ROW,
) -> DedupResult:
    """Candidates by hash, verdicts by ``compare`` (pixels) and labels; see the module doc.

    Rows are sorted here by (source_id, record_id), so the result does not depend on input
    order. A row that matches a kept row (confirmed or conflict) is not itself kept, so later
    copies always point at the first one; a row whose candidates are all rejected is kept.
    """
    if not 0 <= max_hamming < HASH_BITS:
        raise ValueError(f"max_hamming must be in [0, {HASH_BITS}), got {max_hamming}")
    layout = block_layout(max_hamming)
    kept_rows: list[DedupRow] = []
    kept_by_sha: dict[str, int] = {}
    kept_by_block: dict[tuple[int, int], list[tuple[int, int]]] = {}  # block -> [(hash, kept index)]
    result = DedupResult()
    for row in sorted(rows, key=lambda r: (r.source_id, r.record_id)):
        hash_value = parse_phash(row.phash)
        candidates: dict[int, tuple[int, str]] = {}  # kept index -> (distance, kind)
        if row.image_sha256 and row.image_sha256 in kept_by_sha:
            candidates[kept_by_sha[row.image_sha256]] = (0, "exact")
        if hash_value is not None:
            for block in _blocks(hash_value, layout):
                for kept_hash, index in kept_by_block.get(block, ()):
                    if index in candidates or (row.group is not None and kept_rows[index].group == row.group):
                        continue
                    distance = hamming(hash_value, kept_hash)
                    if distance <= max_hamming:
                        candidates[index] = (distance, "near")
        # Identical bytes first, then the closest hash, then the earliest kept row: reruns agree.
        ordered = sorted(candidates.items(), key=lambda item: (item[1][1] != "exact", item[1][0], item[0]))
        matched: CandidatePair | None = None
        for index, (distance, kind) in ordered[:max_comparisons]:
            pair = _judge(row, kept_rows[index], kind, distance, compare, min_correlation, min_ssim)
            result.pairs.append(pair)
            if pair.verdict != "rejected":
                matched, matched_index = pair, index
                break
        if matched is not None:
            kept = matched.kept
            if matched.verdict == "confirmed":
                result.duplicates[row.record_id] = Duplicate(row.record_id, kept.record_id, matched.kind, matched.distance or 0)
            else:
                result.conflicts.setdefault(row.record_id, []).append(kept.record_id)
                result.conflicts.setdefault(kept.record_id, []).append(row.record_id)
            if row.image_sha256:
                kept_by_sha.setdefault(row.image_sha256, matched_index)
            continue
        index = len(kept_rows)
        kept_rows.append(row)
        if row.image_sha256:
            kept_by_sha.setdefault(row.image_sha256, index)
        if hash_value is not None:
            for block in _blocks(hash_value, layout):
                kept_by_block.setdefault(block, []).append((hash_value, index))
    return result


# --- pixels ------------------------------------------------------------------------------


def grey(image: np.ndarray) -> np.ndarray:
    """Luma as float64 (RGB by ITU-R BT.601 weights, alpha ignored)."""
    image = np.asarray(image)
    if image.ndim == 3:
        rgb = image[..., :3].astype(np.float64)
        return rgb @ np.array([0.299, 0.587, 0.114]) if rgb.shape[2] == 3 else rgb[..., 0]
    return image.astype(np.float64)


def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    from PIL import Image

    if image.shape == (height, width):
        return image
    return np.asarray(Image.fromarray(image.astype(np.float32)).resize((width, height), Image.Resampling.BILINEAR), dtype=np.float64)


def _aligned_overlap(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """The parts of a and b that coincide after the best translation (phase correlation)."""
    from skimage.registration import phase_cross_correlation

    height, width = max(a.shape[0], b.shape[0]), max(a.shape[1], b.shape[1])
    pad_a = np.zeros((height, width)); pad_a[: a.shape[0], : a.shape[1]] = a
    pad_b = np.zeros((height, width)); pad_b[: b.shape[0], : b.shape[1]] = b
    shift, _, _ = phase_cross_correlation(pad_a, pad_b)
    dy, dx = (int(round(float(s))) for s in shift)
    # b moved by (dy, dx) lies on a: a[y, x] ~ b[y - dy, x - dx].
    y0, x0 = max(0, dy), max(0, dx)
    y1, x1 = min(a.shape[0], b.shape[0] + dy), min(a.shape[1], b.shape[1] + dx)
    if y1 <= y0 or x1 <= x0:
        return None
    return a[y0:y1, x0:x1], b[y0 - dy : y1 - dy, x0 - dx : x1 - dx]


def compare_images(a: np.ndarray, b: np.ndarray, min_overlap: float = MIN_OVERLAP) -> PixelMatch:
    """Correlation and SSIM of two images after the best alignment.

    The same picture may come back with a few rows cropped and resized to the 512 px bound
    with another factor, so b is tried at three scales (as is; its height matched to a's; its
    width matched to a's), each aligned by translation; only an overlap covering
    ``min_overlap`` of the smaller image counts. Plain b stretched onto a's grid is always
    measured too, so every pair gets numbers. The best SSIM wins.
    """
    from skimage.metrics import structural_similarity

    a, b = grey(a), grey(b)
    if a.shape == b.shape and np.array_equal(a, b):
        return PixelMatch(1.0, 1.0, "identical pixels")
    if min(a.shape + b.shape) < 7:
        return PixelMatch(None, None, "image smaller than the 7 px SSIM window")
    def measure(part_a: np.ndarray, part_b: np.ndarray, how: str) -> PixelMatch:
        if part_a.std() == 0 or part_b.std() == 0:
            # A flat image has no correlation; equal flat images are the same picture.
            correlation = 1.0 if np.allclose(part_a, part_b, atol=1.0) else 0.0
        else:
            correlation = float(np.corrcoef(part_a.ravel(), part_b.ravel())[0, 1])
        ssim = float(structural_similarity(part_a, part_b, data_range=255.0))
        return PixelMatch(round(correlation, 4), round(ssim, 4), how)

    best = measure(a, _resize(b, *a.shape), "stretched onto the same grid")
    smaller = min(a.size, b.size)
    for scale in sorted({1.0, a.shape[0] / b.shape[0], a.shape[1] / b.shape[1]}):
        height, width = round(b.shape[0] * scale), round(b.shape[1] * scale)
        if min(height, width) < 7:
            continue
        overlap = _aligned_overlap(a, _resize(b, height, width))
        if overlap is None or overlap[0].size < min_overlap * smaller or min(overlap[0].shape) < 7:
            continue
        candidate = measure(*overlap, f"aligned at scale {scale:.3f}")
        if candidate.ssim > best.ssim:
            best = candidate
    return best


class ImageComparer:
    """A ``Comparer`` over the normalized PNGs under a data root, with a small decode cache.

    An image that is missing or unreadable makes the pair "not compared": the candidate is
    rejected (both rows stay) and the reason is reported, never a silent drop.
    """

    def __init__(self, images_root: Path, cache_size: int = IMAGE_CACHE_SIZE):
        self.images_root = Path(images_root)
        self.cache_size = cache_size
        self._cache: OrderedDict[str, np.ndarray | str] = OrderedDict()
        self.compared = 0

    def _load(self, image_path: str | None) -> np.ndarray | str:
        """The image as an array, or the reason it cannot be read."""
        from PIL import Image

        if not image_path:
            return "no image path"
        if image_path in self._cache:
            self._cache.move_to_end(image_path)
            return self._cache[image_path]
        path = self.images_root / image_path
        try:
            with Image.open(path) as image:
                loaded: np.ndarray | str = np.asarray(image)
        except (OSError, ValueError) as error:
            loaded = f"cannot read {image_path}: {type(error).__name__}"
        self._cache[image_path] = loaded
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return loaded

    def __call__(self, row: DedupRow, kept: DedupRow) -> PixelMatch:
        image_a, image_b = self._load(kept.image_path), self._load(row.image_path)
        for image in (image_a, image_b):
            if isinstance(image, str):
                return PixelMatch(None, None, image)
        self.compared += 1
        return compare_images(image_a, image_b)


class RememberedComparer:
    """A ``Comparer`` that asks ``inner`` only about image pairs it has not seen.

    Images are content-addressed (their path is their sha256), so a pair's verdict never changes:
    the incremental dataset keeps the pixel matches of one run for the next (``known``: (kept
    image, row image) -> PixelMatch), and an unchanged candidate pair is not decoded again. A pair
    that could not be compared (an image missing or unreadable) is asked again next time.
    ``seen`` holds what this run used, to be kept for the next.
    """

    def __init__(self, inner: Comparer, known: dict[tuple[str, str], PixelMatch]):
        self.inner, self.known = inner, known
        self.seen: dict[tuple[str, str], PixelMatch] = {}

    def __call__(self, row: DedupRow, kept: DedupRow) -> PixelMatch:
        key = (kept.image_path or "", row.image_path or "")
        match = self.known.get(key)
        if match is None:
            match = self.inner(row, kept)
        if match.correlation is not None or _compared(match):
            self.seen[key] = match
        return match

    @property
    def compared(self) -> int:
        return getattr(self.inner, "compared", 0)


def _compared(match: PixelMatch) -> bool:
    """True when the images were read (a None result from a too-small image is still final)."""
    return bool(match.reason) and not match.reason.startswith(("cannot read", "no image path"))
