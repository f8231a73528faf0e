"""The source spec: one YAML file per public dataset, validated by pydantic.

A source is configuration, not code: the spec names the dataset's metadata (which becomes the
text of every description made from it, so it must be right) and the layout family with the
parameters that family needs to read the files exactly as the publisher ships them.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal, Optional, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    HttpUrl,
    field_validator,
    model_validator,
)

Modality = Literal[
    "ct",
    "mri",
    "xray",
    "ultrasound",
    "dermoscopy",
    "endoscopy",
    "fundus",
    "histopathology",
    "microscopy",
    "pet",
    "mammography",
    "nuclear_medicine",
]
Access = Literal["open", "registration", "credentialed", "package"]
AnnotationKind = Literal["mask", "box", "contour", "label", "caption", "none"]

SOURCE_ID = re.compile(r"^[a-z][a-z0-9_]{1,63}$")


class Strict(BaseModel):
    """Unknown keys are errors: a typo in a spec must not be silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Replace(Strict):
    """One string replacement applied to a path relative to the source root."""

    old: str
    new: str


class Labels(Strict):
    """Where an image's finding labels come from (besides annotations)."""

    # "folder": the path component at `folder_depth` (0 = first); "fixed": `fixed` for all;
    # "none": no per-image label (the spec's diseases still describe the source).
    source: Literal["folder", "fixed", "none"] = "none"
    folder_depth: int = 0
    fixed: list[str] = Field(default_factory=list)
    # Map raw label values to catalog names; a value mapped to "" means "no finding".
    rename: dict[str, str] = Field(default_factory=dict)


class PatientRule(Strict):
    """How to find the patient an image belongs to, for patient-level splits."""

    # "dicom": PatientID tag; "folder": path component at `folder_depth`; "regex": first group
    # of `pattern` on the relative path; "file": each file its own patient; "column": CSV column.
    source: Literal["dicom", "folder", "regex", "file", "column"] = "file"
    folder_depth: int = 0
    pattern: Optional[str] = None
    column: Optional[str] = None

    @model_validator(mode="after")
    def _needs(self) -> "PatientRule":
        if self.source == "regex" and not self.pattern:
            raise ValueError("patient.source 'regex' needs 'pattern'")
        if self.source == "column" and not self.column:
            raise ValueError("patient.source 'column' needs 'column'")
        return self


class DicomLayout(Strict):
    """DICOM files: single images, multi-frame files, or series stacked into volumes."""

    family: Literal["dicom"]
    glob: str = "**/*.dcm"
    # Stack files of one SeriesInstanceUID into a volume (CT/MR series) and slice it by rule.
    stack_series: bool = False
    # Glob (relative to the root) of files to leave out, e.g. a DICOMDIR or vendor extras.
    exclude_glob: Optional[str] = None


class NiftiLayout(Strict):
    """NIfTI volumes, each with an optional label volume found by path replacement."""

    family: Literal["nifti"]
    image_glob: str = "**/*.nii.gz"
    exclude_glob: Optional[str] = None
    label_replace: list[Replace] = Field(default_factory=list)
    # Axis of the canonical (RAS) volume to slice along: 0 sagittal, 1 coronal, 2 axial.
    slice_axis: Literal[0, 1, 2] = 2
    # Label value -> finding name; empty means {1: the spec's first disease}.
    label_names: dict[int, str] = Field(default_factory=dict)
    # For probability maps (e.g. a grey-matter map): voxels >= threshold become label 1.
    label_threshold: Optional[float] = None
    # Regex on the relative path whose first group names the MR sequence (e.g. "(T1|T2)").
    sequence_regex: Optional[str] = None


class ImageMaskLayout(Strict):
    """2D images with binary or label masks found by path replacement."""

    family: Literal["image_mask"]
    image_glob: str
    mask_replace: list[Replace]
    # An image whose mask is absent is kept without ROI (True) or quarantined (False).
    mask_optional: bool = False
    # Further masks of the same image, globbed beside the first mask; "{mask_stem}" is the
    # first mask's file stem (BUSI: "{mask_stem}_[0-9]*.png" finds "x_mask_1.png").
    extra_mask_glob: Optional[str] = None
    # Masks hold one integer per object (nuclei): kept as ONE label mask marked "instances".
    instances: bool = False
    # Label of the mask annotations when the image has no label of its own; default: the
    # spec's first disease. Set it where that would be wrong (HAM10000 masks every class).
    mask_label: Optional[str] = None


