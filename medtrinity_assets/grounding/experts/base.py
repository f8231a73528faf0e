"""The contract between the expert pipeline and a model family.

A family (MONAI, ultralytics YOLO) turns samples into a trained model and a model into
predictions. Everything else (which samples, which split, thresholds, metrics, where weights
live) is shared, so both families are measured and applied the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from medtrinity_assets.grounding.experts.spec import ExpertSpec


class ExpertError(RuntimeError):
    """An expert cannot be trained, loaded or applied; the message says what and how to fix it."""


class WeightsError(ExpertError):
    """A weight file is missing or incompatible; the message names the file."""


@dataclass(frozen=True)
class Sample:
    """One training or validation image with the union of its target annotations."""

    record_id: str
    source_id: str
    patient_hash: str
    image: np.ndarray  # uint8, HxW (grey) or HxWx3 (RGB), the normalized image
    mask: np.ndarray  # bool HxW, same size as image: union of the target's annotation masks
    boxes: tuple[tuple[int, int, int, int], ...] = ()  # (x0, y0, x1, y1) per annotated object
    instances: tuple[np.ndarray, ...] = ()  # bool HxW per annotated object (for instance metrics)


@dataclass(frozen=True)
class Instance:
    """One object an expert found, at the size of the image it was given."""

    mask: np.ndarray  # bool HxW (a detector's box filled as a rectangle)
    score: float  # confidence in [0, 1]
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (x1, y1 exclusive), from the mask


@dataclass(frozen=True)
class Prediction:
    """What an expert found in one image: instances above no threshold yet (postprocess cuts)."""

    instances: tuple[Instance, ...]
    probability: np.ndarray | None = None  # float32 HxW foreground probability (segmenters)


@dataclass
class TrainResult:
    """What a family's train returns: the model and its per-epoch history."""

    model: object  # family-specific (torch.nn.Module, ultralytics YOLO)
    history: list[dict] = field(default_factory=list)  # [{"epoch": 1, "train_loss": .., "val_dice": .., "seconds": ..}]
    device: str = "cpu"
    seconds: float = 0.0


class Family(Protocol):
    """A model family. Stateless: everything comes from the spec and the arguments."""

    name: str  # "monai" | "yolo"

    def train(self, spec: ExpertSpec, train: list[Sample], val: list[Sample], device: str, workdir: Path) -> TrainResult: ...

    def save(self, model: object, spec: ExpertSpec, path: Path) -> None:
        """Write the model to ``path`` (the caller moves it into place atomically and hashes it)."""

    def load(self, spec: ExpertSpec, path: Path, device: str) -> object:
        """Load weights saved by ``save`` or brought by the user (``spec.weights``); raise
        WeightsError naming the file when it is missing or does not fit the spec."""

    def predict(self, model: object, spec: ExpertSpec, images: list[np.ndarray], device: str) -> list[Prediction]:
        """One Prediction per image, at each image's own size; images are uint8 HxW or HxWx3."""

    def forward_floor(self, model: object, spec: ExpertSpec, batch: "object", device: str) -> None:
        """The bare forward pass on an already prepared tensor batch (the benchmark's floor)."""
