"""The overlay a vision model sees, on real lesions: BUSI breast ultrasound (grey, two lesions in
one image) and Kvasir-SEG colonoscopy (colour, two polyps), read from ../shared/realdata through
the pipeline's own ingest, normalize and ground code into a data root of the test's own.

Where the outline is drawn is checked against a boundary computed here another way (scikit-image
resize and find_boundaries), not against the module's own edge function."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage as ndi
from skimage.segmentation import find_boundaries
from skimage.transform import resize

from medtrinity_assets.catalog.load import load_spec
from medtrinity_assets.generation.llm_client import ChatEndpoint, EndpointConfig
from medtrinity_assets.generation.roi_overlay import (
    OUTLINE_COLOUR,
    OverlayError,
    image_digest,
    overlay_data_url,
    overlay_png,
    vlm_user_content,
)
from medtrinity_assets.grounding.validate import CATALOG, ground_source, kvasir_realdata_spec
from medtrinity_assets.imaging.normalize import encode_png
from medtrinity_assets.storage import BlobStore
from medtrinity_assets_tests.conftest import REALDATA, needs_realdata
from medtrinity_assets_tests.generation.fault_server import FaultServer

pytestmark = needs_realdata

# Two lesions in one grey image; one large lesion; two polyps in one colour image.
BUSI = [("benign", "benign (4)"), ("malignant", "malignant (1)")]
KVASIR = "cju0sr5ghl0nd08789uzf1raf"


def _copy_busi(folder: Path) -> None:
    for klass, stem in BUSI:
        for sub, pattern in (("images", f"{stem}.png"), ("mask", f"{stem}_mask*.png")):
            (folder / klass / sub).mkdir(parents=True, exist_ok=True)
            for path in (REALDATA / "busi" / klass / sub).iterdir():
                if path.match(pattern.replace("(", "[(]").replace(")", "[)]")):
                    shutil.copyfile(path, folder / klass / sub / path.name)


def _copy_kvasir(folder: Path) -> None:
    for sub in ("images", "masks"):
        (folder / sub).mkdir(parents=True)
        shutil.copyfile(REALDATA / "kvasir_seg" / sub / f"{KVASIR}.jpg", folder / sub / f"{KVASIR}.jpg")
    shutil.copyfile(REALDATA / "kvasir_seg" / "kavsir_bboxes.json", folder / "kavsir_bboxes.json")


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> dict:
    """name -> (data root, normalized image path relative to it, the record's ROIs), for the
    images above grounded as the pipeline grounds them (masks in the blob store)."""
    base = tmp_path_factory.mktemp("overlay")
    data_root = base / "data"
    _copy_busi(base / "busi")
    _copy_kvasir(base / "kvasir")
    blobs = BlobStore(data_root)
    specs = [load_spec(CATALOG / "busi.yaml").model_copy(update={"root": str(base / "busi")}), kvasir_realdata_spec(base / "kvasir")]
    found = {}
    for spec in specs:
        for record, rois, _, display in ground_source(spec, blobs):
            if rois is None:
                continue
            _, image_path = blobs.put("images", encode_png(display), "png")
            found[Path(record["source_file"]).stem] = (data_root, image_path, rois)
    assert sorted(found) == ["benign (4)", KVASIR, "malignant (1)"]
    assert all(roi["mask_path"] for _, _, rois in found.values() for roi in rois)
    return found


def decode(png_or_url) -> np.ndarray:
    data = png_or_url if isinstance(png_or_url, bytes) else base64.b64decode(png_or_url.split(",", 1)[1])
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


def drawn_pixels(data_root, image_path, rois, max_side) -> tuple[np.ndarray, np.ndarray]:
    """(the overlay, where it differs from the same image shrunk with nothing drawn)."""
    overlay = decode(overlay_png(image_path, rois, data_root, max_side))
    plain = decode(overlay_png(image_path, [], data_root, max_side))
    return overlay, np.any(overlay != plain, axis=2)


def expected_boundary(data_root: Path, roi: dict, shape: tuple[int, int]) -> np.ndarray:
    """The mask's inner boundary in the overlay's frame, computed independently of the module."""
    with Image.open(data_root / roi["mask_path"]) as image:
        mask = np.asarray(image) > 0
    if mask.shape != shape:
        mask = resize(mask.astype(float), shape, order=1, anti_aliasing=True) >= 0.5
    return find_boundaries(mask, mode="inner")


def tags_and_outline(drawn: np.ndarray, boundary: np.ndarray, near: float, join: int = 3):
    """Drawn pixels farther than ``near`` from every expected boundary pixel, grouped into blobs
    (each should be a number tag; ``join``: pixels this close count as one blob) as slices, and
    the distance of every pixel to the boundary."""
    distance = ndi.distance_transform_edt(~boundary)
    far = drawn & (distance > near)
    labels, count = ndi.label(ndi.binary_dilation(far, iterations=join) if join else far)
    return ndi.find_objects(labels), distance


@pytest.mark.parametrize("name", ["benign (4)", "malignant (1)", KVASIR])
@pytest.mark.parametrize("max_side", [768, 200])
def test_mask_outline_lies_on_the_mask_boundary_and_each_region_gets_one_tag(records, name, max_side):
    data_root, image_path, rois = records[name]
    overlay, drawn = drawn_pixels(data_root, image_path, rois, max_side)
    assert max(overlay.shape[:2]) <= max_side
    with Image.open(data_root / image_path) as image:
        width, height = image.size
    scale = min(1.0, max_side / max(width, height))
    assert overlay.shape[:2] == (round(height * scale), round(width * scale))  # aspect kept

    boundary = np.zeros(overlay.shape[:2], dtype=bool)
    for roi in rois:
        boundary |= expected_boundary(data_root, roi, overlay.shape[:2])
    # Line and black rim: within two pixels (diagonals: 2.8) of the boundary, give or take one
    # for resampling.
    tags, distance = tags_and_outline(drawn, boundary, near=4)
    assert len(tags) == len(rois), f"{len(tags)} blobs off the outline for {len(rois)} regions"
    for rows, cols in tags:
        # Small (a digit in a box) and beside the outline, not somewhere else in the image.
        assert rows.stop - rows.start < max(overlay.shape) // 6 and cols.stop - cols.start < max(overlay.shape) // 6
        assert distance[rows, cols].min() <= 8
    # Every stretch of the boundary is drawn: a green line pixel within a pixel of it.
    green = np.all(overlay == OUTLINE_COLOUR, axis=2)
    covered = ndi.binary_dilation(green, iterations=1) & boundary
    assert covered.sum() / boundary.sum() >= 0.97


def test_box_only_roi_gives_a_rectangle_at_the_box(records):
    data_root, image_path, rois = records[KVASIR]
    roi = rois[0]
    box_roi = {**roi, "origin": "annotation:box", "mask_path": None}
    overlay, drawn = drawn_pixels(data_root, image_path, [box_roi], 768)
    rectangle = np.zeros(overlay.shape[:2], dtype=bool)
    x0, y0, x1, y1 = roi["x0"], roi["y0"], roi["x1"] - 1, roi["y1"] - 1
    rectangle[y0, x0 : x1 + 1] = rectangle[y1, x0 : x1 + 1] = True
    rectangle[y0 : y1 + 1, x0] = rectangle[y0 : y1 + 1, x1] = True
    tags, distance = tags_and_outline(drawn, rectangle, near=3)  # rim corners: 2.8
    assert len(tags) == 1
    green = np.all(overlay == OUTLINE_COLOUR, axis=2)
    assert (rectangle & ~green).sum() == 0  # the whole rectangle is drawn
    # Inside the box, away from the line, the image is untouched.
    assert not drawn[y0 + 4 : y1 - 3, x0 + 4 : x1 - 3].any()


def test_numbers_follow_the_order_given(records):
    """The tag beside a region reads the region's position in the list: the first of two bears
    the tag a region alone bears ("1"), and swapping the two swaps the tags (the tag box is
    opaque, so its pixels are the digit's alone)."""
    data_root, image_path, rois = records["benign (4)"]
    assert len(rois) == 2

    def tag_near(rois_in_order, roi) -> np.ndarray:
        overlay, drawn = drawn_pixels(data_root, image_path, rois_in_order, 768)
        boundary = expected_boundary(data_root, roi, overlay.shape[:2])
        # The tag box sits four pixels off the outline, beyond its rim (2.8 at most, unshrunk):
        # the nearest blob of drawn pixels past the rim is the whole (opaque) box.
        tags, distance = tags_and_outline(drawn, boundary, near=3.5, join=0)
        nearest = min(tags, key=lambda tag: distance[tag].min())
        return overlay[nearest]

    first, second = rois
    one = tag_near([first, second], first)
    two = tag_near([first, second], second)
    assert not np.array_equal(one, two)
    # A region alone is region 1: the first of two carries the same tag.
    assert np.array_equal(tag_near([first], first), one)
    assert np.array_equal(tag_near([second, first], second), one)
    assert np.array_equal(tag_near([second, first], first), two)


def test_whole_image_entry_is_not_drawn(records):
    data_root, image_path, rois = records[KVASIR]
    with Image.open(data_root / image_path) as image:
        width, height = image.size
    whole = {"roi_id": "w", "label": "polyp", "origin": "whole_image", "x0": 0, "y0": 0, "x1": width, "y1": height, "mask_path": None}
    _, drawn = drawn_pixels(data_root, image_path, [whole], 768)
    assert not drawn.any()


def test_same_input_same_bytes_and_digest(records):
    data_root, image_path, rois = records["malignant (1)"]
    first = overlay_data_url(image_path, rois, data_root)
    second = overlay_data_url(data_root / image_path, [dict(roi) for roi in rois], data_root)  # absolute path
    assert first == second and first.startswith("data:image/png;base64,")
    assert image_digest(first) == image_digest(second)
    assert image_digest(first) == hashlib.sha256(base64.b64decode(first.split(",", 1)[1])).hexdigest()
    assert image_digest(overlay_data_url(image_path, rois, data_root, max_side=300)) != image_digest(first)
    # A rerun is another process: the response cache only hits if the bytes are the same there.
    script = (
        "import json, sys; from medtrinity_assets.generation.roi_overlay import image_digest, overlay_data_url; "
        "a = json.loads(sys.argv[1]); print(image_digest(overlay_data_url(a['image'], a['rois'], a['root'])))"
    )
    argument = json.dumps({"image": image_path, "rois": rois, "root": str(data_root)}, default=str)
    other = subprocess.run([sys.executable, "-c", script, argument], capture_output=True, text=True, check=True, cwd=Path(__file__).parents[2])
    assert other.stdout.strip() == image_digest(first)
    with pytest.raises(ValueError, match="not a base64 data URL"):
        image_digest("https://example.org/x.png")


def test_mask_path_climbing_out_of_the_data_root_is_refused(records, tmp_path):
    data_root, image_path, rois = records[KVASIR]
    # A real mask file outside the data root, reached by "..", by an absolute path, by a link.
    outside = tmp_path / "outside_mask.png"
    shutil.copyfile(data_root / rois[0]["mask_path"], outside)
    climbing = os.path.relpath(outside, data_root)
    assert climbing.startswith("..")
    link = data_root / "blobs" / "roi_masks" / "link_to_outside.png"
    link.symlink_to(outside)
    for mask_path in (climbing, str(outside), str(link.relative_to(data_root))):
        with pytest.raises(OverlayError, match="outside the data root") as info:
            overlay_data_url(image_path, [{**rois[0], "mask_path": mask_path}], data_root)
        assert mask_path in str(info.value)


def test_missing_or_outside_image_is_a_clear_error_naming_it(records, tmp_path):
    data_root, image_path, rois = records[KVASIR]
    missing = "blobs/images/00/not_there.png"
    with pytest.raises(OverlayError, match="does not exist") as info:
        overlay_data_url(missing, rois, data_root)
    assert missing in str(info.value)
    elsewhere = tmp_path / "elsewhere.png"
    shutil.copyfile(data_root / image_path, elsewhere)
    with pytest.raises(OverlayError, match="outside the data root"):
        overlay_data_url(elsewhere, rois, data_root)
    # A mask of another image's size is not silently stretched over this one.
    other_data_root, _, other_rois = records["malignant (1)"]
    assert other_data_root == data_root
    with pytest.raises(OverlayError, match="not the image's"):
        overlay_data_url(image_path, [other_rois[0]], data_root)


def test_vlm_content_reaches_an_openai_compatible_server_as_an_image_part(records):
    """Through the real openai client to a recording server: the request carries the text and
    the overlay as an image_url part at high detail, and the image decodes to the overlay."""
    data_root, image_path, rois = records["benign (4)"]
    url = overlay_data_url(image_path, rois, data_root, max_side=256)
    content = vlm_user_content("Describe region 1 and region 2.", url)
    assert content == [
        {"type": "text", "text": "Describe region 1 and region 2."},
        {"type": "image_url", "image_url": {"url": url, "detail": "high"}},
    ]
    with FaultServer() as server:
        endpoint = ChatEndpoint(EndpointConfig(base_url=server.base_url, model="vision", api_key_env=None), rng=random.Random(0))
        endpoint.complete([{"role": "user", "content": content}])
        endpoint.close()
        body = server.requests[0]["body"]
    sent = body["messages"][0]["content"]
    assert json.loads(json.dumps(sent)) == content
    assert max(decode(sent[1]["image_url"]["url"]).shape[:2]) <= 256


def test_preview_thumbnail_reads_no_mask_outside_the_data_root(records, tmp_path):
    """The UI thumbnail draws with the same edge code and the same containment: a mask path
    leaving the data root is not read, the ROI's box is drawn instead."""
    from medtrinity_assets.preview import roi_thumbnail

    data_root, image_path, rois = records[KVASIR]
    outside = tmp_path / "outside_mask.png"
    shutil.copyfile(data_root / rois[0]["mask_path"], outside)

    def thumbnail(mask_path):
        roi = {"roi_id": "r", "origin": "annotation:mask", "mask_path": mask_path, "box": [rois[0][k] for k in ("x0", "y0", "x1", "y1")]}
        return roi_thumbnail(data_root, image_path, json.dumps([roi]), size=512)

    boxed = thumbnail(None)
    assert thumbnail(os.path.relpath(outside, data_root)) == boxed
    assert thumbnail(rois[0]["mask_path"]) != boxed
