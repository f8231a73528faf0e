"""Table-driven sources: label CSVs (multi-label cells, ids looked up over several folders),
class folders, caption / VQA sets whose publisher text rides beside the generated description
to the exports, and record flags that keep images out of the training files.

Every fixture is a real file in tmp_path: images written by Pillow, tables by the csv module,
JSON by the json module, in the layouts the publishers ship (ChestX-ray14, HAM10000, VQA-RAD,
SLAKE, ROCO, MedICaT).
"""

from __future__ import annotations

import csv
import json

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import REALDATA, needs_realdata
from PIL import Image
from spec_factory import build_spec

from medtrinity_assets import schemas, stages
from medtrinity_assets.catalog.load import load_spec, source_root
from medtrinity_assets.dataset.exports import (
    FLAGGED_FILE,
    REJECTED_FILE,
    build_dataset,
    llava_file,
)
from medtrinity_assets.splits import SPLIT_NAMES
from medtrinity_assets.paths import REPO_ROOT, DataRoot
from medtrinity_assets.pipeline import run_checks
from medtrinity_assets.quality.checks import check_source_text_kept_apart
from medtrinity_assets.sources import read_source
from medtrinity_assets.sources.base import (
    IngestContext,
    Quarantined,
    patient_hash,
    record_id_for,
)
from medtrinity_assets.storage import BlobStore, write_table


def save_image(path, seed: int, shape=(24, 32), fmt="PNG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)
    Image.fromarray(pixels).save(path, format=fmt)


def write_rows(path, rows, delimiter=",") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle, delimiter=delimiter).writerows(rows)


def ingest(tmp_path, root, **fields):
    spec = build_spec(root=str(root), **fields)
    ctx = IngestContext(spec=spec, root=root, blobs=BlobStore(tmp_path / "var"), salt="test-salt")
    items = list(read_source(ctx))
    records = [item for item in items if isinstance(item, dict)]
    quarantined = [item for item in items if isinstance(item, Quarantined)]
    assert len(records) + len(quarantined) == len(items)
    return ctx, records, quarantined


# ---------------------------------------------------------------- image_csv


def test_chestxray14_label_cell_split_renamed_and_patients_by_column(tmp_path):
    root = tmp_path / "nih"
    # The publisher ships the images in twelve archives, images_001 .. images_012.
    for seed, (folder, name) in enumerate([("images_001", "00000001_000.png"), ("images_001", "00000001_001.png"),
                                           ("images_002", "00000002_000.png"), ("images_002", "00000003_000.png")]):
        save_image(root / folder / "images" / name, seed)
    write_rows(
        root / "Data_Entry_2017.csv",
        [
            ["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age", "View Position"],
            ["00000001_000.png", "Cardiomegaly|Effusion", "0", "1", "58", "PA"],
            ["00000001_001.png", "No Finding", "1", "1", "58", "PA"],
            ["00000002_000.png", "Effusion", "0", "2", "81", "AP"],
            ["00000004_000.png", "Mass", "0", "4", "40", "PA"],  # image not in this download
        ],
    )
    # 00000003_000.png is on disk but in no row.
    _, records, quarantined = ingest(
        tmp_path, root, modality="xray", organs=["lung"],
        layout={"family": "image_csv", "csv": "Data_Entry_2017.csv", "id_column": "Image Index",
                "path_index_glob": "images_*/images/*.png", "label_column": "Finding Labels", "label_separator": "|"},
        labels={"rename": {"No Finding": "", "Cardiomegaly": "cardiomegaly", "Effusion": "pleural effusion"}},
        patient={"source": "column", "column": "Patient ID"},
    )
    by_file = {r["source_file"].split("/")[-1]: r for r in records}
    assert [r["source_file"] for r in records] == [
        "images_001/images/00000001_000.png", "images_001/images/00000001_001.png", "images_002/images/00000002_000.png"]
    assert by_file["00000001_000.png"]["labels"] == ["cardiomegaly", "pleural effusion"]
    assert by_file["00000001_001.png"]["labels"] == []
    assert by_file["00000002_000.png"]["labels"] == ["pleural effusion"]
    assert by_file["00000001_000.png"]["patient_hash"] == patient_hash("test-salt", "test_source", "column:1")
    assert by_file["00000001_001.png"]["patient_hash"] == by_file["00000001_000.png"]["patient_hash"]
    assert by_file["00000002_000.png"]["patient_hash"] != by_file["00000001_000.png"]["patient_hash"]
    assert [(q.source_file, q.reason) for q in quarantined] == [
        ("Data_Entry_2017.csv:5", ("metadata row names an absent image: id '00000004_000.png' matches no file "
                                   "of path_index_glob 'images_*/images/*.png'")),
        ("images_002/images/00000003_000.png", "image has no metadata row in Data_Entry_2017.csv"),
    ]


