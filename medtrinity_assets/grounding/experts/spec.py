"""The expert spec: one YAML file per expert under ``data/experts/`` (``MEDTRINITY_EXPERTS``).

An expert is configuration, like a source: which modality and target it learns, from which
annotated partitions, with which family and network, and how its predictions become ROIs.
A spec with ``weights`` brings its own trained file and is never trained here.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Literal, Optional

from pydantic import Field, field_validator, model_validator

from medtrinity_assets.bounded_yaml import load_yaml_file
from medtrinity_assets.catalog.layouts import Modality, Strict

EXPERT_ID = re.compile(r"^[a-z][a-z0-9_]{1,63}$")
WeightsFormat = Literal["auto", "state_dict", "torchscript", "monai_bundle", "ultralytics"]

# Fields that change what training produces: a change to any of them retrains the expert.
# (Thresholds, max_rois and apply_to only change how predictions become ROIs.)
TRAINING_FIELDS = (
    "modality", "target", "train_labels", "family", "architecture", "task", "train_sources", "split",
    "input_size", "epochs", "batch_size", "learning_rate", "max_train_minutes", "seed", "network", "augment",
)


class ExpertSpec(Strict):
    id: str
    description: str = ""
    modality: Modality
    target: str = Field(min_length=1)  # the label of the expert's ROIs, e.g. "polyp"
    # Annotation labels that count as the target when training (empty: every annotation label).
    train_labels: list[str] = []
    # Apply only to sources whose spec organs overlap these (empty: any source of the modality).
    organs: list[str] = []
    family: Literal["monai", "yolo"]
    # monai: "unet" | "segresnet"; yolo: a model yaml ultralytics ships, e.g. "yolo11n-seg.yaml".
    architecture: str
    task: Literal["segment", "detect"] = "segment"
    # Partitions to learn from (empty: every partition of the modality with mask, box or contour ROIs).
    train_sources: list[str] = []
    # Partitions to apply to (empty: every partition of the modality, organs permitting).
    apply_to: list[str] = []
    # patient: validation images come from patients never trained on (the dataset's own split
    # rule). record: per image, only for a source with one subject (a template); said in metadata.
    split: Literal["patient", "record"] = "patient"
    input_size: int = Field(256, ge=32, le=2048)
    epochs: int = Field(50, ge=1)
    batch_size: int = Field(8, ge=1)
    learning_rate: float = Field(1e-3, gt=0)
    max_train_minutes: Optional[float] = Field(None, gt=0)  # stop after the epoch that crosses it
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    confidence_threshold: float = Field(0.5, ge=0, le=1)
    min_area_fraction: float = Field(0.001, ge=0, lt=1)
    max_rois: int = Field(5, ge=1)
    # The drift check: on annotated images the expert's mean best IoU against the annotation
    # must stay at or above this.
    min_iou_on_annotated: float = Field(0.5, ge=0, le=1)
    # Bring your own weights: a local file or bundle (relative paths are against the spec's folder).
    weights: Optional[str] = None
    weights_format: WeightsFormat = "auto"
    network: dict = {}  # family-specific network arguments (channels, strides, ...)
    augment: bool = True

    @field_validator("id")
    @classmethod
    def _id_shape(cls, value: str) -> str:
        if not EXPERT_ID.match(value):
            raise ValueError(f"expert id {value!r} must be lower-case letters, digits and underscores")
        return value

    @model_validator(mode="after")
    def _family_fits(self) -> "ExpertSpec":
        if self.family == "monai" and self.architecture not in ("unet", "segresnet"):
            raise ValueError(f"monai architecture must be 'unet' or 'segresnet', got {self.architecture!r}")
        if self.family == "monai" and self.task != "segment":
            raise ValueError("a monai expert segments (task: segment)")
        if self.family == "yolo" and not self.architecture.endswith((".yaml", ".yml")):
            raise ValueError(f"a yolo expert is built from a model yaml (e.g. yolo11n-seg.yaml), got {self.architecture!r}")
        return self

    @property
    def brings_weights(self) -> bool:
        return self.weights is not None

    def training_hash(self) -> str:
        """sha256 of the fields that change what training produces."""
        fields = self.model_dump(include=set(TRAINING_FIELDS))
        return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode("utf-8")).hexdigest()

    def weights_path(self, spec_folder: Path) -> Path | None:
        if self.weights is None:
            return None
        path = Path(self.weights).expanduser()
        return path if path.is_absolute() else (spec_folder / path)


def load_expert(path: Path) -> ExpertSpec:
    data = load_yaml_file(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: an expert spec is a YAML mapping")
    spec = ExpertSpec.model_validate(data)
    if spec.id != path.stem:
        raise ValueError(f"{path}: id {spec.id!r} must match the file name {path.stem!r}")
    return spec


def load_experts(folder: Path) -> dict[str, ExpertSpec]:
    """Every ``<id>.yaml`` under ``folder`` by id (empty when the folder does not exist)."""
    if not folder.is_dir():
        return {}
    return {spec.id: spec for spec in (load_expert(p) for p in sorted(folder.glob("*.yaml")))}


def load_experts_each(folder: Path) -> tuple[dict[str, ExpertSpec], dict[str, str]]:
    """(specs by id, {file: why it was left out}): each file on its own, so one broken expert
    YAML neither stops the code location nor fails every partition's model_rois."""
    specs, problems = {}, {}
    if not folder.is_dir():
        return specs, problems
    for path in sorted(folder.glob("*.yaml")):
        try:
            spec = load_expert(path)
        except Exception as error:  # pydantic ValidationError, YAML errors, ValueError, OSError
            problems[str(path)] = f"{path}: {error}"
            continue
        specs[spec.id] = spec
    return specs, problems
