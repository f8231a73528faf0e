"""The family registry. Families import torch / MONAI / ultralytics, so each is imported only
when an expert of that family is trained or applied (the yolo family may be absent entirely)."""

from __future__ import annotations

import importlib
import importlib.util

from medtrinity_assets.grounding.experts.base import ExpertError, Family

# Python packages a family needs beyond torch and MONAI: the CPU-light install (make setup
# PROFILE=cpu, medtrinity_assets/install_profile.py) leaves ultralytics out.
REQUIRED_PACKAGES = {"yolo": ("ultralytics", "torchvision")}

FAMILIES = {
    "monai": ("medtrinity_assets.grounding.experts.monai_family", "MonaiFamily"),
    "yolo": ("medtrinity_assets.grounding.experts.yolo_family", "YoloFamily"),
}


def family(name: str) -> Family:
    if name not in FAMILIES:
        raise ExpertError(f"unknown expert family {name!r}; known: {sorted(FAMILIES)}")
    missing = [package for package in REQUIRED_PACKAGES.get(name, ()) if importlib.util.find_spec(package) is None]
    if missing:
        raise ExpertError(
            f"expert family {name!r} needs {' and '.join(missing)}, which this install lacks (the CPU-light "
            "install, make setup PROFILE=cpu, leaves them out): use the full install (make setup) or family 'monai'"
        )
    module_name, class_name = FAMILIES[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        raise ExpertError(f"expert family {name!r} cannot be imported ({error})") from error
    return getattr(module, class_name)()
