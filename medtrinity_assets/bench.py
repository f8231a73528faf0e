"""Benchmark: per-stage images/s and peak memory on a stated workload, beside the floor.

Workload (made from real images that installed packages ship, written once to a cache folder):
  * half are CT DICOM files: the real 512x512 head CT slice of pydicom-data (693_UNCR.dcm),
    each rolled by a different offset so every file is distinct content;
  * half are fundus JPEG photos: 768x768 crops at different offsets of scikit-image's real
    1411x1411 retina photo.
Each stage runs in its own fresh process (so its peak RSS is its own), over both sources.
The floor is plain decode (pydicom / Pillow) + resize to 512 (Pillow) + PNG encode of the same
files in one process: the least any normalizer must do. The peer is MONAI's chain over the same
files (LoadImage -> ScaleIntensity -> Resize to 512 -> PNG at the same level), one process.
Ratios, not absolute numbers, are the result: the machine is shared and noisy.

Workers: the stages table runs with MEDTRINITY_WORKERS as set (default: the CPUs, at most 16);
then ingest, normalize and ground run again at 1 and at 2 worker processes (--workers), --repeat
times, for images/s per core and the speed-up. Peak memory is the stage's process and, with
workers, all its worker processes together (sampled).

Scale (--scale 10): ingest, normalize and ground at --images and at 10x --images, for time per
image (linear) and peak memory (flat).

Usage: python -m medtrinity_assets.bench [--images 1000] [--workers 1,2] [--repeat 1] [--scale 10]
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


def warm_imports() -> None:
    """Import what the CPU stages import lazily, before any timer starts: the floor imports its
    libraries before its timer too, and a long-running worker pays imports once, not per image."""
    import importlib

    from medtrinity_assets.sources import FAMILY_MODULES

    for name in (*FAMILY_MODULES.values(), "medtrinity_assets.stage_work", "medtrinity_assets.imaging.normalize",
                 "medtrinity_assets.imaging.burned_in", "medtrinity_assets.imaging.phash", "medtrinity_assets.grounding.rois",
                 "medtrinity_assets.grounding.relations", "medtrinity_assets.catalog.fingerprint", "scipy.ndimage"):
        importlib.import_module(name)


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class _TreeRss:
    """Peak RSS of this process and all its descendants together (a stage's worker processes
    are children of the fork server, not of this process, so getrusage cannot see them), and
    the CPU seconds its descendants used (last sample of each: a worker's final 0.1 s may be
    missed). CPU time is what a shared, loaded machine does not distort: the per-core figures."""

    def __init__(self, every_s: float = 0.1):
        import threading

        self.peak = 0.0
        self.child_cpu: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every_s,), daemon=True)

    def _run(self, every_s: float) -> None:
        import psutil

        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for process in [me, *me.children(recursive=True)]:
                try:
                    total += process.memory_info().rss
                    if process.pid != me.pid:
                        times = process.cpu_times()
                        self.child_cpu[process.pid] = times.user + times.system
                except psutil.Error:
                    continue  # ended between the listing and the read
            self.peak = max(self.peak, total / 2**20)
            self._stop.wait(every_s)

    def __enter__(self) -> "_TreeRss":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


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
    cpu = _cpu_seconds()
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
    return {"stage": "floor", "images": len(files), "seconds": seconds, "peak_rss_mib": _peak_rss_mib(), "cpu_seconds": _cpu_seconds() - cpu}


def run_monai_peer(workload: Path) -> dict:
    """MONAI's own chain over the same files: LoadImage (pydicom / Pillow readers) ->
    ScaleIntensity to 0..255 -> Resize, longest side 512, bilinear -> PNG at the pipeline's level."""
    import numpy as np
    import torch
    from monai.transforms import Compose, EnsureChannelFirst, LoadImage, Resize, ScaleIntensity
    from PIL import Image

    from medtrinity_assets.imaging import normalize

    torch.set_num_threads(1)  # one core, like the floor and a one-worker stage
    level = normalize.PNG_COMPRESS_LEVEL
    chain = Compose([
        LoadImage(image_only=True),
        EnsureChannelFirst(),
        ScaleIntensity(minv=0.0, maxv=255.0),
        Resize(spatial_size=512, size_mode="longest", mode="bilinear"),
    ])
    files = sorted(workload.glob("*/*.*"))
    cpu = _cpu_seconds()
    started = time.perf_counter()
    for path in files:
        array = np.asarray(chain(str(path)))
        image = np.clip(array, 0, 255).astype(np.uint8)
        image = image[0] if image.shape[0] == 1 else np.moveaxis(image, 0, -1)
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(image)).save(buffer, format="PNG", compress_level=level)
    seconds = time.perf_counter() - started
    return {"stage": "monai_peer", "images": len(files), "seconds": seconds, "peak_rss_mib": _peak_rss_mib(), "cpu_seconds": _cpu_seconds() - cpu}


