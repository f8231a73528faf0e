"""Plain images in class folders or a flat folder: one record per file, no annotations."""

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
    found_any = False
    for relative_path in iter_image_files(ctx.root, layout.image_glob):
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
        yield Quarantined(".", f"no file matches image_glob {layout.image_glob!r} under the source folder")
