"""Cross-source deduplication: exact (same image bytes) and near (perceptual hash) duplicates.

Public datasets re-publish each other's images (a challenge set inside a larger archive, the
same frame exported twice), and a duplicate split across train and test leaks the test set.
Rows are visited in (source_id, record_id) order; the first of each group is kept and every
other row points at it with ``duplicate_of``.

Near duplicates are 64-bit perceptual hashes within ``NEAR_DUPLICATE_MAX_HAMMING`` (k) bits. Cut
the hash into k + 1 blocks: by the pigeonhole principle two hashes that differ in at most k bits
agree exactly on at least one block (with only k blocks, four differing bits can fall one per
block, so four 16-bit blocks would miss such pairs). Each kept hash is filed under its blocks and
a new hash is compared only with the kept hashes sharing a block: near-linear, not all pairs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

NEAR_DUPLICATE_MAX_HAMMING = 4
HASH_BITS = 64


@dataclass(frozen=True)
class Duplicate:
    record_id: str
    kept_record_id: str
    kind: str  # "exact" | "near"
    distance: int  # Hamming distance of the perceptual hashes (0 for exact)


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


def find_duplicates(
    rows: Iterable[tuple],
    max_hamming: int = NEAR_DUPLICATE_MAX_HAMMING,
) -> dict[str, Duplicate]:
    """Map record_id -> Duplicate for every row that is not kept.

    ``rows`` are (source_id, record_id, image_sha256, phash) with an optional fifth item, a
    group: rows of one group (the slices or frames of one volume) are never near duplicates of
    each other, since neighbouring slices look alike by nature and were chosen on purpose by the
    slicing rule; identical bytes still count. They are sorted here by (source_id, record_id), so
    the result does not depend on input order. Duplicates always point at a kept row, never at
    another duplicate.
    """
    if not 0 <= max_hamming < HASH_BITS:
        raise ValueError(f"max_hamming must be in [0, {HASH_BITS}), got {max_hamming}")
    layout = block_layout(max_hamming)
    kept_by_sha: dict[str, str] = {}
    kept_by_block: dict[tuple[int, int], list[tuple[int, int, str, object]]] = {}
    duplicates: dict[str, Duplicate] = {}
    ordered = sorted(rows, key=lambda row: (row[0], row[1]))
    for order, row in enumerate(ordered):
        _source_id, record_id, sha, phash_text = row[:4]
        group = row[4] if len(row) > 4 else None
        if sha and sha in kept_by_sha:
            duplicates[record_id] = Duplicate(record_id, kept_by_sha[sha], "exact", 0)
            continue
        hash_value = parse_phash(phash_text)
        match: tuple[int, int, str] | None = None  # (distance, kept order, kept id)
        if hash_value is not None:
            for block in _blocks(hash_value, layout):
                for kept_hash, kept_order, kept_id, kept_group in kept_by_block.get(block, ()):
                    if group is not None and kept_group == group:
                        continue
                    distance = hamming(hash_value, kept_hash)
                    # The closest kept row wins; among equals the earliest, so reruns agree.
                    if distance <= max_hamming and (match is None or (distance, kept_order) < match[:2]):
                        match = (distance, kept_order, kept_id)
        if match is not None:
            duplicates[record_id] = Duplicate(record_id, match[2], "near", match[0])
            if sha:
                kept_by_sha.setdefault(sha, match[2])
            continue
        if sha:
            kept_by_sha[sha] = record_id
        if hash_value is not None:
            for block in _blocks(hash_value, layout):
                kept_by_block.setdefault(block, []).append((hash_value, order, record_id, group))
    return duplicates
