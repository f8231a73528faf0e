"""Benchmark: the expert models (issue 10) trained and measured on real annotated data.

    python -m medtrinity_assets.bench_experts [--quick] [--experts polyp_endoscopy,breast_ultrasound_lesion]
                                              [--devices cuda,cpu] [--fresh] [--retrain] [--apply-images 100]

Workload, built by the real pipeline stages (``stages.run_ingest``, ``run_normalize``,
``run_ground``; no Dagster) under ``var/bench/experts/`` (``var/bench/experts_quick/`` with
--quick), from the catalog's specs pointed at ``../shared/realdata``:

* ``kvasir_seg``: all 1,000 Kvasir-SEG colonoscopy images with their polyp masks;
* ``busi_train``: the 180 BUSI breast-ultrasound images (spec ``busi`` with another root);
* ``busi``: the 25 other BUSI images, never trained on: a further check set.

Each expert of ``data/experts/`` named by --experts is trained through ``training.train_expert``
(the patient split of the dataset rule: about 80% train, 20% validate) and the bench prints:

1. **quality**: Dice, box IoU, mAP50, precision, recall on the held-out validation split
   (``metrics.evaluate``; the best epoch is chosen on the split's 'val' patients, and the
   'test' patients, never used for that choice, are reported apart), train / validation images
   and patients, epochs run, best epoch,
   training minutes, the device; the BUSI expert also on ``busi`` (never seen);
2. **speed**: images/s of ``apply.find_rois`` on decoded uint8 arrays (timed: resize to the
   network input, the forward pass, the probability map resized back to the image, connected
   components and the threshold / min-area / max-count cut; not timed: PNG decode), beside the
   floor: ``family.forward_floor``, the bare forward pass of the same network on the same images
   already prepared as one tensor per batch (``family.prepare_batch``, not timed), and their ratio;
3. **memory**: peak RSS of a fresh process that loads the expert and applies it to N and to 4N
   normalized images of its partition, streamed one batch at a time as the model_rois stage does
   (PNG decode + find_rois, results dropped), and the growth from N to 4N: flat means the peak
   does not depend on the partition size.

The stages' outputs and the trained experts are reused on a rerun (the expert retrains only when
its data fingerprint changes, or with --retrain); --fresh starts over. On
a CUDA machine each expert is trained on the GPU and again on the CPU (--devices cuda,cpu, the
default there) and both are reported; speed and memory are measured on the device the expert
picks (CUDA when present).
The machine is shared: read ratios, and the load average printed beside the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from medtrinity_assets.paths import REPO_ROOT, DataRoot, experts_dir, realdata_dir

BENCH_DIR = REPO_ROOT / "var" / "bench"
SALT = "bench-experts"
DEFAULT_EXPERTS = ("polyp_endoscopy", "breast_ultrasound_lesion")
# The BUSI expert learns from busi_train here (the catalog's busi is the 25-image check set).
BENCH_TRAIN_SOURCES = {"breast_ultrasound_lesion": ["busi_train"]}
CHECK_SOURCES = {"breast_ultrasound_lesion": ["busi"], "polyp_endoscopy": []}
# Colonoscopy datasets the polyp expert never saw: catalog sources measured when their files
# have been fetched (make fetch ID=...); none of them is in ../shared/realdata.
UNSEEN_COLONOSCOPY = ("cvc_clinicdb", "etis_larib", "polypgen")
# --quick: a few real images per source, a tiny network input and one epoch: the path, not the numbers.
QUICK_GLOBS = {"kvasir_seg": "images/cju0*.jpg", "busi_train": "*/images/* (1?).png", "busi": "*/images/* ([1-3]).png"}
QUICK_TRAINING = {"input_size": 64, "epochs": 2, "batch_size": 4, "max_train_minutes": None}


def _peak_rss_mib() -> float:
    """This process's peak RSS. VmHWM, not ru_maxrss: Linux carries ru_maxrss across fork + exec,
    so a child started by the bench (which holds the training images) would report the
    parent's size instead of its own."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} / {five:.2f} / {fifteen:.2f} on {os.cpu_count()} CPUs"


# --- workload --------------------------------------------------------------------------------


