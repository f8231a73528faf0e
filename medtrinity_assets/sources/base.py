"""What every layout family reader shares: its context, its outputs, and quarantine.

A reader walks one source's files in the publisher's layout and yields, for each 2D image, a
row of ``schemas.RAW_RECORDS``; for each file it cannot use, a ``Quarantined`` with the reason.
It never raises for one bad file: the partition must finish.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Union

from medtrinity_assets.catalog.shards import Shard, owns
from medtrinity_assets.catalog.spec import SourceSpec
from medtrinity_assets.containment import contained_glob
from medtrinity_assets.storage import BlobStore


@dataclass(frozen=True)
class IngestContext:
    spec: SourceSpec
    root: Path  # the source's folder (publisher layout)
    blobs: BlobStore  # where de-identified pixel arrays and masks go
    salt: str  # secret salt for patient hashes (MEDTRINITY_SALT)
    # The shard being ingested (None: the whole source). Readers skip the images another shard
    # holds where they enumerate them (``owns``); run_ingest filters every item again, so a
    # reader that does not ask still yields each record in exactly one shard.
    shard: Shard | None = None

    def owns(self, relative_path: str) -> bool:
        """Whether this context's shard holds the image (or multi-file unit) at ``relative_path``."""
        return owns(self.shard, relative_path)

    @property
    def limits(self):
        """The spec's pixel, frame and voxel limits for the decoders (imaging.limits.PixelLimits)."""
        return self.spec.limits.pixel_limits()


# What went wrong, as a closed list: reports and `check-source` group by kind, never by the
# wording of a reason. Add a kind here (and to docs) before using it.
QUARANTINE_KINDS = (
    "unreadable",  # the file cannot be decoded (corrupt, truncated, wrong format)
    "unsupported",  # a valid file this pipeline cannot use (codec, transfer syntax, dimensionality)
    "unpaired",  # an image without its mask, or a mask without its image
    "orphan",  # an annotation naming an image that does not exist
    "invalid_annotation",  # an annotation that cannot be used (bad box, empty mask, bad polygon)
    "outside_source",  # a path or link that leaves the source root
    "too_large",  # over the pixel, frame or size limit
    "bad_label",  # a label or text that cannot be decoded or mapped
    "duplicate",  # the same record listed twice
    "held_back",  # readable, but kept out on purpose (e.g. burned-in text)
    "stage_error",  # a later stage failed on this record
    # The source folder, or a file the spec itself names (label table, annotation file,
    # expected sequence), is absent, or the layout matches no file at all: the spec or the
    # download is wrong, not one record. (An annotation naming an absent image is "orphan".)
    "not_found",
)


@dataclass(frozen=True)
class Quarantined:
    source_file: str  # relative to the source root
    reason: str
    record_id: str | None = None
    # One of QUARANTINE_KINDS, no default: every site says what went wrong.
    kind: str = field(kw_only=True)
    # The path that decides its shard when it is not source_file (a slice of a series read as
    # one unit: ``in_unit``); not part of its identity.
    shard_path: str | None = field(default=None, kw_only=True, compare=False)

    def __post_init__(self):
        if self.kind not in QUARANTINE_KINDS:
            raise ValueError(f"quarantine kind {self.kind!r} is not one of {QUARANTINE_KINDS}")


@dataclass(frozen=True)
class FileTask:
    """The decoding and storing of one source file, as a call its consumer makes where it
    chooses: in this process, or in a worker process of the stage (``parallel``), in the
    reader's order either way. ``work(ctx, *args)`` returns the file's items (records and
    ``Quarantined``); it is a module-level function and ``args`` are plain picklable values.
    Readers do the cheap cross-file work (listing, pairing, tables) themselves and yield one
    task per file for the expensive part."""

    source_file: str
    work: Callable
    args: tuple = ()


def run_file_task(ctx: "IngestContext", task: FileTask) -> list:
    """A task's items; a task that raises quarantines its file, and the source goes on."""
    try:
        return list(task.work(ctx, *task.args))
    except Exception as error:
        return [Quarantined(task.source_file, f"cannot read: {describe_error(error)}", kind="unreadable")]


def run_tasks_here(ctx: "IngestContext", stream: Iterator) -> Iterator:
    """The stream with its ``FileTask``s run in this process, in order."""
    for item in stream:
        if isinstance(item, FileTask):
            yield from run_file_task(ctx, item)
        else:
            yield item


