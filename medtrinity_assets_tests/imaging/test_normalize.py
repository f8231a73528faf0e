"""Stage 2 core: intensity handling, bounded resize, deterministic PNG, perceptual hash."""

from __future__ import annotations

import hashlib
import io
import struct
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from skimage import data as skdata
from spec_factory import build_spec

from medtrinity_assets.imaging.normalize import (
    IntensityRule,
    ct_window_for,
    encode_png,
    normalize_pixels,
    resize_mask,
)
from medtrinity_assets.imaging.phash import hamming, phash
from medtrinity_assets.paths import realdata_dir

REALDATA = realdata_dir()
needs_realdata = pytest.mark.skipif(not REALDATA.is_dir(), reason="../shared/realdata is not present")
PYDICOM_DATA = Path(pydicom.__file__).resolve().parents[1] / "data_store" / "data"


def make_rule(modality: str, organs: list[str], **intensity) -> IntensityRule:
    return build_spec(modality=modality, organs=organs, annotation_kinds=["none"], intensity=intensity).intensity_rule()

def record_for(modality: str, units: str) -> dict:
    return {"modality": modality, "pixel_units": units}


def ct_hu(path: str) -> np.ndarray:
    ds = pydicom.dcmread(path)
    return ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


# --- CT windowing --------------------------------------------------------------------------


def test_brain_window_on_exact_hu_values():
    hu = np.array([[-1000, 0, 40, 80, 1000, 20]], dtype=np.float32)
    out = normalize_pixels(hu, record_for("ct", "HU"), make_rule("ct", ["brain"]))
    # Brain window L40 W80 spans 0..80 HU.
    assert out.display.tolist() == [[0, 0, 128, 255, 255, 64]]
    assert out.intensity_method == "ct_window:brain(L40,W80)"
    assert out.scale == 1.0


def test_real_ct_slice_abdomen_window_maps_air_to_black_and_follows_hu():
    hu = ct_hu(get_testdata_file("CT_small.dcm"))
    rule = make_rule("ct", ["pancreas"])
    out = normalize_pixels(hu, record_for("ct", "HU"), rule)
    assert out.intensity_method == "ct_window:abdomen(L40,W400)"
    assert out.display.dtype == np.uint8 and out.display.shape == hu.shape
    low, high = -160.0, 240.0
    assert np.all(out.display[hu <= low] == 0)
    assert np.all(out.display[hu >= high] == 255)
    inside = (hu > low) & (hu < high)
    assert inside.any()
    expected = (hu[inside] - low) / (high - low) * 255
    assert np.abs(out.display[inside].astype(float) - expected).max() <= 0.51
    # Air really is in this slice, and the lung window shows it grey rather than black.
    air = hu <= -1000
    lung = normalize_pixels(hu, record_for("ct", "HU"), make_rule("ct", ["lung"]))
    if air.any():
        assert np.all(out.display[air] == 0)
        assert np.all(lung.display[air] > 0)


@pytest.mark.parametrize(
    "organs, window",
    [(["head"], "brain"), (["chest", "lung"], "lung"), (["liver"], "liver"), (["kidney"], "abdomen"),
     (["bone"], "bone"), (["knee"], "soft_tissue")],
)
def test_auto_ct_window_follows_organs(organs, window):
    assert ct_window_for(make_rule("ct", organs)) == window


def test_explicit_ct_window_overrides_organs():
    assert ct_window_for(make_rule("ct", ["brain"], ct_window="bone")) == "bone"


def test_ct_without_hu_falls_back_to_percentile():
    pixels = np.arange(100, dtype=np.uint16).reshape(10, 10) + 1
    out = normalize_pixels(pixels, record_for("ct", "raw"), make_rule("ct", ["brain"]))
    assert out.intensity_method == "percentile(0.5,99.5)"


# --- percentile, PET, RGB ------------------------------------------------------------------


def test_percentile_scaling_on_real_mr_slice():
    pixels = pydicom.dcmread(get_testdata_file("MR_small.dcm")).pixel_array
    out = normalize_pixels(pixels, record_for("mri", "raw"), make_rule("mri", ["brain"], percentile_low=1, percentile_high=99))
    assert out.intensity_method == "percentile(1,99)"
    assert out.display.min() == 0 and out.display.max() == 255
    foreground = pixels > pixels.min()
    # About 1% of foreground pixels lie above the 99th percentile and saturate.
    saturated = np.mean(out.display[foreground] == 255)
    assert 0.002 < saturated < 0.03
    # Order is kept: a brighter input pixel is never darker on display.
    order = np.argsort(pixels.ravel(), kind="stable")
    assert np.all(np.diff(out.display.ravel()[order].astype(int)) >= 0)


def test_percentile_ignores_background():
    rng = np.random.default_rng(0)
    pixels = np.zeros((100, 100), dtype=np.uint16)
    pixels[:, 80:] = rng.integers(1000, 2001, size=(100, 20))  # 80% of the image is zero padding
    out = normalize_pixels(pixels, record_for("mri", "raw"), make_rule("mri", ["brain"]))
    body = out.display[:, 80:]
    # Stretched over 1000..2000, the body's median sits mid-grey; had the zeros counted, the
    # low percentile would be 0 and the body would be squeezed into the top quarter.
    assert 100 < np.median(body) < 156
    assert np.all(out.display[:, :80] == 0)


