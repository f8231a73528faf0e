"""Three label states (finding / normal / unknown), grades and context slices.

Real files from ../shared/realdata (ISIC 2017, BUSI, covid-chestxray, IBSI NIfTI) read through
the catalog specs; small label tables written here for what the real copies do not hold
(CheXpert -1 / blank, grade columns, an all-negative rule, absent and unexpected columns).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image
from pydantic import ValidationError

from medtrinity_assets import stages
from medtrinity_assets.catalog.load import load_spec, source_root
from medtrinity_assets.paths import REPO_ROOT, DataRoot
from medtrinity_assets.sources import read_source
from medtrinity_assets.sources.base import IngestContext, Quarantined
from medtrinity_assets.sources.check import check_source
from medtrinity_assets.sources.label_state import label_state_of
from medtrinity_assets.storage import BlobStore
from medtrinity_assets_tests.conftest import REALDATA, needs_realdata
from medtrinity_assets_tests.spec_factory import build_spec

CATALOG = REPO_ROOT / "data" / "sources"


def read_items(spec, root, tmp_path):
    ctx = IngestContext(spec=spec, root=Path(root), blobs=BlobStore(tmp_path / "var"), salt="test-salt")
    items = list(read_source(ctx))
    return [i for i in items if isinstance(i, dict)], [i for i in items if isinstance(i, Quarantined)]


def read_catalog_source(source_id, tmp_path):
    spec = load_spec(CATALOG / f"{source_id}.yaml")
    return read_items(spec, source_root(spec), tmp_path)


def write_table(path: Path, rows: list[list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        csv.writer(handle).writerows(rows)


def write_images(root: Path, names: list[str]) -> None:
    for seed, name in enumerate(names):
        path = root / "imgs" / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.random.default_rng(seed).integers(0, 256, (6, 6, 3), dtype=np.uint8)).save(path)


def csv_spec(layout: dict, **fields):
    base = {"family": "image_csv", "csv": "labels.csv", "id_column": "id", "path_template": "imgs/{id}.png"}
    fields = {"modality": "xray", "organs": ["lung"], **fields}
    return build_spec(annotation_kinds=["label"], layout={**base, **layout}, **fields)


# ---------------------------------------------------------------- real files


@needs_realdata
def test_isic2017_melanoma_zero_is_unknown_never_normal(tmp_path):
    records, _ = read_catalog_source("isic2017", tmp_path)
    truth = {}
    with open(REALDATA / "isic2017" / "ISIC-2017_Training_Classes.csv") as handle:
        for row in csv.DictReader(handle):
            truth[row["image_id"]] = float(row["melanoma"])
    assert len(records) == 24
    for record in records:
        image_id = Path(record["source_file"]).stem
        if truth[image_id] == 1.0:
            assert (record["label_state"], record["labels"]) == ("finding", ["melanoma"])
        else:
            # The copy lacks the seborrheic_keratosis column: nevus or keratosis cannot be told.
            assert (record["label_state"], record["labels"]) == ("unknown", [])
    assert {r["label_state"] for r in records} == {"finding", "unknown"}


@needs_realdata
def test_busi_normal_folder_is_normal_and_lesions_are_findings(tmp_path):
    records, quarantined = read_catalog_source("busi", tmp_path)
    assert quarantined == []
    for record in records:
        folder = record["source_file"].split("/")[0]
        annotations = json.loads(record["annotations"])
        if folder == "normal":
            assert record["label_state"] == "normal" and record["labels"] == [] and annotations == []
        else:
            assert record["label_state"] == "finding" and annotations
            assert record["labels"] == [f"{folder} breast tumor"]
    states = [r["label_state"] for r in records]
    assert states.count("normal") == len(list((REALDATA / "busi" / "normal" / "images").glob("*.png"))) > 0


@needs_realdata
def test_covid_chestxray_findings_and_lung_boxes_are_not_findings(tmp_path):
    records, _ = read_catalog_source("covid_chestxray", tmp_path)
    assert records and all(r["label_state"] == "finding" for r in records)
    boxed = [r for r in records if json.loads(r["annotations"])]
    assert boxed, "the real copy has lung boxes on some X-rays"
    for record in boxed:
        assert not {"right lung", "left lung"} & set(record["labels"])


@needs_realdata
def test_ibsi_nifti_context_slices_are_unknown_and_keep_no_lesion_label(tmp_path):
    records, _ = read_catalog_source("ibsi_sts_nifti", tmp_path)
    context = [r for r in records if r["slice_role"] == "context"]
    annotated = [r for r in records if r["slice_role"] == "annotated"]
    assert context and annotated and len(context) + len(annotated) == len(records)
    for record in context:
        assert record["label_state"] == "unknown" and record["labels"] == []
        assert json.loads(record["annotations"]) == []
    for record in annotated:
        assert record["label_state"] == "finding" and record["labels"] == ["soft-tissue sarcoma"]
    # Context slices lie outside the annotated run of slices, on both sides of it.
    for source_file in {r["source_file"] for r in records}:
        cut = sorted(r["slice_index"] for r in annotated if r["source_file"] == source_file)
        beside = sorted(r["slice_index"] for r in context if r["source_file"] == source_file)
        assert beside and all(i < cut[0] or i > cut[-1] for i in beside)


@needs_realdata
def test_ibsi_dicom_series_context_slices_beside_the_rtstruct(tmp_path):
    from medtrinity_assets.catalog.spec import Slicing

    spec = load_spec(CATALOG / "ibsi_sts_dicom.yaml")
    # Room for the context slices (the catalog's budget of 24 thins them away first).
    spec = spec.model_copy(update={"slicing": Slicing(rule="annotated_plus_context", context=2, max_slices=60)})
    records, _ = read_items(spec, source_root(spec), tmp_path)
    roles = {r["slice_role"] for r in records}
    assert roles == {"annotated", "context"}
    for record in records:
        has_mask = bool(json.loads(record["annotations"]))
        assert (record["slice_role"] == "annotated") == has_mask
        expected = ("finding", ["soft-tissue sarcoma"]) if has_mask else ("unknown", [])
        assert (record["label_state"], record["labels"]) == expected


@needs_realdata
def test_context_slices_drop_a_label_the_whole_volume_carries(tmp_path):
    # A fixed (volume-wide) label names the lesion; a slice beside it still does not show it.
    from medtrinity_assets.catalog.spec import Labels

    spec = load_spec(CATALOG / "ibsi_sts_nifti.yaml")
    spec = spec.model_copy(update={"labels": Labels(source="fixed", fixed=["soft-tissue sarcoma"])})
    records, _ = read_items(spec, source_root(spec), tmp_path)
    context = [r for r in records if r["slice_role"] == "context"]
    assert context and all(r["labels"] == [] and r["label_state"] == "unknown" for r in context)


@needs_realdata
def test_run_ingest_writes_the_columns_and_check_source_counts_states(tmp_path):
    spec = load_spec(CATALOG / "busi.yaml")
    data_root = DataRoot(tmp_path / "var")
    stages.run_ingest(spec, data_root, salt="test-salt")
    rows = pl.read_parquet(data_root.table("raw_records", "busi"))
    assert {"label_state", "grades", "slice_role"} <= set(rows.columns)
    counted = rows.group_by("label_state").len().sort("label_state").rows()
    report = check_source(spec)
    assert dict(counted) == {k: v for k, v in report.label_states.items() if v}
    assert "label states: finding" in report.render()


# ---------------------------------------------------------------- label tables written here


def test_chexpert_style_flags_uncertain_blank_and_no_finding(tmp_path):
    root = tmp_path / "src"
    rows = [
        ["id", "No Finding", "Edema", "Pneumonia"],
        ["a", "", "1.0", "-1.0"],  # positive edema, uncertain pneumonia
        ["b", "", "-1.0", ""],  # uncertain only
        ["c", "1.0", "", ""],  # the labeller's normal
        ["d", "", "0.0", "0.0"],  # all negative, no rule: unknown
        ["e", "", "", ""],  # nothing mentioned
    ]
    write_table(root / "labels.csv", rows)
    write_images(root, [r[0] for r in rows[1:]])
    flags = {"positive": ["1.0"], "negative": ["0.0"], "uncertain": ["-1.0"]}
    spec = csv_spec({"label_columns": ["Edema", "Pneumonia"], "normal_columns": ["No Finding"], "flag_values": flags})
    records, quarantined = read_items(spec, root, tmp_path)
    assert quarantined == []
    got = {Path(r["source_file"]).stem: (r["label_state"], r["labels"]) for r in records}
    assert got == {
        "a": ("finding", ["edema"]),
        "b": ("unknown", []),
        "c": ("normal", []),
        "d": ("unknown", []),
        "e": ("unknown", []),
    }
    # "U-Ones": the publisher's alternative reading, uncertain counts as the finding.
    spec = csv_spec({"label_columns": ["Edema", "Pneumonia"], "normal_columns": ["No Finding"],
                     "flag_values": {**flags, "uncertain_means": "finding"}})
    records, _ = read_items(spec, root, tmp_path)
    got = {Path(r["source_file"]).stem: r["labels"] for r in records}
    assert got["a"] == ["edema", "pneumonia"] and got["b"] == ["edema"]


def test_all_negative_rule_isic2017_nevus_and_all_zero_normal(tmp_path):
    root = tmp_path / "src"
    rows = [["id", "melanoma", "seborrheic_keratosis"], ["m", "1.0", "0.0"], ["s", "0.0", "1.0"],
            ["n", "0.0", "0.0"], ["blank", "0.0", ""]]
    write_table(root / "labels.csv", rows)
    write_images(root, ["m", "s", "n", "blank"])
    layout = {"label_columns": ["melanoma", "seborrheic_keratosis"], "all_negative": {"state": "finding", "label": "nevus"}}
    spec = csv_spec(layout, labels={"rename": {"seborrheic_keratosis": "seborrheic keratosis"}})
    records, quarantined = read_items(spec, root, tmp_path)
    assert quarantined == []
    got = {Path(r["source_file"]).stem: (r["label_state"], r["labels"]) for r in records}
    assert got == {
        "m": ("finding", ["melanoma"]),
        "s": ("finding", ["seborrheic keratosis"]),
        "n": ("finding", ["nevus"]),  # the publisher's rule, not a guess
        "blank": ("unknown", []),  # one flag not given: the rule does not apply
    }
    spec = csv_spec({**layout, "all_negative": {"state": "normal"}})
    records, _ = read_items(spec, root, tmp_path)
    got = {Path(r["source_file"]).stem: r["label_state"] for r in records}
    assert got == {"m": "finding", "s": "finding", "n": "normal", "blank": "unknown"}


def test_grade_columns_keep_grades_and_quarantine_unexpected_values(tmp_path):
    root = tmp_path / "src"
    rows = [["id", "diagnosis"], ["g0", "0"], ["g2", "2"], ["g4f", "4.0"], ["bad", "7"], ["worse", "severe"], ["none", ""]]
    write_table(root / "labels.csv", rows)
    write_images(root, [r[0] for r in rows[1:]])
    grade = {"column": "diagnosis", "values": ["0", "1", "2", "3", "4"], "normal": ["0"],
             "findings": {"2": "moderate diabetic retinopathy", "4": "proliferative diabetic retinopathy"}}
    spec = csv_spec({"grade_columns": [grade]}, modality="fundus", organs=["eye"])
    records, quarantined = read_items(spec, root, tmp_path)
    got = {Path(r["source_file"]).stem: (r["label_state"], r["labels"], r["grades"]) for r in records}
    assert got == {
        "g0": ("normal", [], ["diagnosis=0"]),
        "g2": ("finding", ["moderate diabetic retinopathy"], ["diagnosis=2"]),
        "g4f": ("finding", ["proliferative diabetic retinopathy"], ["diagnosis=4"]),
        "none": ("unknown", [], []),
    }
    reasons = sorted(q.reason for q in quarantined)
    assert len(reasons) == 2
    assert all("column 'diagnosis' (layout.grade_columns[0])" in reason for reason in reasons)
    assert "'7'" in reasons[0] and "'severe'" in reasons[1]

    report = check_source(spec, root)
    assert report.unexpected_label_values == {"column 'diagnosis' (layout.grade_columns[0])": {"'7'": 1, "'severe'": 1}}
    text = report.render()
    assert "Label values the spec does not declare" in text and "'7' x1" in text and "'severe' x1" in text
    assert report.label_states == {"finding": 2, "normal": 1, "unknown": 1}


def test_unexpected_flag_value_is_reported_not_read_as_negative(tmp_path):
    root = tmp_path / "src"
    write_table(root / "labels.csv", [["id", "Edema"], ["a", "1"], ["b", "maybe"]])
    write_images(root, ["a", "b"])
    records, quarantined = read_items(csv_spec({"label_columns": ["Edema"]}), root, tmp_path)
    assert [Path(r["source_file"]).stem for r in records] == ["a"]
    assert len(quarantined) == 1 and "'maybe' in column 'Edema' (layout.label_columns[0])" in quarantined[0].reason


def test_absent_label_column_fails_check_source_naming_file_and_field(tmp_path):
    root = tmp_path / "src"
    write_table(root / "labels.csv", [["id", "melanoma"], ["a", "1.0"]])
    write_images(root, ["a"])
    spec = csv_spec({"label_columns": ["melanoma", "seborrheic_keratosis"],
                     "grade_columns": [{"column": "grade", "values": ["0", "1"]}]})
    report = check_source(spec, root)
    assert not report.matched  # the CLI exits 1 on this
    problem = " ".join(report.problems)
    assert "labels.csv" in problem
    assert "layout.label_columns[1] names column 'seborrheic_keratosis'" in problem
    assert "layout.grade_columns[0].column names column 'grade'" in problem
    # Ingest: the same reason in the quarantine, no crash, no record with a guessed state.
    data_root = DataRoot(tmp_path / "var")
    spec = spec.model_copy(update={"root": str(root)})
    report = stages.run_ingest(spec, data_root, salt="s")
    assert report.rows == 0 and report.quarantined == 1
    reason = pl.read_parquet(data_root.quarantine("raw_records", spec.id))["reason"][0]
    assert "seborrheic_keratosis" in reason and "labels.csv" in reason


def test_categorical_column_normal_value_and_unknown_placeholder(tmp_path):
    root = tmp_path / "src"
    write_table(root / "labels.csv", [["id", "finding"], ["a", "No Finding"], ["b", "Mass|Effusion"], ["c", "todo"], ["d", ""]])
    write_images(root, ["a", "b", "c", "d"])
    spec = csv_spec({"label_column": "finding", "label_separator": "|"},
                    labels={"normal": ["No Finding"], "rename": {"todo": "", "Effusion": "pleural effusion"}})
    records, _ = read_items(spec, root, tmp_path)
    got = {Path(r["source_file"]).stem: (r["label_state"], r["labels"]) for r in records}
    assert got == {"a": ("normal", []), "b": ("finding", ["mass", "pleural effusion"]), "c": ("unknown", []), "d": ("unknown", [])}


def test_class_folders_normal_finding_and_renamed_away(tmp_path):
    root = tmp_path / "src"
    for folder in ("polyps", "normal-cecum", "retroflex-rectum"):
        path = root / folder / "x.png"
        path.parent.mkdir(parents=True)
        Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(path)
    spec = build_spec(layout={"family": "image_folder", "image_glob": "*/*.png"},
                      labels={"source": "folder", "normal": ["normal-cecum"],
                              "rename": {"polyps": "colorectal polyp", "retroflex-rectum": ""}})
    records, _ = read_items(spec, root, tmp_path)
    got = {r["source_file"].split("/")[0]: (r["label_state"], r["labels"]) for r in records}
    assert got == {"polyps": ("finding", ["colorectal polyp"]), "normal-cecum": ("normal", []),
                   "retroflex-rectum": ("unknown", [])}


def test_anatomy_masks_do_not_make_findings(tmp_path):
    root = tmp_path / "src"
    for name, cls in (("a", "sick"), ("b", "healthy")):
        for kind in ("images", "masks"):
            path = root / cls / kind / f"{name}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            array = np.zeros((8, 8), dtype=np.uint8)
            if kind == "masks":
                array[2:6, 2:6] = 255
            Image.fromarray(array).save(path)
    layout = {"family": "image_mask", "image_glob": "*/images/*.png", "mask_replace": [{"old": "/images/", "new": "/masks/"}],
              "mask_label": "lung"}
    labels = {"source": "folder", "normal": ["healthy"], "rename": {"sick": ""}}
    records, _ = read_items(build_spec(layout={**layout, "masks_are_findings": False}, labels=labels), root, tmp_path)
    got = {r["source_file"].split("/")[0]: (r["label_state"], r["labels"]) for r in records}
    assert got == {"sick": ("unknown", []), "healthy": ("normal", [])}
    # The same masks declared as lesions: the annotated ROI is a finding, whatever the folder.
    records, _ = read_items(build_spec(layout=layout, labels=labels), root, tmp_path)
    assert {(r["label_state"], tuple(r["labels"])) for r in records} == {("finding", ("lung",))}


def test_label_state_of_falls_back_without_ever_saying_normal():
    assert label_state_of({"label_state": "normal", "labels": []}) == "normal"
    assert label_state_of({"labels": ["melanoma"]}) == "finding"
    assert label_state_of({"labels": []}) == "unknown"
    assert label_state_of({"labels": None}) == "unknown"
    assert label_state_of({"label_state": None, "labels": ["x"], "slice_role": "context"}) == "unknown"


def test_spec_errors_name_the_field():
    with pytest.raises(ValidationError, match="normal"):
        build_spec(labels={"normal": ["0"], "rename": {"0": ""}})
    with pytest.raises(ValidationError, match="values \\['5'\\] are not among its values"):
        csv_spec({"grade_columns": [{"column": "g", "values": ["0", "1"], "findings": {"5": "x"}}]})
    with pytest.raises(ValidationError, match="all_negative with state 'finding' needs 'label'"):
        csv_spec({"label_columns": ["a"], "all_negative": {"state": "finding"}})
    with pytest.raises(ValidationError, match="all_negative needs layout.label_columns"):
        csv_spec({"all_negative": {"state": "normal"}})
    with pytest.raises(ValidationError, match="declared twice"):
        csv_spec({"label_columns": ["a"], "normal_columns": ["a"]})
    with pytest.raises(ValidationError, match="extra"):
        csv_spec({"grade_columns": [{"column": "g", "values": ["0"], "normals": ["0"]}]})
    with pytest.raises(ValidationError, match="finding_labels names labels not in layout.label_names"):
        build_spec(layout={"family": "nifti", "image_glob": "*.nii.gz", "label_replace": [{"old": "a", "new": "b"}],
                           "label_names": {1: "liver"}, "finding_labels": ["liver tumour"]})


def test_a_bad_label_declaration_in_a_yaml_names_the_file_and_field(tmp_path):
    import yaml

    from medtrinity_assets.catalog.load import CatalogError
    from medtrinity_assets_tests.spec_factory import PLACEHOLDER_METADATA

    spec = {**PLACEHOLDER_METADATA, "id": "bad_grades", "layout": {
        "family": "image_csv", "csv": "t.csv", "id_column": "id", "path_template": "{id}.png",
        "grade_columns": [{"column": "level", "values": ["0", "1"], "normal": ["5"]}]}}
    path = tmp_path / "bad_grades.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(CatalogError) as caught:
        load_spec(path)
    message = str(caught.value)
    assert str(path) in message and "layout.image_csv.grade_columns.0" in message and "'level'" in message


def test_every_catalog_spec_with_a_label_table_declares_its_columns_once():
    # Guards the catalog edits: every spec still loads, and label columns are never repeated.
    from medtrinity_assets.catalog.load import load_catalog

    catalog = load_catalog()
    tables = [spec for spec in catalog.values() if spec.layout.family == "image_csv"]
    assert tables
    for spec in tables:
        columns = [column for _, column in spec.layout.label_fields()]
        assert columns, f"{spec.id} declares no label column"
        assert len(columns) == len(set(columns))
    assert catalog["chexpert"].layout.normal_columns == ["No Finding"]
    assert "-1.0" in catalog["chexpert"].layout.flag_values.uncertain
