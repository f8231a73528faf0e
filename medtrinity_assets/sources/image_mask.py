"""2D images with segmentation masks: binary, multi-class and instance-label masks, paired to
their image by path replacement, by template, or as several labelled masks per image.

Examples the parameters cover: BUSI (replacement, extra "_mask_1" files), HAM10000, Kvasir-SEG
(JPEG masks), ISIC 2018 and DRIVE (templates with image_regex groups), JSRT/SCR and IDRiD
(several masks per image, some optional), REFUGE (0/128/255 class values), DSB 2018 and MICCAI
2015 (instance labels).

Binary masks become one "mask" annotation per mask file. Multi-class masks become one
annotation per label. Instance-label masks (each nucleus its own integer) stay ONE annotation
marked "instances" so grounding can split them; storing thousands of per-nucleus masks here
would bloat the blob store for no gain.

Label state: a non-empty mask of a finding (``masks_are_findings``, or a mask entry's
``finding``) makes its image a finding and its label enters ``labels``; masks of anatomy are
ROIs only. Without a finding, the class folder decides: normal when it is in ``labels.normal``
(BUSI ``normal``, whose masks are all zero), else unknown.
"""

from __future__ import annotations

import glob as globlib
import posixpath
import re
from dataclasses import dataclass
from pathlib import PurePosixPath

import numpy as np

from medtrinity_assets.catalog.spec import ImageMaskLayout
from medtrinity_assets.containment import climbs_out, contained_glob, inside_file, is_inside
from medtrinity_assets.imaging.image_io import ImageReadError, MaskValuesError, read_mask
from medtrinity_assets.sources.base import (
    FileTask,
    file_task_reader,
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
    path_says_normal,
    patient_id_for,
)
from medtrinity_assets.sources.label_state import decide_label_state


@dataclass(frozen=True)
class MaskPlan:
    """One mask file an image should have: where, with which label (None: the image's own),
    whether its absence is allowed, and whether it outlines a finding or anatomy."""

    path: str
    label: str | None
    optional: bool
    finding: bool = True


class MaskProblem(Exception):
    """A mask that makes its image unusable; the message is the quarantine reason."""

    def __init__(self, reason: str, *, kind: str):
        super().__init__(reason)
        self.kind = kind  # quarantine kind (sources.base.QUARANTINE_KINDS)


# At most this many distinct values are named in a reason; a resampled mask can hold 200.
NAMED_VALUES = 8


def _value_list(values: list) -> str:
    shown = ", ".join(str(v) for v in values[:NAMED_VALUES])
    return shown + (f" and {len(values) - NAMED_VALUES} more" if len(values) > NAMED_VALUES else "")


def apply_replacements(path: str, rules) -> str:
    for rule in rules:
        path = path.replace(rule.old, rule.new)
    return path


def template_values(image_path: str, match: re.Match | None) -> dict[str, str]:
    path = PurePosixPath(image_path)
    values = {"stem": path.stem, "name": path.name, "parent": path.parent.as_posix(), "suffix": path.suffix}
    if match is not None:
        values.update({name: value for name, value in match.groupdict().items() if value is not None})
    return values


def fill_template(template: str, values: dict[str, str]) -> str:
    try:
        filled = template.format_map(values)
    except KeyError as error:
        # Only an optional regex group that did not take part in the match can be missing:
        # the spec validator already rejected unknown names.
        raise MaskProblem(f"image_regex group {error.args[0]!r} did not match, template {template!r} cannot be filled", kind="invalid_annotation") from None
    except ValueError as error:  # a format spec that does not fit a string, e.g. "{num:d}"
        raise MaskProblem(f"template {template!r} cannot be filled: {error}", kind="invalid_annotation") from None
    path = posixpath.normpath(filled)  # "{parent}/x" for an image at the root gives "./x"
    if path.startswith(("../", "/")) or path == "..":
        # A mask outside the source folder is a spec mistake, and would read unrelated files.
        raise MaskProblem(f"template {template!r} gives {path}, outside the source folder", kind="outside_source")
    return path


def planned_masks(layout: ImageMaskLayout, image_path: str, match: re.Match | None) -> list[MaskPlan]:
    """The mask files the pairing rule names for one image, in spec order."""
    if layout.masks:
        values = template_values(image_path, match)
        return [
            MaskPlan(
                path=fill_template(entry.template, values) if entry.template else apply_replacements(image_path, entry.replace),
                label=entry.label,
                optional=entry.optional or layout.mask_optional,
                finding=layout.masks_are_findings if entry.finding is None else entry.finding,
            )
            for entry in layout.masks
        ]
    if layout.mask_template:
        path = fill_template(layout.mask_template, template_values(image_path, match))
    else:
        path = apply_replacements(image_path, layout.mask_replace)
    return [MaskPlan(path=path, label=None, optional=layout.mask_optional, finding=layout.masks_are_findings)]


