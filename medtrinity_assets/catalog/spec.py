"""The source spec: one YAML file per public dataset, validated by pydantic.

A source is configuration, not code: the spec names the dataset's metadata (which becomes the
text of every description made from it, so it must be right) and the layout family with the
parameters that family needs to read the files exactly as the publisher ships them.
"""

from __future__ import annotations

import codecs
import re
from typing import Annotated, Literal, Optional, Union

from pydantic import Field, HttpUrl, PrivateAttr, field_validator, model_validator

from medtrinity_assets.catalog.layouts import (
    BoxAnnotations,
    BoxesLayout,
    CaptionsLayout,
    CocoLayout,
    DicomLayout,
    ImageCsvLayout,
    ImageFolderLayout,
    ImageMaskLayout,
    Modality,
    NiftiLayout,
    Strict,
)
from medtrinity_assets.catalog.shards import Shard, parse_partition_key, partition_key
from medtrinity_assets.containment import climbs_out
from medtrinity_assets.imaging.deid import PatientKeyRule
from medtrinity_assets.imaging.geometry import normalize_laterality, normalize_view
from medtrinity_assets.imaging.limits import (
    DEFAULT_MAX_FRAMES,
    DEFAULT_MAX_IMAGE_PIXELS,
    DEFAULT_MAX_VOLUME_VOXELS,
    PixelLimits,
)
from medtrinity_assets.imaging.normalize import IntensityRule
from medtrinity_assets.imaging.slicing import SliceRule

Access = Literal["open", "registration", "credentialed", "package"]
AnnotationKind = Literal["mask", "box", "contour", "label", "caption", "vqa", "none"]

SOURCE_ID = re.compile(r"^[a-z][a-z0-9_]{1,63}$")

# Layout fields (at any depth: extra_boxes, masks[]) that name a file, folder, glob or path
# template under the source root. Each must stay inside it: relative, never climbing with "..".
PATH_FIELDS = frozenset({
    "csv", "annotations", "dataset_json", "file", "class_names_file", "image_root",
    "image_glob", "exclude_glob", "path_index_glob", "glob", "lidc_xml_glob", "case_glob", "structure_glob",
    "extra_mask_glob", "path_template", "image_template", "annotation_template", "mask_template",
    "label_template", "template", "ranges_file",
})
# Of those, the fields naming one file the reader opens as it is (no template, no glob).
FILE_FIELDS = frozenset({"csv", "annotations", "dataset_json", "file", "class_names_file", "ranges_file"})


def named_paths(value, where: str = "layout"):
    """(spec field, value) of every PATH_FIELDS string in a dumped layout, depth first."""
    if isinstance(value, dict):
        for key, item in value.items():
            here = f"{where}.{key}"
            if key in PATH_FIELDS and isinstance(item, str):
                yield here, item
            else:
                yield from named_paths(item, here)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from named_paths(item, f"{where}[{index}]")


def _stays_inside(value: str, what: str) -> str:
    # A template's fields are only known per file ("{parent}/../masks/{stem}.png" stays inside
    # for an image two folders deep): its literal start is checked here, the filled path at
    # run time by the reader.
    if climbs_out(value.split("{", 1)[0] if "{" in value else value):
        raise ValueError(f"{what} {value!r} leaves the source folder: give a path relative to it, without '..' climbing out")
    return value


class Labels(Strict):
    """Where an image's finding labels come from (besides annotations)."""

    # "folder": the path component at `folder_depth` (0 = first); "fixed": `fixed` for all;
    # "regex": the first group of `pattern` on the relative path (Shenzhen "CHNCXR_0001_1.png":
    # "_(\d)\.png$" reads "1"); "none": no per-image label (the spec's diseases still
    # describe the source).
    source: Literal["folder", "fixed", "regex", "none"] = "none"
    folder_depth: int = 0
    fixed: list[str] = Field(default_factory=list)
    pattern: Optional[str] = None
    # Map raw label values to catalog names. A value mapped to "" is not a finding and says
    # nothing else either (a landmark class, "todo", a quality mark): its image's label state is
    # unknown unless something else names a finding or says normal.
    rename: dict[str, str] = Field(default_factory=dict)
    # Raw values (class folder, regex group, label cell, box label) with which the publisher
    # positively says the image is normal: BUSI "normal", ChestX-ray14 "No Finding", Shenzhen
    # "_0". Only these make the label state "normal"; a missing or blank label is "unknown".
    normal: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _regex_needs_pattern(self) -> "Labels":
        both = sorted(set(self.normal) & set(self.rename))
        if both:
            raise ValueError(f"labels.normal values {both} are also in labels.rename: a normal value is not renamed")
        if self.source == "regex":
            if not self.pattern:
                raise ValueError("labels.source 'regex' needs 'pattern'")
            try:
                if re.compile(self.pattern).groups < 1:
                    raise ValueError("labels.pattern needs one group: the label")
            except re.error as error:
                raise ValueError(f"labels.pattern is not a valid regex: {error}") from None
        return self


