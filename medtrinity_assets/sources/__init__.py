"""Layout-family readers, one module per family; ``read_source`` dispatches on the spec."""

from __future__ import annotations

import importlib

from medtrinity_assets.sources.base import IngestContext, IngestStream, Quarantined

FAMILY_MODULES = {
    "dicom": "medtrinity_assets.sources.dicom",
    "nifti": "medtrinity_assets.sources.nifti",
    "image_mask": "medtrinity_assets.sources.image_mask",
    "image_csv": "medtrinity_assets.sources.image_csv",
    "coco": "medtrinity_assets.sources.coco",
    "image_folder": "medtrinity_assets.sources.image_folder",
    "boxes": "medtrinity_assets.sources.boxes",
    "captions": "medtrinity_assets.sources.captions",
}


def read_source(ctx: IngestContext) -> IngestStream:
    """Yield a RAW_RECORDS row per 2D image and a ``Quarantined`` per unusable file."""
    if not ctx.root.is_dir():
        yield Quarantined(str(ctx.root), f"source folder does not exist: {ctx.root} (download the source into it)", kind="not_found")
        return
    module = importlib.import_module(FAMILY_MODULES[ctx.spec.layout.family])
    stream = module.read(ctx)
    if ctx.spec.extra_boxes is not None:
        # Boxes from a second file (covid-chestxray's COCO lung boxes beside its label CSV),
        # matched to the family's records by relative image path.
        from medtrinity_assets.sources.boxes import apply_extra_boxes

        stream = apply_extra_boxes(ctx, stream)
    yield from stream


__all__ = ["IngestContext", "Quarantined", "read_source"]
