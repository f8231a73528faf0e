"""Benchmark: ingest throughput per layout family, and ingest memory at 1k vs 10k files.

Workload per family (written once under var/bench/ingest/, from real images that installed
packages ship, each file made distinct so the content-addressed blob store cannot share them):
  * dicom        : CT slices (pydicom-data 693_UNCR.dcm, 512x512), rolled per file
  * nifti        : MNI152 T1 brain volumes (nilearn, 1 mm, cropped) with a lesion label volume,
                   one case folder each; ingest slices them (annotated_plus_context)
  * image_mask   : fundus crops (scikit-image retina) with a PNG lesion mask each
  * image_csv    : fundus crops with a label CSV
  * image_folder : fundus crops in two class folders
  * coco         : fundus crops with a COCO JSON of boxes
  * boxes (voc)  : fundus crops with one Pascal VOC XML each
  * captions     : fundus crops with a VQA JSON (two questions per image)
The floor is what any reader must do for the same files: decode every image (and mask) file
with the library made for it and save the array (np.save), in one process. (For nifti the floor
decodes whole volumes while ingest decodes only the chosen slices, so its ratio can exceed 1.) Ratios are the result; the machine is noisy.

Scaling: ingest of an image_folder source of 1,000 vs 10,000 files, each run in a fresh
process; bounded memory means the peak RSS barely moves.

Workers: each ingest runs with MEDTRINITY_WORKERS as set, or at each count of --workers 1,2.

Usage: python -m medtrinity_assets.bench_ingest [--images 400] [--scaling 1000,10000] [--workers 1,2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from medtrinity_assets.paths import REPO_ROOT

CACHE = REPO_ROOT / "var" / "bench" / "ingest"
FAMILIES = ["dicom", "nifti", "image_mask", "image_csv", "image_folder", "coco", "boxes", "captions"]
PHOTO = 384  # side of the fundus crops: realistic for dermoscopy/endoscopy/fundus releases


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _spec(family: str, root: Path, layout: dict, **fields):
    from medtrinity_assets.catalog.spec import SourceSpec

    metadata = dict(
        id=f"bench_{family}", name=f"Benchmark {family}", description="Benchmark workload from package data.",
        homepage="https://github.com/pydicom/pydicom-data", license="MIT / BSD-3 (package data)",
        citation="benchmark workload", access="package", approx_size="benchmark",
        modality="fundus", organs=["retina"], annotation_kinds=["label"], root=str(root),
    )
    metadata.update(fields)
    return SourceSpec.model_validate({**metadata, "layout": layout})


def _retina():
    import numpy as np
    import skimage
    from PIL import Image

    return np.asarray(Image.open(Path(skimage.__file__).parent / "data" / "retina.jpg").convert("RGB"))


def _photo(retina, i: int):
    """A distinct crop of the real fundus photo (offsets walk over the whole image)."""
    span_y, span_x = retina.shape[0] - PHOTO, retina.shape[1] - PHOTO
    y, x = (i * 37) % span_y, (i * 53) % span_x
    return retina[y : y + PHOTO, x : x + PHOTO]


def _write_photos(folder: Path, n: int, names=None) -> list[str]:
    from PIL import Image

    retina = _retina()
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for i in range(n):
        name = names(i) if names else f"img_{i:06d}.jpg"
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_photo(retina, i)).save(path, quality=90)
        written.append(name)
    return written


def _lesion_box(i: int) -> list[int]:
    x0, y0 = 40 + (i * 7) % 200, 30 + (i * 11) % 200
    return [x0, y0, x0 + 80, y0 + 60]


def make_family_workload(family: str, n: int, cache: Path = CACHE):
    """Write (once) the workload of one family; return (spec, files the floor decodes)."""
    import numpy as np

    root = Path(cache) / f"{family}_{n}"
    done = root / ".complete"
    fresh = not done.exists()
    if fresh:
        subprocess.run(["rm", "-rf", str(root)], check=True)
        root.mkdir(parents=True)

    if family == "dicom":
        import data_store
        import pydicom

        if fresh:
            ct = pydicom.dcmread(Path(data_store.__file__).parent / "data" / "693_UNCR.dcm")
            pixels = ct.pixel_array
            for i in range(n):
                ds = ct.copy()
                ds.PixelData = np.roll(pixels, shift=(i % 97, i // 97), axis=(0, 1)).astype(pixels.dtype).tobytes()
                ds.SOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=[str(i)])
                ds.save_as(root / f"ct_{i:06d}.dcm")
        spec = _spec(family, root, {"family": "dicom", "glob": "*.dcm"}, modality="ct", organs=["head", "brain"], annotation_kinds=["none"])
    elif family == "nifti":
        import nibabel as nib
        from nilearn import datasets

        cases = max(1, n // 20)  # about 20 slices per case are chosen: ~n images
        if fresh:
            template = datasets.load_mni152_template(resolution=2)
            volume = np.asarray(template.get_fdata(), dtype=np.float32)
            for c in range(cases):
                case = root / f"case_{c:04d}"
                case.mkdir()
                shifted = np.roll(volume, c, axis=0)
                label = np.zeros(volume.shape, dtype=np.uint8)
                z0 = 30 + c % 10
                label[35:55, 40:60, z0 : z0 + 16] = 1
                nib.save(nib.Nifti1Image(shifted, template.affine), case / "t1.nii.gz")
                nib.save(nib.Nifti1Image(label, template.affine), case / "label.nii.gz")
        spec = _spec(
            family, root,
            {"family": "nifti", "image_glob": "*/t1.nii.gz", "label_replace": [{"old": "t1.nii.gz", "new": "label.nii.gz"}]},
            modality="mri", organs=["brain"], annotation_kinds=["mask"], diseases=["brain lesion"],
            patient={"source": "folder", "folder_depth": 0},
        )
    elif family == "image_mask":
        from PIL import Image

        if fresh:
            _write_photos(root / "images", n)
            (root / "masks").mkdir()
            for i in range(n):
                mask = np.zeros((PHOTO, PHOTO), dtype=np.uint8)
                x0, y0, x1, y1 = _lesion_box(i)
                mask[y0:y1, x0:x1] = 255
                Image.fromarray(mask).save(root / "masks" / f"img_{i:06d}.png")
        spec = _spec(family, root, {"family": "image_mask", "image_glob": "images/*.jpg", "mask_template": "masks/{stem}.png"},
                     diseases=["retinal lesion"], annotation_kinds=["mask"])
    elif family == "image_csv":
        if fresh:
            names = _write_photos(root / "images", n)
            rows = ["image,grade"] + [f"{Path(name).stem},{i % 3}" for i, name in enumerate(names)]
            (root / "labels.csv").write_text("\n".join(rows) + "\n")
        spec = _spec(family, root, {"family": "image_csv", "csv": "labels.csv", "id_column": "image",
                                    "path_template": "images/{id}.jpg", "label_column": "grade"},
                     labels={"rename": {"0": "", "1": "mild retinopathy", "2": "severe retinopathy"}})
    elif family == "image_folder":
        if fresh:
            _write_photos(root, n, names=lambda i: f"{'normal' if i % 2 else 'glaucoma'}/img_{i:06d}.jpg")
        spec = _spec(family, root, {"family": "image_folder", "image_glob": "*/*.jpg"},
                     labels={"source": "folder", "folder_depth": 0, "rename": {"normal": ""}})
    elif family == "coco":
        if fresh:
            names = _write_photos(root / "images", n)
            coco = {
                "images": [{"id": i, "file_name": name, "width": PHOTO, "height": PHOTO} for i, name in enumerate(names)],
                "annotations": [
                    {"id": i, "image_id": i, "category_id": 1, "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "area": 4800, "iscrowd": 0}
                    for i, b in ((i, _lesion_box(i)) for i in range(n))
                ],
                "categories": [{"id": 1, "name": "lesion"}],
            }
            (root / "annotations.json").write_text(json.dumps(coco))
        spec = _spec(family, root, {"family": "coco", "annotations": "annotations.json", "image_root": "images"}, annotation_kinds=["box"])
    elif family == "boxes":
        if fresh:
            names = _write_photos(root / "JPEGImages", n)
            (root / "Annotations").mkdir()
            for i, name in enumerate(names):
                x0, y0, x1, y1 = _lesion_box(i)
                xml = (f"<annotation><filename>{name}</filename><size><width>{PHOTO}</width><height>{PHOTO}</height><depth>3</depth></size>"
                       f"<object><name>lesion</name><difficult>0</difficult><bndbox><xmin>{x0 + 1}</xmin><ymin>{y0 + 1}</ymin>"
                       f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object></annotation>")
                (root / "Annotations" / f"{Path(name).stem}.xml").write_text(xml)
        spec = _spec(family, root, {"family": "boxes", "image_glob": "JPEGImages/*.jpg",
                                    "boxes": {"format": "voc", "annotation_template": "Annotations/{stem}.xml"}}, annotation_kinds=["box"])
    elif family == "captions":
        if fresh:
            names = _write_photos(root / "images", n)
            rows = []
            for i, name in enumerate(names):
                rows.append({"image": name, "question": "Is the optic disc visible?", "answer": "yes" if i % 2 else "no"})
                rows.append({"image": name, "question": "What modality is this?", "answer": "fundus photography"})
            (root / "qa.json").write_text(json.dumps(rows))
        spec = _spec(family, root, {"family": "captions", "annotations": "qa.json", "image_field": "image",
                                    "image_template": "images/{value}", "question_field": "question", "answer_field": "answer"},
                     annotation_kinds=["vqa"])
    else:
        raise ValueError(f"unknown family {family}")
    files = sorted(p for p in root.rglob("*") if p.suffix in {".dcm", ".jpg", ".png"} or p.name.endswith(".nii.gz"))
    return spec, files, done, fresh


def workload(family: str, n: int):
    spec, files, done, fresh = make_family_workload(family, n)
    if fresh:
        done.write_text("ok")
    return spec, files


def run_floor(files: list[Path]) -> dict:
    """Decode every image and mask file once with the library made for it and save the array
    (np.save): the least an ingest that stores pixels must do for the same files."""
    import tempfile

    import nibabel as nib
    import numpy as np
    import pydicom
    from PIL import Image

    from medtrinity_assets.bench import _cpu_seconds

    with tempfile.TemporaryDirectory() as scratch:
        cpu = _cpu_seconds()
        started = time.perf_counter()
        for index, path in enumerate(files):
            if path.suffix == ".dcm":
                array = pydicom.dcmread(path).pixel_array
            elif path.name.endswith(".nii.gz"):
                array = np.asarray(nib.load(path).dataobj)
            else:
                with Image.open(path) as image:
                    array = np.asarray(image.convert("RGB" if path.suffix == ".jpg" else "L"))
            np.save(Path(scratch) / f"{index}.npy", array)
        seconds = time.perf_counter() - started
        cpu = _cpu_seconds() - cpu
    return {"seconds": seconds, "files": len(files), "peak_rss_mib": _peak_rss_mib(), "cpu_seconds": cpu}


def run_ingest(spec, data_root: Path) -> dict:
    from medtrinity_assets import stages
    from medtrinity_assets.paths import DataRoot

    from medtrinity_assets import parallel
    from medtrinity_assets.bench import _cpu_seconds, _TreeRss, warm_imports

    warm_imports()
    baseline = _peak_rss_mib()
    cpu = _cpu_seconds()
    with _TreeRss() as tree:
        report = stages.run_ingest(spec, DataRoot(data_root), "bench-salt")
    return {"seconds": report.seconds, "images": report.rows, "quarantined": report.quarantined,
            "peak_rss_mib": _peak_rss_mib(), "rss_after_imports_mib": baseline, "peak_tree_rss_mib": max(tree.peak, _peak_rss_mib()),
            "cpu_seconds": _cpu_seconds() - cpu + sum(tree.child_cpu.values()), "workers": parallel.worker_count()}


def _child(args: list[str], workers: int | None = None) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    if workers is not None:
        env["MEDTRINITY_WORKERS"] = str(workers)
    out = subprocess.run([sys.executable, "-m", "medtrinity_assets.bench_ingest", *args], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"benchmark child {args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def per_family(n: int, families: list[str], workers: list[int]) -> None:
    print(f"\nIngest per layout family, {n} images each (fundus crops {PHOTO}x{PHOTO} JPEG, CT 512x512 DICOM, "
          f"MNI152 2 mm volumes for nifti); {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    print("x floor: the floor's time over ingest's for the same files (wall clock); per CPU: the same with CPU seconds of "
          "ingest's process and its workers (what a loaded machine does not distort). The floor runs in one process.")
    print(f"{'family':<14}{'workers':>8}{'images':>8}{'quar.':>7}{'seconds':>9}{'images/s':>10}{'floor files/s':>15}{'x floor':>9}"
          f"{'per CPU':>9}{'peak RSS MiB':>14}")
    for family in families:
        workload(family, n)  # written outside the timed children
        floor = _child(["--child", "floor", "--family", family, "--n", str(n)])
        for count in workers:
            result = _child(["--child", "ingest", "--family", family, "--n", str(n)], count)
            rate = result["images"] / result["seconds"] if result["seconds"] else float("inf")
            # The floor decodes each file once; the ratio compares time for the same files.
            ratio = floor["seconds"] / result["seconds"] if result["seconds"] else float("nan")
            cpu_ratio = floor["cpu_seconds"] / result["cpu_seconds"] if result["cpu_seconds"] else float("nan")
            floor_rate = floor["files"] / floor["seconds"]
            print(f"{family:<14}{result['workers']:>8}{result['images']:>8}{result['quarantined']:>7}{result['seconds']:>9.2f}{rate:>10.1f}"
                  f"{floor_rate:>15.1f}{ratio:>9.2f}{cpu_ratio:>9.2f}{result['peak_tree_rss_mib']:>14.0f}")


def scaling(sizes: list[int]) -> None:
    print("\nIngest peak memory vs files in one partition (image_folder, fresh process each):")
    peaks = []
    for n in sizes:
        workload("image_folder", n)
        result = _child(["--child", "ingest", "--family", "image_folder", "--n", str(n)])
        peaks.append(result["peak_tree_rss_mib"])
        print(f"  {n:>7} files: {result['images']:>7} images in {result['seconds']:.1f} s, peak RSS {result['peak_tree_rss_mib']:.0f} MiB "
              f"with {result['workers']} worker(s) (stage process alone {result['peak_rss_mib']:.0f}, after imports {result['rss_after_imports_mib']:.0f} MiB)")
    print(f"  growth {sizes[0]} -> {sizes[-1]} files: {100 * (peaks[-1] / peaks[0] - 1):+.1f}%")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--scaling", default="1000,10000", help="comma-separated partition sizes; empty to skip")
    parser.add_argument("--workers", default="", help="comma-separated MEDTRINITY_WORKERS to run each family at (default: as set)")
    parser.add_argument("--child")
    parser.add_argument("--family")
    parser.add_argument("--n", type=int)
    args = parser.parse_args(argv)
    if args.child:
        spec, files = workload(args.family, args.n)
        if args.child == "floor":
            result = run_floor(files)
        else:
            data_root = CACHE / "runs" / f"{args.family}_{args.n}"
            subprocess.run(["rm", "-rf", str(data_root)], check=True)
            result = run_ingest(spec, data_root)
        print(json.dumps(result))
        return 0
    per_family(args.images, [f for f in args.families.split(",") if f], [int(w) for w in args.workers.split(",") if w.strip()] or [None])
    if args.scaling:
        scaling([int(s) for s in args.scaling.split(",")])
    return 0


if __name__ == "__main__":
    from medtrinity_assets.shutdown import exit_quietly

    exit_quietly(main())
