"""Publisher text and per-image metadata from label tables: clinical notes kept de-identified as
source_text, view / sex / age band normalized, the exact age and identifying columns never stored."""

from __future__ import annotations

import csv
import json
import shutil

import pyarrow.parquet as pq
import pytest
from conftest import REALDATA, needs_realdata
from pydantic import ValidationError
from spec_factory import build_spec

from medtrinity_assets import schemas
from medtrinity_assets.catalog.load import load_spec
from medtrinity_assets.imaging.deid_text import deidentify_text
from medtrinity_assets.paths import REPO_ROOT, DataRoot
from medtrinity_assets.sources import read_source
from medtrinity_assets.sources.base import IngestContext, Quarantined
from medtrinity_assets.sources.publisher_text import age_band, normalize_sex, normalize_view, parse_age_years
from medtrinity_assets.stages import run_ingest
from medtrinity_assets.storage import BlobStore

COVID = REALDATA / "covid_chestxray"
CXR = REALDATA / "cxr_samples"


def _read(spec, root, tmp_path):
    ctx = IngestContext(spec=spec, root=root, blobs=BlobStore(tmp_path / "var"), salt="test-salt")
    items = list(read_source(ctx))
    return [i for i in items if isinstance(i, dict)], [i for i in items if isinstance(i, Quarantined)]


@pytest.mark.parametrize(
    "raw, view",
    [("PA", "PA"), ("POSTEROANTERIOR", "PA"), ("AP", "AP"), ("AP Supine", "AP supine"), ("AP_horizontal", "AP supine"),
     ("L", "lateral"), ("Lateral", "lateral"), ("LL", "lateral"), ("Axial", "axial"), ("MLO", "MLO"),
     ("COSTAL", None), ("EXCLUDE", None), ("", None), (None, None)],
)
def test_view_spellings(raw, view):
    assert normalize_view(raw) == view


def test_sex_age_and_bands():
    assert [normalize_sex(v) for v in ("M", "f", "Female", "MALE", "O", "Unknown", "", None)] == [
        "male", "female", "female", "male", None, None, None, None]
    assert [parse_age_years(v) for v in ("54", "54.0", "058Y", "006M", "x", "413", "-3")] == [54, 54, 58, 0.5, None, None, None]
    assert [age_band(v) for v in (0.5, 9, 10, 54, 89.9, 90, 104, None)] == ["0-9", "0-9", "10-19", "50-59", "80-89", "90+", "90+", None]
    assert normalize_view("Frontal view", {"frontal view": "frontal"}) == "frontal"


def test_layout_declarations_are_checked():
    base = {"family": "image_csv", "csv": "m.csv", "id_column": "id", "path_template": "{id}"}
    with pytest.raises(ValidationError, match="captions', 'notes' or 'reports"):
        build_spec(layout={**base, "text_columns": {"history": ["notes"]}})
    with pytest.raises(ValidationError, match="not both"):
        build_spec(layout={**base, "metadata_columns": {"age": "age", "birth_year": "born", "study_date": "d"}})
    with pytest.raises(ValidationError, match="birth_year needs"):
        build_spec(layout={**base, "metadata_columns": {"birth_year": "born"}})
    with pytest.raises(ValidationError, match="extra_forbidden|Extra inputs"):
        build_spec(layout={**base, "metadata_columns": {"weight": "kg"}})


