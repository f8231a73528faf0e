"""Checks of the ROI geometry and attribute rules against real annotated lesions.

Each table here is where a threshold in ``attributes.py`` / ``rois.py`` got its number; run it
again after changing a rule:

    python -m medtrinity_assets.grounding.validate kvasir   # components vs publisher boxes, colours
    python -m medtrinity_assets.grounding.validate busi     # margin and shape, before / after
    python -m medtrinity_assets.grounding.validate colours  # HAM10000, ISIC 2017, IHC stains
    python -m medtrinity_assets.grounding.validate mni      # T1 grey matter against tissue

The data come from ``../shared/realdata`` (publishers' layouts) and installed packages, read
through the same ingest, normalize and ground code the pipeline runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from medtrinity_assets.catalog.load import load_spec
from medtrinity_assets.catalog.spec import SourceSpec
from medtrinity_assets.grounding import attributes
from medtrinity_assets.grounding.rois import ground_record
from medtrinity_assets.imaging.normalize import normalize_pixels
from medtrinity_assets.paths import REPO_ROOT, realdata_dir
from medtrinity_assets.storage import BlobStore

CATALOG = REPO_ROOT / "data" / "sources"
# The publisher's zip unpacks into Kvasir-SEG/; the shared copy keeps its files one level up.
KVASIR_PREFIX = "Kvasir-SEG/"
# The rule the margin word followed before: boundary gradient / ring gradient >= 1.5.
OLD_WELL_DEFINED_SHARPNESS = 1.5


def kvasir_realdata_spec(root: Path | None = None) -> SourceSpec:
    """The catalog's kvasir_seg spec pointed at the shared copy (no Kvasir-SEG/ folder level)."""
    data = yaml.safe_load((CATALOG / "kvasir_seg.yaml").read_text(encoding="utf-8"))
    text = json.dumps(data).replace(KVASIR_PREFIX, "")
    data = json.loads(text)
    data["root"] = str(root or realdata_dir() / "kvasir_seg")
    return SourceSpec.model_validate(data)


def ground_source(spec: SourceSpec, blobs: BlobStore, limit: int | None = None, only: set[str] | None = None):
    """(record, rois, problems, display) for each record of ``spec``, through ingest + normalize.

    ``only``: relative image paths to keep (the image_mask reader still lists every file, but
    only these are normalized and grounded).
    """
    from medtrinity_assets.catalog.load import source_root
    from medtrinity_assets.sources import read_source
    from medtrinity_assets.sources.base import IngestContext, Quarantined

    ctx = IngestContext(spec=spec, root=source_root(spec), blobs=blobs, salt="validate")
    count = 0
    for item in read_source(ctx):
        if isinstance(item, Quarantined):
            yield item, None, None, None
            continue
        if only is not None and item["source_file"] not in only:
            continue
        pixels = np.asarray(blobs.get_array(item["pixel_ref"]))
        normalized = normalize_pixels(pixels, item, spec.intensity_rule())
        tally: Counter = Counter()
        rois, problems = ground_record(item, normalized.display, normalized.scale, blobs, spec, tally)
        yield item, rois, problems, normalized.display
        count += 1
        if limit and count >= limit:
            return


# --------------------------------------------------------------------------- Kvasir-SEG


def kvasir_report(limit: int | None = None) -> dict:
    spec = kvasir_realdata_spec()
    boxes = json.loads((realdata_dir() / "kvasir_seg" / "kavsir_bboxes.json").read_text())
    out: Counter = Counter()
    ious: list[float] = []
    colours: Counter = Counter()
    shapes: Counter = Counter()
    mismatched: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        blobs = BlobStore(Path(tmp))
        for record, rois, problems, _ in ground_source(spec, blobs, limit):
            if rois is None:
                out["quarantined at ingest"] += 1
                continue
            image_id = Path(record["source_file"]).stem
            mask_rois = [r for r in rois if r["origin"] == "annotation:mask"]
            n_boxes = len(boxes.get(image_id, {}).get("bbox", []))
            out["images"] += 1
            out["publisher boxes"] += n_boxes
            out["mask components (ROIs)"] += len(mask_rois)
            out["specks dropped"] += mask_rois[0]["specks_dropped"] if mask_rois else 0
            if len(mask_rois) == n_boxes:
                out["images: components == boxes"] += 1
            else:
                mismatched.append(f"{image_id}: {len(mask_rois)} components, {n_boxes} boxes")
            if n_boxes >= 2:
                out["images with >= 2 boxes"] += 1
                out["  of which >= 2 ROIs"] += len(mask_rois) >= 2
            out["ROIs starting at the image corner (0,0)"] += sum(r["x0"] == 0 and r["y0"] == 0 for r in mask_rois)
            # Before: one ROI per mask, its box around every pixel, specks included.
            union = _union_box(record, blobs, rois[0]["image_height"], rois[0]["image_width"])
            if union is not None:
                out["before: masks whose box starts at (0,0)"] += union[:2] == (0, 0)
                largest = (mask_rois[0]["x0"], mask_rois[0]["y0"], mask_rois[0]["x1"], mask_rois[0]["y1"]) if mask_rois else None
                out["before: boxes widened by specks or a second polyp"] += len(mask_rois) != 1 or union != largest
            out["boxes matched"] += sum(r["box_agreement"] is not None for r in mask_rois)
            out["problems reported (unmatched box/component)"] += sum(p.startswith("publisher box check") for p in problems)
            ious += [r["box_agreement"] for r in mask_rois if r["box_agreement"] is not None]
            colours.update(r["colour"] for r in mask_rois)
            shapes.update(r["shape"] for r in mask_rois)
    return {
        "counts": dict(out),
        "box IoU": _spread(ious),
        "colours": dict(colours.most_common()),
        "pink or red": _share(colours, {"pink", "red"}),
        "brown or dark brown": _share(colours, {"brown", "dark brown"}),
        "shapes": dict(shapes.most_common()),
        "count mismatches": mismatched,
    }


