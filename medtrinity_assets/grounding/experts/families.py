"""The family registry. Families import torch / MONAI / ultralytics, so each is imported only
when an expert of that family is trained or applied (the yolo family may be absent entirely)."""

from __future__ import annotations

import importlib

from medtrinity_assets.grounding.experts.base import ExpertError, Family

FAMILIES = {
    "monai": ("medtrinity_assets.grounding.experts.monai_family", "MonaiFamily"),
    "yolo": ("medtrinity_assets.grounding.experts.yolo_family", "YoloFamily"),
}


def family(name: str) -> Family:
    if name not in FAMILIES:
        raise ExpertError(f"unknown expert family {name!r}; known: {sorted(FAMILIES)}")
    module_name, class_name = FAMILIES[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        raise ExpertError(f"expert family {name!r} cannot be imported ({error})") from error
    return getattr(module, class_name)()
