"""The image + mask family in full: every pairing rule (replacement, template with image_regex
groups, several labelled masks per image) and every mask encoding (binary lossless and JPEG,
multi-class values, 16-bit and colour instance labels, MICCAI text), with the bad inputs
each can meet. Fixtures are real files written by Pillow and tifffile in tmp_path; the
realdata tests read ../shared/realdata by path and compute their expectations from its files.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from conftest import REALDATA, needs_realdata
from PIL import Image
from pydantic import ValidationError
from scipy import ndimage
from skimage import draw
from spec_factory import build_spec

from medtrinity_assets.catalog.load import load_spec, source_root
from medtrinity_assets.imaging.image_io import read_mask
from medtrinity_assets.paths import REPO_ROOT
from medtrinity_assets.sources import read_source
from medtrinity_assets.sources.base import IngestContext, Quarantined
from medtrinity_assets.storage import BlobStore

CATALOG = REPO_ROOT / "data" / "sources"


def run_layout(tmp_path: Path, root: Path, layout: dict, **spec_fields):
    spec = build_spec(layout=layout, root=str(root), **spec_fields)
    return run_spec(tmp_path, spec, root)


def run_spec(tmp_path: Path, spec, root: Path):
    ctx = IngestContext(spec=spec, root=root, blobs=BlobStore(tmp_path / "var"), salt="test-salt")
    items = list(read_source(ctx))
    records = {item["source_file"]: item for item in items if isinstance(item, dict)}
    reasons = {item.source_file: item.reason for item in items if isinstance(item, Quarantined)}
    assert len(records) + len(reasons) == len(items)  # one outcome per file
    return ctx, records, reasons


def annotations_of(record: dict) -> list[dict]:
    return json.loads(record["annotations"])


def stored(ctx, annotation: dict) -> np.ndarray:
    return np.asarray(ctx.blobs.get_array(annotation["mask_ref"]))


def photo(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def save(path: Path, array: np.ndarray, **kwargs) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)


def save_tiff(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, array)


def ellipse(shape, centre, radii, rotation=0.0) -> np.ndarray:
    region = np.zeros(shape, dtype=bool)
    rr, cc = draw.ellipse(*centre, *radii, shape=shape, rotation=rotation)
    region[rr, cc] = True
    return region


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


# ---------------------------------------------------------------- binary masks


def test_kvasir_style_jpeg_mask_is_thresholded_to_the_planted_shape(tmp_path):
    root = tmp_path / "kvasir"
    polyp = ellipse((240, 320), (120, 150), (70, 100), rotation=0.5)
    save(root / "images" / "cju0qkwl35piu0993l0dewei2.jpg", photo((240, 320, 3)), quality=90)
    rgb_mask = np.stack([polyp.astype(np.uint8) * 255] * 3, axis=2)
    save(root / "masks" / "cju0qkwl35piu0993l0dewei2.jpg", rgb_mask, quality=40)
    jpeg_values = np.unique(np.asarray(Image.open(root / "masks" / "cju0qkwl35piu0993l0dewei2.jpg")))
    assert len(jpeg_values) > 10  # the mask really carries compression noise

    layout = {"family": "image_mask", "image_glob": "images/*.jpg", "mask_template": "masks/{stem}.jpg"}
    ctx, records, reasons = run_layout(tmp_path, root, layout, modality="endoscopy", diseases=["polyp"])
    assert reasons == {}
    (annotation,) = annotations_of(records["images/cju0qkwl35piu0993l0dewei2.jpg"])
    inside = stored(ctx, annotation).astype(bool)
    assert annotation["label"] == "polyp" and set(np.unique(stored(ctx, annotation))) == {0, 1}
    assert iou(inside, polyp) > 0.95
    # No speck removal is needed: thresholding leaves the one planted region, no islands.
    assert ndimage.label(inside, structure=np.ones((3, 3)))[1] == 1


def test_mask_threshold_decides_what_grey_is_inside(tmp_path):
    root = tmp_path / "grey"
    mask = np.zeros((20, 30), np.uint8)
    mask[2:8, 2:8] = 255  # certain
    mask[10:16, 10:20] = 100  # the annotator's "uncertain" grey
    save(root / "img" / "a.png", photo((20, 30)))
    save(root / "gt" / "a.png", mask)
    layout = {
        "family": "image_mask", "image_glob": "img/*.png", "mask_replace": [{"old": "img/", "new": "gt/"}],
        "binarize": "threshold",
    }
    for threshold, expected in ((128, mask == 255), (90, mask >= 90)):
        ctx, records, _ = run_layout(tmp_path / str(threshold), root, {**layout, "mask_threshold": threshold})
        (annotation,) = annotations_of(records["img/a.png"])
        np.testing.assert_array_equal(stored(ctx, annotation), expected.astype(np.uint8))


def test_grey_palette_gif_and_colour_palette_masks(tmp_path):
    truth = ellipse((40, 50), (20, 25), (10, 15))
    grey_gif = tmp_path / "grey.gif"
    Image.fromarray(truth.astype(np.uint8) * 255).save(grey_gif)  # Pillow writes mode "P"
    assert Image.open(grey_gif).mode == "P"
    np.testing.assert_array_equal(read_mask(grey_gif, binarize=True), truth.astype(np.uint8))

    # VOC-style palette: index 2 drawn in red. The class id is the index, not the colour.
    indexed = Image.fromarray(truth.astype(np.uint8) * 2, mode="L").convert("P")
    indexed.putpalette([0, 0, 0, 0, 255, 0, 255, 0, 0] + [0] * (256 * 3 - 9))
    indexed.save(tmp_path / "classes.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "classes.png", binarize=False), truth.astype(np.uint8) * 2)


# ---------------------------------------------------------------- template pairing


def test_drive_style_template_with_regex_group_and_gif_mask(tmp_path):
    root = tmp_path / "DRIVE"
    vessels = {}
    for number, seed in (("21", 1), ("22", 2)):
        save_tiff(root / "training" / "images" / f"{number}_training.tif", photo((48, 56, 3), seed))
        vessel = np.zeros((48, 56), bool)
        vessel[int(number) - 10, :] = True  # a one-pixel-wide vessel
        vessel[:, 5 + seed] = True
        vessels[number] = vessel
        save(root / "training" / "1st_manual" / f"{number}_manual1.gif", vessel.astype(np.uint8) * 255)
    # A publisher's extra file in the image folder that the regex leaves out.
    tifffile.imwrite(root / "training" / "images" / "thumbnail.tif", photo((8, 8, 3)))
    layout = {
        "family": "image_mask",
        "image_glob": "training/images/*.tif",
        "image_regex": r"(?P<num>\d+)_training\.tif$",
        "mask_template": "{parent}/../1st_manual/{num}_manual1.gif",
    }
    ctx, records, reasons = run_layout(tmp_path, root, {**layout, "mask_label": "retinal vessel"},
                                       modality="fundus", organs=["retina"])
    assert reasons == {}
    assert sorted(records) == ["training/images/21_training.tif", "training/images/22_training.tif"]
    for number, vessel in vessels.items():
        (annotation,) = annotations_of(records[f"training/images/{number}_training.tif"])
        assert annotation["label"] == "retinal vessel"
        np.testing.assert_array_equal(stored(ctx, annotation), vessel.astype(np.uint8))


def test_isic_style_template_and_unknown_template_field_is_a_spec_error(tmp_path):
    root = tmp_path / "isic2018"
    lesion = ellipse((30, 40), (15, 20), (9, 12))
    save(root / "ISIC2018_Task1-2_Training_Input" / "ISIC_0000000.jpg", photo((30, 40, 3)))
    save(root / "ISIC2018_Task1_Training_GroundTruth" / "ISIC_0000000_segmentation.png", lesion.astype(np.uint8) * 255)
    layout = {
        "family": "image_mask",
        "image_glob": "ISIC2018_Task1-2_Training_Input/*.jpg",
        "mask_template": "ISIC2018_Task1_Training_GroundTruth/{stem}_segmentation.png",
    }
    ctx, records, reasons = run_layout(tmp_path, root, layout, modality="dermoscopy", diseases=["skin lesion"])
    assert reasons == {}
    (annotation,) = annotations_of(records["ISIC2018_Task1-2_Training_Input/ISIC_0000000.jpg"])
    np.testing.assert_array_equal(stored(ctx, annotation), lesion.astype(np.uint8))

    with pytest.raises(ValidationError, match=r"\{number\}.*named group"):
        build_spec(layout={**layout, "mask_template": "gt/{number}.png", "image_regex": r"(?P<num>\d+)"})
    with pytest.raises(ValidationError, match="not a valid regular expression"):
        build_spec(layout={**layout, "image_regex": r"(?P<num>\d+"})


# ---------------------------------------------------------------- several masks per image


def test_several_labelled_masks_per_image_with_optional_ones(tmp_path):
    root = tmp_path / "jsrt"
    shape = (64, 64)
    organs = {
        "lungs": ellipse(shape, (32, 16), (20, 10)) | ellipse(shape, (32, 48), (20, 10)),
        "heart": ellipse(shape, (40, 34), (10, 12)),
        "clavicles": ellipse(shape, (6, 32), (2, 26)),
    }
    for name in ("JPCLN001", "JPCLN002", "JPCLN003"):
        save(root / "images" / f"{name}.png", photo(shape, len(name)))
    for name in ("JPCLN001", "JPCLN002", "JPCLN003"):
        for organ, region in organs.items():
            skip = (name == "JPCLN002" and organ == "clavicles") or (name == "JPCLN003" and organ == "heart")
            if not skip:
                save(root / "masks" / organ / f"{name}.gif", region.astype(np.uint8) * 255)
    layout = {
        "family": "image_mask",
        "image_glob": "images/*.png",
        "masks": [
            {"template": "masks/lungs/{stem}.gif", "label": "lung"},
            {"template": "masks/heart/{stem}.gif", "label": "heart"},
            {"replace": [{"old": "images/", "new": "masks/clavicles/"}, {"old": ".png", "new": ".gif"}],
             "label": "clavicle", "optional": True},
        ],
    }
    ctx, records, reasons = run_layout(tmp_path, root, layout, modality="xray", organs=["chest"])
    assert reasons == {"images/JPCLN003.png": "mask masks/heart/JPCLN003.gif (heart) is absent"}
    full = annotations_of(records["images/JPCLN001.png"])
    assert [a["label"] for a in full] == ["lung", "heart", "clavicle"]  # spec order
    for annotation, region in zip(full, organs.values()):
        np.testing.assert_array_equal(stored(ctx, annotation), region.astype(np.uint8))
    assert [a["label"] for a in annotations_of(records["images/JPCLN002.png"])] == ["lung", "heart"]


def test_idrid_style_lesion_folders_all_optional_keep_tiny_lesions(tmp_path):
    root = tmp_path / "idrid"
    shape = (50, 60)
    microaneurysm = np.zeros(shape, bool)
    microaneurysm[20:22, 30] = True  # two pixels: a real finding, never cleaned as a speck
    exudate = ellipse(shape, (10, 45), (4, 6))
    save(root / "images" / "IDRiD_01.jpg", photo(shape + (3,), 1))
    save(root / "images" / "IDRiD_02.jpg", photo(shape + (3,), 2))
    # IDRiD ships lesion masks as TIFs named <id>_<code>.tif, one folder per lesion type.
    save_tiff(root / "gt" / "1. Microaneurysms" / "IDRiD_01_MA.tif", microaneurysm.astype(np.uint8) * 255)
    save_tiff(root / "gt" / "3. Hard Exudates" / "IDRiD_01_EX.tif", exudate.astype(np.uint8) * 255)
    lesions = [("1. Microaneurysms", "MA", "microaneurysm"), ("2. Haemorrhages", "HE", "haemorrhage"),
               ("3. Hard Exudates", "EX", "hard exudate"), ("4. Soft Exudates", "SE", "soft exudate")]
    layout = {
        "family": "image_mask",
        "image_glob": "images/*.jpg",
        "mask_optional": True,
        "masks": [{"template": f"gt/{folder}/{{stem}}_{code}.tif", "label": label} for folder, code, label in lesions],
    }
    ctx, records, reasons = run_layout(tmp_path, root, layout, modality="fundus", organs=["retina"])
    assert reasons == {}
    first = annotations_of(records["images/IDRiD_01.jpg"])
    assert [a["label"] for a in first] == ["microaneurysm", "hard exudate"]
    np.testing.assert_array_equal(stored(ctx, first[0]), microaneurysm.astype(np.uint8))
    assert annotations_of(records["images/IDRiD_02.jpg"]) == []  # no lesion of any kind


# ---------------------------------------------------------------- multi-class masks


def test_refuge_style_class_values_give_one_annotation_per_label(tmp_path):
    root = tmp_path / "refuge"
    shape = (60, 80)
    disc = ellipse(shape, (30, 40), (20, 22))
    cup = ellipse(shape, (30, 40), (9, 10))
    glaucoma = np.full(shape, 255, np.uint8)
    glaucoma[disc], glaucoma[cup] = 128, 0
    stray = glaucoma.copy()
    stray[0:2, 0:3] = 64  # a value the spec does not name
    for name, mask in (("g0001", glaucoma), ("g0002", stray), ("n0001", np.full(shape, 255, np.uint8))):
        save(root / "Images" / f"{name}.jpg", photo(shape + (3,), len(name)))
        save(root / "Annotation-Training400" / "Disc_Cup_Masks" / f"{name}.bmp", mask)
    layout = {
        "family": "image_mask",
        "image_glob": "Images/*.jpg",
        "mask_template": "Annotation-Training400/Disc_Cup_Masks/{stem}.bmp",
        "label_values": {0: "optic cup", 128: "optic disc"},
        "background_value": 255,
    }
    ctx, records, reasons = run_layout(tmp_path, root, layout, modality="fundus", organs=["optic disc"])
    cup_annotation, disc_annotation = annotations_of(records["Images/g0001.jpg"])
    assert (cup_annotation["label"], disc_annotation["label"]) == ("optic cup", "optic disc")
    np.testing.assert_array_equal(stored(ctx, cup_annotation), cup.astype(np.uint8))
    np.testing.assert_array_equal(stored(ctx, disc_annotation), (disc & ~cup).astype(np.uint8))  # the ring
    assert annotations_of(records["Images/n0001.jpg"]) == []  # all background
    # Unknown values quarantine the image: dropping them would call a labelled region background.
    assert reasons == {"Images/g0002.jpg": "mask Annotation-Training400/Disc_Cup_Masks/g0002.bmp holds values "
                                           f"64 ({(stray == 64).sum()} px) that are neither label_values (0, 128) nor background_value (255)"}

    with pytest.raises(ValidationError, match="background_value 255 is also a key"):
        build_spec(layout={**layout, "label_values": {0: "optic cup", 255: "optic disc"}})


# ---------------------------------------------------------------- instance masks


def test_16_bit_tiff_instance_mask_is_one_annotation_with_its_count(tmp_path):
    root = tmp_path / "nuclei"
    labels = np.zeros((40, 50), np.uint16)
    for index, (value, centre) in enumerate(((3, (8, 8)), (300, (20, 25)), (4000, (30, 40)))):
        labels[ellipse(labels.shape, centre, (4 + index, 5))] = value
    save_tiff(root / "images" / "img2d.tif", photo((40, 50)).astype(np.uint16) * 200)
    tifffile.imwrite(root / "images" / "mask2d.tif", labels)
    layout = {"family": "image_mask", "image_glob": "images/img*.tif",
              "mask_replace": [{"old": "images/img", "new": "images/mask"}], "instances": True, "mask_label": "nucleus"}
    ctx, records, reasons = run_layout(tmp_path, root, layout, modality="microscopy", organs=["cell nucleus"])
    assert reasons == {}
    (annotation,) = annotations_of(records["images/img2d.tif"])
    assert annotation["instances"] is True and annotation["label"] == "nucleus"
    assert annotation["instance_count"] == len(np.unique(labels[labels > 0]))
    np.testing.assert_array_equal(stored(ctx, annotation), labels)  # ids kept, not binarized


def test_colour_coded_png_instances_and_16_bit_png(tmp_path):
    shape = (30, 30)
    colours = {(255, 0, 0): ellipse(shape, (8, 8), (4, 4)), (0, 128, 255): ellipse(shape, (20, 20), (5, 6))}
    rgb = np.zeros(shape + (3,), np.uint8)
    for colour, region in colours.items():
        rgb[region] = colour
    save(tmp_path / "colour.png", rgb)
    ids = read_mask(tmp_path / "colour.png", binarize=False, colour_instances=True)
    assert (ids == 0).sum() == (~np.logical_or(*colours.values())).sum()
    assert len(np.unique(ids[ids > 0])) == 2 and all(len(np.unique(ids[r])) == 1 for r in colours.values())

    wide = np.zeros(shape, np.uint16)
    wide[2:5, 2:5], wide[10:20, 10:20] = 1000, 65000
    save(tmp_path / "labels16.png", wide)
    np.testing.assert_array_equal(read_mask(tmp_path / "labels16.png", binarize=False), wide)


def test_dsb2018_stage1_layout_one_png_per_nucleus_becomes_one_instance_mask(tmp_path):
    root = tmp_path / "dsb"
    shape = (36, 44)
    nuclei = [ellipse(shape, (8, 8), (4, 5)), ellipse(shape, (20, 30), (6, 5)), ellipse(shape, (30, 10), (3, 3))]
    for sample, count in (("0a7d30b2", 3), ("1b44d22f", 0)):
        save(root / "stage1_train" / sample / "images" / f"{sample}.png", np.dstack([photo(shape)] * 3 + [np.full(shape, 255, np.uint8)]))
        for index, nucleus in enumerate(nuclei[:count]):
            save(root / "stage1_train" / sample / "masks" / f"{index:04x}{sample}.png", nucleus.astype(np.uint8) * 255)
    save(root / "stage1_train" / "2c9f" / "images" / "2c9f.png", photo(shape))
    save(root / "stage1_train" / "2c9f" / "masks" / "aa.png", nuclei[0].astype(np.uint8)[:30] * 255)
    layout = {"family": "image_mask", "image_glob": "stage1_train/*/images/*.png",
              "mask_template": "{parent}/../masks/*.png", "instances": True, "instance_files": True,
              "mask_label": "nucleus"}
    ctx, records, reasons = run_layout(tmp_path, root, layout, modality="microscopy", organs=["cell nucleus"])
    (annotation,) = annotations_of(records["stage1_train/0a7d30b2/images/0a7d30b2.png"])
    assert annotation["instances"] is True and annotation["instance_count"] == len(nuclei)
    ids = stored(ctx, annotation)
    for number, nucleus in enumerate(nuclei, start=1):  # file order gives the ids
        assert set(np.unique(ids[nucleus])) == {number}
    assert (ids > 0).sum() == np.logical_or.reduce(nuclei).sum()
    assert reasons == {
        "stage1_train/1b44d22f/images/1b44d22f.png": "no mask file matches stage1_train/1b44d22f/masks/*.png",
        "stage1_train/2c9f/images/2c9f.png": "mask 44x30 differs from image 44x36 (stage1_train/2c9f/masks/aa.png)",
    }
    with pytest.raises(ValidationError, match="instance_files needs layout.instances"):
        build_spec(layout={**layout, "instances": False})


def test_miccai_text_instance_format_regardless_of_suffix(tmp_path):
    root = tmp_path / "cpm15"
    labels = np.zeros((6, 8), np.int64)
    labels[1:3, 1:3], labels[4:6, 5:8] = 1, 7
    save(root / "image01.png", photo((6, 8, 3)))
    (root / "image01_mask.dat").write_text("8 6\n" + "\n".join(map(str, labels.ravel())) + "\n")
    layout = {"family": "image_mask", "image_glob": "image*.png", "mask_replace": [{"old": ".png", "new": "_mask.dat"}],
              "instances": True, "instance_format": "miccai_txt", "mask_label": "nucleus"}
    ctx, records, reasons = run_layout(tmp_path, root, layout, modality="histopathology")
    assert reasons == {}
    (annotation,) = annotations_of(records["image01.png"])
    assert annotation["instance_count"] == 2
    np.testing.assert_array_equal(stored(ctx, annotation), labels)
    with pytest.raises(ValidationError, match="instance_format needs layout.instances"):
        build_spec(layout={**layout, "instances": False})


# ---------------------------------------------------------------- bad input


def test_absent_mismatched_truncated_and_empty_masks_are_quarantined(tmp_path):
    root = tmp_path / "bad"
    lesion = ellipse((32, 40), (16, 20), (8, 10)).astype(np.uint8) * 255
    for name in ("good", "absent", "small", "truncated", "empty", "blank"):
        save(root / "images" / f"{name}.png", photo((32, 40, 3), len(name)))
    save(root / "masks" / "good.png", lesion)
    save(root / "masks" / "small.png", lesion[:30, :36])
    buffer = io.BytesIO()
    Image.fromarray(photo((32, 40))).save(buffer, format="PNG")
    (root / "masks" / "truncated.png").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    (root / "masks" / "empty.png").write_bytes(b"")
    save(root / "masks" / "blank.png", np.zeros((32, 40), np.uint8))
    layout = {"family": "image_mask", "image_glob": "images/*.png", "mask_template": "masks/{name}"}
    _, records, reasons = run_layout(tmp_path, root, layout)
    assert sorted(records) == ["images/blank.png", "images/good.png"]
    assert annotations_of(records["images/blank.png"]) == []  # all-zero mask: image without lesion
    assert reasons["images/absent.png"] == "mask masks/absent.png is absent"
    assert reasons["images/small.png"] == "mask 36x30 differs from image 40x32 (masks/small.png)"
    assert reasons["images/truncated.png"].startswith("unreadable mask masks/truncated.png: corrupt or truncated")
    assert reasons["images/empty.png"] == "unreadable mask masks/empty.png: file is empty (0 bytes)"

    # The same absent mask is no problem when masks are optional.
    _, records, reasons = run_layout(tmp_path / "optional", root, {**layout, "mask_optional": True})
    assert annotations_of(records["images/absent.png"]) == [] and "images/absent.png" not in reasons


def test_template_leaving_the_source_folder_or_missing_its_group_is_quarantined(tmp_path):
    root = tmp_path / "src"
    save(root / "scans" / "case_7.png", photo((10, 12)))
    save(root / "scans" / "case_x.png", photo((10, 12)))
    save(tmp_path / "outside.png", np.zeros((10, 12), np.uint8))
    layout = {"family": "image_mask", "image_glob": "scans/*.png", "image_regex": r"case_(?:(?P<num>\d+)|x)"}
    _, _, reasons = run_layout(tmp_path / "a", root, {**layout, "mask_template": "masks/{num}.png"})
    assert reasons["scans/case_x.png"] == "image_regex group 'num' did not match, template 'masks/{num}.png' cannot be filled"
    _, records, reasons = run_layout(tmp_path / "b", root, {**layout, "mask_template": "{parent}/../../outside.png"})
    assert records == {} and reasons["scans/case_7.png"] == (
        "template '{parent}/../../outside.png' gives ../outside.png, outside the source folder")


def test_no_matching_image_and_rerun_gives_identical_rows(tmp_path):
    root = tmp_path / "src"
    save(root / "a.png", photo((10, 12)))
    save(root / "a_mask.png", (photo((10, 12), 3) > 128).astype(np.uint8) * 255)
    layout = {"family": "image_mask", "image_glob": "*.png", "image_regex": r"^[a-z]\.png$",
              "mask_template": "{stem}_mask{suffix}"}
    _, first, _ = run_layout(tmp_path / "one", root, layout)
    _, second, _ = run_layout(tmp_path / "two", root, layout)
    assert list(first) == ["a.png"] and first == second

    _, records, reasons = run_layout(tmp_path, root, {**layout, "image_regex": r"^scan_"})
    assert records == {} and reasons == {".": "no file matches image_glob '*.png' and image_regex '^scan_' under the source folder"}


# ---------------------------------------------------------------- realdata


def run_catalog(tmp_path, source_id: str):
    spec = load_spec(CATALOG / f"{source_id}.yaml")
    return run_spec(tmp_path, spec, source_root(spec))


def binary(path: Path) -> np.ndarray:
    """The dataset's own mask file read with plain Pillow: any bright channel is inside."""
    array = np.asarray(Image.open(path).convert("RGB")).max(axis=2)
    return (array >= 128).astype(np.uint8)