def _union_box(record: dict, blobs: BlobStore, height: int, width: int):
    """The box the former rule gave: around every pixel of the (first) mask annotation."""
    from medtrinity_assets.imaging.normalize import resize_mask

    masks = [a for a in json.loads(record["annotations"] or "[]") if a.get("kind") == "mask"]
    if not masks:
        return None
    mask = resize_mask(np.asarray(blobs.get_array(masks[0]["mask_ref"])), (height, width)) != 0
    if not mask.any():
        return None
    rows, cols = np.nonzero(mask)
    return int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1


def _spread(values: list[float]) -> dict:
    if not values:
        return {}
    array = np.asarray(values)
    return {
        "n": len(values),
        "mean": round(float(array.mean()), 4),
        "min": round(float(array.min()), 4),
        "p10/p50/p90": [round(float(v), 4) for v in np.percentile(array, [10, 50, 90])],
    }


def _share(counter: Counter, names: set[str]) -> str:
    total = sum(counter.values())
    hits = sum(n for name, n in counter.items() if name in names)
    return f"{hits}/{total} ({100 * hits / max(total, 1):.1f}%)"


# --------------------------------------------------------------------------- BUSI


def _busi_spec() -> SourceSpec:
    return load_spec(CATALOG / "busi.yaml")


def busi_rows(folders=("busi_train", "busi")) -> list[dict]:
    rows = []
    base = _busi_spec()
    with tempfile.TemporaryDirectory() as tmp:
        blobs = BlobStore(Path(tmp))
        for folder in folders:
            spec = base.model_copy(update={"root": str(realdata_dir() / folder)})
            for record, rois, _, _ in ground_source(spec, blobs):
                if rois is None:
                    continue
                klass = Path(record["source_file"]).parts[0]
                lesions = [r for r in rois if r["origin"] == "annotation:mask"]
                if klass not in ("benign", "malignant") or not lesions:
                    continue
                roi = lesions[0]  # the largest component (rank_by_area 1)
                rows.append({"folder": folder, "class": klass, "file": record["source_file"], **roi})
    return rows


def _table(rows: list[dict], decide) -> dict:
    table: Counter = Counter()
    for row in rows:
        table[f"{row['class']} -> {decide(row)}"] += 1
    return dict(sorted(table.items()))


def busi_report() -> dict:
    rows = busi_rows()
    report = {}
    for folder in ("busi_train", "busi"):
        subset = [r for r in rows if r["folder"] == folder]
        old = _table(
            subset,
            lambda r: None if r["margin_sharpness"] is None
            else "well-defined" if r["margin_sharpness"] >= OLD_WELL_DEFINED_SHARPNESS else "ill-defined",
        )
        new = _table(subset, lambda r: r["margin"])
        agree_new = sum((r["margin"] == "well-defined") == (r["class"] == "benign") for r in subset)
        agree_old = sum(
            ((r["margin_sharpness"] or 0) >= OLD_WELL_DEFINED_SHARPNESS) == (r["class"] == "benign") for r in subset
        )
        report[folder] = {
            "lesions": len(subset),
            "margin before (gradient ratio >= 1.5)": old,
            "margin now": new,
            "agreement with class before": f"{agree_old}/{len(subset)}",
            "agreement with class now": f"{agree_new}/{len(subset)}",
            "shape now": _table(subset, lambda r: r["shape"]),
        }
    # Calibration of margin_confidence: agreement by confidence level, all lesions.
    by_confidence: dict = {}
    for row in rows:
        key = row["margin_confidence"]
        hit = (row["margin"] == "well-defined") == (row["class"] == "benign")
        n, k = by_confidence.get(key, (0, 0))
        by_confidence[key] = (n + 1, k + hit)
    report["margin agreement by margin_confidence"] = {
        str(key): f"{k}/{n}" for key, (n, k) in sorted(by_confidence.items(), key=lambda item: str(item[0]))
    }
    shape_conf: dict = {}
    for row in rows:
        hit = (row["shape"] == "irregular") == (row["class"] == "malignant")
        n, k = shape_conf.get(row["shape_confidence"], (0, 0))
        shape_conf[row["shape_confidence"]] = (n + 1, k + hit)
    report["shape (irregular = malignant) agreement by shape_confidence"] = {
        str(key): f"{k}/{n}" for key, (n, k) in sorted(shape_conf.items(), key=lambda item: str(item[0]))
    }
    report["intensity words"] = dict(Counter(r["intensity_word"] for r in rows))
    return report