def test_ham10000_ids_found_over_two_folders_with_duplicate_and_absent_ids(tmp_path):
    root = tmp_path / "ham"
    save_image(root / "HAM10000_images_part_1" / "ISIC_0024306.jpg", 1, (20, 20, 3), "JPEG")
    save_image(root / "HAM10000_images_part_2" / "ISIC_0029306.jpg", 2, (20, 20, 3), "JPEG")
    # The same stem in both parts: which one the row means cannot be known.
    save_image(root / "HAM10000_images_part_1" / "ISIC_0024307.jpg", 3, (20, 20, 3), "JPEG")
    save_image(root / "HAM10000_images_part_2" / "ISIC_0024307.jpg", 4, (20, 20, 3), "JPEG")
    save_image(root / "HAM10000_images_part_2" / "ISIC_0030000.jpg", 5, (20, 20, 3), "JPEG")  # no row
    write_rows(
        root / "HAM10000_metadata.csv",
        [
            ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization"],
            ["HAM_0000118", "ISIC_0024306", "nv", "histo", "80.0", "male", "scalp"],
            ["HAM_0000118", "ISIC_0029306", "nv", "histo", "80.0", "male", "scalp"],
            ["HAM_0002730", "ISIC_0024307", "mel", "histo", "75.0", "male", "ear"],
            ["HAM_0001466", "ISIC_0031633", "bkl", "histo", "75.0", "male", "ear"],
        ],
    )
    layout = {"family": "image_csv", "csv": "HAM10000_metadata.csv", "id_column": "image_id",
              "path_index_glob": "HAM10000_images_part_*/*.jpg", "label_column": "dx"}
    _, records, quarantined = ingest(
        tmp_path, root, modality="dermoscopy", organs=["skin"], layout=layout,
        labels={"rename": {"nv": "melanocytic nevus", "mel": "melanoma"}},
        patient={"source": "column", "column": "lesion_id"},
    )
    assert [r["source_file"] for r in records] == [
        "HAM10000_images_part_1/ISIC_0024306.jpg", "HAM10000_images_part_2/ISIC_0029306.jpg"]
    assert all(r["labels"] == ["melanocytic nevus"] and r["channels"] == 3 for r in records)
    assert records[0]["patient_hash"] == records[1]["patient_hash"]  # one lesion, two photos
    reasons = {q.source_file: q.reason for q in quarantined}
    assert reasons == {
        "HAM10000_metadata.csv:4": "image id 'ISIC_0024307' is ambiguous: 2 files of path_index_glob have that name "
        "(HAM10000_images_part_1/ISIC_0024307.jpg, HAM10000_images_part_2/ISIC_0024307.jpg)",
        "HAM10000_metadata.csv:5": "metadata row names an absent image: id 'ISIC_0031633' matches no file "
        "of path_index_glob 'HAM10000_images_part_*/*.jpg'",
        "HAM10000_images_part_2/ISIC_0030000.jpg": "image has no metadata row in HAM10000_metadata.csv",
    }

    # A folder that holds other images on purpose: unlisted files are then not reported.
    _, _, quarantined = ingest(tmp_path, root, modality="dermoscopy", organs=["skin"],
                               layout={**layout, "unlisted_images": "ignore"})
    assert "HAM10000_images_part_2/ISIC_0030000.jpg" not in {q.source_file for q in quarantined}