class Declared(Strict):
    """A per-image value the publisher's layout guarantees: one value for the whole source
    ("fixed"), or the first group of ``pattern`` on the relative path ("regex"), mapped through
    ``rename`` (CBIS-DDSM "Mass-Training_P_00001_LEFT_CC": pattern "_(LEFT|RIGHT)_",
    rename {LEFT: left, RIGHT: right}). A path the pattern does not match gets no value."""

    source: Literal["fixed", "regex"]
    fixed: Optional[str] = None
    pattern: Optional[str] = None
    rename: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _needs(self) -> "Declared":
        if self.source == "fixed" and not self.fixed:
            raise ValueError("source 'fixed' needs 'fixed'")
        if self.source == "regex":
            if not self.pattern:
                raise ValueError("source 'regex' needs 'pattern'")
            try:
                if re.compile(self.pattern).groups < 1:
                    raise ValueError("pattern needs one group: the value")
            except re.error as error:
                raise ValueError(f"pattern is not a valid regex: {error}") from None
        return self

    def value_for(self, relative_path: str) -> Optional[str]:
        if self.source == "fixed":
            raw = self.fixed
        else:
            match = re.search(self.pattern, relative_path)
            raw = match.group(1) if match else None
        return self.rename.get(raw, raw) if raw is not None else None


class DeclaredView(Declared):
    """The radiographic view (PA, AP, lateral, CC, MLO...). A declared PA/AP radiograph in the
    standard display gives patient sides (source "declared_view"); a lateral gives none."""

    @model_validator(mode="after")
    def _known_view(self) -> "DeclaredView":
        for value in [self.fixed, *self.rename.values()]:
            if value is not None and normalize_view(value) is None:
                raise ValueError(f"unknown view {value!r}: use PA, AP, lateral, CC, MLO, ML, LM, XCCL...")
        return self


class DeclaredLaterality(Declared):
    """Which paired part the image shows (left / right breast, eye, hand); such an image gets
    no patient side per ROI: the whole image is one side."""

    @model_validator(mode="after")
    def _known_side(self) -> "DeclaredLaterality":
        for value in [self.fixed, *self.rename.values()]:
            if value is not None and normalize_laterality(value) is None:
                raise ValueError(f"unknown laterality {value!r}: use left, right or bilateral (or L, R, B)")
        return self


class FrameRange(Strict):
    """Frames ``first`` to ``last`` (inclusive) belong to one sequence or patient ``group``."""

    first: int = Field(ge=0)
    last: int = Field(ge=0)
    group: str = Field(min_length=1)

    @model_validator(mode="after")
    def _ordered(self) -> "FrameRange":
        if self.last < self.first:
            raise ValueError(f"range {self.first}-{self.last} ends before it starts")
        return self


RANGE_GROUPS = ("first", "last", "group")


