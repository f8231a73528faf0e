"""2D images with masks found by path replacement (BUSI, HAM10000, DSB 2018, MICCAI 2015).

Binary masks become one "mask" annotation per mask file. Instance-label masks (each nucleus
its own integer) stay ONE annotation marked "instances" so grounding can split them; storing
thousands of per-nucleus masks here would bloat the blob store for no gain.
"""

from __future__ import annotations

import glob as globlib
from pathlib import PurePosixPath

import numpy as np

from medtrinity_assets.catalog.spec import ImageMaskLayout
from medtrinity_assets.imaging.image_io import ImageReadError, read_mask
from medtrinity_assets.sources.base import (
    IngestContext,
    IngestStream,
    Quarantined,
    store_mask,
)
from medtrinity_assets.sources.image_common import (
    decode_image,
    image_record,
    iter_image_files,
    path_labels,
    patient_id_for,
)


def mask_path_for(layout: ImageMaskLayout, image_path: str) -> str:
    mask_path = image_path
    for rule in layout.mask_replace:
        mask_path = mask_path.replace(rule.old, rule.new)
    return mask_path


def extra_mask_paths(ctx: IngestContext, layout: ImageMaskLayout, mask_path: str) -> list[str]:
    """Second and later masks of one image (BUSI "x_mask_1.png"), sorted."""
    if not layout.extra_mask_glob:
        return []
    first = PurePosixPath(mask_path)
    pattern = layout.extra_mask_glob.replace("{mask_stem}", globlib.escape(first.stem))
    folder = ctx.root / first.parent
    found = sorted(p.relative_to(ctx.root).as_posix() for p in folder.glob(pattern) if p.is_file())
    return [path for path in found if path != mask_path]


def _size_text(shape: tuple[int, ...]) -> str:
    return f"{shape[1]}x{shape[0]}"  # width x height, as image tools print it


def read(ctx: IngestContext) -> IngestStream:
    layout: ImageMaskLayout = ctx.spec.layout
    default_label = layout.mask_label or (ctx.spec.diseases[0] if ctx.spec.diseases else "lesion")
    found_any = False
    for image_path in iter_image_files(ctx.root, layout.image_glob):
        mask_path = mask_path_for(layout, image_path)
        if mask_path == image_path:
            continue  # the glob also matched a mask: the replacement leaves masks unchanged
        found_any = True
        if not (ctx.root / mask_path).is_file() and not layout.mask_optional:
            yield Quarantined(image_path, f"mask {mask_path} is absent")
            continue
        decoded = decode_image(ctx, image_path)
        if isinstance(decoded, Quarantined):
            yield decoded
            continue
        pixels, photometric = decoded
        labels = path_labels(ctx.spec, image_path)
        annotation_label = layout.mask_label or (labels[0] if labels else default_label)

        annotations: list[dict] = []
        problem = None
        mask_paths = [mask_path] if (ctx.root / mask_path).is_file() else []
        mask_paths += extra_mask_paths(ctx, layout, mask_path) if mask_paths else []
        for path in mask_paths:
            try:
                mask = read_mask(ctx.root / path, binarize=not layout.instances)
            except ImageReadError as error:
                problem = f"unreadable mask {path}: {error.cause}"
                break
            if mask.shape[:2] != pixels.shape[:2]:
                problem = f"mask {_size_text(mask.shape)} differs from image {_size_text(pixels.shape)} ({path})"
                break
            if not np.any(mask):
                continue  # an all-zero mask is an image without lesion (BUSI "normal")
            annotation = {"kind": "mask", "label": annotation_label, "mask_ref": store_mask(ctx, mask)}
            if layout.instances:
                annotation["instances"] = True
                annotation["instance_count"] = int(np.unique(mask[mask > 0]).size)
            annotations.append(annotation)
        if problem:
            yield Quarantined(image_path, problem)
            continue
        yield image_record(
            ctx,
            image_path,
            pixels,
            photometric,
            labels=labels,
            annotations=annotations,
            patient_id=patient_id_for(ctx.spec, image_path),
        )
    if not found_any:
        yield Quarantined(".", f"no file matches image_glob {layout.image_glob!r} under the source folder")