def file_task_reader(reader: Callable) -> Callable:
    """Mark a family's ``read`` whose per-file work comes as ``FileTask``s: ``read(ctx)`` runs
    them here and yields finished items as every reader does; ``read(ctx, tasks=True)`` leaves
    them to the caller (``sources.read_source_in_workers``)."""
    import functools

    @functools.wraps(reader)
    def read(ctx: "IngestContext", tasks: bool = False) -> Iterator:
        stream = reader(ctx)
        return stream if tasks else run_tasks_here(ctx, stream)

    read.yields_file_tasks = True
    return read


IngestItem = Union[dict, Quarantined]
IngestStream = Iterator[Union[IngestItem, FileTask]]


# A record read as part of a multi-file unit (a DICOM series, a NIfTI case folder) carries the
# unit's path under this key until run_ingest has placed it; it is never written.
SHARD_PATH = "_shard_path"


def in_unit(unit_path: str, stream: IngestStream) -> IngestStream:
    """The items of one multi-file unit, each marked with the unit's path, so the unit's
    records and quarantine rows all land in the shard that read it (``shard_path_of``)."""
    from dataclasses import replace

    for item in stream:
        if isinstance(item, FileTask):
            # Marked where the task runs: its items are made there.
            yield FileTask(item.source_file, _task_in_unit, (unit_path, item))
        elif isinstance(item, Quarantined):
            yield replace(item, shard_path=unit_path)
        else:
            yield {**item, SHARD_PATH: unit_path}


def _task_in_unit(ctx: "IngestContext", unit_path: str, task: "FileTask") -> list:
    return list(in_unit(unit_path, run_file_task(ctx, task)))


def shard_path_of(item: IngestItem) -> str | None:
    """The path that places an ingest item in a shard: its unit's path, else its file."""
    if isinstance(item, Quarantined):
        return item.shard_path or item.source_file
    return item.get(SHARD_PATH) or item["source_file"]


def describe_error(error: Exception) -> str:
    """An exception as a quarantine reason: its type and message, one line."""
    return f"{type(error).__name__}: {error}"


def until_reader_error(stream: Iterator, on_error: Callable[[Exception], None]) -> Iterator:
    """The items of a reader's stream; an exception raised by the reader ends the stream (the
    items already read are kept) and is handed to ``on_error``."""
    while True:
        try:
            item = next(stream)
        except StopIteration:
            return
        except Exception as error:
            on_error(error)
            return
        yield item


def contained_path(*parts: str) -> str | None:
    """Join path parts taken from annotation files into a path relative to the source root;
    None when the result is absolute or climbs out of the root: an annotation file must never
    make ingest read (and record) a file outside its source."""
    joined = posixpath.normpath(posixpath.join(*parts))
    if joined.startswith("/") or joined == ".." or joined.startswith("../"):
        return None
    return joined


def list_files(root: Path, glob: str, exclude_glob: str | None = None) -> list[Path]:
    """Files under ``root`` matching ``glob``, minus ``exclude_glob``, in a stable order."""
    excluded = set(root.glob(exclude_glob)) if exclude_glob else set()
    # Links leading outside ``root`` are never matched (read_source quarantines them).
    return sorted(p for p in contained_glob(root, glob) if p.is_file() and p not in excluded)


def record_id_for(source_id: str, source_file: str, sequence: str | None, slice_index: int) -> str:
    """Stable id: the same file and slice give the same id on every run. ``slice_index`` must be
    the slice's place in its own file (-1 for a single image), never its place among other
    files: adding or removing a file would then change ids it does not hold."""
    key = f"{source_id}\x1f{source_file}\x1f{sequence or ''}\x1f{slice_index}"
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:24]


def patient_hash(salt: str, source_id: str, patient_id: str) -> str:
    """Salted hash of a patient id: usable for patient-level splits, not reversible without the salt."""
    key = f"{salt}\x1f{source_id}\x1f{patient_id}"
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]