def test_semicolon_table_second_row_for_one_image_and_absent_image(tmp_path):
    root = tmp_path / "src"
    save_image(root / "a.png", 1)
    write_rows(root / "labels.csv", [["file", "finding"], ["a", "polyp"], ["a", "ulcer"], ["b", "polyp"]], delimiter=";")
    _, records, quarantined = ingest(
        tmp_path, root, modality="endoscopy", organs=["colon"],
        layout={"family": "image_csv", "csv": "labels.csv", "delimiter": ";", "id_column": "file",
                "path_template": "{id}.png", "label_column": "finding"},
    )
    assert [(r["source_file"], r["labels"]) for r in records] == [("a.png", ["polyp"])]
    assert [(q.source_file, q.reason) for q in quarantined] == [
        ("labels.csv:3", "image a.png is listed again (first at line 2); row ignored"),
        ("b.png", "metadata row names an absent image: listed in labels.csv but file is absent")]


# ---------------------------------------------------------------- image_folder


def test_class_folders_with_excluded_files(tmp_path):
    root = tmp_path / "kvasir"
    save_image(root / "polyps" / "p1.jpg", 1, (16, 16, 3), "JPEG")
    save_image(root / "normal-cecum" / "c1.jpg", 2, (16, 16, 3), "JPEG")
    save_image(root / "polyps" / "thumbs" / "p1.jpg", 3, (8, 8, 3), "JPEG")
    _, records, quarantined = ingest(
        tmp_path, root, modality="endoscopy", organs=["colon"],
        layout={"family": "image_folder", "image_glob": "**/*.jpg", "exclude_glob": "*/thumbs/*"},
        labels={"source": "folder", "rename": {"normal-cecum": "", "polyps": "polyp"}},
    )
    assert quarantined == []
    assert [(r["source_file"], r["labels"]) for r in records] == [("normal-cecum/c1.jpg", []), ("polyps/p1.jpg", ["polyp"])]

    _, records, quarantined = ingest(
        tmp_path, root, modality="endoscopy", organs=["colon"],
        layout={"family": "image_folder", "image_glob": "polyps/thumbs/*.jpg", "exclude_glob": "**/thumbs/*"},
    )
    assert records == [] and "outside exclude_glob" in quarantined[0].reason


# ---------------------------------------------------------------- captions


VQA_RAD_ROWS = [
    {"qid": 1, "image_name": "synpic54610.jpg", "image_organ": "HEAD", "question": "Is there evidence of an aortic aneurysm?",
     "answer": "No", "answer_type": "CLOSED"},
    {"qid": 2, "image_name": "synpic29265.jpg", "image_organ": "CHEST", "question": "How many ribs are fractured?",
     "answer": 2, "answer_type": "OPEN"},
    {"qid": 3, "image_name": "synpic54610.jpg", "image_organ": "HEAD", "question": "Is the lesion ring-enhancing?",
     "answer": "Yes", "answer_type": "CLOSED"},
    {"qid": 4, "image_name": "synpic99999.jpg", "image_organ": "CHEST", "question": "Is this a PA film?",
     "answer": "Yes", "answer_type": "CLOSED"},
    {"qid": 5, "image_name": "synpic54610.jpg", "image_organ": "HEAD", "question": "What is the plane?",
     "answer": "Axial", "answer_type": "OPEN"},
]


