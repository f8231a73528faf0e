"""Parameters of the table-driven families: label CSVs, class folders, caption and VQA files."""

from __future__ import annotations

from functools import lru_cache
from typing import Literal, Optional

from pydantic import Field, field_validator, model_validator

from medtrinity_assets.catalog.layouts.common import Modality, Strict

# Keys of a record's ``source_text`` JSON that publisher text columns may fill.
TextKind = Literal["captions", "notes", "reports"]


def _as_list(value):
    """A single column name or a list of them."""
    return [value] if isinstance(value, str) else value


class MetadataColumns(Strict):
    """Per-image metadata columns of a label table, normalized at ingest into the record's
    ``view``, ``sex`` and ``age_band``; the raw cells (an exact age, a birth year) are never stored.

    ``view``: columns tried in order, the first with a recognised spelling wins (CheXpert:
    ["AP/PA", "Frontal/Lateral"] gives AP or PA for frontal images, lateral for the others).
    ``view_map`` adds the publisher's own spellings to the built-in ones (PA, AP, AP supine, L...).
    ``age`` holds years ("54", or DICOM-style "058Y"); where a publisher gives only the birth year
    (PadChest), ``birth_year`` with ``study_date`` gives the age, to within a year.
    """

    view: list[str] = Field(default_factory=list)
    view_map: dict[str, str] = Field(default_factory=dict)
    sex: Optional[str] = None
    age: Optional[str] = None
    birth_year: Optional[str] = None
    study_date: Optional[str] = None

    @field_validator("view", mode="before")
    @classmethod
    def _one_or_many(cls, value):
        return _as_list(value)

    @model_validator(mode="after")
    def _checks(self) -> "MetadataColumns":
        if self.age and self.birth_year:
            raise ValueError("metadata_columns: give 'age' or 'birth_year', not both")
        if bool(self.birth_year) != bool(self.study_date):
            raise ValueError("metadata_columns.birth_year needs metadata_columns.study_date (and the reverse)")
        return self

    def columns(self) -> list[str]:
        return [*self.view, *(c for c in (self.sex, self.age, self.birth_year, self.study_date) if c)]


class FlagValues(Strict):
    """How the cells of 0/1 label columns (``label_columns``, ``normal_columns``) are read.

    A blank cell is "not mentioned" (unknown). A value in none of the lists is unexpected: the
    row is quarantined with the column and the value named, never read as negative.
    """

    positive: list[str] = Field(default_factory=lambda: ["1", "1.0", "yes", "y", "true", "t"])
    negative: list[str] = Field(default_factory=lambda: ["0", "0.0", "no", "n", "false", "f"])
    # CheXpert's labeller writes -1.0 for "uncertain".
    uncertain: list[str] = Field(default_factory=list)
    # An uncertain finding is read as unknown (no label) unless the spec asks for the
    # "U-Ones" policy, where it counts as the finding.
    uncertain_means: Literal["unknown", "finding"] = "unknown"

    @model_validator(mode="after")
    def _disjoint(self) -> "FlagValues":
        lists = {"positive": self.positive, "negative": self.negative, "uncertain": self.uncertain}
        seen: dict[str, str] = {}
        for name, values in lists.items():
            for value in values:
                key = value.strip().lower()
                if key in seen:
                    raise ValueError(f"flag value {value!r} is in both {seen[key]} and {name}")
                seen[key] = name
        return self

    def state_of(self, key: str) -> str | None:
        """'positive' | 'negative' | 'uncertain' for a lower-cased cell, None when undeclared."""
        return _flag_states(tuple(self.positive), tuple(self.negative), tuple(self.uncertain)).get(key)


@lru_cache(maxsize=64)
def _flag_states(positive: tuple, negative: tuple, uncertain: tuple) -> dict[str, str]:
    # Built once per declaration: a label table's cells are read millions of times.
    return {value.strip().lower(): name for name, values in
            (("positive", positive), ("negative", negative), ("uncertain", uncertain)) for value in values}


class GradeColumn(Strict):
    """A severity / grade column (diabetic retinopathy 0-4): its allowed values, which of them
    mean normal, and the finding each other value names. The value is kept in the record's
    ``grades`` as "<column>=<value>"; a blank cell says nothing."""

    column: str
    values: list[str] = Field(min_length=1)
    # Values with which the publisher says "normal" (APTOS / EyePACS / IDRiD grade 0 = "No DR").
    normal: list[str] = Field(default_factory=list)
    # Value -> finding it names ({"2": moderate diabetic retinopathy}); an allowed value that is
    # neither here nor normal keeps its grade and names no finding (state unknown).
    findings: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _values_declared(self) -> "GradeColumn":
        outside = sorted((set(self.normal) | set(self.findings)) - set(self.values))
        if outside:
            raise ValueError(f"grade column {self.column!r}: values {outside} are not among its values")
        both = sorted(set(self.normal) & set(self.findings))
        if both:
            raise ValueError(f"grade column {self.column!r}: values {both} are both normal and a finding")
        return self


