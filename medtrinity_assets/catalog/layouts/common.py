"""Types every layout family's parameters share."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

Modality = Literal[
    "ct",
    "mri",
    "xray",
    "ultrasound",
    "dermoscopy",
    "endoscopy",
    "fundus",
    "histopathology",
    "microscopy",
    "pet",
    "mammography",
    "nuclear_medicine",
]


class Strict(BaseModel):
    """Unknown keys are errors: a typo in a spec must not be silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Replace(Strict):
    """One string replacement applied to a path relative to the source root."""

    old: str
    new: str