def bench_catalog(quick: bool) -> dict:
    """kvasir_seg, busi_train and busi as SourceSpecs rooted in ../shared/realdata."""
    from medtrinity_assets.catalog import load_catalog
    from medtrinity_assets.grounding.validate import kvasir_realdata_spec

    catalog = load_catalog()
    realdata = realdata_dir()
    missing = [name for name in ("kvasir_seg", "busi_train", "busi") if not (realdata / name).is_dir()]
    if missing:
        raise SystemExit(f"bench_experts needs {', '.join(str(realdata / m) for m in missing)} (the shared real data)")
    specs = {
        # The catalog's spec without the zip's top folder (images, masks and boxes file alike).
        "kvasir_seg": kvasir_realdata_spec(realdata / "kvasir_seg"),
        "busi_train": catalog["busi"].model_copy(update={"id": "busi_train", "root": str(realdata / "busi_train")}),
        "busi": catalog["busi"].model_copy(update={"root": str(realdata / "busi")}),
    }
    from medtrinity_assets.catalog import source_root

    for sid in UNSEEN_COLONOSCOPY:
        folder = source_root(catalog[sid]) if sid in catalog else None
        if not quick and folder is not None and folder.is_dir() and any(folder.iterdir()):
            specs[sid] = catalog[sid]
    if quick:
        specs = {sid: spec.model_copy(update={"layout": spec.layout.model_copy(update={"image_glob": QUICK_GLOBS[sid]})})
                 for sid, spec in specs.items()}
    return specs


def prepare(root: DataRoot, specs: dict) -> list[dict]:
    """ingest -> normalize -> rois per source, each once (reused when its rois table exists)."""
    from medtrinity_assets import stages

    done = []
    for source_id, spec in specs.items():
        if root.table("rois", source_id).exists():
            continue
        reports = [stages.run_ingest(spec, root, SALT), stages.run_normalize(spec, root), stages.run_ground(spec, root)]
        done.append({"source": source_id, "records": reports[0].rows, "images": reports[1].rows, "rois": reports[2].rows,
                     "seconds": round(sum(r.seconds for r in reports), 1)})
    return done


def bench_experts(names: list[str], quick: bool) -> dict:
    from medtrinity_assets.grounding.experts.spec import load_experts

    folder = experts_dir()
    experts = load_experts(folder)
    unknown = [n for n in names if n not in experts]
    if unknown:
        raise SystemExit(f"no expert spec {', '.join(unknown)} under {folder}")
    out = {}
    for name in names:
        update = {}
        if name in BENCH_TRAIN_SOURCES:
            update["train_sources"] = BENCH_TRAIN_SOURCES[name]
        if quick:
            update.update(QUICK_TRAINING)
        out[name] = experts[name].model_copy(update=update) if update else experts[name]
    return out


# --- measuring -------------------------------------------------------------------------------


def train(spec, root: DataRoot, catalog: dict, device: str, retrain: bool) -> dict:
    import torch

    from medtrinity_assets.grounding.experts.training import train_expert
    from medtrinity_assets.grounding.experts.weights import current_manifest

    spec = spec.model_copy(update={"device": device})
    current = current_manifest(root, spec.id)
    # The fingerprint does not hold the device: training on another one than the current
    # expert's is forced, or the GPU expert would be "reused" as the CPU one.
    force = retrain or (current is not None and current.device != device)
    started, cpu_started = time.perf_counter(), time.process_time()
    outcome = train_expert(spec, root, catalog, experts_dir(), force=force)
    # CPU seconds of this process (all its threads): on a shared machine the wall time says
    # how busy the others were; CPU time / cores is the wall time the run would take alone.
    cpu_minutes = (time.process_time() - cpu_started) / 60
    m = outcome.manifest
    history = m.history or []
    best = max(history, key=lambda h: h.get("val_dice", -1)) if history else {}
    counts = outcome.info.get("counts", {})
    return {
        "expert": spec.id, "family": m.family, "architecture": m.architecture, "device": m.device,
        "input_size": spec.input_size, "reused": outcome.reused, "train_sources": m.train_sources,
        "train_images": m.train_records, "val_images": m.val_records,
        "train_patients": counts.get("train_patients"), "val_patients": counts.get("val_patients"),
        "epochs": len(history), "best_epoch": best.get("epoch"), "training_minutes": round(m.seconds / 60, 2),
        "wall_minutes_this_run": round((time.perf_counter() - started) / 60, 2),
        "cpu_minutes_this_run": None if outcome.reused else round(cpu_minutes, 2), "threads": torch.get_num_threads(),
        "metrics": m.metrics, "sha256": m.sha256, "load_after_training": _load(),
    }