def _partition_stages() -> list[str]:
    # Imported here, not at the top, so the floor's peak memory holds no pipeline imports.
    from medtrinity_assets.pipeline import STAGES

    return [stage.name for stage in STAGES if stage.partitioned]


def run_stage(stage: str, workload: Path, data_root: Path) -> dict:
    from medtrinity_assets.paths import DataRoot
    from medtrinity_assets.pipeline import STAGE, StageInputs

    from medtrinity_assets import parallel

    root = DataRoot(data_root)
    warm_imports()
    baseline = _peak_rss_mib()
    images = 0
    seconds = 0.0
    cpu = _cpu_seconds()
    with _TreeRss() as tree:
        for spec in bench_specs(workload):
            report = STAGE[stage].run(StageInputs(root, spec=spec, salt="bench-salt"))
            images += report.inputs
            seconds += report.seconds
    return {"stage": stage, "images": images, "seconds": seconds, "peak_rss_mib": _peak_rss_mib(), "rss_after_imports_mib": baseline,
            "peak_tree_rss_mib": max(tree.peak, _peak_rss_mib()), "workers": parallel.worker_count(),
            "cpu_seconds": _cpu_seconds() - cpu + sum(tree.child_cpu.values())}


def _child(args: list[str], workers: int | None = None) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    if workers is not None:
        env["MEDTRINITY_WORKERS"] = str(workers)
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
    results.append(_child(["--child", "monai_peer", "--workload", str(workload), "--data-root", str(data_root)]))
    for stage in _partition_stages():
        results.append(_child(["--child", stage, "--workload", str(workload), "--data-root", str(data_root)]))
    return results


WORKER_STAGES = ("raw_records", "normalized_images", "rois")


def run_cpu_stages(workload: Path, data_root: Path, workers: int | None) -> dict[str, dict]:
    """Ingest, normalize and ground from scratch in a fresh data root, each in its own process."""
    subprocess.run(["rm", "-rf", str(data_root)], check=True)
    return {stage: _child(["--child", stage, "--workload", str(workload), "--data-root", str(data_root)], workers)
            for stage in WORKER_STAGES}


def benchmark_workers(n_images: int, workers: list[int], repeat: int) -> list[dict[int, dict[str, dict]]]:
    workload = make_workload(n_images)
    rounds = []
    for _ in range(repeat):
        # Interleaved, so a change in the machine's load falls on every worker count alike.
        rounds.append({w: run_cpu_stages(workload, CACHE / f"workers_{n_images}_{w}", w) for w in workers})
    return rounds


def _rate(r: dict) -> float:
    return r["images"] / r["seconds"] if r["seconds"] else float("inf")


def _ingest_normalize_rate(stages: dict[str, dict]) -> float:
    return stages["raw_records"]["images"] / (stages["raw_records"]["seconds"] + stages["normalized_images"]["seconds"])