def extra_mask_paths(ctx: IngestContext, layout: ImageMaskLayout, mask_path: str) -> list[str]:
    """Second and later masks of one image (BUSI "x_mask_1.png"), sorted."""
    if not layout.extra_mask_glob:
        return []
    first = PurePosixPath(mask_path)
    pattern = layout.extra_mask_glob.replace("{mask_stem}", globlib.escape(first.stem))
    folder = ctx.root / first.parent
    found = sorted(p.relative_to(ctx.root).as_posix() for p in folder.glob(pattern) if p.is_file() and is_inside(ctx.root, p))
    return [path for path in found if path != mask_path]


def _size_text(shape: tuple[int, ...]) -> str:
    return f"{shape[1]}x{shape[0]}"  # width x height, as image tools print it


def instance_file_paths(ctx: IngestContext, pattern: str) -> list[str]:
    """The per-object mask files a glob pairing names, sorted so ids are stable across runs."""
    return sorted(
        p.relative_to(ctx.root).as_posix()
        for p in contained_glob(ctx.root, pattern)
        if p.is_file() and not p.name.startswith(".")
    )


def _mask_leaves_source(ctx: IngestContext, layout: ImageMaskLayout, path: str) -> bool:
    """Whether a mask path the pairing rule gives (a replacement yielding "../", a link to a file
    elsewhere) lies outside the source folder; a glob pairing's matches are filtered instead."""
    if layout.instance_files:
        return climbs_out(path)
    return inside_file(ctx.root, path) is None


def _mask_is_present(ctx: IngestContext, layout: ImageMaskLayout, path: str) -> bool:
    if layout.instance_files:
        return bool(instance_file_paths(ctx, path))
    return (ctx.root / path).is_file()


def _read_one_mask(ctx: IngestContext, layout: ImageMaskLayout, path: str, image_shape: tuple[int, ...], binarize: bool):
    try:
        mask = read_mask(
            ctx.root / path,
            binarize=binarize,
            threshold=layout.mask_threshold,
            colour_instances=layout.instances,
            text_format=layout.instance_format == "miccai_txt",
            rule=layout.binarize,
            limits=ctx.limits,
        )
    except MaskValuesError as error:
        raise MaskProblem(
            f"binary mask {path} holds values {_value_list(error.values)}, not 0 and one other value: "
            "declare layout.label_values (value -> finding) or layout.binarize (threshold, any_nonzero)",
            kind="invalid_annotation",
        ) from None
    except ImageReadError as error:
        what = "mask too large" if error.kind == "too_large" else "unreadable mask"
        raise MaskProblem(f"{what} {path}: {error.cause}", kind=error.kind) from None
    except Exception as error:  # a decoder bug on one file must not stop the source
        raise MaskProblem(f"unreadable mask {path}: {type(error).__name__}: {error}", kind="unreadable") from None
    if mask.shape[:2] != image_shape[:2]:
        raise MaskProblem(f"mask {_size_text(mask.shape)} differs from image {_size_text(image_shape)} ({path})", kind="invalid_annotation")
    return mask


def _load_mask(ctx: IngestContext, layout: ImageMaskLayout, path: str, image_shape: tuple[int, ...]) -> np.ndarray:
    if not layout.instance_files:
        binary = not layout.instances and not layout.label_values
        return _read_one_mask(ctx, layout, path, image_shape, binarize=binary)
    files = instance_file_paths(ctx, path)
    labels = np.zeros(image_shape[:2], dtype=np.int32)
    for number, file in enumerate(files, start=1):
        inside = _read_one_mask(ctx, layout, file, image_shape, binarize=True).astype(bool)
        # A pixel two files claim keeps the first file's id: deterministic, and the overlap
        # is an annotation slip of a pixel or two, not a second object.
        labels[inside & (labels == 0)] = number
    return labels


def _class_annotations(ctx: IngestContext, layout: ImageMaskLayout, mask: np.ndarray, path: str) -> list[dict]:
    """One annotation per label of a multi-class mask, in label-value order.

    A value that is neither a label nor background quarantines the image instead of being
    dropped: it means the spec misdescribes the encoding (a class it does not know, or a
    lossy/resampled mask), and dropping it would describe a labelled region as background.
    """
    values, counts = np.unique(mask, return_counts=True)
    unknown = [
        f"{value} ({count} px)"
        for value, count in zip(values.tolist(), counts.tolist())
        if value != layout.background_value and value not in layout.label_values
    ]
    if unknown:
        known = ", ".join(str(v) for v in sorted(layout.label_values))
        raise MaskProblem(
            f"mask {path} holds values {_value_list(unknown)} that are neither label_values ({known}) "
            f"nor background_value ({layout.background_value})",
            kind="invalid_annotation",
        )
    present = set(values.tolist())
    annotations = []
    by_label: dict[str, list[int]] = {}
    for value in sorted(layout.label_values):
        by_label.setdefault(layout.label_values[value], []).append(value)
    for label, label_values in by_label.items():  # values sharing a name are one finding
        if not present.intersection(label_values):
            continue
        region = np.isin(mask, label_values).astype(np.uint8)
        annotations.append({"kind": "mask", "label": label, "mask_ref": store_mask(ctx, region)})
    return annotations