def check_set(spec, root: DataRoot, catalog: dict, source_ids: list[str]) -> dict | None:
    """The expert on every annotated (or declared normal) image of sources it never saw."""
    from collections import defaultdict

    from medtrinity_assets.grounding.experts.apply import load_for_inference
    from medtrinity_assets.grounding.experts.metrics import evaluate
    from medtrinity_assets.grounding.experts.samples import _source_samples

    if not source_ids:
        return None
    loaded = load_for_inference(spec, root, experts_dir())
    counts: dict = defaultdict(int)
    samples = [s for sid in source_ids for _, s in _source_samples(spec, root, sid, counts)]
    metrics = evaluate(loaded.family, loaded.model, spec, samples, loaded.device)
    return {"sources": source_ids, "counts": dict(counts), "metrics": metrics}


def _partition_images(root: DataRoot, source_id: str, limit: int) -> list[str]:
    from medtrinity_assets.duckdb_sql import connect, read_parquet

    rows = connect().execute(
        f"SELECT image_path FROM {read_parquet(root.table('normalized_images', source_id))} ORDER BY record_id LIMIT {int(limit)}"
    ).fetchall()
    return [r[0] for r in rows]


def _decode(root: DataRoot, rel: str):
    import numpy as np
    from PIL import Image

    with Image.open(root.root / rel) as image:
        return np.asarray(image)


def speed(spec, root: DataRoot, source_id: str, n_images: int, repeats: int = 2) -> dict:
    """find_rois on decoded arrays vs forward_floor on the same images prepared as tensors."""
    import torch

    from medtrinity_assets.grounding.experts.apply import find_rois, load_for_inference

    loaded = load_for_inference(spec, root, experts_dir())
    images = [_decode(root, p) for p in _partition_images(root, source_id, n_images)]
    batch = spec.batch_size
    prepare = getattr(loaded.family, "prepare_batch", None)
    if prepare is None:
        raise SystemExit(f"family {spec.family} has no prepare_batch: the floor needs the prepared tensors")
    tensors = [prepare(loaded.model, spec, images[i:i + batch], loaded.device) for i in range(0, len(images), batch)]
    find_rois(loaded, images[:batch])  # warm-up: first-call allocations and lazy imports
    loaded.family.forward_floor(loaded.model, spec, tensors[0], loaded.device)

    def sync():
        if loaded.device == "cuda":
            torch.cuda.synchronize()

    pipeline_s, floor_s, rois = [], [], 0
    for _ in range(repeats):  # interleaved, so a burst of load from other jobs hits both
        sync()
        started = time.perf_counter()
        found = find_rois(loaded, images)
        sync()
        pipeline_s.append(time.perf_counter() - started)
        rois = sum(len(f) for f in found)
        started = time.perf_counter()
        for tensor in tensors:
            loaded.family.forward_floor(loaded.model, spec, tensor, loaded.device)
        sync()
        floor_s.append(time.perf_counter() - started)
    pipeline_rate, floor_rate = len(images) / min(pipeline_s), len(images) / min(floor_s)
    sizes = sorted({im.shape[:2] for im in images})
    return {"source": source_id, "images": len(images), "image_sizes": f"{sizes[0]}..{sizes[-1]}", "batch": batch,
            "input_size": getattr(loaded.model, "input_size", spec.input_size), "device": loaded.device,
            "threads": torch.get_num_threads(), "find_rois_images_s": round(pipeline_rate, 2),
            "floor_images_s": round(floor_rate, 2), "ratio": round(pipeline_rate / floor_rate, 3), "rois": rois,
            "load": _load()}


def apply_child(expert_id: str, root: DataRoot, source_id: str, n_images: int, quick: bool) -> dict:
    """In a fresh process: load the expert, stream n_images of the partition through find_rois."""
    from medtrinity_assets.grounding.experts.apply import find_rois, load_for_inference

    spec = bench_experts([expert_id], quick)[expert_id]
    paths = _partition_images(root, source_id, n_images)
    baseline = _peak_rss_mib()
    loaded = load_for_inference(spec, root, experts_dir())
    after_load = _peak_rss_mib()
    started = time.perf_counter()
    rois = 0
    for start in range(0, len(paths), spec.batch_size):
        images = [_decode(root, p) for p in paths[start:start + spec.batch_size]]
        rois += sum(len(found) for found in find_rois(loaded, images))
    seconds = time.perf_counter() - started
    return {"images": len(paths), "rois": rois, "seconds": round(seconds, 2), "images_s_with_decode": round(len(paths) / seconds, 2),
            "rss_after_imports_mib": round(baseline), "rss_after_load_mib": round(after_load), "peak_rss_mib": round(_peak_rss_mib())}


