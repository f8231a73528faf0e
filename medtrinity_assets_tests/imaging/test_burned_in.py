"""Burned-in text and markers: the detector on real images, the normalize stage's column and
report, the triplets' flag, the exports' hold-back (or the spec's "keep"), the UI thumbnail.

Ground truth for the real images below was read by eye from the files themselves: Kvasir-SEG
frames carry a white date / patient-field block at the left; BUSI "benign (1)-(4)" carry
"LEFT BREAST" / "RIGHT BREAST"; "benign (6)" yellow caliper crosses; "benign (7)", "normal (1)"
and the fundus, IHC and H&E tiles carry none.
"""

from __future__ import annotations

import io
import json

import duckdb
import numpy as np
import pytest
from conftest import REALDATA, needs_realdata
from PIL import Image
from pydantic import ValidationError
from spec_factory import build_spec

from medtrinity_assets import schemas, stages
from medtrinity_assets.catalog import load_catalog
from medtrinity_assets.dataset.exports import FLAGGED_FILE, HELD_BACK_FLAGS, build_dataset, llava_file
from medtrinity_assets.imaging.burned_in import BurnedIn, detect_burned_in
from medtrinity_assets.imaging.normalize import normalize_pixels
from medtrinity_assets.paths import DataRoot
from medtrinity_assets.preview import BURNED_IN_COLOUR, roi_thumbnail
from medtrinity_assets.storage import write_table

KVASIR = REALDATA / "kvasir_seg" / "images"
BUSI = REALDATA / "busi"


def display_of(path, modality: str) -> np.ndarray:
    """The display image the normalize stage makes of a real file (same core, same 512 px bound)."""
    with Image.open(path) as opened:
        pixels = np.asarray(opened.convert("RGB"))
    spec = build_spec(modality=modality, organs=["colon"])
    return normalize_pixels(pixels, {"modality": modality, "pixel_units": "rgb"}, spec.intensity_rule()).display


def skimage_display(name: str) -> np.ndarray:
    import skimage.data

    pixels = getattr(skimage.data, name)()
    spec = build_spec(modality="fundus", organs=["retina"])
    return normalize_pixels(pixels, {"modality": "fundus", "pixel_units": "rgb"}, spec.intensity_rule()).display


# --- the detector on real files -----------------------------------------------------------------


@needs_realdata
@pytest.mark.parametrize(
    "name",
    # The last one's text lies on mucosa, not on the black margin: found as a left-aligned block.
    ["cju0qkwl35piu0993l0dewei2.jpg", "cju0qx73cjw570799j4n5cjze.jpg", "cju0tl3uz8blh0993wxvn7ly3.jpg",
     "cju0ue769mxii08019zqgdbxn.jpg"],
)
def test_kvasir_frame_with_its_text_block_is_flagged_at_the_text(name):
    found = detect_burned_in(display_of(KVASIR / name, "endoscopy"))
    assert found.present and "text" in found.kinds
    # The date / patient-field block sits in the left margin, rows 110-200 of the 512 px frame.
    text_boxes = [box for box, kind in zip(found.boxes, found.kinds) if kind == "text"]
    assert any(box[0] < 40 and 100 < box[1] < 210 for box in text_boxes), text_boxes
    assert 0 < found.score <= 1


@needs_realdata
def test_scope_position_panel_is_an_overlay():
    """14 of the 1,000 Kvasir-SEG frames keep the endoscope's teal position panel (the rest
    have it blacked out); this one has it at the lower left, 149 x 120 px in the 512 px frame."""
    found = detect_burned_in(display_of(KVASIR / "cjyzk8qieoboa0848ogj51wwm.jpg", "endoscopy"))
    overlays = [box for box, kind in zip(found.boxes, found.kinds) if kind == "overlay"]
    assert overlays == [[27, 273, 176, 393]]


@needs_realdata
def test_green_position_box_on_a_real_frame_is_an_overlay():
    """Other Kvasir frames show the position box as a pure green outline. Painted on a real
    frame without text, at the place those frames have it (lower left), it is found there, and
    only there."""
    display = display_of(KVASIR / "cju0qoxqj9q6s0835b43399p4.jpg", "endoscopy").copy()
    assert not detect_burned_in(display).present
    display[330:400, 20:24] = display[330:400, 100:104] = (0, 200, 0)
    display[330:334, 20:104] = display[396:400, 20:104] = (0, 200, 0)
    found = detect_burned_in(display)
    assert found.kinds == ["overlay"] and found.boxes == [[20, 330, 104, 400]]


