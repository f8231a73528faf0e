"""DICOM layout family: single images, multi-frame files, and series stacked into volumes.

Every header value passes through ``imaging.dicom_io.read_header`` (the PHI allowlist); the
patient id is hashed the moment the record is made. One bad file is quarantined with its
reason, and the rest of the source goes on.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Iterable, Optional

from medtrinity_assets.catalog.spec import SourceSpec
from medtrinity_assets.imaging.deid import patient_identifier
from medtrinity_assets.imaging.dicom_io import (
    DicomHeader,
    NotAnImageObject,
    check_is_image,
    decode_frame,
    read_dicom,
    read_header,
)
from medtrinity_assets.imaging.slicing import select_slices
from medtrinity_assets.sources.base import (
    IngestContext,
    IngestStream,
    Quarantined,
    make_record,
    record_id_for,
)


def _describe(error: Exception) -> str:
    return f"{type(error).__name__}: {error}"


def spec_labels(spec: SourceSpec, relative_path: str) -> list[str]:
    """Finding labels of a file from the spec's ``labels`` rule (folder name or fixed list)."""
    rule = spec.labels
    if rule.source == "fixed":
        raw = list(rule.fixed)
    elif rule.source == "folder":
        parts = Path(relative_path).parts
        raw = [parts[rule.folder_depth]] if len(parts) > rule.folder_depth + 1 else []
    else:
        raw = []
    renamed = [rule.rename.get(value, value) for value in raw]
    return [value for value in renamed if value]


def list_files(root: Path, glob: str, exclude_glob: Optional[str] = None) -> list[Path]:
    """Files under ``root`` matching ``glob``, minus ``exclude_glob``, in a stable order."""
    excluded = set(root.glob(exclude_glob)) if exclude_glob else set()
    return sorted(p for p in root.glob(glob) if p.is_file() and p not in excluded)


def _relative(ctx: IngestContext, path: Path) -> str:
    return path.relative_to(ctx.root).as_posix()


def _record(ctx: IngestContext, rel: str, header: DicomHeader, decoded, slice_index: int, slice_count: int) -> dict:
    return make_record(
        ctx,
        source_file=rel,
        pixels=decoded.pixels,
        patient_id=patient_identifier(ctx.spec.patient, rel, header.patient_id),
        labels=spec_labels(ctx.spec, rel),
        annotations=[],
        pixel_units=decoded.pixel_units,
        photometric=decoded.photometric,
        slice_index=slice_index,
        slice_count=slice_count,
        dicom_modality=header.modality,
        pixel_spacing_mm=header.pixel_spacing_mm,
    )


def _read_single_file(ctx: IngestContext, path: Path) -> IngestStream:
    rel = _relative(ctx, path)
    try:
        ds = read_dicom(path)
        header = read_header(ds)
        check_is_image(header)
    except NotAnImageObject as error:
        yield Quarantined(rel, str(error))
        return
    except Exception as error:  # truncated, not DICOM, empty: quarantine, never stop the source
        yield Quarantined(rel, f"not a readable DICOM file: {_describe(error)}")
        return
    if header.n_frames > 1:
        # Multi-frame (cine, enhanced MR/CT): frames are slices of one acquisition.
        frames = [(index, index, header.n_frames) for index in select_slices(header.n_frames, None, ctx.spec.slicing)]
    else:
        frames = [(None, -1, 1)]
    for frame, slice_index, slice_count in frames:
        try:
            decoded = decode_frame(ds, header, frame)
            yield _record(ctx, rel, header, decoded, slice_index, slice_count)
        except Exception as error:
            yield Quarantined(rel, _describe(error), record_id_for(ctx.spec.id, rel, None, slice_index))


def _series_order(members: list[tuple[Path, DicomHeader]]) -> list[tuple[Path, DicomHeader]]:
    """Sort a series along its slice normal; fall back to InstanceNumber, then file name."""
    normal = members[0][1].slice_normal
    if normal is not None and all(h.position is not None for _, h in members):
        return sorted(members, key=lambda m: (float(normal @ m[1].position), m[0].name))
    if all(h.instance_number is not None for _, h in members):
        return sorted(members, key=lambda m: (m[1].instance_number, m[0].name))
    return sorted(members, key=lambda m: m[0].name)


def _read_series(ctx: IngestContext, files: Iterable[Path]) -> IngestStream:
    series: dict[str, list[tuple[Path, DicomHeader]]] = defaultdict(list)
    multi_frame: list[Path] = []
    for path in files:
        rel = _relative(ctx, path)
        try:
            header = read_header(read_dicom(path, with_pixels=False))
            check_is_image(header, pixels_read=False)
        except NotAnImageObject as error:
            yield Quarantined(rel, str(error))
            continue
        except Exception as error:
            yield Quarantined(rel, f"not a readable DICOM file: {_describe(error)}")
            continue
        if header.n_frames > 1:
            multi_frame.append(path)  # already a volume on its own
        else:
            # A file without a SeriesInstanceUID is its own series (keyed by path, in memory only).
            series[header.series_uid or f"file:{rel}"].append((path, header))
    for path in multi_frame:
        yield from _read_single_file(ctx, path)

    for key in sorted(series, key=lambda k: _relative(ctx, series[k][0][0])):
        members = series[key]
        shapes = defaultdict(list)
        for path, header in members:
            shapes[(header.rows, header.columns)].append((path, header))
        # Slices of another size than the series' majority cannot be stacked with it.
        main_shape = max(shapes, key=lambda s: (len(shapes[s]), s))
        for shape, odd in shapes.items():
            if shape != main_shape:
                for path, _ in odd:
                    yield Quarantined(_relative(ctx, path), f"slice size {shape} differs from its series' {main_shape}")
        ordered = _series_order(shapes[main_shape])
        count = len(ordered)
        for index in select_slices(count, None, ctx.spec.slicing):
            path, header = ordered[index]
            rel = _relative(ctx, path)
            try:
                decoded = decode_frame(read_dicom(path), header, None)
                yield _record(ctx, rel, header, decoded, index, count)
            except Exception as error:
                yield Quarantined(rel, _describe(error), record_id_for(ctx.spec.id, rel, None, index))


def read(ctx: IngestContext) -> IngestStream:
    layout = ctx.spec.layout
    files = list_files(ctx.root, layout.glob, layout.exclude_glob)
    if layout.stack_series:
        yield from _read_series(ctx, files)
    else:
        for path in files:
            yield from _read_single_file(ctx, path)
