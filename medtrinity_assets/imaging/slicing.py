"""Which 2D slices (or frames) of a volume become records: a pure, deterministic rule.

A CT or MR volume has hundreds of near-identical slices; keeping them all floods the dataset
with duplicates of one patient. MedTrinity keeps the slices that show the annotated region,
plus a few neighbours for context; volumes without labels are sampled every k-th slice over
their middle, where the anatomy is (the ends are mostly air and partial volumes).

Indices are positions along one axis of the volume in canonical (RAS) order, so the same slice
gets the same index whatever voxel order the file was written in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np


@dataclass(frozen=True)
class SliceRule:
    """The slicing parameters (``catalog.spec.Slicing.slice_rule`` gives the spec's)."""

    rule: str  # "annotated_plus_context" or "every_k"
    context: int
    every_k: int
    central_fraction: float
    max_slices: int


def thin_evenly(indices: list[int], max_count: int) -> list[int]:
    """At most ``max_count`` of the sorted ``indices``, spread evenly, first and last kept."""
    if len(indices) <= max_count:
        return list(indices)
    if max_count == 1:
        return [indices[len(indices) // 2]]
    positions = np.linspace(0, len(indices) - 1, max_count).round().astype(int)
    return [indices[p] for p in sorted(set(positions.tolist()))]


def every_k_central(n_slices: int, rule: SliceRule) -> list[int]:
    """Every ``rule.every_k``-th slice of the middle ``rule.central_fraction`` of the volume."""
    if n_slices <= 0:
        return []
    # The epsilon keeps float error from dropping a margin slice (10 * 0.2 / 2 = 0.999...).
    margin = int(np.floor(n_slices * (1.0 - rule.central_fraction) / 2.0 + 1e-9))
    start, stop = margin, max(n_slices - margin, margin + 1)
    return thin_evenly(list(range(start, stop, max(rule.every_k, 1))), rule.max_slices)


def select_slices(n_slices: int, label_presence: Optional[np.ndarray], rule: SliceRule) -> list[int]:
    """Sorted slice indices to keep.

    ``label_presence`` is one bool per slice (does the label volume cut this slice?), or None
    when the volume has no labels. ``annotated_plus_context`` keeps labelled slices plus
    ``rule.context`` neighbours each side; with no labelled slice it falls back to every_k.
    """
    if n_slices <= 0:
        return []
    if rule.rule == "annotated_plus_context" and label_presence is not None:
        presence = np.asarray(label_presence, dtype=bool)
        if presence.shape != (n_slices,):
            raise ValueError(f"label_presence has shape {presence.shape}, expected ({n_slices},)")
        labelled = np.flatnonzero(presence)
        if labelled.size:
            keep = np.zeros(n_slices, dtype=bool)
            for offset in range(-rule.context, rule.context + 1):
                shifted = labelled + offset
                keep[shifted[(shifted >= 0) & (shifted < n_slices)]] = True
            with_context = np.flatnonzero(keep).tolist()
            if len(with_context) <= rule.max_slices:
                return with_context
            # Over budget, the context goes first: thinning labelled and context slices
            # together can keep a neighbour of a small lesion and drop the lesion itself.
            return thin_evenly(labelled.tolist(), rule.max_slices)
    return every_k_central(n_slices, rule)


def label_presence(labels: np.ndarray, axis: int) -> np.ndarray:
    """One bool per slice along ``axis``: does any non-zero label voxel lie in it?"""
    other_axes = tuple(a for a in range(labels.ndim) if a != axis)
    return np.any(labels != 0, axis=other_axes)


def label_value_masks(label_plane: np.ndarray, names: dict[int, str]) -> list[tuple[int, str, np.ndarray]]:
    """(value, name, binary mask) for every non-zero label value in one 2D label slice.

    Each value is its own mask (BraTS: necrosis, oedema and enhancing tumour are three
    findings, not one); values without a name are called "label <value>", never dropped; a
    value named "" is background by the spec's choice (``labels.rename`` to "").
    """
    masks = []
    for value in np.unique(label_plane).tolist():
        if value == 0:
            continue
        value = int(value)
        name = names.get(value, f"label {value}")
        if not name:
            continue
        masks.append((value, name, (label_plane == value).astype(np.uint8)))
    return masks
