"""Plain images in class folders or a flat folder: one record per file, no annotations.

Labels come from the spec's ``labels`` rule (``source: folder`` reads the class folder at
``folder_depth``): a class folder the spec renames to a disease is a finding, one listed in
``labels.normal`` is normal, any other (landmarks, tissue classes renamed to "") is unknown; ``exclude_glob`` leaves out files the publisher ships beside the images
(thumbnails, masks, a second copy) that would otherwise become records.
"""

from __future__ import annotations

from medtrinity_assets.catalog.spec import ImageFolderLayout
from medtrinity_assets.sources.base import FileTask, IngestContext, IngestStream, Quarantined, file_task_reader
from medtrinity_assets.sources.image_common import (
    decode_image,
    image_record,
    iter_image_files,
    path_labels,
    path_says_normal,
    patient_id_for,
)
from medtrinity_assets.sources.label_state import decide_label_state


@file_task_reader
def read(ctx: IngestContext) -> IngestStream:
    layout: ImageFolderLayout = ctx.spec.layout
    excluded = set(iter_image_files(ctx.root, layout.exclude_glob)) if layout.exclude_glob else set()
    found_any = False
    for relative_path in iter_image_files(ctx.root, layout.image_glob):
        if relative_path in excluded:
            continue
        found_any = True
        if not ctx.owns(relative_path):
            continue  # another shard's image
        yield FileTask(relative_path, _read_image, (relative_path,))
    if not found_any:
        what = f"image_glob {layout.image_glob!r}" + (f" outside exclude_glob {layout.exclude_glob!r}" if excluded else "")
        yield Quarantined(".", f"no file matches {what} under the source folder", kind="not_found")


def _read_image(ctx: IngestContext, relative_path: str) -> list:
    """One file's record (a ``FileTask``: decoded and stored where the stage runs it)."""
    decoded = decode_image(ctx, relative_path)
    if isinstance(decoded, Quarantined):
        return [decoded]
    pixels, photometric = decoded
    labels = path_labels(ctx.spec, relative_path)
    return [image_record(
        ctx,
        relative_path,
        pixels,
        photometric,
        labels=labels,
        annotations=[],
        patient_id=patient_id_for(ctx.spec, relative_path),
        label_state=decide_label_state(bool(labels), path_says_normal(ctx.spec, relative_path)),
    )]