class AllNegative(Strict):
    """What a row with EVERY finding column explicitly negative means, where the publisher
    says so: ISIC 2017 (neither melanoma nor seborrheic keratosis is a nevus) is
    ``{state: finding, label: nevus}``; a table whose flags are exhaustive "all zero = normal"
    is ``{state: normal}``. Without this rule such a row is unknown."""

    state: Literal["finding", "normal"]
    label: Optional[str] = None

    @model_validator(mode="after")
    def _label_fits_state(self) -> "AllNegative":
        if self.state == "finding" and not (self.label or "").strip():
            raise ValueError("all_negative with state 'finding' needs 'label'")
        if self.state == "normal" and self.label:
            raise ValueError("all_negative with state 'normal' takes no 'label'")
        return self


class ImageCsvLayout(Strict):
    """Image folders with a table of labels, one row per image.

    The row's image is found by ``path_template`` (e.g. "images/{id}.jpg"; any column may be
    named in braces) or, where the publisher splits images over several folders
    (HAM10000_images_part_1/_part_2), by looking the id up among the files of ``path_index_glob``
    by file stem or file name (ChestX-ray14 ids carry the ".png"); an id matching several files
    is ambiguous and quarantined.

    Labels: EVERY label column of the table is declared, each with its meaning. Finding flags
    (``label_columns``), flags meaning normal (``normal_columns``, CheXpert "No Finding"), one
    categorical column (``label_column``, its normal values in the spec's ``labels.normal``),
    grade columns (``grade_columns``) and the publisher's rule for an all-negative row
    (``all_negative``). A row is a finding when any of them names one, normal when none does and
    one says normal, else unknown. A declared column absent from the table stops the read with
    the spec field named; a flag or grade value outside what the spec allows quarantines the
    row with the column and the value (the row is not guessed at: an undeclared value may mean
    the spec misreads the publisher's scale, so check-source lists these values).
    """

    family: Literal["image_csv"]
    csv: str
    id_column: str
    path_template: Optional[str] = None
    path_index_glob: Optional[str] = None
    delimiter: str = ","
    # Multi-label: each column is a finding, present when its value is in flag_values.positive.
    label_columns: list[str] = Field(default_factory=list)
    # 0/1 columns whose positive value means the publisher found nothing (CheXpert "No Finding").
    normal_columns: list[str] = Field(default_factory=list)
    flag_values: FlagValues = Field(default_factory=FlagValues)
    grade_columns: list[GradeColumn] = Field(default_factory=list)
    all_negative: Optional[AllNegative] = None
    # Single categorical label column (e.g. "finding", "dx").
    label_column: Optional[str] = None
    # A single label cell holding several findings ("Effusion|Mass") is split on this.
    label_separator: Optional[str] = None
    # The label cell is a Python-style list literal (PadChest "['pleural effusion', 'nodule']").
    label_list_literal: bool = False
    # Per-row modality (mixed X-ray/CT sources): raw value -> catalog modality; rows whose
    # value is not mapped are quarantined rather than described with a guessed modality.
    modality_column: Optional[str] = None
    modality_map: dict[str, Modality] = Field(default_factory=dict)
    # Image files that no row names (found by `path_index_glob`, or by the glob the
    # `path_template` implies: "images/{id}.png" -> "images/*.png"): "quarantine" reports each
    # with reason "image has no metadata row", so a spec check sees a table that does not cover
    # its folder; "ignore" where the folder holds other images on purpose.
    unlisted_images: Literal["quarantine", "ignore"] = "quarantine"
    # Publisher free text kept as the record's source_text after de-identification:
    # {notes: [clinical_notes]} -> source_text {"captions": [], "qa": [], "notes": ["..."]}.
    text_columns: dict[TextKind, list[str]] = Field(default_factory=dict)
    # Columns whose values identify the row (covid-chestxray's "location": a hospital and city):
    # never stored, and scrubbed from the same row's text wherever they appear.
    identifying_columns: list[str] = Field(default_factory=list)
    metadata_columns: Optional[MetadataColumns] = None

    @field_validator("text_columns", mode="before")
    @classmethod
    def _text_column_lists(cls, value):
        return {kind: _as_list(columns) for kind, columns in value.items()} if isinstance(value, dict) else value

    def declared_text_and_metadata_columns(self) -> list[str]:
        """Every column the text, identifying and metadata declarations name (for the header check)."""
        named = [c for columns in self.text_columns.values() for c in columns] + list(self.identifying_columns)
        return named + (self.metadata_columns.columns() if self.metadata_columns else [])

    @model_validator(mode="after")
    def _checks(self) -> "ImageCsvLayout":
        if self.modality_column and not self.modality_map:
            raise ValueError("layout.modality_column needs layout.modality_map")
        if bool(self.path_template) == bool(self.path_index_glob):
            raise ValueError("layout needs exactly one of 'path_template' or 'path_index_glob'")
        if self.label_list_literal and (self.label_separator or not self.label_column):
            raise ValueError("layout.label_list_literal needs layout.label_column and no label_separator")
        if self.all_negative and not self.label_columns:
            raise ValueError("layout.all_negative needs layout.label_columns (the flags it speaks of)")
        declared = [*self.label_columns, *self.normal_columns, *(g.column for g in self.grade_columns)]
        declared += [self.label_column] if self.label_column else []
        repeated = sorted({c for c in declared if declared.count(c) > 1})
        if repeated:
            raise ValueError(f"label column(s) {repeated} declared twice (label_columns, normal_columns, grade_columns, label_column)")
        return self

    def label_fields(self) -> list[tuple[str, str]]:
        """(spec field, column) of every label column the layout declares, for error messages."""
        fields = [(f"layout.label_columns[{i}]", c) for i, c in enumerate(self.label_columns)]
        fields += [(f"layout.normal_columns[{i}]", c) for i, c in enumerate(self.normal_columns)]
        fields += [(f"layout.grade_columns[{i}].column", g.column) for i, g in enumerate(self.grade_columns)]
        if self.label_column:
            fields.append(("layout.label_column", self.label_column))
        return fields