@needs_realdata
def test_covid_notes_become_deidentified_source_text_and_metadata_is_normalized(tmp_path):
    spec = load_spec(REPO_ROOT / "data" / "sources" / "covid_chestxray.yaml")
    records, _ = _read(spec, COVID, tmp_path)
    with open(COVID / "metadata.csv", newline="", encoding="utf-8") as handle:
        rows = {f"{r['folder']}/{r['filename']}": r for r in csv.DictReader(handle)}
    assert len(records) == 19
    for record in records:
        row = rows[record["source_file"]]
        expected_view = {"PA": "PA", "AP": "AP", "L": "lateral", "Axial": "axial"}[row["view"]]
        assert record["view"] == expected_view
        assert record["sex"] == {"M": "male", "F": "female", "": None}[row["sex"]]
        assert record["age_band"] == (f"{int(row['age']) // 10 * 10}-{int(row['age']) // 10 * 10 + 9}" if row["age"] else None)
        text = json.loads(record["source_text"])
        assert text["captions"] == [] and text["qa"] == [] and len(text["notes"]) == 1
        known = [row["location"], *[p.strip() for p in row["location"].split(",") if len(p.strip()) >= 4], row["date"], row["patientid"]]
        assert text["notes"][0] == deidentify_text(row["clinical_notes"], [k for k in known if k])
        dumped = json.dumps({k: v for k, v in record.items() if k not in ("record_id", "patient_hash", "pixel_ref")})
        # Dates, places and credits of the row never reach the record; the exact age neither.
        assert all(value not in dumped for value in (row["location"], row["date"], "Radiopaedia") if value)
        # (Ages under 90 inside the notes are kept, as HIPAA allows: "a 55-year-old woman".)
        without_text = json.dumps({k: v for k, v in record.items() if k in schemas.RAW_RECORDS.names and k != "source_text"})
        assert row["age"] == "" or f'"{row["age"]}"' not in without_text
    taiwan = [json.loads(r["source_text"])["notes"][0] for r in records if rows[r["source_file"]]["view"] == "AP"
              and rows[r["source_file"]]["patientid"] == "19"]
    assert len(taiwan) == 4 and all(note.startswith("On [date], a 55-year-old woman") for note in taiwan)
    assert all("January" not in note and "Taoyuan" not in note for note in taiwan)
    # The findings the descriptions lack are kept word for word.
    notes = " ".join(json.loads(r["source_text"])["notes"][0] for r in records)
    assert "consolidation along the left costal margin" in notes and "rounded opacity in the right lower zone" in notes