class PatientRule(Strict):
    """How to find the patient an image belongs to, for patient-level splits."""

    # "dicom": PatientID tag; "folder": path component at `folder_depth`; "regex": first group
    # of `pattern` on the relative path; "file": each file its own patient; "column": CSV column;
    # "ranges": the frame number is the first group of `pattern` on the relative path, and its
    # group is the range holding it (CVC-ClinicDB: frames 1-25 are sequence 1), from inline
    # `ranges` or from the lines of `ranges_file` (relative to the source root) that match
    # `range_regex`, whose named groups `first`, `last`, `group` give one range each.
    source: Literal["dicom", "folder", "regex", "file", "column", "ranges"] = "file"
    folder_depth: int = 0
    pattern: Optional[str] = None
    column: Optional[str] = None
    ranges: list[FrameRange] = Field(default_factory=list)
    ranges_file: Optional[str] = None
    range_regex: Optional[str] = None

    @model_validator(mode="after")
    def _needs(self) -> "PatientRule":
        if self.source in ("regex", "ranges") and not self.pattern:
            raise ValueError(f"patient.source '{self.source}' needs 'pattern'")
        if self.source == "column" and not self.column:
            raise ValueError("patient.source 'column' needs 'column'")
        if self.source == "ranges":
            if bool(self.ranges) == bool(self.ranges_file):
                raise ValueError("patient.source 'ranges' needs either 'ranges' or 'ranges_file'")
            if self.ranges_file and not self.range_regex:
                raise ValueError("patient.ranges_file needs 'range_regex' with named groups first, last, group")
            try:
                if re.compile(self.pattern).groups < 1:
                    raise ValueError("patient.pattern needs one group: the frame number")
                if self.range_regex and not set(RANGE_GROUPS) <= set(re.compile(self.range_regex).groupindex):
                    raise ValueError("patient.range_regex needs the named groups (?P<first>...), (?P<last>...), (?P<group>...)")
            except re.error as error:
                raise ValueError(f"patient pattern or range_regex is not a valid regex: {error}") from None
        elif self.ranges or self.ranges_file or self.range_regex:
            raise ValueError("patient ranges, ranges_file and range_regex are for patient.source 'ranges'")
        return self

    def key_rule(self) -> PatientKeyRule:
        return PatientKeyRule(self.source, self.folder_depth, self.pattern)


Layout = Annotated[
    Union[
        DicomLayout,
        NiftiLayout,
        ImageMaskLayout,
        ImageCsvLayout,
        CocoLayout,
        BoxesLayout,
        ImageFolderLayout,
        CaptionsLayout,
    ],
    Field(discriminator="family"),
]


class Slicing(Strict):
    """Which 2D slices a 3D volume yields.

    annotated_plus_context: every slice that cuts the label volume, plus `context` slices on
    each side; when that is over `max_slices`, the context slices are dropped first and the
    annotated slices are thinned evenly; volumes without labels fall back to every_k. every_k: every k-th slice of the middle `central_fraction` of the volume.
    """

    rule: Literal["annotated_plus_context", "every_k"] = "annotated_plus_context"
    context: int = 2
    every_k: int = 8
    central_fraction: float = Field(0.8, gt=0, le=1)
    max_slices: int = Field(24, ge=1)

    def slice_rule(self) -> SliceRule:
        return SliceRule(self.rule, self.context, self.every_k, self.central_fraction, self.max_slices)


class Intensity(Strict):
    """Modality-aware intensity handling for this source."""

    # CT window by body region; "auto" uses the spec's first organ.
    ct_window: Literal["auto", "brain", "lung", "mediastinum", "abdomen", "liver", "bone", "soft_tissue"] = "auto"
    percentile_low: float = Field(0.5, ge=0, lt=50)
    percentile_high: float = Field(99.5, gt=50, le=100)


class Grounding(Strict):
    """How annotation masks become ROIs (stage 3)."""

    # A connected component of a binary mask smaller than this share of the exported image is
    # a speck (JPEG ringing, a stray click): dropped and counted, never an ROI. On the 1,000
    # Kvasir-SEG masks at 512 px, specks are 1-2 px (< 1e-5) and the smallest polyp component
    # 0.0017, so 1e-4 (26 px of a 512x512 image) has room on both sides.
    min_component_fraction: float = Field(1e-4, ge=0, lt=1)
    # Floor in exported pixels, for small images; the larger of the two limits applies.
    min_component_px: int = Field(4, ge=1)
    # "components": one ROI per connected component (several polyps, both kidneys);
    # "whole": the mask is one ROI, for tissue maps (grey matter) that are one structure.
    split: Literal["components", "whole"] = "components"


