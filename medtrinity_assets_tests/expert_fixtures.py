"""Tiny real data roots for expert tests: a few Kvasir-SEG / BUSI images copied to a temporary
folder and run through the pipeline's own ingest, normalize and ground stages, and expert specs
small enough to train in seconds (input 64 px, one or two epochs)."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from medtrinity_assets import stages
from medtrinity_assets.catalog.spec import SourceSpec
from medtrinity_assets.grounding.experts.spec import ExpertSpec
from medtrinity_assets.grounding.validate import kvasir_realdata_spec
from medtrinity_assets.paths import REPO_ROOT, DataRoot, realdata_dir

KVASIR = realdata_dir() / "kvasir_seg"
BUSI = realdata_dir() / "busi"
# The first twelve Kvasir-SEG images (sorted names); with the salt below two patients validate.
KVASIR_IDS = sorted(p.stem for p in (KVASIR / "images").glob("*.jpg"))[:12] if KVASIR.is_dir() else []
SALT = "expert-test-salt"


def kvasir_source(folder: Path, ids: list[str] | None = None) -> SourceSpec:
    """The catalog's kvasir_seg spec on copies of some shared images (copies, not links: ingest
    refuses links leaving the source folder)."""
    ids = KVASIR_IDS if ids is None else ids
    for sub in ("images", "masks"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
        for image_id in ids:
            shutil.copyfile(KVASIR / sub / f"{image_id}.jpg", folder / sub / f"{image_id}.jpg")
    shutil.copyfile(KVASIR / "kavsir_bboxes.json", folder / "kavsir_bboxes.json")
    return kvasir_realdata_spec(folder)


def busi_source(folder: Path, per_class: dict[str, int]) -> SourceSpec:
    """The catalog's busi spec on copies of the first images of each class (with their masks)."""
    for cls, count in per_class.items():
        images = sorted((BUSI / cls / "images").glob("*.png"), key=lambda p: p.name)[:count]
        (folder / cls / "images").mkdir(parents=True, exist_ok=True)
        (folder / cls / "mask").mkdir(parents=True, exist_ok=True)
        for image in images:
            shutil.copyfile(image, folder / cls / "images" / image.name)
            for mask in (BUSI / cls / "mask").glob(f"{image.stem}_mask*.png"):
                shutil.copyfile(mask, folder / cls / "mask" / mask.name)
    data = yaml.safe_load((REPO_ROOT / "data" / "sources" / "busi.yaml").read_text(encoding="utf-8"))
    data["root"] = str(folder)
    return SourceSpec.model_validate(data)


def ground(spec: SourceSpec, root: DataRoot) -> None:
    """raw_records, normalized_images and rois of one source, by the pipeline's stages."""
    stages.run_ingest(spec, root, SALT)
    stages.run_normalize(spec, root)
    stages.run_ground(spec, root)


def expert_spec(**fields) -> ExpertSpec:
    base = dict(id="polyp_test", modality="endoscopy", target="polyp", family="monai", architecture="unet",
                input_size=64, epochs=1, batch_size=4, seed=0, device="cpu",
                network={"channels": [8, 16, 32], "strides": [2, 2], "num_res_units": 1})
    base.update(fields)
    return ExpertSpec.model_validate(base)
