"""Check a source spec against the files on disk BEFORE any pipeline run.

Runs the layout family's own reader (the code the ingest asset runs, so what it reports is what
ingest will do) with a throwaway blob store in a temporary folder: nothing is written under the
data root. It reports what matched (images, images with annotations, ROIs), what is unpaired
(images without their mask, annotation rows naming absent images, masks without an image), what
is quarantined otherwise (file and reason, by kind), and which files under the source folder the
layout never uses.
It counts images per label state, and lists label values (flag or grade cells) the spec does
not declare, by column. A label column the spec names and the table lacks stops the read with
the table file and the spec field named, so nothing matches and the check fails.

"Used" is measured, not guessed: while the reader runs, an audit hook notes every file it opens
under the source folder (masks, label volumes, CSVs are opened but never become records), so a
mask the pairing rule never reaches shows up as unused rather than silently ignored.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from medtrinity_assets.catalog.load import source_root
from medtrinity_assets.catalog.spec import SourceSpec
from medtrinity_assets.containment import walk_files
from medtrinity_assets.sources import IngestContext, Quarantined, read_source
from medtrinity_assets.sources.base import describe_error, until_reader_error
from medtrinity_assets.storage import BlobStore

EXAMPLES_SHOWN = 10

_MASK_LIKE_NAME = re.compile(r"(?<![a-z])(mask|label|seg|gt|annot|roi)", re.IGNORECASE)
# sources.image_csv.UnexpectedLabelValue: a flag / grade cell the spec does not allow. Only read
# from "bad_label" rows, to list the values by column (the kind decides the section).
_UNEXPECTED_LABEL = re.compile(
    r"^unexpected label value (?P<value>'[^']*'|\"[^\"]*\") in column (?P<column>'[^']*'|\"[^\"]*\") \((?P<field>[^)]*)\)"
)

# Names used in the report, in the order it prints them.
IMAGE_WITHOUT_ANNOTATION = "images without their mask / annotation"
ROW_WITHOUT_IMAGE = "annotation rows naming absent images"
ANNOTATION_WITHOUT_IMAGE = "masks / annotation files without an image"
UNPAIRED_KINDS = (IMAGE_WITHOUT_ANNOTATION, ROW_WITHOUT_IMAGE, ANNOTATION_WITHOUT_IMAGE)


@dataclass
class Examples:
    """A count with the first few examples: enough to act on, bounded for big sources."""

    count: int = 0
    items: list[str] = field(default_factory=list)

    def add(self, item: str) -> None:
        self.count += 1
        if len(self.items) < EXAMPLES_SHOWN:
            self.items.append(item)


@dataclass
class SpecCheckReport:
    source_id: str
    family: str
    root: Path
    images: int = 0
    annotated_images: int = 0
    rois: int = 0
    roi_kinds: Counter = field(default_factory=Counter)
    labels: Counter = field(default_factory=Counter)
    label_states: Counter = field(default_factory=Counter)
    # "column 'c' (spec field)" -> Counter of the undeclared values found (rows quarantined).
    unexpected_label_values: dict[str, Counter] = field(default_factory=dict)
    without_annotation: Examples = field(default_factory=Examples)
    unpaired: dict[str, Examples] = field(default_factory=lambda: {kind: Examples() for kind in UNPAIRED_KINDS})
    # Every other quarantined item, by kind (sources.base.QUARANTINE_KINDS).
    quarantined: dict[str, Examples] = field(default_factory=dict)
    # Source-level problems: folder absent, glob matched nothing, reader stopped early.
    problems: list[str] = field(default_factory=list)
    # What the spec promises and the files do not give (annotations that never turn up).
    warnings: list[str] = field(default_factory=list)
    unused_files: Examples = field(default_factory=Examples)
    unused_by_folder: Counter = field(default_factory=Counter)
    seconds: float = 0.0

    @property
    def unreadable(self) -> Examples:
        return self.quarantined.get("unreadable", Examples())

    @property
    def matched(self) -> bool:
        return self.images > 0

    @property
    def ok(self) -> bool:
        return self.matched and not self.warnings

    def render(self) -> str:
        lines = [
            f"Spec check of '{self.source_id}' (layout family {self.family})",
            f"  source folder: {self.root}",
            "",
            (
                f"Matched: {self.images} images; {self.annotated_images} with annotations "
                f"({self.rois} ROIs{_kinds_text(self.roi_kinds)}); {self.without_annotation.count} without"
            ),
        ]
        if self.labels:
            lines.append("  labels: " + ", ".join(f"{label} {n}" for label, n in sorted(self.labels.items())))
        if self.label_states:
            lines.append("  label states: " + ", ".join(f"{state} {self.label_states[state]}" for state in ("finding", "normal", "unknown")))
        if self.unexpected_label_values:
            lines.append("Label values the spec does not declare (rows quarantined):")
            for where, values in sorted(self.unexpected_label_values.items()):
                shown = ", ".join(f"{value} x{n}" for value, n in values.most_common(EXAMPLES_SHOWN))
                more = f" and {len(values) - EXAMPLES_SHOWN} more values" if len(values) > EXAMPLES_SHOWN else ""
                lines.append(f"  {where}: {shown}{more}")
        lines += _section("Images kept without annotation (whole-image records)", self.without_annotation)
        lines += [""]
        for kind in UNPAIRED_KINDS:
            lines += _section(f"Unpaired: {kind}", self.unpaired[kind], always=True)
        lines += _section("Unreadable (file: reason)", self.unreadable, always=True)
        for kind, examples in sorted(self.quarantined.items()):
            if kind != "unreadable":
                lines += _section(f"Quarantined as {kind} (file: reason)", examples)
        lines += _section("Not used by the layout (no record, no quarantine, never opened)", self.unused_files, always=True)
        if len(self.unused_by_folder) > 1 and self.unused_files.count > len(self.unused_files.items):
            lines.append("  unused files by folder:")
            lines += [f"    {folder}/: {n}" for folder, n in self.unused_by_folder.most_common(EXAMPLES_SHOWN)]
        if self.problems:
            lines += ["", "Problems:", *(f"  {problem}" for problem in self.problems)]
        lines += [f"WARNING: {warning}" for warning in self.warnings]
        if not self.matched:
            verdict = "NOTHING MATCHED: fix the layout parameters or the files before running the pipeline"
        elif self.warnings:
            verdict = f"NOT OK: {self.images} images would be ingested, but see the warnings above"
        else:
            verdict = f"OK: {self.images} images would be ingested"
        lines += ["", f"{verdict} (checked in {self.seconds:.1f}s)"]
        return "\n".join(lines)


def _kinds_text(kinds: Counter) -> str:
    return (": " + ", ".join(f"{kind} {n}" for kind, n in sorted(kinds.items()))) if kinds else ""


def _section(title: str, examples: Examples, always: bool = False) -> list[str]:
    if not examples.count and not always:
        return []
    lines = [f"{title}: {examples.count}"]
    lines += [f"  {item}" for item in examples.items]
    if examples.count > len(examples.items):
        lines.append(f"  ... and {examples.count - len(examples.items)} more")
    return lines


# --- watching which files the reader opens --------------------------------------------------

# Set while a check runs; the audit hook is a no-op otherwise. One check at a time per process
# (the CLI runs one): two concurrent checks would share this set.
_opened: set[str] | None = None
_hook_installed = False


def _note_open(event: str, args: tuple) -> None:
    if event == "open" and _opened is not None and isinstance(args[0], (str, bytes, os.PathLike)):
        _opened.add(os.fsdecode(args[0]))


def _start_watching() -> set[str]:
    global _opened, _hook_installed
    if not _hook_installed:
        sys.addaudithook(_note_open)  # hooks cannot be removed; it does nothing between checks
        _hook_installed = True
    _opened = set()
    return _opened


def _stop_watching() -> None:
    global _opened
    _opened = None


# --- the check -----------------------------------------------------------------------------


def _relative(root: Path, path: str) -> str | None:
    try:
        return Path(os.path.abspath(path)).relative_to(root).as_posix()
    except ValueError:
        return None


def _files_under(root: Path) -> list[str]:
    # Hidden files are not data; links leaving the folder are quarantined by the reader, not walked.
    return sorted(walk_files(root))


def _paths_the_spec_names(spec: SourceSpec) -> set[str]:
    """Every string of the layout that could name a file (label CSV, COCO JSON, dataset.json...)."""
    named = set()

    def walk(value) -> None:
        if isinstance(value, str) and value:
            named.add(PurePosixPath(value).as_posix())
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(spec.layout.model_dump())
    if spec.extra_boxes:
        walk(spec.extra_boxes.model_dump())
    return named


def _classify(report: SpecCheckReport, item, named_paths: set[str]) -> None:
    """Put one quarantined item in its section by its kind, never by the wording of its reason."""
    entry = f"{item.source_file}: {item.reason}"
    unexpected = _UNEXPECTED_LABEL.match(item.reason) if item.kind == "bad_label" else None
    if unexpected:
        where = f"column {unexpected['column']} ({unexpected['field']})"
        report.unexpected_label_values.setdefault(where, Counter())[unexpected["value"]] += 1
    elif item.kind == "not_found" or item.source_file in named_paths:
        # The folder, the glob or the annotation file itself: nothing below it can pair.
        report.problems.append(entry)
    elif item.kind == "unpaired":
        report.unpaired[IMAGE_WITHOUT_ANNOTATION].add(entry)
    elif item.kind == "orphan":
        report.unpaired[ROW_WITHOUT_IMAGE].add(entry)
    else:
        report.quarantined.setdefault(item.kind, Examples()).add(entry)


def check_source(spec: SourceSpec, root: Path | None = None) -> SpecCheckReport:
    """Run the spec's reader over ``root`` (default: the spec's source folder) and report.

    Writes nothing under the data root: pixels go to a temporary blob store deleted afterwards.
    """
    import json

    started = time.perf_counter()
    root = Path(root).resolve() if root else source_root(spec)
    report = SpecCheckReport(source_id=spec.id, family=spec.layout.family, root=root)
    named_paths = _paths_the_spec_names(spec)
    # Annotation files the layout names, which a reader may parse without Python's open
    # (polars, duckdb) and so without the audit hook noticing.
    named_files = {path for path in named_paths if (root / path).is_file()}
    mentioned: set[str] = set()
    record_files: set[str] = set()

    with tempfile.TemporaryDirectory(prefix="medtrinity-check-") as scratch:
        # The salt only feeds patient hashes that are thrown away with the scratch folder.
        ctx = IngestContext(spec=spec, root=root, blobs=BlobStore(Path(scratch)), salt="spec-check")
        opened = _start_watching()
        try:
            # As in ingest: a reader bug ends the read, not the check.
            stopped = lambda error: report.problems.append(f"reader stopped early: {describe_error(error)}")  # noqa: E731
            for item in until_reader_error(read_source(ctx), stopped):
                if isinstance(item, Quarantined):
                    mentioned.add(item.source_file)
                    _classify(report, item, named_paths)
                    continue
                record_files.add(item["source_file"])
                annotations = json.loads(item["annotations"] or "[]")
                if annotations:
                    report.annotated_images += 1
                    report.rois += len(annotations)
                    report.roi_kinds.update(a.get("kind", "?") for a in annotations)
                else:
                    where = item["source_file"]
                    if item["slice_index"] is not None and item["slice_index"] >= 0:
                        where += f" (slice {item['slice_index']})"
                    report.without_annotation.add(where)
                report.images += 1
                report.labels.update(item["labels"] or [])
                report.label_states[item.get("label_state") or "unknown"] += 1
        finally:
            _stop_watching()

    if root.is_dir():
        opened_here = {rel for rel in (_relative(root, path) for path in opened) if rel}
        used = record_files | mentioned | opened_here | named_files
        annotation_files = (opened_here | named_files) - record_files - mentioned
        _report_unused(report, root, used, annotation_files, record_files, mentioned)
    if report.matched and report.rois == 0 and _promises_annotations(spec):
        report.warnings.append(
            f"layout {spec.layout.family} promises annotations ({_expected_annotations(spec)}) "
            f"but none of the {report.images} images has one: the annotation files are absent or not in the format the layout reads"
        )
    report.seconds = time.perf_counter() - started
    return report


# Families whose every image is meant to come with an annotation (a mask, a box file); other
# families promise annotations only where the spec's annotation_kinds say so (DICOM RTSTRUCT).
_ANNOTATED_FAMILIES = ("boxes", "coco", "image_mask")
_ROI_KINDS = ("mask", "box", "contour")
# Layout fields that name annotation files, in the order a reader would be told about them.
_ANNOTATION_FIELDS = (
    "annotation_template", "file", "annotations", "mask_template", "mask_replace", "masks",
    "label_replace", "label_template", "dataset_json", "structure_glob", "lidc_xml_glob",
)


def _promises_annotations(spec: SourceSpec) -> bool:
    if spec.layout.family in _ANNOTATED_FAMILIES or spec.extra_boxes is not None:
        return True
    return any(kind in _ROI_KINDS for kind in spec.annotation_kinds)


def _expected_annotations(spec: SourceSpec) -> str:
    """The spec fields that say where the annotations are: "boxes.annotation_template 'a/{stem}.xml'"."""
    named = []

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                if key in _ANNOTATION_FIELDS and item:
                    named.append(f"{prefix}{key} {item!r}")
                elif isinstance(item, dict):
                    walk(f"{prefix}{key}.", item)

    walk("layout.", spec.layout.model_dump())
    if spec.extra_boxes is not None:
        walk("extra_boxes.", spec.extra_boxes.model_dump())
    return ", ".join(named) or f"annotation_kinds {', '.join(spec.annotation_kinds)}"


def _has_image_stem(name: str, image_stems: set[str]) -> bool:
    """Whether a file stem begins with an image's stem ("case_5_mask" for "case_5", not "case_50")."""
    for end in range(len(name), 0, -1):
        if name[:end] in image_stems and (end == len(name) or not name[end].isalnum()):
            return True
    return False


def _report_unused(
    report: SpecCheckReport, root: Path, used: set[str], annotation_files: set[str], record_files: set[str], mentioned: set[str]
) -> None:
    """Files no record, quarantine or open touched. Those sitting among the masks the reader did
    use, with the masks' suffix, are masks whose image is missing, unless they carry the name of
    an image that is there (a record, or quarantined: the reader stopped before its mask)."""
    annotation_folders = {(str(PurePosixPath(path).parent), PurePosixPath(path).suffix.lower()) for path in annotation_files}
    image_folders = {str(PurePosixPath(path).parent) for path in record_files}
    image_stems = {PurePosixPath(path).stem for path in record_files | mentioned}
    for relative in _files_under(root):
        if relative in used:
            continue
        path = PurePosixPath(relative)
        folder = str(path.parent)
        looks_like_mask = (folder, path.suffix.lower()) in annotation_folders and (
            folder not in image_folders or _MASK_LIKE_NAME.search(path.name)
        )
        looks_like_mask = looks_like_mask and not _has_image_stem(path.stem, image_stems)
        if looks_like_mask:
            report.unpaired[ANNOTATION_WITHOUT_IMAGE].add(relative)
        else:
            report.unused_files.add(relative)
            report.unused_by_folder[folder] += 1