@pytest.mark.parametrize("records_key", [None, "annotations"])
def test_vqa_rad_questions_on_one_image_make_one_record(tmp_path, records_key):
    root = tmp_path / "vqa_rad"
    save_image(root / "VQA_RAD Image Folder" / "synpic54610.jpg", 1, fmt="JPEG")
    save_image(root / "VQA_RAD Image Folder" / "synpic29265.jpg", 2, fmt="JPEG")
    document = {records_key: VQA_RAD_ROWS} if records_key else VQA_RAD_ROWS
    (root / "VQA_RAD Dataset Public.json").write_text(json.dumps(document), encoding="utf-8")
    layout = {"family": "captions", "annotations": "VQA_RAD Dataset Public.json", "image_field": "image_name",
              "image_template": "VQA_RAD Image Folder/{value}", "question_field": "question", "answer_field": "answer"}
    if records_key:
        layout["records_key"] = records_key
    ctx, records, quarantined = ingest(tmp_path, root, modality="xray", organs=["chest"], layout=layout,
                                       annotation_kinds=["vqa"])
    # Order of first mention in the file; questions in file order.
    assert [r["source_file"] for r in records] == ["VQA_RAD Image Folder/synpic54610.jpg", "VQA_RAD Image Folder/synpic29265.jpg"]
    head = json.loads(records[0]["source_text"])
    expected = [{"question": row["question"], "answer": row["answer"]} for row in VQA_RAD_ROWS if row["image_name"] == "synpic54610.jpg"]
    assert head == {"captions": [], "qa": expected} and len(head["qa"]) == 3
    assert json.loads(records[1]["source_text"])["qa"] == [{"question": "How many ribs are fractured?", "answer": "2"}]
    assert records[0]["record_id"] == record_id_for("test_source", "VQA_RAD Image Folder/synpic54610.jpg", None, -1)
    assert [(q.source_file, q.reason) for q in quarantined] == [
        ("VQA_RAD Image Folder/synpic99999.jpg",
         "annotation rows name an absent image: 1 row(s) of VQA_RAD Dataset Public.json, first VQA_RAD Dataset Public.json[3]")]

    # A rerun gives the same rows.
    again = [item for item in read_source(ctx) if isinstance(item, dict)]
    assert again == records


def test_slake_keeps_english_rows_and_maps_each_rows_modality(tmp_path):
    root = tmp_path / "slake"
    for seed, folder in enumerate(["xmlab0", "xmlab1", "xmlab2"]):
        save_image(root / "imgs" / folder / "source.jpg", seed, fmt="JPEG")
        # SLAKE ships masks and detections beside each image; they are not rows.
        save_image(root / "imgs" / folder / "mask.png", seed + 10)
    rows = [
        {"img_id": 0, "img_name": "xmlab0/source.jpg", "question": "Which organ is abnormal?", "answer": "Liver",
         "q_lang": "en", "modality": "CT", "location": "Abdomen"},
        {"img_id": 0, "img_name": "xmlab0/source.jpg", "question": "哪个器官不正常？", "answer": "肝脏",
         "q_lang": "zh", "modality": "CT", "location": "腹部"},
        {"img_id": 1, "img_name": "xmlab1/source.jpg", "question": "What modality is used?", "answer": "MRI",
         "q_lang": "en", "modality": "MRI", "location": "Brain"},
        {"img_id": 0, "img_name": "xmlab0/source.jpg", "question": "Is the liver healthy?", "answer": "No",
         "q_lang": "en", "modality": "CT", "location": "Abdomen"},
        {"img_id": 2, "img_name": "xmlab2/source.jpg", "question": "Is this a PET scan?", "answer": "Yes",
         "q_lang": "en", "modality": "PET", "location": "Chest"},
    ]
    (root / "train.json").write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    _, records, quarantined = ingest(
        tmp_path, root, modality="ct", organs=["abdomen"], annotation_kinds=["vqa"],
        layout={"family": "captions", "annotations": "train.json", "image_field": "img_name",
                "image_template": "imgs/{value}", "question_field": "question", "answer_field": "answer",
                "language_field": "q_lang", "languages": ["en"],
                "modality_field": "modality", "modality_map": {"CT": "ct", "MRI": "mri", "X-Ray": "xray"},
                "organ_field": "location", "organ_map": {"Abdomen": ["abdomen", "liver"]}},
    )
    by_file = {r["source_file"]: r for r in records}
    assert list(by_file) == ["imgs/xmlab0/source.jpg", "imgs/xmlab1/source.jpg"]
    # Mapped locations give the image its own organs; an unmapped one keeps the source's.
    assert by_file["imgs/xmlab0/source.jpg"]["organs"] == ["abdomen", "liver"]
    assert by_file["imgs/xmlab1/source.jpg"]["organs"] == ["abdomen"]
    assert (by_file["imgs/xmlab0/source.jpg"]["modality"], by_file["imgs/xmlab1/source.jpg"]["modality"]) == ("ct", "mri")
    english = [(row["question"], row["answer"]) for row in rows if row["img_name"] == "xmlab0/source.jpg" and row["q_lang"] == "en"]
    qa = json.loads(by_file["imgs/xmlab0/source.jpg"]["source_text"])["qa"]
    assert [(p["question"], p["answer"]) for p in qa] == english
    assert "肝" not in by_file["imgs/xmlab0/source.jpg"]["source_text"]
    assert [(q.source_file, q.reason) for q in quarantined] == [
        ("train.json[4]", "modality 'PET' (field modality) is not in modality_map")]