def _print_workers(rounds: list[dict[int, dict[str, dict]]], floor: dict, peer: dict) -> None:
    floor_rate, peer_rate = _rate(floor), _rate(peer)
    counts = sorted(rounds[0])
    print(f"\nWorker processes (MEDTRINITY_WORKERS), {len(rounds)} round(s), load average now {os.getloadavg()[0]:.1f}; "
          f"images/s (x floor {floor_rate:.1f}/s):")
    header = f"{'stage':<26}" + "".join(f"{f'{w} worker' + ('s' if w > 1 else ''):>22}" for w in counts)
    if len(counts) > 1:
        header += f"{f'{counts[-1]} vs {counts[0]}':>14}"
    print(header)
    rows = [(stage, lambda s, st=stage: _rate(s[st])) for stage in WORKER_STAGES]
    rows.append(("ingest+normalize", _ingest_normalize_rate))
    for name, rate_of in rows:
        line = f"{name:<26}"
        for w in counts:
            rates = [rate_of(r[w]) for r in rounds]
            best = max(rates)
            line += f"{best:>10.1f} ({best / floor_rate:.2f}x fl.)"
        if len(counts) > 1:
            speedups = [rate_of(r[counts[-1]]) / rate_of(r[counts[0]]) for r in rounds]
            line += f"{'  ' + ' '.join(f'{x:.2f}' for x in speedups):>14}"
        print(line)
    for w in counts:
        peaks = {st: max(r[w][st]["peak_tree_rss_mib"] for r in rounds) for st in WORKER_STAGES}
        print(f"  peak RSS with {w} worker(s), stage process + workers: " + ", ".join(f"{st} {v:.0f} MiB" for st, v in peaks.items()))
    for w in counts:
        cpu = {st: min(r[w][st]["cpu_seconds"] / r[w][st]["images"] for r in rounds) for st in WORKER_STAGES}
        print(f"  per core with {w} worker(s), images per CPU-second: " + ", ".join(f"{st} {1 / v:.1f}" for st, v in cpu.items())
              + f", ingest+normalize {1 / (cpu['raw_records'] + cpu['normalized_images']):.1f}")
    one = max(_ingest_normalize_rate(r[counts[0]]) for r in rounds)
    print(f"MONAI peer chain (load, scale, resize, PNG; one process): {peer_rate:.1f} images/s = {peer_rate / floor_rate:.2f} x the floor; "
          f"ingest+normalize at {counts[0]} worker = {one / peer_rate:.2f} x MONAI"
          + (f", at {counts[-1]} workers = {max(_ingest_normalize_rate(r[counts[-1]]) for r in rounds) / peer_rate:.2f} x MONAI" if len(counts) > 1 else ""))


def _print(results: list[dict], n_images: int) -> None:
    floor = next(r for r in results if r["stage"] == "floor")
    floor_rate = floor["images"] / floor["seconds"]
    print(f"\nWorkload: {n_images} 2D images ({n_images // 2} CT DICOM 512x512, {n_images - n_images // 2} fundus JPEG 768x768); "
          f"{os.cpu_count()} CPUs")
    workers = next((r["workers"] for r in results if "workers" in r), 1)
    print(f"Stages with {workers} worker process(es) each (MEDTRINITY_WORKERS); floor and MONAI peer in one process")
    floor_cpu_rate = floor["images"] / floor["cpu_seconds"]
    print(f"{'stage':<18}{'images':>8}{'seconds':>10}{'images/s':>11}{'x floor':>9}{'per CPU-s':>11}{'x floor':>9}"
          f"{'peak RSS MiB':>14}{'after imports':>15}{'with workers':>14}")
    for r in results:
        rate = r["images"] / r["seconds"] if r["seconds"] else float("inf")
        per_cpu = r["images"] / r["cpu_seconds"] if r.get("cpu_seconds") else float("nan")
        print(f"{r['stage']:<18}{r['images']:>8}{r['seconds']:>10.2f}{rate:>11.1f}{rate / floor_rate:>9.2f}{per_cpu:>11.1f}{per_cpu / floor_cpu_rate:>9.2f}"
              f"{r['peak_rss_mib']:>14.0f}{r.get('rss_after_imports_mib', float('nan')):>15.0f}{r.get('peak_tree_rss_mib', float('nan')):>14.0f}")
    print("(per CPU-s: images per CPU-second of the stage's process and its workers: per core, whatever the machine's load)")
    ingest = next(r for r in results if r["stage"] == "raw_records")
    normalize = next(r for r in results if r["stage"] == "normalized_images")
    peer = next(r for r in results if r["stage"] == "monai_peer")
    combined = ingest["images"] / (ingest["seconds"] + normalize["seconds"])
    combined_cpu = ingest["images"] / (ingest["cpu_seconds"] + normalize["cpu_seconds"])
    peer_cpu = peer["images"] / peer["cpu_seconds"]
    print(f"ingest+normalize together: {combined:.1f} images/s = {combined / floor_rate:.2f} x the floor, "
          f"{combined / _rate(peer):.2f} x the MONAI peer; per CPU-second {combined_cpu:.1f} = {combined_cpu / floor_cpu_rate:.2f} x the floor, "
          f"{combined_cpu / peer_cpu:.2f} x the MONAI peer (the floor also decodes; normalize alone starts from decoded arrays)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--scaling", type=int, default=0, help="also run ingest, normalize and ground at this size: time per image, peak memory")
    parser.add_argument("--scale", type=int, default=0, help="like --scaling at this multiple of --images (10: the 10x run)")
    parser.add_argument("--workers", default="1,2", help="worker counts to compare on ingest, normalize, ground; empty to skip")
    parser.add_argument("--repeat", type=int, default=1, help="rounds of the worker comparison")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--no-stages", action="store_true", help="skip the table of every stage (only the worker comparison and --scale)")
    parser.add_argument("--child")
    parser.add_argument("--workload")
    parser.add_argument("--data-root")
    args = parser.parse_args(argv)
    if args.child:
        workload, data_root = Path(args.workload), Path(args.data_root)
        if args.child == "floor":
            result = run_floor(workload)
        elif args.child == "monai_peer":
            result = run_monai_peer(workload)
        elif args.child == "knowledge_base":
            from medtrinity_assets.paths import DataRoot, knowledge_dir
            from medtrinity_assets.pipeline import STAGE, StageInputs

            report = STAGE["knowledge_base"].run(StageInputs(DataRoot(data_root), knowledge_folder=knowledge_dir()))
            result = {"stage": "knowledge_base", "images": report.rows, "seconds": report.seconds, "peak_rss_mib": _peak_rss_mib()}
        else:
            result = run_stage(args.child, workload, data_root)
        print(json.dumps(result))
        return 0
    figures: dict = {"images": args.images, "cpus": os.cpu_count(), "load_average_at_start": os.getloadavg()[0]}
    counts = [int(w) for w in args.workers.split(",") if w.strip()]
    if not args.no_stages:
        results = benchmark(args.images)
        figures["stages"] = results
        _print(results, args.images)
    elif counts:
        workload = make_workload(args.images)
        results = [_child(["--child", child, "--workload", str(workload), "--data-root", str(CACHE / "unused")]) for child in ("floor", "monai_peer")]
    if counts:
        rounds = benchmark_workers(args.images, counts, max(1, args.repeat))
        figures["workers"] = [{str(w): r[w] for w in r} for r in rounds]
        _print_workers(rounds, next(r for r in results if r["stage"] == "floor"), next(r for r in results if r["stage"] == "monai_peer"))
    large = args.scaling or args.images * args.scale
    if large:
        scaled, figures["scale"] = benchmark_scaling(args.images, large)
        print(scaled)
    figures["load_average_at_end"] = os.getloadavg()[0]
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))
    return 0