def memory(expert_id: str, root: DataRoot, source_id: str, n_images: int, quick: bool) -> dict:
    out = {"source": source_id}
    for n in (n_images, 4 * n_images):
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        args = [sys.executable, "-m", "medtrinity_assets.bench_experts", "--child-apply", expert_id, "--source", source_id,
                "--images", str(n), "--data-root", str(root.root)] + (["--quick"] if quick else [])
        done = subprocess.run(args, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            raise RuntimeError(f"apply child for {expert_id} on {n} images failed:\n{done.stderr[-3000:]}")
        out[n] = json.loads(done.stdout.strip().splitlines()[-1])
    small, large = out[n_images], out[4 * n_images]
    out["growth_percent"] = round(100 * (large["peak_rss_mib"] / small["peak_rss_mib"] - 1), 1)
    return out


# --- report ----------------------------------------------------------------------------------


def _fmt(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def report(result: dict) -> str:
    lines = [f"\nExperts benchmark ({'--quick: tiny settings, the path only' if result['quick'] else 'full recipes'}); "
             f"torch {result['torch']}, CUDA available: {result['cuda']}"
             + ("" if result["cuda"] else " (no GPU here: everything below ran on the CPU)")]
    lines.append(f"workload: {result['workload']}")
    lines.append(f"\n{'expert':<26}{'device':>7}{'train/val img':>15}{'patients':>11}{'epochs':>8}{'best':>6}{'minutes':>9}"
                 f"{'Dice':>8}{'box IoU':>9}{'mAP50':>8}{'prec':>7}{'recall':>8}")
    for t in result["training"]:
        m = t["metrics"]
        lines.append(f"{t['expert']:<26}{t['device']:>7}{t['train_images']:>8}/{t['val_images']:<6}"
                     f"{(str(t['train_patients']) + '/' + str(t['val_patients'])) if t['train_patients'] is not None else 'n/a':>11}{t['epochs']:>8}{str(t['best_epoch']):>6}"
                     f"{t['training_minutes']:>9.1f}{_fmt(m.get('dice')):>8}{_fmt(m.get('box_iou')):>9}{_fmt(m.get('map50')):>8}"
                     f"{_fmt(m.get('precision'), 2):>7}{_fmt(m.get('recall'), 2):>8}")
        test = m.get("test")
        if test:
            lines.append(f"  of which the 'test' patients ({test['images']} images, not used to choose the best epoch): "
                         f"Dice {_fmt(test.get('dice'))}, box IoU {_fmt(test.get('box_iou'))}, mAP50 {_fmt(test.get('map50'))}")
        cpu = "" if t.get("cpu_minutes_this_run") is None else (
            f"; process CPU time {t['cpu_minutes_this_run']:.1f} min on {t['threads']} torch thread(s) "
            f"(= {t['cpu_minutes_this_run'] / t['threads']:.1f} min of wall time with {t['threads']} core(s) to itself)")
        lines.append(f"  {t['family']} {t['architecture']} at {t['input_size']} px, trained on {', '.join(t['train_sources'])}"
                     f"{' (reused: trained by an earlier run, same data fingerprint)' if t['reused'] else ''}{cpu}; {t['load_after_training']}")
    for expert_id, check in result["checks"].items():
        if check is None:
            continue
        m = check["metrics"]
        lines.append(f"{expert_id} on {', '.join(check['sources'])} (never trained on, {m['images']} images): Dice {_fmt(m['dice'])}, "
                     f"box IoU {_fmt(m['box_iou'])}, mAP50 {_fmt(m['map50'])}")
    if "polyp_endoscopy" in result["experts"] and not result["checks"].get("polyp_endoscopy"):
        lines.append("polyp_endoscopy on an unseen colonoscopy dataset: not measured: ../shared/realdata holds no colonoscopy "
                     f"images besides Kvasir-SEG, and none of the catalog's {', '.join(UNSEEN_COLONOSCOPY)} has been fetched "
                     "(make fetch ID=...; the bench then measures them)")
    lines.append(f"\n{'expert':<26}{'images':>7}{'batch':>6}{'input':>6}{'find_rois img/s':>16}{'floor img/s':>12}{'x floor':>8}")
    for s in result["speed"]:
        lines.append(f"{s['expert']:<26}{s['images']:>7}{s['batch']:>6}{s['input_size']:>6}{s['find_rois_images_s']:>16.1f}"
                     f"{s['floor_images_s']:>12.1f}{s['ratio']:>8.2f}")
        lines.append(f"  {s['source']} images {s['image_sizes']}, {s['device']}, {s['threads']} torch threads; {s['load']}")
    lines.append("  find_rois timed on decoded arrays: resize to the input, forward, probability back to the image size, "
                 "components, threshold/min-area/max-count. Floor: forward_floor alone on the same images already prepared as tensors.")
    lines.append("\nPeak RSS applying the expert in a fresh process (PNG decode + find_rois, one batch at a time):")
    for expert_id, mem in result["memory"].items():
        sizes = [k for k in mem if isinstance(k, int)]
        parts = [f"{mem[n]['images']} images: {mem[n]['peak_rss_mib']} MiB ({mem[n]['images_s_with_decode']} img/s with decode)" for n in sorted(sizes)]
        lines.append(f"  {expert_id:<26} on {mem['source']}: {'   '.join(parts)}   growth {mem['growth_percent']:+.1f}%"
                     f"  (after imports {mem[sizes[0]]['rss_after_imports_mib']} MiB, after loading {mem[sizes[0]]['rss_after_load_mib']} MiB)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a few images, 64 px, 2 epochs: the path, not the numbers")
    parser.add_argument("--experts", default=",".join(DEFAULT_EXPERTS))
    parser.add_argument("--devices", default="", help="where to train, e.g. cuda,cpu (default: cuda,cpu when CUDA is present, else cpu)")
    parser.add_argument("--fresh", action="store_true", help="rebuild the workload and retrain")
    parser.add_argument("--retrain", action="store_true", help="retrain even when the data fingerprint is unchanged")
    parser.add_argument("--apply-images", type=int, default=0, help="N for the speed and memory runs (memory also at 4N)")
    parser.add_argument("--child-apply")
    parser.add_argument("--source")
    parser.add_argument("--images", type=int)
    parser.add_argument("--data-root")
    args = parser.parse_args(argv)
    if args.child_apply:
        print(json.dumps(apply_child(args.child_apply, DataRoot(Path(args.data_root)), args.source, args.images, args.quick)))
        return 0

    import torch

    from medtrinity_assets.grounding.experts.device import limit_torch_threads

    limit_torch_threads()
    root = DataRoot(BENCH_DIR / ("experts_quick" if args.quick else "experts"))
    if args.fresh and root.root.exists():
        shutil.rmtree(root.root)
    catalog = bench_catalog(args.quick)
    names = [n for n in args.experts.split(",") if n]
    experts = bench_experts(names, args.quick)
    n_apply = args.apply_images or (3 if args.quick else 100)
    # The issue asks for both where a GPU is present: the GPU run, then the CPU run.
    devices = [d for d in args.devices.split(",") if d] or (["cuda", "cpu"] if torch.cuda.is_available() else ["cpu"])
    started = time.perf_counter()
    prepared = prepare(root, catalog)
    for p in prepared:
        print(f"prepared {p['source']}: {p['records']} records, {p['images']} images, {p['rois']} ROIs in {p['seconds']} s", flush=True)
    result = {"quick": args.quick, "experts": names, "torch": torch.__version__, "cuda": torch.cuda.is_available(),
              "workload": ", ".join(f"{sid} ({catalog[sid].root})" for sid in catalog), "training": [], "checks": {},
              "speed": [], "memory": {}}
    for name, spec in experts.items():
        for device in devices:
            print(f"training {name} on {device} ...", flush=True)
            result["training"].append(train(spec, root, catalog, device, args.retrain or args.fresh))
            print(json.dumps(result["training"][-1]), flush=True)
        checks = CHECK_SOURCES.get(name, []) + ([s for s in UNSEEN_COLONOSCOPY if s in catalog] if name == "polyp_endoscopy" else [])
        result["checks"][name] = check_set(spec, root, catalog, checks)
        source = spec.train_sources[0]
        result["speed"].append({"expert": name, **speed(spec, root, source, n_apply)})
        # N and 4N both inside the partition (BUSI's 180 images: 45 and 180).
        n_memory = max(1, min(n_apply, len(_partition_images(root, source, 4 * n_apply)) // 4))
        result["memory"][name] = memory(name, root, source, n_memory, args.quick)
    result["seconds"] = round(time.perf_counter() - started, 1)
    text = report(result)
    print(text)
    out = BENCH_DIR / ("experts_quick.json" if args.quick else "experts.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str))
    print(f"\n{result['seconds'] / 60:.1f} min in all; written to {out}")
    return 0


if __name__ == "__main__":
    from medtrinity_assets.shutdown import exit_quietly

    exit_quietly(main())