def test_roco_headerless_tab_separated_captions(tmp_path):
    root = tmp_path / "roco"
    for seed, roco_id in enumerate(["ROCO_00002", "ROCO_00004"]):
        save_image(root / "radiology" / "images" / f"{roco_id}.jpg", seed, fmt="JPEG")
    (root / "radiology" / "captions.txt").write_text(
        "ROCO_00002\t Computed tomography of the chest showing a \"ground-glass\" opacity in the right lower lobe. \n"
        "ROCO_00003\t\n"
        "ROCO_00004\t Plain radiograph of the pelvis.\tNo fracture.\n",
        encoding="utf-8",
    )
    _, records, quarantined = ingest(
        tmp_path, root, modality="ct", organs=["chest"], annotation_kinds=["caption"],
        layout={"family": "captions", "annotations": "radiology/captions.txt", "format": "csv", "delimiter": "\t",
                "columns": ["id", "caption"], "image_field": "id", "image_template": "radiology/images/{value}.jpg",
                "caption_field": "caption"},
    )
    texts = {r["source_file"]: json.loads(r["source_text"]) for r in records}
    assert texts == {
        "radiology/images/ROCO_00002.jpg": {"captions": [
            'Computed tomography of the chest showing a "ground-glass" opacity in the right lower lobe.'], "qa": []},
        # A tab inside the caption stays in the caption.
        "radiology/images/ROCO_00004.jpg": {"captions": ["Plain radiograph of the pelvis.\tNo fracture."], "qa": []},
    }
    assert [(q.source_file, q.reason) for q in quarantined] == [
        ("radiology/captions.txt:2", "row about radiology/images/ROCO_00003.jpg has no caption and no question with answer")]


def test_medicat_jsonl_with_a_broken_line(tmp_path):
    root = tmp_path / "medicat"
    save_image(root / "figures" / "abc_2-Figure1-1.png", 1)
    save_image(root / "figures" / "def_3-Figure2-1.png", 2)
    lines = [
        json.dumps({"pdf_hash": "abc", "fig_uri": "abc_2-Figure1-1.png", "s2_caption": "Figure 1: Axial CT of the liver."}),
        "{not json",
        "",
        json.dumps({"pdf_hash": "def", "fig_uri": "def_3-Figure2-1.png", "s2_caption": "Figure 2: Sagittal MRI."}),
        json.dumps({"pdf_hash": "ghi", "s2_caption": "Figure 3: no figure file named."}),
    ]
    (root / "s2_full_figures_oa_nonroco_combined_medic_captions.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    _, records, quarantined = ingest(
        tmp_path, root, modality="ct", organs=["abdomen"], annotation_kinds=["caption"],
        layout={"family": "captions", "annotations": "s2_full_figures_oa_nonroco_combined_medic_captions.jsonl",
                "format": "jsonl", "image_field": "fig_uri", "image_template": "figures/{value}", "caption_field": "s2_caption"},
    )
    assert [json.loads(r["source_text"])["captions"] for r in records] == [
        ["Figure 1: Axial CT of the liver."], ["Figure 2: Sagittal MRI."]]
    reasons = [(q.source_file, q.reason.split(":")[0]) for q in quarantined]
    assert reasons == [
        ("s2_full_figures_oa_nonroco_combined_medic_captions.jsonl:2", "line is not valid JSON"),
        ("s2_full_figures_oa_nonroco_combined_medic_captions.jsonl:5", "row has no image ('fig_uri' is empty or missing)"),
    ]


