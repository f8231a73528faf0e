"""Stage 3 core: ROIs from masks, boxes and contours, their measured attributes and relations."""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from skimage import data as skdata
from skimage import draw
from spec_factory import build_spec

from medtrinity_assets import schemas
from medtrinity_assets.catalog.spec import SourceSpec
from medtrinity_assets.grounding.attributes import colour_name, measure_roi
from medtrinity_assets.grounding.relations import relate
from medtrinity_assets.grounding.rois import ground_record
from medtrinity_assets.imaging.normalize import normalize_pixels
from medtrinity_assets.paths import realdata_dir
from medtrinity_assets.storage import BlobStore, write_table

REALDATA = realdata_dir()
needs_realdata = pytest.mark.skipif(not REALDATA.is_dir(), reason="../shared/realdata is not present")


def make_spec(modality: str, organs: list[str]) -> SourceSpec:
    return build_spec(modality=modality, organs=organs)

@pytest.fixture
def blobs(tmp_path) -> BlobStore:
    return BlobStore(tmp_path)


def make_record(shape, annotations, modality="ct", spacing=None, record_id="rec-1") -> dict:
    return {
        "record_id": record_id,
        "source_id": "test_source",
        "modality": modality,
        "height": shape[0],
        "width": shape[1],
        "pixel_spacing_mm": spacing,
        "annotations": json.dumps(annotations),
    }


def disk_mask(shape, center, radius) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    rr, cc = draw.disk(center, radius, shape=shape)
    mask[rr, cc] = True
    return mask


