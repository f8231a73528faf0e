"""Plain images in class folders or a flat folder: one record per file, no annotations.

Labels come from the spec's ``labels`` rule (``source: folder`` reads the class folder at
``folder_depth``); ``exclude_glob`` leaves out files the publisher ships beside the images
(thumbnails, masks, a second copy) that would otherwise become records.
"""

from __future__ import annotations

from medtrinity_assets.catalog.spec import ImageFolderLayout
from medtrinity_assets.sources.base import IngestContext, IngestStream, Quarantined
from medtrinity_assets.sources.image_common import (
    decode_image,
    image_record,
    iter_image_files,
    path_labels,
    patient_id_for,
)


def read(ctx: IngestContext) -> IngestStream:
    layout: ImageFolderLayout = ctx.spec.layout
    excluded = set(iter_image_files(ctx.root, layout.exclude_glob)) if layout.exclude_glob else set()
    found_any = False
    for relative_path in iter_image_files(ctx.root, layout.image_glob):
        if relative_path in excluded:
            continue
        found_any = True
        decoded = decode_image(ctx, relative_path)
        if isinstance(decoded, Quarantined):
            yield decoded
            continue
        pixels, photometric = decoded
        yield image_record(
            ctx,
            relative_path,
            pixels,
            photometric,
            labels=path_labels(ctx.spec, relative_path),
            annotations=[],
            patient_id=patient_id_for(ctx.spec, relative_path),
        )
    if not found_any:
        what = f"image_glob {layout.image_glob!r}" + (f" outside exclude_glob {layout.exclude_glob!r}" if excluded else "")
        yield Quarantined(".", f"no file matches {what} under the source folder")
