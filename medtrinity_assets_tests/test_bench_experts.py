"""The experts benchmark's own machinery (the benchmark itself trains for an hour; here nothing
is trained): the workload it builds from ../shared/realdata and what its report says."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import needs_realdata

from medtrinity_assets import bench_experts
from medtrinity_assets.catalog import source_root


@needs_realdata
@pytest.mark.parametrize("quick", [True, False])
def test_workload_specs_find_the_shared_images_masks_and_boxes(quick):
    catalog = bench_experts.bench_catalog(quick)
    assert {"kvasir_seg", "busi_train", "busi"} <= set(catalog)
    for source_id in ("kvasir_seg", "busi_train", "busi"):
        spec = catalog[source_id]
        images = sorted(source_root(spec).glob(spec.layout.image_glob))
        assert images, f"{source_id}: {spec.layout.image_glob} finds nothing under {source_root(spec)}"
        if quick:
            assert len(images) < 40  # --quick stays a smoke run
    kvasir = catalog["kvasir_seg"]
    assert len(sorted(source_root(kvasir).glob(kvasir.layout.image_glob))) == (15 if quick else 1000)
    first = sorted(source_root(kvasir).glob(kvasir.layout.image_glob))[0]
    assert (source_root(kvasir) / kvasir.layout.mask_template.format(stem=first.stem)).is_file()
    assert (source_root(kvasir) / kvasir.extra_boxes.file).is_file()
    # busi (the check set) and busi_train are two folders: the expert never trains on its check set.
    assert source_root(catalog["busi"]) != source_root(catalog["busi_train"])


def test_bench_experts_train_the_busi_expert_on_busi_train_only():
    specs = bench_experts.bench_experts(["breast_ultrasound_lesion", "polyp_endoscopy"], quick=False)
    assert specs["breast_ultrasound_lesion"].train_sources == ["busi_train"]
    assert specs["polyp_endoscopy"].train_sources == ["kvasir_seg"]
    quick = bench_experts.bench_experts(["polyp_endoscopy"], quick=True)["polyp_endoscopy"]
    assert (quick.input_size, quick.epochs) == (64, 2)


def _result(cuda: bool, checks: dict) -> dict:
    metrics = {"dice": 0.81234, "box_iou": 0.7, "map50": 0.75, "precision": 0.8, "recall": 0.9, "images": 200}
    training = {"expert": "polyp_endoscopy", "family": "monai", "architecture": "unet", "device": "cpu", "input_size": 128,
                "reused": False, "train_sources": ["kvasir_seg"], "train_images": 800, "val_images": 200, "train_patients": 800,
                "val_patients": 200, "epochs": 40, "best_epoch": 38, "training_minutes": 50.0, "cpu_minutes_this_run": 90.0,
                "threads": 2, "metrics": metrics, "load_after_training": "load average 1"}
    speed = {"expert": "polyp_endoscopy", "images": 100, "batch": 8, "input_size": 128, "find_rois_images_s": 20.0,
             "floor_images_s": 40.0, "ratio": 0.5, "source": "kvasir_seg", "image_sizes": "(1, 1)..(2, 2)", "device": "cpu",
             "threads": 2, "load": "load average 1"}
    child = {"images": 100, "peak_rss_mib": 1000, "images_s_with_decode": 10.0, "rss_after_imports_mib": 900, "rss_after_load_mib": 950}
    return {"quick": False, "experts": ["polyp_endoscopy"], "torch": "x", "cuda": cuda, "workload": "w", "training": [training],
            "checks": checks, "speed": [speed], "memory": {"polyp_endoscopy": {"source": "kvasir_seg", 100: child,
                                                                                 400: {**child, "images": 400, "peak_rss_mib": 1010},
                                                                                 "growth_percent": 1.0}}}


def test_report_states_the_device_the_unmeasured_colonoscopy_check_and_the_ratio():
    text = bench_experts.report(_result(cuda=False, checks={"polyp_endoscopy": None}))
    assert "CUDA available: False (no GPU here" in text
    assert "0.812" in text and "45.0 min of wall time with 2 core(s)" in text
    assert "unseen colonoscopy dataset: not measured" in text
    assert "100 images: 1000 MiB" in text and "400 images: 1010 MiB" in text and "+1.0%" in text
    measured = {"polyp_endoscopy": {"sources": ["cvc_clinicdb"], "counts": {}, "metrics": {"dice": 0.7, "box_iou": 0.6, "map50": 0.5, "images": 612}}}
    text = bench_experts.report(_result(cuda=True, checks=measured))
    assert "no GPU here" not in text and "not measured" not in text
    assert "polyp_endoscopy on cvc_clinicdb (never trained on, 612 images): Dice 0.700" in text


def test_recipes_are_valid_expert_specs():
    from medtrinity_assets.grounding.experts.spec import load_expert
    from medtrinity_assets.paths import REPO_ROOT

    for name in ("polyp_endoscopy", "breast_ultrasound_lesion"):
        spec = load_expert(Path(REPO_ROOT / "data" / "experts" / f"{name}.yaml"))
        assert spec.family == "monai" and spec.input_size % 16 == 0  # four stride-2 levels