def bright_disk_image(shape, center, radius, inside=200, outside=40, noise=5.0, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = np.full(shape, outside, dtype=np.float64)
    image[disk_mask(shape, center, radius)] = inside
    return np.clip(image + rng.normal(0, noise, shape), 0, 255).astype(np.uint8)


def mask_annotation(blobs, mask, label="lesion", **extra) -> dict:
    _, ref = blobs.put_array("masks", np.asarray(mask).astype(np.uint8 if np.max(mask) < 256 else np.uint16))
    return {"kind": "mask", "label": label, "mask_ref": ref, **extra}


# --- masks -----------------------------------------------------------------------------------


def test_mask_gives_exact_box_closed_contour_and_stored_mask(blobs):
    shape = (256, 256)
    mask = disk_mask(shape, (100, 50), 20)  # |offset| < 20: rows 81..119, cols 31..69
    display = bright_disk_image(shape, (100, 50), 20)
    record = make_record(shape, [mask_annotation(blobs, mask)])
    rois, problems = ground_record(record, display, 1.0, blobs, make_spec("ct", ["liver"]))
    assert problems == []
    (roi,) = rois
    assert set(roi) == set(schemas.ROIS.names)
    assert (roi["x0"], roi["y0"], roi["x1"], roi["y1"]) == (31, 81, 70, 120)
    assert roi["origin"] == "annotation:mask" and roi["confidence"] == 1.0 and roi["label"] == "lesion"
    assert roi["area_px"] == int(mask.sum())
    contour = json.loads(roi["contour"])
    assert 8 <= len(contour) <= 64
    assert contour[0] == contour[-1]
    xs, ys = [p[0] for p in contour], [p[1] for p in contour]
    assert 30 <= min(xs) and max(xs) <= 70 and 80 <= min(ys) and max(ys) <= 120
    stored = np.asarray(Image.open(io.BytesIO(blobs.path(roi["mask_path"]).read_bytes())))
    assert np.array_equal(stored > 0, mask)
    assert roi["image_height"] == 256 and roi["relations"] == "[]"


def test_mask_is_resized_to_display_and_area_in_mm(blobs):
    shape = (512, 512)
    mask = disk_mask(shape, (256, 256), 100)
    display = np.zeros((256, 256), dtype=np.uint8)
    record = make_record(shape, [mask_annotation(blobs, mask)], spacing=[0.5, 0.5])
    (roi,), _ = ground_record(record, display, 0.5, blobs, make_spec("ct", ["liver"]))
    assert abs(roi["x0"] - 78) <= 1 and abs(roi["x1"] - 178) <= 1
    # One display pixel is 1 mm x 1 mm; the disk is pi * (50 mm)^2.
    assert roi["area_mm2"] == pytest.approx(np.pi * 50**2, rel=0.03)
    assert roi["area_mm2"] == pytest.approx(roi["area_px"] * 1.0)


def test_instance_mask_splits_into_one_roi_per_instance(blobs):
    shape = (128, 128)
    labels = np.zeros(shape, dtype=np.uint16)
    for value, center in ((1, (30, 30)), (2, (30, 90)), (300, (90, 60))):
        labels[disk_mask(shape, center, 10)] = value
    record = make_record(shape, [mask_annotation(blobs, labels, label="nucleus", instances=True)], modality="microscopy")
    display = np.full(shape, 30, dtype=np.uint8)
    display[labels > 0] = 220
    rois, problems = ground_record(record, display, 1.0, blobs, make_spec("microscopy", ["cell"]))
    assert problems == [] and len(rois) == 3
    assert [r["count_same_label"] for r in rois] == [3, 3, 3]
    assert len({r["roi_id"] for r in rois}) == 3
    assert all(r["intensity_word"] == "brighter" for r in rois)


def test_mask_components_become_rois_largest_first_and_specks_are_counted(blobs):
    shape = (128, 128)
    mask = np.zeros(shape, dtype=np.uint8)
    mask[5:15, 5:15] = 1  # 100 px
    mask[40:60, 40:60] = 1  # 400 px: the larger one comes first
    mask[0, 0] = 1  # a stray speck in the corner (JPEG ringing)
    mask[100, 120] = 1
    record = make_record(shape, [mask_annotation(blobs, mask)])
    rois, problems = ground_record(record, np.zeros(shape, np.uint8), 1.0, blobs, make_spec("ct", ["liver"]))
    assert problems == []
    assert [r["area_px"] for r in rois] == [400, 100]
    assert [(r["x0"], r["y0"], r["x1"], r["y1"]) for r in rois] == [(40, 40, 60, 60), (5, 5, 15, 15)]
    assert [r["specks_dropped"] for r in rois] == [2, 2]
    assert [r["rank_by_area"] for r in rois] == [1, 2] and [r["count_same_label"] for r in rois] == [2, 2]
    assert [(r["width_px"], r["height_px"]) for r in rois] == [(20, 20), (10, 10)]
    again, _ = ground_record(record, np.zeros(shape, np.uint8), 1.0, blobs, make_spec("ct", ["liver"]))
    assert [r["roi_id"] for r in again] == [r["roi_id"] for r in rois]
    # A tissue map declared whole stays one ROI, specks included.
    whole = build_spec(modality="ct", organs=["liver"], grounding={"split": "whole"})
    (one,), _ = ground_record(record, np.zeros(shape, np.uint8), 1.0, blobs, whole)
    assert one["area_px"] == 502 and one["specks_dropped"] == 0


def test_mask_of_only_specks_is_a_problem_and_the_count_is_kept(blobs):
    shape = (256, 256)
    mask = np.zeros(shape, dtype=np.uint8)
    mask[0, 0] = mask[200, 3] = 1
    record = make_record(shape, [mask_annotation(blobs, mask)])
    rois, problems = ground_record(record, np.zeros(shape, np.uint8), 1.0, blobs, make_spec("ct", ["liver"]))
    assert len(problems) == 1 and "only specks (2 component(s) under 7 px)" in problems[0]
    assert [(r["origin"], r["specks_dropped"]) for r in rois] == [("whole_image", 2)]


def test_minimum_component_area_is_a_spec_field_with_clear_errors():
    spec = build_spec(grounding={"min_component_fraction": 0.01})
    assert spec.grounding.min_component_fraction == 0.01
    with pytest.raises(Exception, match="grounding.min_component_fractoin"):
        build_spec(grounding={"min_component_fractoin": 0.01})


def test_bad_grounding_field_in_a_spec_file_names_file_and_field(tmp_path):
    import yaml

    from medtrinity_assets.catalog import CatalogError
    from medtrinity_assets.catalog.load import load_spec
    from medtrinity_assets.paths import REPO_ROOT

    data = yaml.safe_load((REPO_ROOT / "data" / "sources" / "kvasir_seg.yaml").read_text())
    data["grounding"] = {"min_component_fraction": 1.5}
    path = tmp_path / "kvasir_seg.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(CatalogError) as error:
        load_spec(path)
    assert str(path) in str(error.value) and "grounding.min_component_fraction" in str(error.value)


def test_empty_mask_gives_no_roi_a_problem_and_a_whole_image_entry(blobs):
    shape = (64, 80)
    record = make_record(shape, [mask_annotation(blobs, np.zeros(shape, np.uint8))])
    rois, problems = ground_record(record, np.zeros(shape, np.uint8), 1.0, blobs, make_spec("ct", ["liver"]))
    assert len(problems) == 1 and "no pixels" in problems[0]
    assert [r["origin"] for r in rois] == ["whole_image"]


def test_mask_of_wrong_size_is_a_problem(blobs):
    record = make_record((64, 64), [mask_annotation(blobs, np.ones((32, 64), np.uint8))])
    rois, problems = ground_record(record, np.zeros((64, 64), np.uint8), 1.0, blobs, make_spec("ct", ["liver"]))
    assert "differs from image shape" in problems[0] and rois[0]["origin"] == "whole_image"


def test_unreadable_annotations_are_problems_not_crashes(blobs):
    record = make_record((32, 32), [])
    record["annotations"] = "{not json"
    rois, problems = ground_record(record, np.zeros((32, 32), np.uint8), 1.0, blobs, make_spec("ct", ["liver"]))
    assert "not valid JSON" in problems[0] and rois[0]["origin"] == "whole_image"
    record = make_record((32, 32), [{"kind": "mask", "label": "x", "mask_ref": "blobs/masks/none.npy"}, {"kind": "polygon"}])
    rois, problems = ground_record(record, np.zeros((32, 32), np.uint8), 1.0, blobs, make_spec("ct", ["liver"]))
    assert len(problems) == 2 and "unknown annotation kind" in problems[1]


# --- boxes and contours ----------------------------------------------------------------------


def test_box_becomes_coarse_mask_scaled_to_display(blobs):
    record = make_record((256, 256), [{"kind": "box", "label": "nodule", "box": [10, 20, 50, 60]}], modality="xray")
    display = np.zeros((128, 128), dtype=np.uint8)
    (roi,), problems = ground_record(record, display, 0.5, blobs, make_spec("xray", ["chest"]))
    assert problems == []
    assert (roi["x0"], roi["y0"], roi["x1"], roi["y1"]) == (5, 10, 25, 30)
    assert roi["origin"] == "annotation:box" and roi["confidence"] == 0.7
    assert roi["area_px"] == 400
    stored = np.asarray(Image.open(io.BytesIO(blobs.path(roi["mask_path"]).read_bytes()))) > 0
    expected = np.zeros((128, 128), bool)
    expected[10:30, 5:25] = True
    assert np.array_equal(stored, expected)
    # A rectangle is the annotator's frame, not the lesion's outline.
    assert roi["shape"] is None and roi["margin"] is None


def test_bad_boxes_are_problems(blobs):
    annotations = [
        {"kind": "box", "label": "a", "box": [10, 10, 10, 30]},  # zero width
        {"kind": "box", "label": "b", "box": [300, 300, 400, 400]},  # outside a 256 image
        {"kind": "box", "label": "c", "box": [0, 0, 64, 64]},
    ]
    record = make_record((256, 256), annotations)
    rois, problems = ground_record(record, np.zeros((256, 256), np.uint8), 1.0, blobs, make_spec("ct", ["liver"]))
    assert [r["label"] for r in rois] == ["c"]
    assert len(problems) == 2 and "zero area" in problems[0] and "outside" in problems[1]


def test_contour_is_rasterized(blobs):
    square = [[20, 20], [60, 20], [60, 60], [20, 60]]
    record = make_record((100, 100), [{"kind": "contour", "label": "GTV", "points": square}])
    (roi,), problems = ground_record(record, np.zeros((100, 100), np.uint8), 1.0, blobs, make_spec("ct", ["liver"]))
    assert problems == [] and roi["origin"] == "annotation:contour"
    # Edge points belong to the region: x and y span 20..60 inclusive.
    assert (roi["x0"], roi["y0"], roi["x1"], roi["y1"]) == (20, 20, 61, 61)
    assert roi["area_px"] == 41 * 41
    bad = make_record((100, 100), [{"kind": "contour", "label": "GTV", "points": [[1, 1], [2, 2]]}])
    rois, problems = ground_record(bad, np.zeros((100, 100), np.uint8), 1.0, blobs, make_spec("ct", ["liver"]))
    assert "at least 3" in problems[0]


def test_publisher_boxes_in_a_keyed_json_are_read_checked_and_reported(tmp_path):
    from medtrinity_assets.sources.box_formats import parse_keyed_json

    spec = build_spec(
        layout={"family": "image_mask", "image_glob": "images/*.jpg", "mask_template": "masks/{stem}.jpg"},
        extra_boxes={
            "format": "keyed_json", "file": "boxes.json", "path_template": "images/{id}.jpg",
            "box_columns": ["xmin", "ymin", "xmax", "ymax"], "label_column": "label", "role": "reference",
        },
    )
    (tmp_path / "boxes.json").write_text(json.dumps({
        "a": {"height": 50, "width": 60, "bbox": [{"label": "polyp", "xmin": 1, "ymin": 2, "xmax": 30, "ymax": 40}]},
        "b": {"bbox": [{"label": "polyp", "xmin": "?", "ymin": 2, "xmax": 3, "ymax": 4}]},
        "c": {"height": 5},
    }))
    table = parse_keyed_json(tmp_path, spec.extra_boxes)
    assert [b.box for b in table.boxes["images/a.jpg"]] == [(1.0, 2.0, 30.0, 40.0)]
    assert table.sizes["images/a.jpg"] == (60, 50) and table.boxes["images/b.jpg"] == []
    reasons = sorted(f"{q.source_file}: {q.reason}" for q in table.problems)
    assert reasons == [
        "boxes.json id b box 0: box lacks numeric xmin, ymin, xmax, ymax",
        "boxes.json id c: entry has no list under 'bbox'",
    ]
    with pytest.raises(Exception, match="needs four 'box_columns'"):
        build_spec(extra_boxes={"format": "keyed_json", "file": "boxes.json", "label_column": "label"})


def test_reference_boxes_are_matched_to_components_and_never_become_rois(blobs):
    shape = (100, 100)
    mask = np.zeros(shape, np.uint8)
    mask[10:30, 10:30] = 1
    mask[60:90, 50:80] = 1
    annotations = [
        mask_annotation(blobs, mask, "polyp"),
        {"kind": "box", "label": "polyp", "box": [50, 60, 80, 90], "reference": True},
        {"kind": "box", "label": "polyp", "box": [5, 5, 12, 12], "reference": True},  # a box nothing fills
    ]
    rois, problems = ground_record(make_record(shape, annotations), np.zeros(shape, np.uint8), 1.0, blobs, make_spec("endoscopy", ["colon"]))
    assert [r["origin"] for r in rois] == ["annotation:mask"] * 2
    assert [r["box_agreement"] for r in rois] == [1.0, None]
    assert len(problems) == 2 and all(p.startswith("publisher box check") for p in problems)
    assert "best IoU 0.01" in problems[0] and "[10, 10, 30, 30] (display px) has no publisher box" in problems[1]


def test_max_diameter_in_mm_uses_the_export_scale_per_axis(blobs):
    shape = (400, 200)
    mask = np.zeros(shape, np.uint8)
    mask[100:300, 50:150] = 1  # 200 x 100 original px at 0.5 x 1.0 mm: 100 mm x 100 mm
    record = make_record(shape, [mask_annotation(blobs, mask)], spacing=[0.5, 1.0])
    (roi,), _ = ground_record(record, np.zeros((200, 100), np.uint8), 0.5, blobs, make_spec("ct", ["liver"]))
    assert (roi["width_px"], roi["height_px"]) == (50, 100)
    assert roi["area_mm2"] == pytest.approx(100 * 100, rel=0.01)
    assert roi["max_diameter_mm"] == pytest.approx(100 * np.sqrt(2), rel=0.01)


# --- whole image ------------------------------------------------------------------------------


def test_no_annotations_gives_one_whole_image_roi(blobs):
    tissue = skdata.immunohistochemistry()
    record = make_record(tissue.shape[:2], [], modality="histopathology")
    rois, problems = ground_record(record, tissue, 1.0, blobs, make_spec("histopathology", ["colon"]))
    assert problems == []
    (roi,) = rois
    assert roi["origin"] == "whole_image" and roi["label"] is None and roi["confidence"] == 0.0
    assert (roi["x0"], roi["y0"], roi["x1"], roi["y1"]) == (0, 0, 512, 512)
    assert roi["mask_path"] is None and roi["relations"] == "[]" and roi["count_same_label"] == 0
    # Nothing that reads as a lesion: no position, size, shape, contrast or margin words.
    for key in ("horizontal", "vertical", "patient_side", "size_class", "shape", "intensity_word", "margin", "texture"):
        assert roi[key] is None
    # The IHC slide is mostly pale tissue between the stained cells.
    assert roi["colour"] in {"pink", "tan", "brown", "purple", "white", "grey"}


def test_roi_rows_write_with_the_rois_schema(blobs, tmp_path):
    shape = (128, 128)
    record = make_record(shape, [mask_annotation(blobs, disk_mask(shape, (64, 64), 20))])
    rois, _ = ground_record(record, bright_disk_image(shape, (64, 64), 20), 1.0, blobs, make_spec("ct", ["liver"]))
    assert set(rois[0]) == set(schemas.ROIS.names)
    out = tmp_path / "rois.parquet"
    assert write_table(out, schemas.ROIS, rois) == 1
    assert pq.read_table(out).column("shape").to_pylist() == ["round"]


def test_roi_ids_are_stable(blobs):
    shape = (64, 64)
    record = make_record(shape, [{"kind": "box", "label": "a", "box": [1, 1, 20, 20]}])
    first, _ = ground_record(record, np.zeros(shape, np.uint8), 1.0, blobs, make_spec("ct", ["liver"]))
    second, _ = ground_record(record, np.zeros(shape, np.uint8), 1.0, blobs, make_spec("ct", ["liver"]))
    other, _ = ground_record({**record, "record_id": "rec-2"}, np.zeros(shape, np.uint8), 1.0, blobs, make_spec("ct", ["liver"]))
    assert first[0]["roi_id"] == second[0]["roi_id"] != other[0]["roi_id"]


# --- attributes -------------------------------------------------------------------------------


def test_position_words_are_image_frame_words_only():
    shape = (300, 300)
    mask = disk_mask(shape, (250, 50), 20)
    image = bright_disk_image(shape, (250, 50), 20)
    ct = measure_roi(mask, image, modality="ct")
    assert (ct["horizontal"], ct["vertical"]) == ("left", "lower")
    assert ct["centroid_x"] == pytest.approx(50.5 / 300, abs=1e-3)
    # Where the ROI sits in the frame never gives a patient side (grounding.patient_side does).
    assert "patient_side" not in ct
    middle = measure_roi(disk_mask(shape, (150, 150), 20), image, modality="ct")
    assert (middle["horizontal"], middle["vertical"]) == ("center", "middle")


def test_tiny_roi_has_no_shape_but_is_measured():
    shape = (64, 64)
    mask = np.zeros(shape, bool)
    mask[10, 10] = True
    result = measure_roi(mask, bright_disk_image(shape, (10, 10), 1), modality="ct")
    assert result["area_px"] == 1 and result["size_class"] == "small"
    assert result["shape"] is None and result["circularity"] is None
    assert result["intensity_word"] is not None


@pytest.mark.parametrize("radius, expected", [(5, "small"), (40, "medium"), (80, "large")])
def test_size_classes(radius, expected):
    shape = (256, 256)
    mask = disk_mask(shape, (128, 128), radius)
    assert measure_roi(mask, bright_disk_image(shape, (128, 128), radius), modality="ct")["size_class"] == expected


def test_shapes():
    shape = (256, 256)
    image = np.zeros(shape, np.uint8)

    def shape_of(mask):
        return measure_roi(mask, image, modality="ct")["shape"]

    assert shape_of(disk_mask(shape, (128, 128), 30)) == "round"
    oval = np.zeros(shape, bool)
    oval[draw.ellipse(128, 128, 30, 45, shape=shape)] = True
    assert shape_of(oval) == "oval"
    thin = np.zeros(shape, bool)
    thin[draw.ellipse(128, 128, 8, 60, shape=shape)] = True
    assert shape_of(thin) == "elongated"
    star = np.zeros(shape, bool)
    angles = np.linspace(0, 2 * np.pi, 21)[:-1]
    radii = np.where(np.arange(20) % 2 == 0, 60, 25)
    star[draw.polygon(128 + radii * np.sin(angles), 128 + radii * np.cos(angles), shape)] = True
    assert shape_of(star) == "irregular"


def test_bright_disk_is_hyperdense_and_well_defined_lobulated_or_invisible_edges_are_not():
    shape = (256, 256)
    mask = disk_mask(shape, (128, 128), 25)
    sharp = bright_disk_image(shape, (128, 128), 25)
    result = measure_roi(mask, sharp, modality="ct")
    assert result["intensity_word"] == "hyperdense" and result["intensity_contrast"] > 0.5
    assert result["margin"] == "well-defined" and result["texture"] == "homogeneous"
    assert result["margin_confidence"] >= 0.9 and result["convexity"] > 0.97
    # The same disk drawn on an image where nothing marks its edge: no visible margin.
    flat = bright_disk_image(shape, (128, 128), 25, inside=40, outside=40)
    invisible = measure_roi(mask, flat, modality="ct")
    assert invisible["margin"] == "ill-defined" and invisible["edge_contrast"] < 0.3
    # A microlobulated outline (radius varying by 4 px, 12 lobes) is not circumscribed.
    angles = np.linspace(0, 2 * np.pi, 241)[:-1]
    radii = 40 + 4 * np.sign(np.sin(12 * angles))
    lobulated = np.zeros(shape, bool)
    lobulated[draw.polygon(128 + radii * np.sin(angles), 128 + radii * np.cos(angles), shape)] = True
    image = np.where(lobulated, 200, 40).astype(np.uint8)
    lobes = measure_roi(lobulated, image, modality="ct")
    assert lobes["margin"] == "ill-defined" and lobes["convexity"] < 0.95


@pytest.mark.parametrize(
    "modality, inside, word",
    [("mri", 200, "hyperintense"), ("ultrasound", 10, "hypoechoic"), ("xray", 200, "more opaque"),
     ("pet", 200, "increased uptake"), ("dermoscopy", 10, "darker"), ("ct", 45, "isodense")],
)
def test_intensity_words_by_modality(modality, inside, word):
    shape = (128, 128)
    mask = disk_mask(shape, (64, 64), 20)
    image = bright_disk_image(shape, (64, 64), 20, inside=inside, outside=40)
    assert measure_roi(mask, image, modality=modality)["intensity_word"] == word


def test_heterogeneous_versus_homogeneous():
    shape = (256, 256)
    mask = disk_mask(shape, (128, 128), 40)
    smooth = bright_disk_image(shape, (128, 128), 40, inside=160, outside=60, noise=6)
    mottled = smooth.copy()
    rng = np.random.default_rng(2)
    mottled[mask] = np.clip(160 + rng.normal(0, 40, int(mask.sum())), 0, 255).astype(np.uint8)
    assert measure_roi(mask, smooth, modality="mri")["texture"] == "homogeneous"
    result = measure_roi(mask, mottled, modality="mri")
    assert result["texture"] == "heterogeneous" and result["texture_ratio"] > 3


def test_colour_of_red_patch_on_real_fundus_photo():
    retina = skdata.retina()[::4, ::4].copy()
    mask = np.zeros(retina.shape[:2], bool)
    mask[100:140, 150:200] = True
    retina[mask] = (185, 35, 45)
    assert measure_roi(mask, retina, modality="fundus")["colour"] == "red"
    grey = measure_roi(mask, retina[:, :, 0], modality="fundus")
    assert grey["colour"] is None


@pytest.mark.parametrize(
    "rgb, name",
    [((190, 40, 40), "red"), ((95, 55, 30), "dark brown"), ((160, 100, 60), "brown"), ((250, 250, 250), "white"),
     ((30, 60, 200), "blue"), ((240, 160, 185), "pink"), ((10, 10, 10), "black")],
)
def test_colour_names(rgb, name):
    assert colour_name(rgb) == name


# --- relations --------------------------------------------------------------------------------


def test_relations_left_of_contains_and_lone(blobs):
    shape = (200, 200)
    left, right = disk_mask(shape, (100, 40), 15), disk_mask(shape, (100, 160), 15)
    organ, lesion = disk_mask(shape, (100, 100), 30), disk_mask(shape, (100, 100), 8)
    annotations = [
        mask_annotation(blobs, left, "a"),
        mask_annotation(blobs, right, "b"),
        mask_annotation(blobs, organ, "organ"),
        mask_annotation(blobs, lesion, "lesion"),
    ]
    rois, _ = ground_record(make_record(shape, annotations), np.zeros(shape, np.uint8), 1.0, blobs, make_spec("ct", ["liver"]))
    by_label = {r["label"]: r for r in rois}

    def relations(of, to):
        return [e["relation"] for e in json.loads(by_label[of]["relations"]) if e["roi_id"] == by_label[to]["roi_id"]]

    assert relations("a", "b") == ["left_of"] and relations("b", "a") == ["right_of"]
    assert relations("organ", "lesion") == ["contains"] and relations("lesion", "organ") == ["inside"]
    # Boxes 16 px apart (8% of the width): beside, but not adjacent.
    assert relations("a", "organ") == ["left_of"]
    distance = next(e["distance"] for e in json.loads(by_label["a"]["relations"]) if e["roi_id"] == by_label["b"]["roi_id"])
    assert distance == pytest.approx(120 / np.hypot(200, 200), abs=0.01)


def test_mask_relations_are_exact_and_kept_by_a_later_relate(blobs):
    shape = (100, 100)
    # A thin diagonal band whose bounding box encloses a small disk that it never touches.
    band = np.zeros(shape, bool)
    for row in range(61):
        band[row, max(0, 60 - row - 1) : 60 - row + 2] = True
    disk = disk_mask(shape, (50, 50), 8)
    annotations = [mask_annotation(blobs, band, "band"), mask_annotation(blobs, disk, "disk")]
    rois, _ = ground_record(make_record(shape, annotations), np.zeros(shape, np.uint8), 1.0, blobs, make_spec("ct", ["liver"]))
    from_masks = [r["relations"] for r in rois]
    assert "contains" not in from_masks[0] and "overlaps" not in from_masks[0]
    relate(rois)  # what the stage does next, without masks: keeps the exact relations
    assert [r["relations"] for r in rois] == from_masks
    for roi in rois:
        roi["relations"] = None
    relate(rois)  # boxes only: the band's box encloses the disk's box
    assert json.loads(rois[0]["relations"])[0]["relation"] == "contains"


def test_relate_from_boxes_without_masks():
    base = {"image_width": 100, "image_height": 100, "label": "x", "relations": None}
    top = {**base, "roi_id": "top", "x0": 40, "y0": 5, "x1": 60, "y1": 20, "centroid_x": 0.5, "centroid_y": 0.125}
    bottom = {**base, "roi_id": "bottom", "x0": 40, "y0": 21, "x1": 60, "y1": 40, "centroid_x": 0.5, "centroid_y": 0.3}
    big = {**base, "roi_id": "big", "x0": 0, "y0": 50, "x1": 100, "y1": 100, "centroid_x": 0.5, "centroid_y": 0.75}
    small = {**base, "roi_id": "small", "x0": 10, "y0": 60, "x1": 20, "y1": 70, "centroid_x": 0.15, "centroid_y": 0.65}
    rois = [top, bottom, big, small]
    relate(rois)
    rel = {r["roi_id"]: {(e["roi_id"], e["relation"]) for e in json.loads(r["relations"])} for r in rois}
    assert ("bottom", "above") in rel["top"] and ("bottom", "adjacent") in rel["top"]
    assert ("top", "below") in rel["bottom"]
    assert ("small", "contains") in rel["big"] and ("big", "inside") in rel["small"]
    lone = [{**top, "relations": None}]
    relate(lone)
    assert lone[0]["relations"] == "[]"


# --- real data --------------------------------------------------------------------------------


def _busi_rois(blobs, folder: str):
    spec = make_spec("ultrasound", ["breast"])
    results = []
    for image_path in sorted((REALDATA / "busi" / folder / "images").glob("*.png")):
        mask_path = REALDATA / "busi" / folder / "mask" / image_path.name.replace(".png", "_mask.png")
        pixels = np.asarray(Image.open(image_path).convert("L"))
        mask = np.asarray(Image.open(mask_path))
        record = make_record(pixels.shape, [mask_annotation(blobs, mask, folder)], modality="ultrasound", record_id=image_path.name)
        record["pixel_units"] = "raw"
        normalized = normalize_pixels(pixels, record, spec.intensity_rule())
        results.append(ground_record(record, normalized.display, normalized.scale, blobs, spec))
    return results


@needs_realdata
def test_busi_lesions_are_hypoechoic_and_malignant_margins_less_sharp(blobs):
    benign, malignant = _busi_rois(blobs, "benign"), _busi_rois(blobs, "malignant")
    assert benign and malignant
    for rois, problems in benign + malignant:
        assert problems == [] and rois[0]["origin"] == "annotation:mask"
        # Breast masses on ultrasound are darker than the surrounding tissue.
        assert rois[0]["intensity_word"] == "hypoechoic"
    benign_sharpness = np.mean([rois[0]["margin_sharpness"] for rois, _ in benign])
    malignant_sharpness = np.mean([rois[0]["margin_sharpness"] for rois, _ in malignant])
    assert malignant_sharpness < benign_sharpness


@needs_realdata
def test_busi_normal_images_have_empty_masks_reported(blobs):
    for rois, problems in _busi_rois(blobs, "normal"):
        assert [r["origin"] for r in rois] == ["whole_image"]
        assert len(problems) == 1 and "no pixels" in problems[0]


@needs_realdata
def test_dsb2018_nuclei_instances_become_rois(blobs):
    import tifffile

    labels = tifffile.imread(REALDATA / "dsb2018" / "images" / "mask2d.tif")
    pixels = tifffile.imread(REALDATA / "dsb2018" / "images" / "img2d.tif")
    spec = make_spec("microscopy", ["cell"])
    record = make_record(labels.shape, [mask_annotation(blobs, labels, "nucleus", instances=True)], modality="microscopy")
    record["pixel_units"] = "raw"
    normalized = normalize_pixels(pixels, record, spec.intensity_rule())
    rois, problems = ground_record(record, normalized.display, normalized.scale, blobs, spec)
    instances = len(np.unique(labels)) - 1
    assert problems == [] and len(rois) == instances
    assert all(r["count_same_label"] == instances for r in rois)
    # Fluorescent nuclei are brighter than the dark background around them.
    assert np.mean([r["intensity_word"] == "brighter" for r in rois]) > 0.9
    # Relations are kept to the nearest neighbours, not every pair.
    assert max(len(json.loads(r["relations"])) for r in rois) <= 2 * 8 + 4
