"""Benchmark: per-stage images/s and peak memory on a stated workload, beside the floor.

Workload (made from real images that installed packages ship, written once to a cache folder):
  * half are CT DICOM files: the real 512x512 head CT slice of pydicom-data (693_UNCR.dcm),
    each rolled by a different offset so every file is distinct content;
  * half are fundus JPEG photos: 768x768 crops at different offsets of scikit-image's real
    1411x1411 retina photo.
Each stage runs in its own fresh process (so its peak RSS is its own), over both sources.
The floor is plain decode (pydicom / Pillow) + resize to 512 (Pillow) + PNG encode of the same
files in one process: the least any normalizer must do. Ratios, not absolute numbers, are the
result: the machine is shared and noisy.

Usage: python -m medtrinity_assets.bench [--images 1000] [--scaling 5000]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from medtrinity_assets.paths import REPO_ROOT

CACHE = REPO_ROOT / "var" / "bench"


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_specs(root: Path):
    from medtrinity_assets.catalog.spec import SourceSpec

    common = dict(
        homepage="https://github.com/pydicom/pydicom-data", license="MIT (pydicom-data); BSD-3 (scikit-image)",
        citation="benchmark workload built from package data", access="package", approx_size="benchmark",
    )
    ct = SourceSpec(
        id="bench_ct", name="Benchmark CT slices", description="Rolled copies of a real CT slice.",
        modality="ct", organs=["head", "brain"], annotation_kinds=["none"], root=str(root / "bench_ct"),
        layout={"family": "dicom", "glob": "**/*.dcm"}, **common,
    )
    photos = SourceSpec(
        id="bench_fundus", name="Benchmark fundus photos", description="Crops of a real fundus photo.",
        modality="fundus", organs=["retina"], annotation_kinds=["none"], root=str(root / "bench_fundus"),
        layout={"family": "image_folder", "image_glob": "*.jpg"}, **common,
    )
    return [ct, photos]


def make_workload(n_images: int, cache: Path = CACHE) -> Path:
    """Write the workload once (cached by size under ``cache``); returns its folder."""
    import numpy as np
    import pydicom
    from PIL import Image

    root = Path(cache) / f"workload_{n_images}"
    done = root / ".complete"
    if done.exists():
        return root
    import data_store
    import skimage

    ct = pydicom.dcmread(Path(data_store.__file__).parent / "data" / "693_UNCR.dcm")
    ct_pixels = ct.pixel_array
    retina = np.asarray(Image.open(Path(skimage.__file__).parent / "data" / "retina.jpg").convert("RGB"))
    (root / "bench_ct").mkdir(parents=True, exist_ok=True)
    (root / "bench_fundus").mkdir(parents=True, exist_ok=True)
    n_ct = n_images // 2
    for i in range(n_ct):
        ds = ct.copy()
        ds.PixelData = np.roll(ct_pixels, shift=(i % 97, i // 97), axis=(0, 1)).astype(ct_pixels.dtype).tobytes()
        ds.SOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=[str(i)])
        ds.PatientID = f"BENCH{i % 50:03d}"
        ds.save_as(root / "bench_ct" / f"ct_{i:06d}.dcm")
    for i in range(n_images - n_ct):
        y, x = (i * 37) % (retina.shape[0] - 768), (i * 53) % (retina.shape[1] - 768)
        Image.fromarray(retina[y : y + 768, x : x + 768]).save(root / "bench_fundus" / f"fundus_{i:06d}.jpg", quality=92)
    done.write_text("ok")
    return root


def run_floor(workload: Path) -> dict:
    """Plain decode + resize + PNG encode of the same files, no pipeline."""
    import numpy as np
    import pydicom
    from PIL import Image

    from medtrinity_assets.imaging import normalize

    level = normalize.PNG_COMPRESS_LEVEL  # same PNG settings as the pipeline, or the ratio lies
    files = sorted(workload.glob("*/*.*"))
    started = time.perf_counter()
    for path in files:
        if path.suffix == ".dcm":
            pixels = pydicom.dcmread(path).pixel_array.astype(np.float32)
            low, high = float(pixels.min()), float(pixels.max())
            image = Image.fromarray(((pixels - low) / max(high - low, 1) * 255).astype(np.uint8))
        else:
            with Image.open(path) as opened:
                image = opened.convert("RGB")
        image.thumbnail((512, 512), Image.Resampling.BILINEAR)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", compress_level=level)
    seconds = time.perf_counter() - started
    return {"stage": "floor", "images": len(files), "seconds": seconds, "peak_rss_mib": _peak_rss_mib()}


def _partition_stages() -> list[str]:
    # Imported here, not at the top, so the floor's peak memory holds no pipeline imports.
    from medtrinity_assets.pipeline import STAGES

    return [stage.name for stage in STAGES if stage.partitioned]


def run_stage(stage: str, workload: Path, data_root: Path) -> dict:
    from medtrinity_assets.paths import DataRoot
    from medtrinity_assets.pipeline import STAGE, StageInputs

    root = DataRoot(data_root)
    baseline = _peak_rss_mib()
    images = 0
    seconds = 0.0
    for spec in bench_specs(workload):
        report = STAGE[stage].run(StageInputs(root, spec=spec, salt="bench-salt"))
        images += report.inputs
        seconds += report.seconds
    return {"stage": stage, "images": images, "seconds": seconds, "peak_rss_mib": _peak_rss_mib(), "rss_after_imports_mib": baseline}


def _child(args: list[str]) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-m", "medtrinity_assets.bench", *args], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"benchmark child {args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def benchmark(n_images: int) -> list[dict]:
    workload = make_workload(n_images)
    data_root = CACHE / f"run_{n_images}"
    subprocess.run(["rm", "-rf", str(data_root)], check=True)
    # The knowledge base is built once, outside the per-image stages.
    _child(["--child", "knowledge_base", "--workload", str(workload), "--data-root", str(data_root)])
    results = [_child(["--child", "floor", "--workload", str(workload), "--data-root", str(data_root)])]
    for stage in _partition_stages():
        results.append(_child(["--child", stage, "--workload", str(workload), "--data-root", str(data_root)]))
    return results


def _print(results: list[dict], n_images: int) -> None:
    floor = next(r for r in results if r["stage"] == "floor")
    floor_rate = floor["images"] / floor["seconds"]
    print(f"\nWorkload: {n_images} 2D images ({n_images // 2} CT DICOM 512x512, {n_images - n_images // 2} fundus JPEG 768x768); "
          f"{os.cpu_count()} CPUs")
    print(f"{'stage':<18}{'images':>8}{'seconds':>10}{'images/s':>11}{'x floor':>9}{'peak RSS MiB':>14}{'after imports':>15}")
    for r in results:
        rate = r["images"] / r["seconds"] if r["seconds"] else float("inf")
        print(f"{r['stage']:<18}{r['images']:>8}{r['seconds']:>10.2f}{rate:>11.1f}{rate / floor_rate:>9.2f}"
              f"{r['peak_rss_mib']:>14.0f}{r.get('rss_after_imports_mib', float('nan')):>15.0f}")
    ingest = next(r for r in results if r["stage"] == "raw_records")
    normalize = next(r for r in results if r["stage"] == "normalized_images")
    combined = ingest["images"] / (ingest["seconds"] + normalize["seconds"])
    print(f"ingest+normalize together: {combined:.1f} images/s = {combined / floor_rate:.2f} x the floor "
          f"(the floor also decodes; normalize alone starts from decoded arrays)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--scaling", type=int, default=0, help="also run ingest+normalize at this size and compare peak memory")
    parser.add_argument("--child")
    parser.add_argument("--workload")
    parser.add_argument("--data-root")
    args = parser.parse_args(argv)
    if args.child:
        workload, data_root = Path(args.workload), Path(args.data_root)
        if args.child == "floor":
            result = run_floor(workload)
        elif args.child == "knowledge_base":
            from medtrinity_assets.paths import DataRoot, knowledge_dir
            from medtrinity_assets.pipeline import STAGE, StageInputs

            report = STAGE["knowledge_base"].run(StageInputs(DataRoot(data_root), knowledge_folder=knowledge_dir()))
            result = {"stage": "knowledge_base", "images": report.rows, "seconds": report.seconds, "peak_rss_mib": _peak_rss_mib()}
        else:
            result = run_stage(args.child, workload, data_root)
        print(json.dumps(result))
        return 0
    results = benchmark(args.images)
    _print(results, args.images)
    if args.scaling:
        scaled = benchmark_scaling(args.images, args.scaling)
        print(scaled)
    return 0


SCALING_STAGES = ("raw_records", "normalized_images", "rois")


def benchmark_scaling(small: int, large: int) -> str:
    lines = [f"\nPeak memory vs partition size ({', '.join(SCALING_STAGES)}; each in a fresh process):"]
    peaks = {}
    for n in (small, large):
        workload = make_workload(n)
        data_root = CACHE / f"scaling_{n}"
        subprocess.run(["rm", "-rf", str(data_root)], check=True)
        for stage in SCALING_STAGES:
            r = _child(["--child", stage, "--workload", str(workload), "--data-root", str(data_root)])
            peaks[(n, stage)] = r["peak_rss_mib"]
    for stage in SCALING_STAGES:
        a, b = peaks[(small, stage)], peaks[(large, stage)]
        lines.append(f"  {stage:<18} {small} images: {a:.0f} MiB   {large} images: {b:.0f} MiB   growth {100 * (b / a - 1):+.1f}%")
    return "\n".join(lines)


if __name__ == "__main__":
    from medtrinity_assets.shutdown import exit_quietly

    exit_quietly(main())