def test_captions_file_that_is_not_json_is_quarantined(tmp_path):
    root = tmp_path / "broken"
    root.mkdir()
    (root / "qa.json").write_text("[{", encoding="utf-8")
    _, records, quarantined = ingest(
        tmp_path, root, annotation_kinds=["vqa"],
        layout={"family": "captions", "annotations": "qa.json", "image_field": "image",
                "question_field": "q", "answer_field": "a"},
    )
    assert records == [] and [q.source_file for q in quarantined] == ["qa.json"]
    assert "not valid JSON" in quarantined[0].reason


# ---------------------------------------------------------------- through the stages


def test_publisher_caption_reaches_triplets_and_exports_beside_own_description(tmp_path, shared_knowledge):
    source = tmp_path / "iu_xray"
    caption = "The heart is normal in size. The lungs are clear without focal consolidation."
    qa = {"question": "Is there a pleural effusion?", "answer": "No"}
    for seed in range(3):
        yy, xx = np.mgrid[0:64, 0:64]
        chest = ((np.sin(xx / (4 + seed)) + np.cos(yy / 5)) * 60 + 128).astype(np.uint8)
        (source / "images").mkdir(parents=True, exist_ok=True)
        Image.fromarray(chest).save(source / "images" / f"CXR{seed}_IM-0001.png")
    rows = [{"image": f"CXR{seed}_IM-0001.png", "caption": f"{caption} Study {seed}.", **qa} for seed in range(3)]
    (source / "reports.json").write_text(json.dumps(rows), encoding="utf-8")
    spec = build_spec(
        id="tiny_captions", modality="xray", organs=["chest"], diseases=[], annotation_kinds=["caption", "vqa"],
        root=str(source),
        layout={"family": "captions", "annotations": "reports.json", "image_field": "image",
                "image_template": "images/{value}", "caption_field": "caption",
                "question_field": "question", "answer_field": "answer"},
    )
    root = shared_knowledge.copy_to(DataRoot(tmp_path / "var"))
    ingest_report = stages.run_ingest(spec, root, "salt")
    assert (ingest_report.rows, ingest_report.quarantined) == (3, 0)
    for runner in (stages.run_normalize, stages.run_ground, stages.run_facts, stages.run_coarse_captions,
                   stages.run_retrieval, stages.run_descriptions, stages.run_triplets):
        report = runner(spec, root)
        assert report.quarantined == 0, (report.stage, report.kinds)

    triplets = pq.read_table(root.table("triplets", spec.id))
    assert triplets.schema.names == schemas.TRIPLETS.names
    by_file = {json.loads(t["provenance"])["source_file"]: t for t in triplets.to_pylist()}
    first = by_file["images/CXR0_IM-0001.png"]
    assert json.loads(first["source_text"]) == {"captions": [f"{caption} Study 0."], "qa": [qa]}
    assert first["flags"] == []

    kept_apart = next(o for o in run_checks("triplets", root, spec.id) if o.name == "source_text_kept_apart")
    assert kept_apart.passed and kept_apart.metadata["with_source_text"] == 3

    dataset_report = stages.run_dataset(root, [spec.id])
    assert dataset_report.extra["held_back_flagged"] == 0
    exported = [json.loads(line) for split in SPLIT_NAMES
                for line in (root.exports / llava_file(split)).read_text(encoding="utf-8").splitlines()]
    exported += [json.loads(line) for line in (root.exports / REJECTED_FILE).read_text(encoding="utf-8").splitlines()]
    assert sorted(e["id"] for e in exported) == sorted(t["record_id"] for t in by_file.values())
    row = next(e for e in exported if e["id"] == first["record_id"])
    assert row["source_text"] == {"captions": [f"{caption} Study 0."], "qa": [qa]}
    generated = row["conversations"][1]["value"] if "conversations" in row else row["description"]
    assert generated == first["description"]
    # The description is the pipeline's own: the publisher's sentences are not pasted into it.
    assert generated and generated != caption
    assert "focal consolidation" not in generated and "Study 0" not in generated

    dataset = pq.read_table(root.table("medtrinity_dataset"))
    assert dataset.schema.names == schemas.DATASET.names
    stored = {r["record_id"]: r["source_text"] for r in dataset.to_pylist()}
    assert json.loads(stored[first["record_id"]])["captions"] == [f"{caption} Study 0."]