# --------------------------------------------------------------------------- colours


def colours_report() -> dict:
    from skimage import color, data

    report: dict = {}
    ham = realdata_dir() / "ham10000"
    names = []
    for image_path in sorted((ham / "test_images").glob("*.jpg")):
        mask_path = ham / "test_masks" / f"{image_path.stem}.png"
        if not mask_path.is_file():
            continue
        rgb = np.asarray(Image.open(image_path).convert("RGB"))
        mask = np.asarray(Image.open(mask_path).convert("L")) > 0
        if mask.shape != rgb.shape[:2] or not mask.any():
            continue
        names.append((image_path.stem, attributes.colour_name(rgb[mask])))
    report["HAM10000 lesions (publisher masks)"] = names

    # ISIC 2017 ships no masks here: the lesion is the darker part of the central region (Otsu
    # on lightness inside the middle 60% of the frame), enough to read its colour.
    from skimage.filters import threshold_otsu

    isic = sorted((realdata_dir() / "isic2017" / "ISIC-2017_Training_Data").glob("*.jpg"))
    isic_names: Counter = Counter()
    for image_path in isic:
        rgb = np.asarray(Image.open(image_path).convert("RGB"))
        lightness = color.rgb2lab(rgb)[..., 0]
        h, w = lightness.shape
        centre = np.zeros_like(lightness, dtype=bool)
        centre[int(0.2 * h) : int(0.8 * h), int(0.2 * w) : int(0.8 * w)] = True
        lesion = centre & (lightness < threshold_otsu(lightness[centre]))
        if lesion.sum() > 50:
            isic_names[attributes.colour_name(rgb[lesion])] += 1
    report["ISIC 2017 lesions (Otsu, centre)"] = dict(isic_names.most_common())

    ihc = data.immunohistochemistry()
    hed = color.rgb2hed(ihc)
    dab, haematoxylin = hed[..., 2], hed[..., 0]
    dab_mask = dab > np.percentile(dab, 97)
    h_mask = (haematoxylin > np.percentile(haematoxylin, 97)) & (dab < np.percentile(dab, 50))
    report["IHC DAB-positive pixels (top 3% DAB)"] = attributes.colour_name(ihc[dab_mask])
    report["IHC haematoxylin pixels (top 3% H, low DAB)"] = attributes.colour_name(ihc[h_mask])
    return report


# --------------------------------------------------------------------------- MNI152


def mni_rois(exclude_background: bool = True) -> list[tuple[int, dict]]:
    """(slice index, grey-matter ROI) of the demo MNI152 source; ``exclude_background`` False
    gives the former comparison ring, background included."""
    from medtrinity_assets.catalog.acquire import fetch_package_files

    spec = load_spec(CATALOG / "demo_mri_brain_mni.yaml")
    saved = set(attributes.BACKGROUND_MODALITIES)
    if not exclude_background:
        attributes.BACKGROUND_MODALITIES.clear()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            raw = Path(tmp) / "raw"
            fetch_package_files(spec, raw)
            spec = spec.model_copy(update={"root": str(raw)})
            found = []
            for record, rois, _, _ in ground_source(spec, BlobStore(Path(tmp) / "blobs")):
                if rois is not None:
                    found += [(record["slice_index"], r) for r in rois if r["label"] == "grey matter"]
            return found
    finally:
        attributes.BACKGROUND_MODALITIES.update(saved)


def mni_report() -> dict:
    report = {}
    for name, exclude in (("background in the ring (before)", False), ("background excluded (now)", True)):
        rois = mni_rois(exclude)
        report[name] = {
            "grey matter intensity words": dict(Counter(r["intensity_word"] for _, r in rois)),
            "hyperintense slices": sorted(i for i, r in rois if r["intensity_word"] == "hyperintense"),
            "ring share excluded as background": _spread([r["ring_excluded_fraction"] or 0.0 for _, r in rois]),
        }
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("check", choices=["kvasir", "busi", "colours", "mni"])
    parser.add_argument("--limit", type=int, default=None, help="kvasir: first N images only")
    args = parser.parse_args(argv)
    if args.check == "kvasir":
        report = kvasir_report(args.limit)
    elif args.check == "busi":
        report = busi_report()
    elif args.check == "colours":
        report = colours_report()
    else:
        report = mni_report()
    json.dump(report, sys.stdout, indent=2, default=str)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