class ImageCsvLayout(Strict):
    """Image folders with a CSV of labels, one row per image."""

    family: Literal["image_csv"]
    csv: str
    id_column: str
    path_template: str  # e.g. "images/{id}.jpg"
    # Multi-label: each column is a label, present when its value is truthy (1, 1.0, "yes").
    label_columns: list[str] = Field(default_factory=list)
    # Single categorical label column (e.g. "finding").
    label_column: Optional[str] = None
    # A single label cell holding several findings ("COVID-19, ARDS") is split on this.
    label_separator: Optional[str] = None
    csv_encoding: str = "utf-8"
    # Per-row modality (mixed X-ray/CT sources): raw value -> catalog modality; rows whose
    # value is not mapped are quarantined rather than described with a guessed modality.
    modality_column: Optional[str] = None
    modality_map: dict[str, Modality] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _modality_map_needed(self) -> "ImageCsvLayout":
        if self.modality_column and not self.modality_map:
            raise ValueError("layout.modality_column needs layout.modality_map")
        return self


class CocoLayout(Strict):
    """Images with boxes (and optional polygons) in a COCO JSON file."""

    family: Literal["coco"]
    annotations: str
    image_root: str = "."
    # Keep images of the JSON that have no annotation (as whole-image records).
    keep_unannotated: bool = True


class ImageFolderLayout(Strict):
    """Plain images (class folders or a flat folder), no annotations."""

    family: Literal["image_folder"]
    image_glob: str


Layout = Annotated[
    Union[DicomLayout, NiftiLayout, ImageMaskLayout, ImageCsvLayout, CocoLayout, ImageFolderLayout],
    Field(discriminator="family"),
]


class Slicing(Strict):
    """Which 2D slices a 3D volume yields.

    annotated_plus_context: every slice that cuts the label volume, plus `context` slices on
    each side, thinned to at most `max_slices` evenly; volumes without labels fall back to
    every_k. every_k: every k-th slice of the middle `central_fraction` of the volume.
    """

    rule: Literal["annotated_plus_context", "every_k"] = "annotated_plus_context"
    context: int = 2
    every_k: int = 8
    central_fraction: float = Field(0.8, gt=0, le=1)
    max_slices: int = Field(24, ge=1)


class Intensity(Strict):
    """Modality-aware intensity handling for this source."""

    # CT window by body region; "auto" uses the spec's first organ.
    ct_window: Literal["auto", "brain", "lung", "mediastinum", "abdomen", "liver", "bone", "soft_tissue"] = "auto"
    percentile_low: float = Field(0.5, ge=0, lt=50)
    percentile_high: float = Field(99.5, gt=50, le=100)


class PackageFile(Strict):
    """A file that an installed Python package ships, copied into data/raw/<id>/ for the demo."""

    package: str
    path: str  # relative to the package folder; may be a glob
    to: str = ""  # folder under data/raw/<id>/


class Acquisition(Strict):
    method: Literal["package", "manual"] = "manual"
    files: list[PackageFile] = Field(default_factory=list)
    instructions: Optional[str] = None

    @model_validator(mode="after")
    def _package_needs_files(self) -> "Acquisition":
        if self.method == "package" and not self.files:
            raise ValueError("acquisition.method 'package' needs at least one entry in 'files'")
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
    # Per-file modality where one source mixes them: regex on the relative path -> modality.
    modality_by_path: dict[str, Modality] = Field(default_factory=dict)
    # Radiological display convention: image left is patient right (set false for photos).
    radiological_orientation: Optional[bool] = None

    @field_validator("id")
    @classmethod
    def _id_is_slug(cls, value: str) -> str:
        if not SOURCE_ID.match(value):
            raise ValueError("must be lower-case letters, digits and '_', starting with a letter")
        return value

    @field_validator("organs", "diseases")
    @classmethod
    def _lower_names(cls, values: list[str]) -> list[str]:
        return [v.strip().lower() for v in values]

    def modality_for(self, relative_path: str) -> str:
        for pattern, modality in self.modality_by_path.items():
            if re.search(pattern, relative_path):
                return modality
        return self.modality

    @property
    def is_radiological(self) -> bool:
        if self.radiological_orientation is not None:
            return self.radiological_orientation
        return self.modality in {"ct", "mri", "xray", "pet", "mammography", "nuclear_medicine"}