def test_pet_suv_clipped_to_fixed_range():
    suv = np.array([[0.0, 5.0, 10.0, 20.0, -1.0]], dtype=np.float32)
    out = normalize_pixels(suv, record_for("pet", "SUV"), make_rule("pet", ["whole body"]))
    assert out.intensity_method == "suv_clip(0,10)"
    assert out.display.tolist() == [[0, 128, 255, 255, 0]]


def test_rgb_passthrough_keeps_pixels_identical():
    tissue = skdata.immunohistochemistry()  # 512x512 RGB, no resize needed
    out = normalize_pixels(tissue, record_for("histopathology", "rgb"), make_rule("histopathology", ["colon"]))
    assert out.intensity_method == "rgb_passthrough"
    assert np.array_equal(out.display, tissue)


def test_rgb_large_photo_bounded_with_aspect():
    retina = skdata.retina()
    out = normalize_pixels(retina, record_for("fundus", "rgb"), make_rule("fundus", ["eye"]), max_side=400)
    assert max(out.display.shape[:2]) == 400 and out.display.shape[2] == 3
    assert out.scale == pytest.approx(400 / max(retina.shape[:2]))
    # Area averaging keeps the mean colour.
    assert np.allclose(out.display.reshape(-1, 3).mean(0), retina.reshape(-1, 3).mean(0), atol=2)


def test_large_radiograph_bounded_and_small_image_never_upscaled():
    path = PYDICOM_DATA / "RG3_UNCR.dcm"
    if not path.exists():
        pytest.skip("pydicom-data CR file absent")
    pixels = pydicom.dcmread(path).pixel_array
    out = normalize_pixels(pixels, record_for("xray", "raw"), make_rule("xray", ["chest"]))
    h, w = pixels.shape
    assert max(out.display.shape) == 512
    assert abs(out.display.shape[0] / out.display.shape[1] - h / w) < 0.01
    small = pydicom.dcmread(get_testdata_file("MR_small.dcm")).pixel_array
    kept = normalize_pixels(small, record_for("mri", "raw"), make_rule("mri", ["brain"]))
    assert kept.display.shape == small.shape and kept.scale == 1.0


@needs_realdata
def test_16bit_microscopy_percentile():
    import tifffile

    pixels = tifffile.imread(REALDATA / "dsb2018" / "images" / "img2d.tif")
    assert pixels.dtype == np.uint16
    out = normalize_pixels(pixels, record_for("microscopy", "raw"), make_rule("microscopy", ["cell"]))
    assert out.intensity_method.startswith("percentile(")
    assert out.display.dtype == np.uint8 and out.display.max() == 255


def test_bad_shape_is_an_error_not_a_crash_of_the_interpreter():
    with pytest.raises(ValueError):
        normalize_pixels(np.zeros((2, 3, 4, 5)), record_for("mri", "raw"), make_rule("mri", ["brain"]))


# --- PNG -------------------------------------------------------------------------------------


def _png_chunk_types(png: bytes) -> list[bytes]:
    types, offset = [], 8
    while offset < len(png):
        (length,) = struct.unpack(">I", png[offset : offset + 4])
        types.append(png[offset + 4 : offset + 8])
        offset += 12 + length
    return types


def test_png_is_deterministic_and_lossless():
    display = normalize_pixels(skdata.cell(), record_for("microscopy", "raw"), make_rule("microscopy", ["cell"])).display
    first, second = encode_png(display), encode_png(display.copy())
    assert first == second
    assert hashlib.sha256(first).hexdigest() == hashlib.sha256(second).hexdigest()
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(first))), display)
    # Nothing but the image: no time stamp or text chunks that would change the hash.
    assert set(_png_chunk_types(first)) <= {b"IHDR", b"IDAT", b"IEND"}


def test_png_rejects_non_uint8():
    with pytest.raises(ValueError):
        encode_png(np.zeros((4, 4), dtype=np.float32))


# --- masks ------------------------------------------------------------------------------------


def test_resize_mask_keeps_integer_labels():
    mask = np.zeros((8, 8), dtype=np.uint16)
    mask[:4, :4] = 300
    mask[4:, 4:] = 7
    small = resize_mask(mask, (4, 4))
    assert small.dtype == np.uint16
    expected = np.zeros((4, 4), dtype=np.uint16)
    expected[:2, :2] = 300
    expected[2:, 2:] = 7
    assert np.array_equal(small, expected)
    big = resize_mask(mask, (16, 16))
    assert set(np.unique(big)) == {0, 7, 300}


# --- perceptual hash -------------------------------------------------------------------------


def _jpeg_roundtrip(image: np.ndarray, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())))


def test_phash_survives_resize_and_recompression():
    retina = skdata.retina()
    original = phash(retina)
    assert len(original) == 16 and int(original, 16) >= 0
    smaller = np.asarray(Image.fromarray(retina).resize((300, 300), Image.Resampling.BILINEAR))
    assert hamming(original, phash(smaller)) <= 4
    assert hamming(original, phash(_jpeg_roundtrip(retina, 60))) <= 4


def test_phash_separates_different_images():
    images = [skdata.retina(), skdata.cell(), skdata.immunohistochemistry(), skdata.microaneurysms(), skdata.camera()]
    hashes = [phash(image) for image in images]
    distances = [hamming(a, b) for i, a in enumerate(hashes) for b in hashes[i + 1 :]]
    assert min(distances) >= 16


def test_hamming_counts_bits():
    assert hamming("0000000000000000", "000000000000000f") == 4
    assert hamming("ffffffffffffffff", "0000000000000000") == 64