class Limits(Strict):
    """How much one file may make ingest decode, whatever its format (imaging.limits). Each
    reader checks the size the header declares before decoding any pixel; a file over a limit
    is quarantined "too_large". Raise them for a source whose images truly are larger."""

    # One 2D image, frame or slice plane (TIFF page, Pillow image, DICOM Rows x Columns,
    # NIfTI slice plane).
    max_image_pixels: int = Field(DEFAULT_MAX_IMAGE_PIXELS, ge=1)
    # Frames of a multi-frame DICOM (NumberOfFrames), slices of a NIfTI volume.
    max_frames: int = Field(DEFAULT_MAX_FRAMES, ge=1)
    # All pixels of one multi-frame file or volume (a label volume is read whole).
    max_volume_voxels: int = Field(DEFAULT_MAX_VOLUME_VOXELS, ge=1)

    def pixel_limits(self) -> PixelLimits:
        return PixelLimits(self.max_image_pixels, self.max_frames, self.max_volume_voxels)


class PackageFile(Strict):
    """A file that an installed Python package ships, copied into data/raw/<id>/ for the demo."""

    package: str
    path: str  # relative to the package folder; may be a glob
    to: str = ""  # folder under data/raw/<id>/

    @field_validator("path", "to")
    @classmethod
    def _inside(cls, value: str, info) -> str:
        where = "the package folder" if info.field_name == "path" else "data/raw/<id>/"
        return _stays_inside(value, f"'{info.field_name}' (a path under {where})")


class Download(Strict):
    """One file of an open source, fetched over HTTP(S) into data/raw/<id>/<to>/."""

    url: HttpUrl
    # File name to save as; default: the last part of the URL path.
    filename: Optional[str] = None
    to: str = ""
    # The publisher's checksum; a download that does not match is deleted, never kept.
    # Where the publisher gives none, the first download's sha256 is recorded and later
    # downloads are checked against it.
    sha256: Optional[str] = Field(None, pattern=r"^[0-9a-f]{64}$")
    md5: Optional[str] = Field(None, pattern=r"^[0-9a-f]{32}$")
    size_bytes: Optional[int] = Field(None, ge=0)
    # Unpack a .zip / .tar(.gz) archive into the target folder after verification.
    extract: bool = False

    @field_validator("to")
    @classmethod
    def _inside(cls, value: str) -> str:
        # A contributed spec must not make `fetch` write anywhere the user can write.
        return _stays_inside(value, "'to' (a folder under data/raw/<id>/)")


class Acquisition(Strict):
    # package: files an installed package ships (demo); download: URLs below; manual: the user
    # fetches the files by hand after registering or being credentialed (see instructions).
    method: Literal["package", "download", "manual"] = "manual"
    files: list[PackageFile] = Field(default_factory=list)
    downloads: list[Download] = Field(default_factory=list)
    instructions: Optional[str] = None

    @model_validator(mode="after")
    def _method_needs(self) -> "Acquisition":
        if self.method == "package" and not self.files:
            raise ValueError("acquisition.method 'package' needs at least one entry in 'files'")
        if self.method == "download" and not self.downloads:
            raise ValueError("acquisition.method 'download' needs at least one entry in 'downloads'")
        return self


