"""Parameters of the NIfTI family: image/label pairs, per-case folders, sequences, MSD."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, model_validator

from medtrinity_assets.catalog.layouts.common import Replace, Strict


class NiftiLayout(Strict):
    """NIfTI volumes, each with an optional label volume.

    Three ways to find the pairs, in this order of precedence:
    - ``dataset_json`` (Medical Segmentation Decathlon): the JSON's "training" list gives image
      and label paths, "labels" the label names, "modality" the channel names of 4D images;
    - ``case_glob`` + ``sequences`` (per-case folders, one file per MR sequence, BraTS-style):
      each case folder holds one file per sequence and one label file, found by templates in
      which ``{case}`` is the case folder's name;
    - ``image_glob`` + ``label_replace`` (image and label side by side or in parallel folders);
    - ``image_glob`` + ``structure_glob`` (TotalSegmentator): the label volume is split into one
      binary file per structure (``s0000/ct.nii.gz`` with ``s0000/segmentations/liver.nii.gz``).
    """

    family: Literal["nifti"]
    image_glob: str = "**/*.nii.gz"
    exclude_glob: Optional[str] = None
    label_replace: list[Replace] = Field(default_factory=list)
    # MSD-style dataset description, relative to the source root; the paths it lists are
    # relative to the JSON's own folder.
    dataset_json: Optional[str] = None
    # dataset.json's "test" entries have no labels; they are left out unless this is set, and
    # then sliced every_k like any unlabelled volume.
    include_test: bool = False
    # Per-case folders: glob of case folders, e.g. "*/" or "MICCAI_BraTS2020_TrainingData/*/".
    case_glob: Optional[str] = None
    # Sequence name -> file template inside the case folder, e.g. {flair: "{case}_flair.nii.gz"}.
    sequences: dict[str, str] = Field(default_factory=dict)
    # Label file template inside the case folder, e.g. "{case}_seg.nii.gz".
    label_template: Optional[str] = None
    # Which sequences become records (default: all); each chosen sequence yields its own
    # records for the same slices, sharing the case's label, with ``sequence`` set. Matched
    # case-insensitively against ``sequences`` or dataset.json's "modality" names.
    use_sequences: list[str] = Field(default_factory=list)
    # Axis of the canonical (RAS) volume to slice along: 0 sagittal, 1 coronal, 2 axial.
    slice_axis: Literal[0, 1, 2] = 2
    # Label value -> finding name; empty means {1: the spec's first disease}. With dataset_json
    # the JSON's "labels" name the values and entries here replace them value by value.
    label_names: dict[int, str] = Field(default_factory=dict)
    # Label names (values of label_names / dataset.json) that are findings (tumours, lesions,
    # infection); the others outline anatomy (organs, vessels, heart chambers, grey matter): ROI
    # masks only, kept out of the record's labels, so a slice cutting only them is no finding.
    # None: every label is a finding; []: none is (organ atlases).
    finding_labels: Optional[list[str]] = None
    # For probability maps (e.g. a grey-matter map): voxels >= threshold become label 1.
    label_threshold: Optional[float] = None
    # Regex on the relative path -> what the voxel values are ("SUV", "HU", "raw"); NIfTI
    # headers do not say. Unmatched files: "HU" for CT, else "raw".
    pixel_units: dict[str, Literal["HU", "SUV", "raw"]] = Field(default_factory=dict)
    # Regex on the relative path whose first group names the MR sequence (e.g. "(T1|T2)").
    sequence_regex: Optional[str] = None

    # One binary label file per structure: a glob RELATIVE TO THE FOLDER OF EACH IMAGE FILE,
    # e.g. "segmentations/*.nii.gz" beside s0000/ct.nii.gz. Non-zero voxels (>= label_threshold
    # when set) are inside. Only with image_glob; an image whose glob matches nothing is
    # quarantined (a partial download), not kept unannotated.
    structure_glob: Optional[str] = None
    # File stem (name without .nii / .nii.gz) -> catalog label. Non-empty: stems not listed are
    # ignored. Empty: every file is kept, named by its stem with "_" read as " ". Stems mapped
    # to one label are one region: their masks are joined per slice (lung lobes -> "left lung").
    structure_names: dict[str, str] = Field(default_factory=dict)
    # Labels (structure_names values, or stem names) that are findings (TotalSegmentator's kidney
    # cysts): they enter the record's labels. Other structures are anatomy: ROI masks only.
    finding_structures: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _structure_files_need_image_glob(self) -> "NiftiLayout":
        if not self.structure_glob:
            if self.structure_names or self.finding_structures:
                raise ValueError("layout.structure_names / finding_structures need layout.structure_glob")
            return self
        clashing = [name for name, value in [("dataset_json", self.dataset_json), ("case_glob", self.case_glob),
                                              ("label_replace", self.label_replace), ("label_names", self.label_names)] if value]
        if clashing:
            raise ValueError(f"layout.structure_glob (one file per structure) cannot be combined with {clashing}")
        if self.structure_glob.startswith("/") or ".." in self.structure_glob.split("/"):
            raise ValueError("layout.structure_glob is relative to each image's folder and stays inside it")
        if any(not value.strip() for value in self.structure_names.values()):
            raise ValueError("layout.structure_names values must be non-empty labels (leave a stem out to ignore it)")
        if self.structure_names:
            unknown = set(self.finding_structures) - set(self.structure_names.values())
            if unknown:
                raise ValueError(f"layout.finding_structures names labels not in layout.structure_names: {sorted(unknown)}")
        return self

    @model_validator(mode="after")
    def _finding_labels_are_named(self) -> "NiftiLayout":
        # Names from dataset.json are only known when the file is read; label_names alone can be checked.
        if self.finding_labels and self.label_names and not self.dataset_json:
            unknown = sorted(set(self.finding_labels) - set(self.label_names.values()))
            if unknown:
                raise ValueError(f"layout.finding_labels names labels not in layout.label_names: {unknown}")
        return self

    @model_validator(mode="after")
    def _sequences_need_cases(self) -> "NiftiLayout":
        if self.sequences and not self.case_glob:
            raise ValueError("layout.sequences needs layout.case_glob (the per-case folders)")
        if self.case_glob and not self.sequences:
            raise ValueError("layout.case_glob needs layout.sequences (name -> file template)")
        known = {name.lower() for name in self.sequences}
        unknown = {name for name in self.use_sequences if name.lower() not in known} if self.sequences else set()
        if unknown:
            raise ValueError(f"layout.use_sequences names sequences not in layout.sequences: {sorted(unknown)}")
        return self
