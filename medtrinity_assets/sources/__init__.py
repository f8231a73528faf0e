"""Layout-family readers, one module per family; ``read_source`` dispatches on the spec."""

from __future__ import annotations

import importlib

from medtrinity_assets.catalog.spec import FILE_FIELDS
from medtrinity_assets.containment import inside_file, walk_files
from medtrinity_assets.sources.base import FileTask, IngestContext, IngestStream, Quarantined, run_file_task

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


def read_source(ctx: IngestContext, tasks: bool = False) -> IngestStream:
    """Yield a RAW_RECORDS row per 2D image and a ``Quarantined`` per unusable file.

    ``tasks=True``: a reader's per-file work is yielded as ``FileTask``s for the caller to run
    (``read_source_in``, a stage's worker processes); otherwise it is run here, in order."""
    if not ctx.root.is_dir():
        yield Quarantined(str(ctx.root), f"source folder does not exist: {ctx.root} (download the source into it)", kind="not_found")
        return
    # A link that leaves the source folder is refused, whatever glob or table would reach it:
    # the readers' globs (containment.contained_glob) skip it, and it is named here once.
    outside: list[str] = []
    for _ in walk_files(ctx.root, outside=outside):
        pass
    for link in outside:
        yield Quarantined(link, "symbolic link leads outside the source folder; not followed", kind="outside_source")
    # A table or annotation file the spec names that is a link to a file elsewhere: the source
    # is not read at all (every record would come from that file).
    for where, value in ctx.spec.named_paths():
        if where.rsplit(".", 1)[-1] in FILE_FIELDS and value and inside_file(ctx.root, value) is None:
            yield Quarantined(value, f"{where} leads outside the source folder; source not read", kind="outside_source")
            return
    # Rules of the whole source are checked before any file is read: a spec error (overlapping
    # frame ranges, an absent range table) must stop the read, and inside a reader's FileTask it
    # would instead quarantine every file, one by one, as unreadable.
    if ctx.spec.patient.source == "ranges":
        from medtrinity_assets.sources.frame_groups import frame_ranges

        frame_ranges(ctx.root, ctx.spec.patient)
    module = importlib.import_module(FAMILY_MODULES[ctx.spec.layout.family])
    # The extra-boxes overlay below matches finished records by path, so it gets them finished.
    if tasks and ctx.spec.extra_boxes is None and getattr(module.read, "yields_file_tasks", False):
        stream = module.read(ctx, tasks=True)
    else:
        stream = module.read(ctx)
    if ctx.spec.extra_boxes is not None:
        # Boxes from a second file (covid-chestxray's COCO lung boxes beside its label CSV),
        # matched to the family's records by relative image path.
        from medtrinity_assets.sources.boxes import apply_extra_boxes

        stream = apply_extra_boxes(ctx, stream)
    yield from stream


def read_source_in_workers(ctx: IngestContext, workers: int | None = None, keep=None) -> IngestStream:
    """``read_source`` with each file's decoding and storing done by the stage's worker
    processes (``parallel``; ``MEDTRINITY_WORKERS``), the items in the reader's order: the same
    items, in the same order, whatever the number of processes. The processes end with the
    stream (exhausted or closed). ``keep(source_file)``: the files whose tasks are run at all (a
    shard's files); the other tasks are dropped before any decoding, other items pass."""
    from medtrinity_assets import parallel

    stream = read_source(ctx, tasks=True)
    if keep is not None:
        stream = (item for item in stream if not isinstance(item, FileTask) or keep(item.source_file))
    with parallel.workers(ctx, workers if workers is not None else parallel.count_for(ctx.blobs.data_root)) as pool:
        outcomes = pool.map(
            run_file_task, stream,
            passthrough=lambda item: not isinstance(item, FileTask), describe=lambda task: task.source_file,
        )
        for item, outcome in outcomes:
            if not isinstance(item, FileTask):
                yield item
            elif isinstance(outcome, parallel.Failed):  # run_file_task catches the reader's errors: this is the pool's
                yield Quarantined(item.source_file, f"cannot read: {outcome.error}", kind="unreadable")
            else:
                yield from outcome


__all__ = ["FileTask", "IngestContext", "Quarantined", "read_source", "read_source_in_workers"]