SCALING_STAGES = ("raw_records", "normalized_images", "rois")


def benchmark_scaling(small: int, large: int) -> tuple[str, dict]:
    runs = {}
    for n in (small, large):
        workload = make_workload(n)
        data_root = CACHE / f"scaling_{n}"
        subprocess.run(["rm", "-rf", str(data_root)], check=True)
        for stage in SCALING_STAGES:
            runs[(n, stage)] = _child(["--child", stage, "--workload", str(workload), "--data-root", str(data_root)])
    workers = runs[(small, SCALING_STAGES[0])]["workers"]
    lines = [f"\n{large // small}x run: {small} vs {large} images ({', '.join(SCALING_STAGES)}; each in a fresh process, "
             f"{workers} worker(s); time per image should stay, peak memory (stage process + workers) stay flat):"]
    for stage in SCALING_STAGES:
        a, b = runs[(small, stage)], runs[(large, stage)]
        per_a, per_b = 1000 * a["seconds"] / a["images"], 1000 * b["seconds"] / b["images"]
        lines.append(
            f"  {stage:<18} {a['images']:>6} images {a['seconds']:7.1f} s ({per_a:5.1f} ms/image)   {b['images']:>6} images {b['seconds']:7.1f} s "
            f"({per_b:5.1f} ms/image, x{per_b / per_a:.2f})   CPU {1000 * a['cpu_seconds'] / a['images']:.1f} -> "
            f"{1000 * b['cpu_seconds'] / b['images']:.1f} ms/image   peak RSS {a['peak_tree_rss_mib']:.0f} -> {b['peak_tree_rss_mib']:.0f} MiB "
            f"({100 * (b['peak_tree_rss_mib'] / a['peak_tree_rss_mib'] - 1):+.1f}%)"
        )
    return "\n".join(lines), {f"{n}:{stage}": r for (n, stage), r in runs.items()}


if __name__ == "__main__":
    from medtrinity_assets.shutdown import exit_quietly

    exit_quietly(main())
