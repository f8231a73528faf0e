"""No silent corruption: a mask, a label or a series that cannot be read as the spec says is
quarantined with the reason (or read the way the spec declares), never quietly turned into
something else. Fixtures are real files written by Pillow, the csv module and pydicom.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from spec_factory import build_spec

from medtrinity_assets.sources import read_source
from medtrinity_assets.sources.base import IngestContext, Quarantined
from medtrinity_assets.storage import BlobStore


def run_spec(tmp_path: Path, spec, root: Path):
    ctx = IngestContext(spec=spec, root=root, blobs=BlobStore(tmp_path / "var"), salt="test-salt")
    items = list(read_source(ctx))
    records = [item for item in items if isinstance(item, dict)]
    quarantined = [item for item in items if isinstance(item, Quarantined)]
    return ctx, records, quarantined


def save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def stored_masks(ctx, record: dict) -> list[np.ndarray]:
    return [np.asarray(ctx.blobs.get_array(a["mask_ref"])) for a in json.loads(record["annotations"])]


# ---------------------------------------------------------------- mask values

MASK_LAYOUT = {"family": "image_mask", "image_glob": "images/*.png", "mask_replace": [{"old": "images/", "new": "masks/"}]}


def four_value_mask() -> np.ndarray:
    """A mask with regions of values 1, 2, 77 and 200: a class or id mask, not a binary one."""
    mask = np.zeros((40, 40), np.uint8)
    mask[2:10, 2:10], mask[12:20, 2:10], mask[2:10, 12:20], mask[22:30, 22:30] = 1, 2, 77, 200
    return mask


def write_mask_source(root: Path, mask: np.ndarray) -> None:
    save(root / "images" / "a.png", np.full((40, 40), 90, np.uint8))
    save(root / "masks" / "a.png", mask)


def test_binary_mask_with_unexpected_values_is_quarantined_naming_them(tmp_path):
    root = tmp_path / "src"
    write_mask_source(root, four_value_mask())
    spec = build_spec(layout=MASK_LAYOUT, root=str(root), modality="ultrasound", diseases=["lesion"])
    _, records, quarantined = run_spec(tmp_path, spec, root)
    assert records == []  # not one region of the four kept without a word
    (item,) = quarantined
    assert item.source_file == "images/a.png" and item.kind == "invalid_annotation"
    assert "masks/a.png" in item.reason and "1, 2, 77, 200" in item.reason


@pytest.mark.parametrize("foreground", [255, 1, 38])
def test_binary_mask_of_zero_and_one_value_is_read_whole(tmp_path, foreground):
    root = tmp_path / "src"
    mask = np.zeros((40, 40), np.uint8)
    mask[5:25, 8:30] = foreground
    write_mask_source(root, mask)
    spec = build_spec(layout=MASK_LAYOUT, root=str(root), modality="ultrasound", diseases=["lesion"])
    ctx, (record,), quarantined = run_spec(tmp_path, spec, root)
    assert quarantined == []
    (stored,) = stored_masks(ctx, record)
    np.testing.assert_array_equal(stored, (mask > 0).astype(np.uint8))


def test_declared_binarize_any_nonzero_keeps_every_region(tmp_path):
    root = tmp_path / "src"
    mask = four_value_mask()
    write_mask_source(root, mask)
    spec = build_spec(layout={**MASK_LAYOUT, "binarize": "any_nonzero"}, root=str(root), modality="ultrasound", diseases=["lesion"])
    ctx, (record,), quarantined = run_spec(tmp_path, spec, root)
    assert quarantined == []
    (stored,) = stored_masks(ctx, record)
    np.testing.assert_array_equal(stored, (mask > 0).astype(np.uint8))


def test_declared_label_values_map_each_value_to_its_finding(tmp_path):
    root = tmp_path / "src"
    mask = four_value_mask()
    write_mask_source(root, mask)
    layout = {**MASK_LAYOUT, "label_values": {1: "tumor", 2: "edema", 77: "necrosis", 200: "cyst"}}
    spec = build_spec(layout=layout, root=str(root), modality="mri", diseases=["tumor"])
    ctx, (record,), quarantined = run_spec(tmp_path, spec, root)
    assert quarantined == []
    annotations = json.loads(record["annotations"])
    by_label = {a["label"]: np.asarray(ctx.blobs.get_array(a["mask_ref"])) for a in annotations}
    for value, label in layout["label_values"].items():
        np.testing.assert_array_equal(by_label[label], (mask == value).astype(np.uint8))


def test_binarize_is_refused_where_masks_are_not_binary():
    from pydantic import ValidationError

    for extra in ({"label_values": {1: "tumor"}}, {"instances": True}):
        with pytest.raises(ValidationError, match="binarize applies to binary masks"):
            build_spec(layout={**MASK_LAYOUT, **extra, "binarize": "any_nonzero"})


# ---------------------------------------------------------------- text encodings

LABEL = "Ménétrier disease"
CSV_LAYOUT = {"family": "image_csv", "csv": "meta.csv", "id_column": "filename", "path_template": "images/{id}",
              "label_column": "finding"}


def write_latin1_source(root: Path) -> None:
    """Two images; the label table is Latin-1, as spreadsheet exports from Windows often are."""
    for name, value in (("a.png", 60), ("b.png", 120)):
        save(root / "images" / name, np.full((8, 8), value, np.uint8))
    (root / "meta.csv").write_bytes(f"filename,finding\na.png,{LABEL}\nb.png,gastritis\n".encode("latin-1"))


def ingest_to_table(tmp_path: Path, spec) -> tuple[list[dict], list[tuple]]:
    """Through the ingest stage: the raw_records rows and the quarantine rows as written."""
    import duckdb

    from medtrinity_assets import stages
    from medtrinity_assets.paths import DataRoot

    root = DataRoot(tmp_path / "var")
    stages.run_ingest(spec, root, "salt")
    connection = duckdb.connect()
    records = connection.sql(f"SELECT * FROM read_parquet('{root.table('raw_records', spec.id)}')")
    rows = [dict(zip(records.columns, values)) for values in records.fetchall()]
    quarantine = connection.sql(
        f"SELECT source_file, reason, kind FROM read_parquet('{root.quarantine('raw_records', spec.id)}')"
    ).fetchall()
    return rows, quarantine


def test_latin1_label_with_declared_encoding_is_exact(tmp_path):
    root = tmp_path / "src"
    write_latin1_source(root)
    spec = build_spec(layout=CSV_LAYOUT, root=str(root), modality="endoscopy", encoding="latin-1")
    rows, quarantine = ingest_to_table(tmp_path, spec)
    assert quarantine == []
    labels = {row["source_file"]: list(row["labels"]) for row in rows}
    assert labels == {"images/a.png": [LABEL.lower()], "images/b.png": ["gastritis"]}


def test_latin1_label_without_declared_encoding_quarantines_the_row_not_U_FFFD(tmp_path):
    root = tmp_path / "src"
    write_latin1_source(root)
    spec = build_spec(layout={**CSV_LAYOUT, "unlisted_images": "ignore"}, root=str(root), modality="endoscopy")
    rows, quarantine = ingest_to_table(tmp_path, spec)
    assert [row["source_file"] for row in rows] == ["images/b.png"]  # the other rows go on
    assert not any("\ufffd" in str(value) for row in rows for value in row.values())
    ((source_file, reason, kind),) = quarantine
    assert (source_file, kind) == ("meta.csv:2", "bad_label")
    assert "meta.csv" in reason and "line 2" in reason and "utf-8" in reason
    assert "tri" not in reason  # the undecodable text itself is never echoed


def test_undecodable_header_quarantines_the_whole_file(tmp_path):
    root = tmp_path / "src"
    save(root / "images" / "a.png", np.full((8, 8), 60, np.uint8))
    (root / "meta.csv").write_bytes("filename,diagnóstico\na.png,x\n".encode("latin-1"))
    layout = {**CSV_LAYOUT, "label_column": "diagnóstico"}
    _, records, quarantined = run_spec(tmp_path, build_spec(layout=layout, root=str(root), modality="endoscopy"), root)
    assert records == []
    (item,) = quarantined
    assert (item.source_file, item.kind) == ("meta.csv", "bad_label") and "utf-8" in item.reason


def test_utf8_bom_is_tolerated(tmp_path):
    root = tmp_path / "src"
    save(root / "images" / "a.png", np.full((8, 8), 60, np.uint8))
    (root / "meta.csv").write_bytes(f"filename,finding\na.png,{LABEL}\n".encode("utf-8-sig"))
    _, (record,), quarantined = run_spec(tmp_path, build_spec(layout=CSV_LAYOUT, root=str(root), modality="endoscopy"), root)
    assert quarantined == [] and record["labels"] == [LABEL.lower()]


def test_latin1_caption_table_follows_the_declared_encoding(tmp_path):
    root = tmp_path / "src"
    save(root / "images" / "a.png", np.full((8, 8), 60, np.uint8))
    save(root / "images" / "b.png", np.full((8, 8), 90, np.uint8))
    caption = f"Giant gastric folds of {LABEL}."
    (root / "captions.csv").write_bytes(f"image,caption\na.png,{caption}\nb.png,Normal folds.\n".encode("latin-1"))
    layout = {"family": "captions", "annotations": "captions.csv", "format": "csv", "image_field": "image",
              "image_template": "images/{value}", "caption_field": "caption"}
    fields = {"layout": layout, "root": str(root), "modality": "endoscopy", "annotation_kinds": ["caption"]}
    _, records, quarantined = run_spec(tmp_path / "declared", build_spec(**fields, encoding="latin-1"), root)
    assert quarantined == []
    by_file = {record["source_file"]: json.loads(record["source_text"]) for record in records}
    assert by_file["images/a.png"]["captions"] == [caption]

    _, records, quarantined = run_spec(tmp_path / "undeclared", build_spec(**fields), root)
    assert [record["source_file"] for record in records] == ["images/b.png"]
    (item,) = quarantined
    assert (item.source_file, item.kind) == ("captions.csv:2", "bad_label") and "line 2" in item.reason


def test_latin1_box_table_label_follows_the_declared_encoding(tmp_path):
    root = tmp_path / "src"
    save(root / "images" / "a.png", np.full((20, 20), 60, np.uint8))
    save(root / "images" / "b.png", np.full((20, 20), 90, np.uint8))
    (root / "boxes.csv").write_bytes(
        f"image,label,x0,y0,x1,y1\na.png,{LABEL},2,2,10,10\nb.png,polyp,4,4,12,12\n".encode("latin-1")
    )
    layout = {"family": "boxes", "image_glob": "images/*.png",
              "boxes": {"format": "csv", "file": "boxes.csv", "id_column": "image", "path_template": "{id}",
                              "image_root": "images", "label_column": "label", "box_columns": ["x0", "y0", "x1", "y1"]}}
    fields = {"layout": layout, "root": str(root), "modality": "endoscopy", "annotation_kinds": ["box"]}
    _, records, quarantined = run_spec(tmp_path / "declared", build_spec(**fields, encoding="latin-1"), root)
    assert quarantined == []
    by_file = {record["source_file"]: record for record in records}
    assert by_file["images/a.png"]["labels"] == [LABEL.lower()]

    _, records, quarantined = run_spec(tmp_path / "undeclared", build_spec(**fields), root)
    assert not any("\ufffd" in json.dumps(record, ensure_ascii=False) for record in records)
    assert [(item.source_file, item.kind) for item in quarantined if "line 2" in item.reason] == [("boxes.csv:2", "bad_label")]


# ---------------------------------------------------------------- DICOM series

PYDICOM_CT = Path(__import__("pydicom").__file__).resolve().parent / "data" / "test_files" / "CT_small.dcm"
SERIES_UID = "1.2.826.0.1.3680043.8.498.77"


def write_ct_series(folder: Path, z_positions: list[float]) -> None:
    """Real CT slices (pydicom's CT_small) of one series at the given heights."""
    import copy

    import pydicom

    folder.mkdir(parents=True, exist_ok=True)
    template = pydicom.dcmread(PYDICOM_CT)
    for number, z in enumerate(z_positions):
        ds = copy.deepcopy(template)
        ds.ImagePositionPatient = [-158.0, -179.0, z]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.InstanceNumber = number + 1
        ds.SeriesInstanceUID = SERIES_UID
        ds.SOPInstanceUID = f"{SERIES_UID}.{number}"
        ds.save_as(folder / f"slice_{number:02d}.dcm")


def cut_in_half(root: Path) -> str:
    """A copy of a slice whose transfer stopped half-way (the pixel data is cut off)."""
    whole = (root / "slice_02.dcm").read_bytes()
    (root / "slice_02_copy.dcm").write_bytes(whole[: len(whole) // 2])
    return "slice_02_copy.dcm"


def new_slice_with_short_pixel_data(root: Path) -> str:
    """A well-formed file of its own (new SOPInstanceUID, between two slices) whose pixel data
    holds half the bytes Rows x Columns need."""
    import pydicom

    ds = pydicom.dcmread(root / "slice_02.dcm")
    ds.SOPInstanceUID = f"{SERIES_UID}.99"
    ds.ImagePositionPatient = [-158.0, -179.0, 2.5]
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    ds.save_as(root / "slice_new.dcm")
    return "slice_new.dcm"


def compressed_copy_cut_in_half(root: Path) -> str:
    """An RLE-compressed copy of a slice (new SOPInstanceUID) cut off inside its pixel data."""
    import io

    import pydicom
    from pydicom.uid import RLELossless

    ds = pydicom.dcmread(root / "slice_02.dcm")
    ds.SOPInstanceUID = f"{SERIES_UID}.98"
    ds.compress(RLELossless)
    buffer = io.BytesIO()
    ds.save_as(buffer)
    whole = buffer.getvalue()
    (root / "slice_rle.dcm").write_bytes(whole[: len(whole) - 200])
    return "slice_rle.dcm"


# pydicom warns on the compressed copy's missing delimiter: that file is the point of the test.
@pytest.mark.filterwarnings("ignore:End of file reached before delimiter")
@pytest.mark.parametrize("break_slice", [cut_in_half, new_slice_with_short_pixel_data, compressed_copy_cut_in_half])
def test_broken_slice_added_to_a_series_changes_no_record_id_and_is_quarantined(tmp_path, break_slice):
    root = tmp_path / "src"
    write_ct_series(root, [0.0, 5.0, 10.0, -5.0, 15.0])
    spec = build_spec(
        modality="ct", layout={"family": "dicom", "stack_series": True}, root=str(root), patient={"source": "dicom"},
        slicing={"rule": "every_k", "every_k": 1, "central_fraction": 1.0},
    )
    _, before, quarantined = run_spec(tmp_path / "before", spec, root)
    assert quarantined == [] and len(before) == 5
    identity = {r["source_file"]: (r["record_id"], r["slice_index"], r["slice_count"]) for r in before}

    broken = break_slice(root)
    _, after, quarantined = run_spec(tmp_path / "after", spec, root)
    # The broken slice does not join the series: every id, index and count stays as it was.
    assert {r["source_file"]: (r["record_id"], r["slice_index"], r["slice_count"]) for r in after} == identity
    (item,) = quarantined
    assert (item.source_file, item.kind) == (broken, "unreadable")
    assert "pixel data" in item.reason


def test_series_slice_id_is_the_id_of_its_file_alone(tmp_path):
    """A slice's id comes from its own file, not its place in the series: the same as when the
    file is read on its own."""
    root = tmp_path / "src"
    write_ct_series(root, [0.0, 5.0, 10.0])
    fields = {"modality": "ct", "root": str(root), "patient": {"source": "dicom"},
              "slicing": {"rule": "every_k", "every_k": 1, "central_fraction": 1.0}}
    _, stacked, _ = run_spec(tmp_path / "a", build_spec(layout={"family": "dicom", "stack_series": True}, **fields), root)
    _, alone, _ = run_spec(tmp_path / "b", build_spec(layout={"family": "dicom", "stack_series": False}, **fields), root)
    assert {r["source_file"]: r["record_id"] for r in stacked} == {r["source_file"]: r["record_id"] for r in alone}
    assert sorted(r["slice_index"] for r in stacked) == [0, 1, 2]  # the order stays in its own column