class SourceSpec(Strict):
    id: str
    name: str
    description: str
    homepage: HttpUrl
    license: str
    citation: str
    access: Access
    modality: Modality
    organs: list[str] = Field(min_length=1)
    diseases: list[str] = Field(default_factory=list)
    annotation_kinds: list[AnnotationKind] = Field(min_length=1)
    approx_size: str
    layout: Layout
    # Folder holding the files; default data/raw/<id>. Relative paths are from the repo root.
    root: Optional[str] = None
    demo: bool = False
    acquisition: Acquisition = Field(default_factory=Acquisition)
    labels: Labels = Field(default_factory=Labels)
    patient: PatientRule = Field(default_factory=PatientRule)
    slicing: Slicing = Field(default_factory=Slicing)
    intensity: Intensity = Field(default_factory=Intensity)
    grounding: Grounding = Field(default_factory=Grounding)
    limits: Limits = Field(default_factory=Limits)
    # Per-file modality where one source mixes them: regex on the relative path -> modality.
    modality_by_path: dict[str, Modality] = Field(default_factory=dict)
    # Replace every folder and file name in the records' source_file by a salted hash (the file
    # type suffix is kept), when ingest writes them. For private data whose paths carry identifiers (MRNs, names, dates);
    # public releases name files with the publisher's own pseudonyms, so the default keeps them
    # for provenance. Quarantine rows get the same pseudonyms, in their file and in their reason
    # (they reach the warehouse and the Dagster metadata); check-source, run on the source's own
    # disk, shows the real names.
    pseudonymize_paths: bool = False
    # Boxes from a second annotation file added to the records of any layout family.
    extra_boxes: Optional[BoxAnnotations] = None
    # Views and laterality the publisher's layout guarantees (DICOM ViewPosition and
    # ImageLaterality / Laterality are read by the dicom family and win over these).
    view: Optional[DeclaredView] = None
    laterality: Optional[DeclaredLaterality] = None
    # Radiological display convention of the stored images. It no longer decides any
    # patient-side word (those come from geometry or a declared view: grounding.patient_side)
    # and no stage reads it now; kept so that existing specs stay valid and say how they display.
    radiological_orientation: Optional[bool] = None
    # Images where the normalize stage finds burned-in text or markers (imaging/burned_in.py):
    # "hold_back" flags them "burned_in_text", which keeps them out of the training exports like
    # DICOM BurnedInAnnotation; "keep" flags them "burned_in_text_kept" (shown, not held back),
    # for a source whose every image carries the same harmless marker (a probe logo, a scale bar).
    burned_in_text: Literal["hold_back", "keep"] = "hold_back"
    # Text encoding of the publisher's tables and text files (label CSVs, caption tables, box
    # tables, class-name lists): "latin-1", "cp1252"... A UTF-8 byte-order mark is dropped.
    # A row with bytes that are not valid in it is quarantined (bad_label), never read with
    # U+FFFD in place of its letters.
    encoding: str = "utf-8"
    # Source files per shard (catalog/shards.py): a source with more files is split into the
    # smallest power of two of shards that keeps each at or under this; None: the project's
    # default (shards.DEFAULT_SHARD_SIZE).
    shard_size: Optional[int] = Field(None, ge=1)

    # The shard this copy is bound to (for_partition); not a field: never in the YAML.
    _shard: Optional[Shard] = PrivateAttr(default=None)

    def for_partition(self, key: str) -> "SourceSpec":
        """A copy bound to the partition ``key`` (this source's id, or one of its shard keys)."""
        source_id, shard = parse_partition_key(key)
        if source_id != self.id:
            raise ValueError(f"partition key {key!r} is not a partition of source {self.id!r}")
        bound = self.model_copy()
        bound._shard = shard
        return bound

    @property
    def shard(self) -> Optional[Shard]:
        """The shard this spec is bound to; None for the whole source."""
        return self._shard

    @property
    def partition(self) -> str:
        """The partition key its tables and quarantine files are named by (the id when unsharded)."""
        return partition_key(self.id, self._shard)

    @field_validator("id")
    @classmethod
    def _id_is_slug(cls, value: str) -> str:
        if not SOURCE_ID.match(value):
            raise ValueError("must be lower-case letters, digits and '_', starting with a letter")
        return value

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        try:
            codecs.lookup(value)
        except LookupError:
            raise ValueError(f"{value!r} is not a text encoding Python knows (e.g. utf-8, latin-1, cp1252)") from None
        return value

    @field_validator("organs", "diseases")
    @classmethod
    def _lower_names(cls, values: list[str]) -> list[str]:
        return [v.strip().lower() for v in values]

    @model_validator(mode="after")
    def _gated_access_needs_instructions(self) -> "SourceSpec":
        if self.access in ("registration", "credentialed") and not self.acquisition.instructions:
            raise ValueError(f"access '{self.access}' needs acquisition.instructions (what the user must do)")
        return self

    def intensity_rule(self) -> IntensityRule:
        return IntensityRule(
            self.modality, tuple(self.organs), self.intensity.ct_window,
            self.intensity.percentile_low, self.intensity.percentile_high,
        )

    @model_validator(mode="after")
    def _layout_paths_stay_inside(self) -> "SourceSpec":
        for where, value in self.named_paths():
            _stays_inside(value, where)
        return self

    def named_paths(self) -> list[tuple[str, str]]:
        """(spec field, value) of every path the layout, extra_boxes and patient rule name (PATH_FIELDS)."""
        found = list(named_paths(self.layout.model_dump(), "layout"))
        if self.extra_boxes:
            found += named_paths(self.extra_boxes.model_dump(), "extra_boxes")
        return found + list(named_paths(self.patient.model_dump(), "patient"))

    def modality_for(self, relative_path: str) -> str:
        for pattern, modality in self.modality_by_path.items():
            if re.search(pattern, relative_path):
                return modality
        return self.modality