@needs_realdata
def test_side_letters_on_a_chest_radiograph_are_text():
    display = display_of(REALDATA / "cxr_samples" / "covid-19-pneumonia-58-prior.jpg", "xray")
    found = detect_burned_in(display)
    assert found.kinds == ["text"]
    # "L  RS" at the top right of the film.
    x0, y0, x1, y1 = found.boxes[0]
    assert x0 > 0.6 * display.shape[1] and y1 < 0.25 * display.shape[0]


@needs_realdata
def test_kvasir_frame_without_text_is_not_flagged():
    found = detect_burned_in(display_of(KVASIR / "cju0qoxqj9q6s0835b43399p4.jpg", "endoscopy"))
    assert not found.present and found.boxes == [] and found.score == 0.0


@needs_realdata
@pytest.mark.parametrize("name", ["benign (1).png", "benign (3).png"])
def test_busi_side_label_is_text(name):
    found = detect_burned_in(display_of(BUSI / "benign" / "images" / name, "ultrasound"))
    assert found.kinds and set(found.kinds) == {"text"}
    # "LEFT BREAST" / "RIGHT BREAST": one line, many times wider than tall.
    x0, y0, x1, y1 = found.boxes[0]
    assert (x1 - x0) > 5 * (y1 - y0)


@needs_realdata
def test_busi_yellow_calipers_are_an_overlay_at_the_lesion():
    found = detect_burned_in(display_of(BUSI / "benign" / "images" / "benign (6).png", "ultrasound"))
    assert found.present and "overlay" in found.kinds
    # The crosses mark the cyst's edges, in the upper middle of the frame.
    for box, kind in zip(found.boxes, found.kinds):
        if kind == "overlay":
            assert 250 < (box[0] + box[2]) / 2 < 420 and 60 < (box[1] + box[3]) / 2 < 180


@needs_realdata
@pytest.mark.parametrize("path", ["busi/benign/images/benign (7).png", "busi/normal/images/normal (1).png",
                                  "miccai15_nuclei/image01.png", "miccai15_nuclei/image03.png"])
def test_real_images_without_text_are_not_flagged(path):
    modality = "histopathology" if "miccai" in path else "ultrasound"
    assert not detect_burned_in(display_of(REALDATA / path, modality)).present


@pytest.mark.parametrize("name", ["retina", "immunohistochemistry"])
def test_fundus_and_ihc_are_not_flagged(name):
    assert not detect_burned_in(skimage_display(name)).present


def test_detector_rejects_non_8_bit_and_survives_tiny_and_flat_images():
    with pytest.raises(ValueError, match="uint8"):
        detect_burned_in(np.zeros((64, 64), dtype=np.uint16))
    assert not detect_burned_in(np.zeros((8, 8), dtype=np.uint8)).present
    assert not detect_burned_in(np.full((128, 128, 3), 200, dtype=np.uint8)).present


def test_json_round_trip():
    found = BurnedIn(True, 0.4, [[1, 2, 30, 12]], ["text"])
    assert BurnedIn.from_json(found.to_json()) == found
    assert json.loads(found.to_json()) == {"present": True, "score": 0.4, "boxes": [[1, 2, 30, 12]], "kinds": ["text"]}
    assert BurnedIn.from_json(None) is None


# --- the spec option ------------------------------------------------------------------------------


def test_spec_policy_defaults_to_hold_back_and_rejects_other_words():
    assert build_spec().burned_in_text == "hold_back"
    assert build_spec(burned_in_text="keep").burned_in_text == "keep"
    with pytest.raises(ValidationError, match="burned_in_text"):
        build_spec(burned_in_text="ignore")


# --- through the stages and the exports -------------------------------------------------------------


def _run_to_triplets(spec, root: DataRoot) -> None:
    """Ingest, normalize, ground and caption for real; the description table is written here
    (one verified sentence per record) because the flag does not depend on the text, and the
    writer's stages need the embedding model, which this test does not exercise."""
    assert stages.run_ingest(spec, root, "test-salt").rows > 0
    stages.run_normalize(spec, root)
    stages.run_ground(spec, root)
    stages.run_coarse_captions(spec, root)
    ids = [r[0] for r in duckdb.sql(f"SELECT record_id FROM read_parquet('{root.table('raw_records', spec.id)}')").fetchall()]
    write_table(
        root.table("descriptions", spec.id),
        schemas.DESCRIPTIONS,
        [{"record_id": rid, "source_id": spec.id, "description": "An image.", "writer": "test", "prompt_version": "t",
          "knowledge_ids": [], "verified": True, "verifier_flags": []} for rid in ids],
    )
    stages.run_triplets(spec, root)


def _by_file(root: DataRoot, source_id: str, table: str, column: str) -> dict:
    rows = duckdb.sql(
        f"SELECT r.source_file, t.{column} FROM read_parquet('{root.table('raw_records', source_id)}') r "
        f"JOIN read_parquet('{root.table(table, source_id)}') t USING (record_id)"
    ).fetchall()
    return dict(rows)