def mask_annotations(ctx: IngestContext, layout: ImageMaskLayout, mask: np.ndarray, path: str, label: str) -> list[dict]:
    """The annotations one decoded mask file gives; none for an all-background mask."""
    if layout.label_values:
        return _class_annotations(ctx, layout, mask, path)
    if not np.any(mask):
        return []  # an all-zero mask is an image without lesion (BUSI "normal")
    annotation = {"kind": "mask", "label": label, "mask_ref": store_mask(ctx, mask)}
    if layout.instances:
        annotation["instances"] = True
        annotation["instance_count"] = int(np.unique(mask[mask > 0]).size)
    return [annotation]


def _absent_reason(layout: ImageMaskLayout, absent: list[MaskPlan]) -> str:
    if layout.instance_files:
        return f"no mask file matches {absent[0].path}"
    names = ", ".join(plan.path if plan.label is None else f"{plan.path} ({plan.label})" for plan in absent)
    return f"mask {names} is absent" if len(absent) == 1 else f"masks {names} are absent"


@file_task_reader
def read(ctx: IngestContext) -> IngestStream:
    layout: ImageMaskLayout = ctx.spec.layout
    default_label = layout.mask_label or (ctx.spec.diseases[0] if ctx.spec.diseases else "lesion")
    pattern = re.compile(layout.image_regex) if layout.image_regex else None
    found_any = False
    for image_path in iter_image_files(ctx.root, layout.image_glob):
        match = pattern.search(image_path) if pattern else None
        if pattern and match is None:
            continue
        try:
            plans = planned_masks(layout, image_path, match)
        except MaskProblem as problem:
            found_any = True
            yield Quarantined(image_path, str(problem), kind=problem.kind)
            continue
        if not layout.instance_files and any(plan.path == image_path for plan in plans):
            continue  # the glob also matched a mask: the pairing rule maps it onto itself
        found_any = True
        if not ctx.owns(image_path):
            continue  # another shard's image: its masks follow it there
        outside = [plan.path for plan in plans if _mask_leaves_source(ctx, layout, plan.path)]
        if outside:
            yield Quarantined(image_path, f"mask path {outside[0]} leads outside the source folder; not read", kind="outside_source")
            continue
        present = [plan for plan in plans if _mask_is_present(ctx, layout, plan.path)]
        absent = [plan for plan in plans if plan not in present and not plan.optional]
        if absent:
            yield Quarantined(image_path, _absent_reason(layout, absent), kind="unpaired")
            continue
        yield FileTask(image_path, _read_pair, (image_path, present, default_label))
    if not found_any:
        where = f"image_glob {layout.image_glob!r}" + (f" and image_regex {layout.image_regex!r}" if pattern else "")
        yield Quarantined(".", f"no file matches {where} under the source folder", kind="not_found")


def _read_pair(ctx: IngestContext, image_path: str, present: list, default_label: str) -> list:
    """One image and its masks as a record (a ``FileTask``: decoded and stored where the stage runs it)."""
    layout: ImageMaskLayout = ctx.spec.layout
    decoded = decode_image(ctx, image_path)
    if isinstance(decoded, Quarantined):
        return [decoded]
    pixels, photometric = decoded
    labels = path_labels(ctx.spec, image_path)
    image_label = layout.mask_label or (labels[0] if labels else default_label)

    mask_files = [(plan.path, plan.label or image_label, plan.finding) for plan in present]
    if present and not layout.masks:
        mask_files += [(path, image_label, layout.masks_are_findings) for path in extra_mask_paths(ctx, layout, present[0].path)]
    annotations: list[dict] = []
    try:
        for path, label, is_finding in mask_files:
            mask = _load_mask(ctx, layout, path, pixels.shape)
            found = mask_annotations(ctx, layout, mask, path, label)
            annotations += found
            if is_finding:
                # An annotated lesion is a finding of its image, whatever its folder says.
                labels += [annotation["label"] for annotation in found]
    except MaskProblem as problem:
        return [Quarantined(image_path, str(problem), kind=problem.kind)]
    return [image_record(
        ctx,
        image_path,
        pixels,
        photometric,
        labels=labels,
        annotations=annotations,
        patient_id=patient_id_for(ctx.spec, image_path),
        label_state=decide_label_state(bool(labels), path_says_normal(ctx.spec, image_path)),
    )]