class ImageFolderLayout(Strict):
    """Plain images (class folders or a flat folder), no annotations."""

    family: Literal["image_folder"]
    image_glob: str
    exclude_glob: Optional[str] = None


class CaptionsLayout(Strict):
    """Image-caption and visual-question-answer sets (ROCO, MedICaT, VQA-RAD, SLAKE, PathVQA).

    The publisher's text is kept as the record's ``source_text`` (JSON: {"captions": [...],
    "qa": [{"question", "answer"}]}) beside the generated description; it is never replaced.
    Several rows naming one image (VQA) are grouped into one record.
    """

    family: Literal["captions"]
    # The annotation file, relative to the root: JSON (a list, or a list under `records_key`),
    # JSON Lines, or a delimited text/CSV file.
    annotations: str
    format: Literal["json", "jsonl", "csv"] = "json"
    records_key: Optional[str] = None  # e.g. "annotations"; None = the file is the list itself
    delimiter: str = ","
    # For delimited files without a header row (ROCO captions.txt: "ROCO_00002<TAB>caption").
    columns: list[str] = Field(default_factory=list)
    image_field: str
    # Template of the image path from the field's value: "images/{value}" or "{value}.jpg".
    image_template: str = "{value}"
    caption_field: Optional[str] = None
    question_field: Optional[str] = None
    answer_field: Optional[str] = None
    # Keep only rows whose `language_field` is one of `languages` (SLAKE mixes en and zh).
    language_field: Optional[str] = None
    languages: list[str] = Field(default_factory=list)
    # Per-row modality: field -> catalog modality (SLAKE "modality": "CT"/"MRI"/"X-Ray").
    modality_field: Optional[str] = None
    modality_map: dict[str, Modality] = Field(default_factory=dict)
    # Per-row anatomy: field -> organs (SLAKE "location": "Lung" -> [lung]). An image's organs
    # are those of all its rows; values the map does not name fall back to the spec's organs.
    organ_field: Optional[str] = None
    organ_map: dict[str, list[str]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _checks(self) -> "CaptionsLayout":
        if not (self.caption_field or (self.question_field and self.answer_field)):
            raise ValueError("layout needs 'caption_field', or 'question_field' and 'answer_field'")
        if self.modality_field and not self.modality_map:
            raise ValueError("layout.modality_field needs layout.modality_map")
        if self.organ_field and not self.organ_map:
            raise ValueError("layout.organ_field needs layout.organ_map")
        if self.format == "csv" and self.records_key:
            raise ValueError("layout.records_key applies to JSON files only")
        return self