@needs_realdata
def test_busi_through_normalize_triplets_and_exports_held_back(tmp_path):
    spec = load_catalog()["busi"]
    root = DataRoot(tmp_path / "var")
    _run_to_triplets(spec, root)

    burned = {path: json.loads(value) for path, value in _by_file(root, "busi", "normalized_images", "burned_in").items()}
    assert len(burned) == 20
    assert burned["benign/images/benign (1).png"]["present"]
    assert burned["benign/images/benign (6).png"]["present"]
    assert not burned["benign/images/benign (7).png"]["present"]
    assert not burned["normal/images/normal (1).png"]["present"]

    # The stage report counts the flagged images of the source.
    normalize_report = stages.run_normalize(spec, root)
    flagged_files = {path for path, value in burned.items() if value["present"]}
    assert normalize_report.extra["burned_in_images"] == len(flagged_files) >= 5
    assert normalize_report.extra["burned_in_policy"] == "hold_back"
    assert normalize_report.extra["burned_in_kinds"]["text"] >= 4

    flags = _by_file(root, "busi", "triplets", "flags")
    assert {path for path, value in flags.items() if "burned_in_text" in value} == flagged_files

    stats = build_dataset([root.table("triplets", "busi")], root.table("medtrinity_dataset"), root.exports)
    held = [json.loads(line) for line in (root.exports / FLAGGED_FILE).read_text().splitlines()]
    trained = [json.loads(line) for split in ("train", "val", "test") if (root.exports / llava_file(split)).exists()
               for line in (root.exports / llava_file(split)).read_text().splitlines()]
    ids_by_file = _by_file(root, "busi", "normalized_images", "record_id")
    flagged_ids = {ids_by_file[path] for path in flagged_files}
    assert {row["id"] for row in held} >= flagged_ids
    assert not flagged_ids & {row["id"] for row in trained}
    assert trained, "the unflagged images still reach the training files"
    assert "burned_in_text" in HELD_BACK_FLAGS and stats


@needs_realdata
def test_mr_ct_and_pet_slices_without_text_are_not_flagged(tmp_path):
    """IBSI sarcoma slices (CT, T1 MR, PET, as NIfTI): no text anywhere; bright fat and vessels
    in the small MR crops once lined up like glyphs."""
    spec = load_catalog()["ibsi_sts_nifti"]
    root = DataRoot(tmp_path / "var")
    stages.run_ingest(spec, root, "test-salt")
    report = stages.run_normalize(spec, root)
    assert report.rows > 100
    assert report.extra["burned_in_images"] == 0, report.extra


@needs_realdata
def test_keep_policy_flags_without_holding_back(tmp_path):
    spec = build_spec(
        id="kvasir_sample", modality="endoscopy", organs=["colon"], annotation_kinds=["none"],
        root=str(KVASIR.parent), layout={"family": "image_folder", "image_glob": "images/cju0q*.jpg"},
        burned_in_text="keep",
    )
    root = DataRoot(tmp_path / "var")
    _run_to_triplets(spec, root)
    flags = _by_file(root, spec.id, "triplets", "flags")
    assert flags == {
        "images/cju0qkwl35piu0993l0dewei2.jpg": ["burned_in_text_kept"],
        "images/cju0qoxqj9q6s0835b43399p4.jpg": [],
        "images/cju0qx73cjw570799j4n5cjze.jpg": ["burned_in_text_kept"],
    }
    build_dataset([root.table("triplets", spec.id)], root.table("medtrinity_dataset"), root.exports)
    assert not (root.exports / FLAGGED_FILE).read_text().strip()


# --- the UI thumbnail -----------------------------------------------------------------------------------


@needs_realdata
def test_thumbnail_marks_burned_in_box_in_red_dashes(tmp_path):
    display = display_of(KVASIR / "cju0qkwl35piu0993l0dewei2.jpg", "endoscopy")
    Image.fromarray(display).save(tmp_path / "frame.png")
    found = detect_burned_in(display)
    size = max(display.shape[:2])

    def red_pixels(burned_in_json):
        png = roi_thumbnail(tmp_path, "frame.png", "[]", size=size, burned_in_json=burned_in_json)
        pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
        return (pixels[..., 0] == BURNED_IN_COLOUR[0]) & (pixels[..., 1] == 0) & (pixels[..., 2] == 0)

    plain = red_pixels(None)
    marked = red_pixels(found.to_json())
    assert not plain.any()
    x0, y0, x1, y1 = found.boxes[0]
    # Dashes along the first box's top edge (within the padding), and the caption at the bottom left.
    assert marked[max(y0 - 6, 0) : y0 + 1, x0:x1].any()
    assert marked[-30:, :150].any()