@needs_realdata
def test_busi_realdata_extra_masks_and_folder_labels(tmp_path):
    ctx, records, reasons = run_catalog(tmp_path, "busi")
    root = REALDATA / "busi"
    images = sorted(p.relative_to(root).as_posix() for p in root.glob("*/images/*.png"))
    assert reasons == {} and sorted(records) == images
    for image_path, record in records.items():
        image = root / image_path
        masks = sorted((image.parent.parent / "mask").glob(f"{image.stem}_mask*.png"))
        expected = [binary(m) for m in masks if binary(m).any()]
        annotations = annotations_of(record)
        assert len(annotations) == len(expected), image_path
        for annotation, mask in zip(annotations, expected):
            np.testing.assert_array_equal(stored(ctx, annotation), mask)
        folder = image_path.split("/")[0]
        assert record["labels"] == ([] if folder == "normal" else [f"{folder} breast tumor"])
        assert all(a["label"] == f"{folder} breast tumor" for a in annotations)
    assert sum(len(annotations_of(r)) == 2 for r in records.values()) == sum(
        1 for _ in root.glob("*/mask/*_mask_1.png"))
    assert all(annotations_of(r) == [] for p, r in records.items() if p.startswith("normal/"))


@needs_realdata
def test_ham10000_realdata_masks_match_by_stem(tmp_path):
    ctx, records, reasons = run_catalog(tmp_path, "ham10000")
    images = sorted((REALDATA / "ham10000" / "test_images").glob("*.jpg"))
    assert reasons == {} and sorted(records) == [f"test_images/{p.name}" for p in images]
    for image in images:
        (annotation,) = annotations_of(records[f"test_images/{image.name}"])
        expected = binary(REALDATA / "ham10000" / "test_masks" / f"{image.stem}.png")
        np.testing.assert_array_equal(stored(ctx, annotation), expected)
        assert annotation["label"] == "pigmented skin lesion"