def test_chestxray14_columns_fill_view_sex_and_age_band(tmp_path):
    """Two real ChestX-ray14 table rows (v2020 header) and images named like the release's."""
    root = tmp_path / "nih"
    (root / "images_001" / "images").mkdir(parents=True)
    source_png = CXR / "00000001_000.png"
    for name in ("00000001_000.png", "00000001_001.png", "00000002_000.png"):
        if source_png.is_file():
            shutil.copy(source_png, root / "images_001" / "images" / name)
        else:  # without realdata: any real PNG the installed scikit-image ships
            import skimage

            shutil.copy(f"{skimage.data_dir}/camera.png", root / "images_001" / "images" / name)
    header = ["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age", "Patient Gender", "View Position",
              "OriginalImage[Width", "Height]", "OriginalImagePixelSpacing[x", "y]"]
    with open(root / "Data_Entry_2017_v2020.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerow(["00000001_000.png", "Cardiomegaly", "0", "1", "57", "M", "PA", "2682", "2749", "0.143", "0.143"])
        writer.writerow(["00000001_001.png", "Cardiomegaly|Emphysema", "1", "1", "58", "M", "PA", "2894", "2729", "0.143", "0.143"])
        writer.writerow(["00000002_000.png", "No Finding", "0", "2", "413", "F", "AP", "2500", "2048", "0.171", "0.171"])
    spec = load_spec(REPO_ROOT / "data" / "sources" / "chestxray14.yaml").model_copy(update={"root": str(root)})
    records, quarantined = _read(spec, root, tmp_path)
    assert quarantined == []
    got = {r["source_file"].split("/")[-1]: (r["view"], r["sex"], r["age_band"], r["source_text"]) for r in records}
    assert got == {"00000001_000.png": ("PA", "male", "50-59", None), "00000001_001.png": ("PA", "male", "50-59", None),
                   "00000002_000.png": ("AP", "female", None, None)}  # 413 is a typo, not an age


def test_a_declared_column_absent_from_the_csv_is_named(tmp_path):
    import skimage

    root = tmp_path / "src"
    root.mkdir()
    shutil.copy(f"{skimage.data_dir}/camera.png", root / "a.png")
    (root / "m.csv").write_text("id,finding\na.png,x\n")
    layout = {"family": "image_csv", "csv": "m.csv", "id_column": "id", "path_template": "{id}",
              "text_columns": {"notes": "clinical_notes"}, "metadata_columns": {"sex": "sex"}}
    records, quarantined = _read(build_spec(root=str(root), layout=layout), root, tmp_path)
    assert records == [] and len(quarantined) == 1
    assert "lacks column(s) clinical_notes, sex" in quarantined[0].reason


def test_planted_identifiers_in_a_notes_column_never_reach_raw_records(tmp_path):
    import skimage

    root = tmp_path / "src"
    root.mkdir()
    shutil.copy(f"{skimage.data_dir}/camera.png", root / "a.png")
    note = ("Mr. Zyxwv Plantedname, 93-year-old, MRN PLANTED-MRN-83311, seen at Plantedinstitution Qwert Hospital on "
            "03/02/2020 (call 617-555-0142). Rounded opacity in the right lower zone.")
    with open(root / "m.csv", "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([["id", "pid", "site", "age", "notes"], ["a.png", "P-77120", "Quxville Clinic East", "93", note]])
    layout = {"family": "image_csv", "csv": "m.csv", "id_column": "id", "path_template": "{id}",
              "text_columns": {"notes": "notes"}, "identifying_columns": ["site"], "metadata_columns": {"age": "age"}}
    spec = build_spec(root=str(root), layout=layout, patient={"source": "column", "column": "pid"})
    data_root = DataRoot(tmp_path / "out")
    assert run_ingest(spec, data_root, salt="s").rows == 1
    table = pq.read_table(data_root.table("raw_records", spec.id))
    assert table.schema.names == schemas.RAW_RECORDS.names
    (row,) = table.to_pylist()
    notes = json.loads(row["source_text"])["notes"]
    assert notes == ["[name], [age 90 or older], MRN [id], seen at [institution] on [date] (call [phone]). "
                     "Rounded opacity in the right lower zone."]
    assert row["age_band"] == "90+"
    # Hashes and blob paths are hex: a planted "93" may occur in them by chance.
    dumped = json.dumps({k: v for k, v in row.items() if k not in ("record_id", "patient_hash", "pixel_ref")})
    for planted in ("Zyxwv", "Plantedname", "PLANTED-MRN", "Plantedinstitution", "03/02/2020", "617-555", "93", "Quxville", "P-77120"):
        assert planted not in dumped


def test_captions_and_qa_pass_through_the_same_deidentification(tmp_path):
    import skimage

    root = tmp_path / "vqa"
    (root / "images").mkdir(parents=True)
    shutil.copy(f"{skimage.data_dir}/camera.png", root / "images" / "case1.png")
    (root / "captions.json").write_text(json.dumps([
        {"image": "case1.png", "caption": "Chest radiograph of Mrs Plantedname on 12 March 2019: left lower lobe consolidation."},
        {"image": "case1.png", "question": "Who referred the patient?", "answer": "Dr. Qwrtz Plantedreferrer"},
    ]))
    layout = {"family": "captions", "annotations": "captions.json", "image_field": "image",
              "image_template": "images/{value}", "caption_field": "caption", "question_field": "question",
              "answer_field": "answer"}
    records, quarantined = _read(build_spec(root=str(root), layout=layout, modality="xray"), root, tmp_path)
    assert quarantined == [] and len(records) == 1
    assert json.loads(records[0]["source_text"]) == {
        "captions": ["Chest radiograph of [name] on [date]: left lower lobe consolidation."],
        "qa": [{"question": "Who referred the patient?", "answer": "[name]"}],
    }