def triplet_row(record_id: str, flags: list[str], verified: bool = True) -> dict:
    return {
        "record_id": record_id, "source_id": "dicom_src", "image_path": f"blobs/images/{record_id}.png",
        "image_sha256": f"sha-{record_id}", "phash": None, "height": 8, "width": 8, "modality": "ct",
        "organs": ["head"], "labels": [], "rois": json.dumps([{"roi_id": "r", "box": [0, 0, 8, 8], "origin": "whole_image"}]),
        "primary_roi_id": "r", "coarse_caption": "CT of the head.", "description": f"CT image {record_id}.",
        "source_text": None, "verified": verified, "verifier_flags": [] if verified else ["modality: wrong"],
        "flags": flags, "patient_hash": f"p-{record_id}", "split": "train", "license": "CC0",
        "provenance": json.dumps({"source_file": f"{record_id}.dcm"}),
    }


def test_burned_in_annotation_rows_stay_in_dataset_but_out_of_training_files(tmp_path):
    path = tmp_path / "triplets.parquet"
    write_table(path, schemas.TRIPLETS, [
        triplet_row("a1", []),
        triplet_row("a2", ["burned_in_annotation"]),
        triplet_row("a3", ["burned_in_annotation"], verified=False),
        triplet_row("a4", [], verified=False),
    ])
    # a1 may be exported, and the training shards carry its image: it must exist.
    (tmp_path / "blobs" / "images").mkdir(parents=True)
    Image.new("L", (8, 8), 90).save(tmp_path / "blobs" / "images" / "a1.png")
    exports = tmp_path / "exports"
    stats = build_dataset([path], tmp_path / "dataset.parquet", exports, images_root=tmp_path)
    assert stats["rows"] == 4 and stats["held_back_flagged"] == 2
    assert stats["held_back_by_flag"] == {"burned_in_annotation": 2, "burned_in_text": 0}
    assert stats["exported"]["train"] == 1 and stats["rejected_unverified"] == 1

    def ids(name):
        return [json.loads(line)["id"] for line in (exports / name).read_text(encoding="utf-8").splitlines()]

    assert ids(llava_file("train")) == ["a1"]
    assert ids(FLAGGED_FILE) == ["a2", "a3"]  # flagged comes before the verdict
    assert ids(REJECTED_FILE) == ["a4"]
    flagged = [json.loads(line) for line in (exports / FLAGGED_FILE).read_text(encoding="utf-8").splitlines()]
    assert flagged[0]["flags"] == ["burned_in_annotation"]
    card = (exports / "dataset_card.md").read_text(encoding="utf-8")
    assert "Held back for review (image flagged burned_in_annotation, burned_in_text): 2" in card
    assert "| dicom_src | 4 | 0 | 1 | 1 | CC0 |" in card
    kept = duckdb.connect().sql(
        f"SELECT record_id, flags FROM read_parquet('{tmp_path / 'dataset.parquet'}') ORDER BY record_id").fetchall()
    assert kept == [("a1", []), ("a2", ["burned_in_annotation"]), ("a3", ["burned_in_annotation"]), ("a4", [])]


# ---------------------------------------------------------------- real data