@needs_realdata
def test_dsb2018_realdata_instance_count_from_the_tiff(tmp_path):
    ctx, records, reasons = run_catalog(tmp_path, "dsb2018")
    labels = tifffile.imread(REALDATA / "dsb2018" / "images" / "mask2d.tif")
    assert reasons == {} and list(records) == ["images/img2d.tif"]
    (annotation,) = annotations_of(records["images/img2d.tif"])
    assert annotation["instances"] is True
    assert annotation["instance_count"] == len(np.unique(labels[labels > 0]))
    np.testing.assert_array_equal(stored(ctx, annotation), labels)


@needs_realdata
def test_miccai15_realdata_text_masks_and_instance_counts(tmp_path):
    ctx, records, reasons = run_catalog(tmp_path, "miccai15_nuclei")
    root = REALDATA / "miccai15_nuclei"
    images = sorted(p.name for p in root.glob("image[0-9][0-9].png"))
    assert reasons == {} and sorted(records) == images
    for name in images:
        text = (root / name.replace(".png", "_mask.txt")).read_text().split()
        width, height = int(text[0]), int(text[1])
        labels = np.array(text[2:], dtype=np.int64).reshape(height, width)
        assert Image.open(root / name).size == (width, height)
        (annotation,) = annotations_of(records[name])
        assert annotation["instance_count"] == len(np.unique(labels[labels > 0]))
        np.testing.assert_array_equal(stored(ctx, annotation), labels)