# Suffixes kept by pseudonymous_path: the file type, never a dotted part of the name itself
# ("Doe.Jane_19650412.dcm" must not keep ".Jane_19650412").
KEPT_SUFFIXES = (".nii.gz", ".dcm", ".dicom", ".nii", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif")


def _hashed_name(salt: str, name: str) -> str:
    return hashlib.sha256(f"{salt}\x1f{name}".encode("utf-8")).hexdigest()[:16]


def pseudonymous_path(salt: str, relative_path: str) -> str:
    """The path with each folder and file name replaced by a salted hash, the file type kept:
    the same input gives the same output (volumes still group), and names cannot be read back."""
    from pathlib import PurePosixPath

    parts = PurePosixPath(relative_path).parts
    hashed = [_hashed_name(salt, part) for part in parts]
    name = parts[-1].lower() if parts else ""
    suffix = next((s for s in KEPT_SUFFIXES if name.endswith(s)), "")
    return "/".join(hashed) + suffix


# A file path or name in free text (a quarantine reason): word characters, dots and dashes in
# slash-separated parts, ending in a data file's type. Names with spaces are caught by the
# part-by-part pass of pseudonymous_quarantine.
_PATH_IN_TEXT = re.compile(
    r"(?<![\w./-])(?:[\w.-]+/)*[\w.-]*?[\w-]\.(?:nii\.gz|dcm|dicom|nii|png|jpe?g|tiff?|bmp|gif|csv|tsv|json|xml|txt|npy|mat|mhd|nrrd|zip)(?![\w])",
    re.IGNORECASE,
)


def pseudonymous_quarantine(salt: str, root: Path, source_file: str | None, reason: str) -> tuple[str | None, str]:
    """A quarantine row's file and reason as a ``pseudonymize_paths`` source must show them: the
    file by its ``pseudonymous_path``, and in the reason the source folder as ``<source>``, every
    file path by its pseudonym, and every folder or file name of ``source_file`` by its hash.
    The reason stays true (the same names, hashed); the real names stay on the source disk."""
    from pathlib import PurePosixPath

    for folder in sorted({str(root), str(Path(root).resolve())} - {"/"}, key=len, reverse=True):
        reason = reason.replace(folder, "<source>")
    reason = _PATH_IN_TEXT.sub(lambda match: pseudonymous_path(salt, match.group(0)), reason)
    if source_file in (None, "."):
        return source_file, reason
    parts = set(PurePosixPath(source_file).parts)
    name = PurePosixPath(source_file).name
    parts.add(next((name[: -len(s)] for s in KEPT_SUFFIXES if name.lower().endswith(s)), name))
    # Longest first, each from the start of a word; not to the end of one, since derived names
    # ("<stem>_mask.png", which may hold spaces the path pattern cannot span) extend the stem.
    for part in sorted((p for p in parts if len(p) >= 3 and p not in (".", "..")), key=len, reverse=True):
        reason = re.sub(rf"(?<![\w]){re.escape(part)}", _hashed_name(salt, part), reason)
    return pseudonymous_path(salt, source_file), reason


def make_record(
    ctx: IngestContext,
    *,
    source_file: str,
    pixels,
    patient_id: str,
    labels: list[str],
    annotations: list[dict],
    pixel_units: str,
    photometric: str,
    sequence: str | None = None,
    slice_index: int = -1,
    slice_count: int = 1,
    dicom_modality: str | None = None,
    pixel_spacing_mm: list[float] | None = None,
    modality: str | None = None,
    source_text: dict | None = None,
    flags: list[str] | None = None,
    organs: list[str] | None = None,
    label_state: str | None = None,
    grades: list[str] | None = None,
    slice_role: str | None = None,
    image_axes: dict | None = None,
    view: str | None = None,
    laterality: str | None = None,
    frame_kind: str | None = None,
    frame_in_file: int | None = None,
) -> dict:
    """Store the de-identified pixel array and return the RAW_RECORDS row for it.

    ``pixels`` is 2D (H, W) or (H, W, 3) RGB. ``annotations`` entries are
    {"kind": "mask", "label", "mask_ref"} (mask stored with ``store_mask``),
    {"kind": "box", "label", "box": [x0, y0, x1, y1]} in pixel coordinates (x1, y1 exclusive),
    or {"kind": "contour", "label", "points": [[x, y], ...]}. ``source_text`` is the
    publisher's caption / question-answer text ({"captions": [...], "qa": [...]}).

    ``frame_in_file``: the slice's place in ``source_file`` when ``slice_index`` is its place
    among several files (a DICOM series, one file per slice: -1); it makes the record id.

    ``label_state`` (sources.label_state): the reader's reading of the spec's label rules; when
    None, a record with labels is a finding and one without is unknown, never normal. A
    ``slice_role`` "context" slice keeps no finding label and is unknown whatever it was given.
    ``image_axes``, ``view``, ``laterality``, ``frame_kind``: geometry the file states
    (``imaging.geometry``); a view or laterality the file does not state comes from the spec's
    declaration, and a frontal radiograph without stated geometry gets its declared-view axes.
    """
    import json

    import numpy as np

    from medtrinity_assets.sources.label_state import CONTEXT, LABEL_STATES, SLICE_ROLES, UNKNOWN, decide_label_state

    if slice_role is not None and slice_role not in SLICE_ROLES:
        raise ValueError(f"slice_role {slice_role!r} is not one of {SLICE_ROLES}")
    if slice_role == CONTEXT:
        # Beside the lesion, not of it: the volume's finding is not this slice's finding.
        labels, label_state = [], UNKNOWN
    elif label_state is None:
        label_state = decide_label_state(bool(labels), says_normal=False)
    elif label_state not in LABEL_STATES:
        raise ValueError(f"label_state {label_state!r} is not one of {LABEL_STATES}")

    if ctx.spec.patient.source == "ranges":
        # Frame-range groups need the source folder (the range table), which only the context
        # knows: decided here, once for every family.
        from medtrinity_assets.sources.frame_groups import frame_group

        patient_id = frame_group(ctx.root, ctx.spec.patient, source_file)

    pixels = np.asarray(pixels)
    _, pixel_ref = ctx.blobs.put_array("pixels", pixels)
    return {
        "record_id": record_id_for(
            ctx.spec.id, source_file, sequence, slice_index if frame_in_file is None else frame_in_file
        ),
        "source_id": ctx.spec.id,
        "source_file": source_file,
        "sequence": sequence,
        "slice_index": slice_index,
        "slice_count": slice_count,
        "modality": modality or ctx.spec.modality_for(source_file),
        "dicom_modality": dicom_modality,
        # Per-image anatomy where the layout knows it (VQA rows), else the source's organs.
        "organs": list(organs) if organs else list(ctx.spec.organs),
        "labels": sorted(set(labels)),
        "patient_hash": patient_hash(ctx.salt, ctx.spec.id, patient_id),
        "pixel_ref": pixel_ref,
        "height": int(pixels.shape[0]),
        "width": int(pixels.shape[1]),
        "channels": int(pixels.shape[2]) if pixels.ndim == 3 else 1,
        "pixel_dtype": str(pixels.dtype),
        "pixel_units": pixel_units,
        "pixel_spacing_mm": pixel_spacing_mm,
        "annotations": json.dumps(annotations, sort_keys=True),
        "photometric": photometric,
        "source_text": json.dumps(source_text, sort_keys=True, ensure_ascii=False) if source_text else None,
        "flags": sorted(set(flags or [])),
        "label_state": label_state,
        "grades": sorted(set(grades or [])),
        "slice_role": slice_role,
        **record_geometry(ctx.spec, source_file, modality or ctx.spec.modality_for(source_file),
                          image_axes, view, laterality, frame_kind),
    }


def record_geometry(
    spec: SourceSpec, source_file: str, modality: str, image_axes: dict | None,
    view: str | None, laterality: str | None, frame_kind: str | None,
) -> dict:
    """The RAW_RECORDS geometry columns: what the file states first, then the spec's declarations."""
    from medtrinity_assets.imaging.geometry import declared_view_axes, encode_axes, normalize_laterality, normalize_view

    view = normalize_view(view) or (normalize_view(spec.view.value_for(source_file)) if spec.view else None)
    laterality = normalize_laterality(laterality) or (
        normalize_laterality(spec.laterality.value_for(source_file)) if spec.laterality else None
    )
    if image_axes is None and modality == "xray":
        image_axes = declared_view_axes(view)
    return {"image_axes": encode_axes(image_axes), "view": view, "laterality": laterality, "frame_kind": frame_kind}


def store_mask(ctx: IngestContext, mask) -> str:
    """Store a 2D label/binary mask (same H, W as its image) and return its blob path."""
    import numpy as np

    mask = np.asarray(mask)
    peak = int(mask.max(initial=0))
    # Instance masks of very dense tiles can exceed 65,535 objects: never wrap ids silently.
    dtype = np.uint8 if peak < 256 else np.uint16 if peak < 65536 else np.uint32
    _, ref = ctx.blobs.put_array("masks", mask.astype(dtype))
    return ref