@needs_realdata
def test_isic2017_melanoma_column_and_rows_for_absent_images(tmp_path):
    spec = load_spec(REPO_ROOT / "data" / "sources" / "isic2017.yaml")
    root = source_root(spec)
    ctx = IngestContext(spec=spec, root=root, blobs=BlobStore(tmp_path / "var"), salt="test-salt")
    items = list(read_source(ctx))
    records = [i for i in items if isinstance(i, dict)]
    quarantined = [i for i in items if isinstance(i, Quarantined)]
    with open(root / "ISIC-2017_Training_Classes.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    present = {p.stem for p in (REALDATA / "isic2017" / "ISIC-2017_Training_Data").glob("*.jpg")}
    listed = {row["image_id"] for row in rows}
    assert present <= listed  # every shipped image has a row, so none is reported as unlisted
    assert sorted(r["source_file"] for r in records) == sorted(f"ISIC-2017_Training_Data/{s}.jpg" for s in present)
    melanoma = {row["image_id"]: float(row["melanoma"]) == 1.0 for row in rows}
    for record in records:
        image_id = record["source_file"].split("/")[-1][: -len(".jpg")]
        assert record["labels"] == (["melanoma"] if melanoma[image_id] else [])
    assert 0 < sum(r["labels"] == ["melanoma"] for r in records) < len(records)
    assert len(quarantined) == len(rows) - len(present)
    assert {q.reason for q in quarantined} == {
        "metadata row names an absent image: listed in ISIC-2017_Training_Classes.csv but file is absent"}
    assert {q.source_file for q in quarantined} == {f"ISIC-2017_Training_Data/{i}.jpg" for i in listed - present}


def test_source_text_check_finds_malformed_and_pasted_publisher_text(tmp_path):
    caption = "Axial CT shows a hypodense lesion in the right hepatic lobe."
    good = {**triplet_row("t1", []), "source_text": json.dumps({"captions": [caption], "qa": []})}
    pasted = {**triplet_row("t2", []), "source_text": json.dumps({"captions": [caption], "qa": []}),
              "description": f"CT image. {caption}"}
    malformed = {**triplet_row("t3", []), "source_text": json.dumps({"captions": caption})}
    short = {**triplet_row("t4", []), "source_text": json.dumps({"captions": ["CT"], "qa": []})}  # "CT" is in any CT description
    path = tmp_path / "triplets.parquet"
    write_table(path, schemas.TRIPLETS, [good, short, triplet_row("t5", [])])
    con = duckdb.connect()
    outcome = check_source_text_kept_apart(con, path)
    assert outcome.passed and outcome.metadata["with_source_text"] == 2

    write_table(path, schemas.TRIPLETS, [good, pasted, malformed])
    outcome = check_source_text_kept_apart(con, path)
    assert not outcome.passed
    assert outcome.metadata["by_problem"] == {
        "publisher caption pasted into the description": 1, "source_text lacks captions/qa lists": 1}
    assert [e["record_id"] for e in outcome.metadata["examples"]] == ["t2", "t3"]


def test_padchest_list_literal_label_cells(tmp_path):
    # PadChest stores a study's findings as a Python-style list in one cell; parsed, not run.
    root = tmp_path / "padchest"
    for seed, name in enumerate(["a.png", "b.png", "c.png", "d.png"]):
        save_image(root / "0" / name, seed)
    write_rows(root / "labels.csv", [
        ["ImageID", "ImageDir", "Labels"],
        ["a.png", "0", "['pleural effusion', ' cardiomegaly']"],
        ["b.png", "0", "['normal']"],
        ["c.png", "0", "__import__('os').system('true')"],
        ["d.png", "0", "[1, 2]"],
    ])
    _, records, quarantined = ingest(
        tmp_path, root, modality="xray", organs=["chest"],
        layout={"family": "image_csv", "csv": "labels.csv", "id_column": "ImageID", "path_template": "{ImageDir}/{ImageID}",
                "label_column": "Labels", "label_list_literal": True},
        labels={"rename": {"normal": ""}},
    )
    assert {r["source_file"]: r["labels"] for r in records} == {"0/a.png": ["cardiomegaly", "pleural effusion"], "0/b.png": []}
    assert sorted(q.reason.split(":")[0] if ":" in q.reason else q.reason for q in quarantined) == [
        "label cell \"__import__('os').system('true')\" is not a list literal", "label cell '[1, 2]' is not a list of strings"]
