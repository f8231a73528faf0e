"""Bounded resources: one pixel limit for every decoder, read from the header before any pixel
is decoded; spec YAML bounded in size and alias expansion; compressed TIFF and DICOM codecs
decode where a codec is installed, and say truly which one is missing where none is."""

from __future__ import annotations

import ast
import os
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tifffile
import yaml
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid
from spec_factory import PLACEHOLDER_METADATA, build_spec

from medtrinity_assets.catalog.load import CatalogError, load_spec
from medtrinity_assets.imaging.dicom_io import PixelDecodeError, decode_frame, read_dicom, read_header
from medtrinity_assets.imaging.image_io import ImageReadError, read_image, read_mask
from medtrinity_assets.imaging.limits import PixelLimits
from medtrinity_assets.sources import read_source
from medtrinity_assets.sources.base import IngestContext, Quarantined
from medtrinity_assets.storage import BlobStore

REPO = Path(__file__).resolve().parents[2]


def ingest(spec, root: Path, out: Path):
    items = list(read_source(IngestContext(spec=spec, root=root, blobs=BlobStore(out), salt="s")))
    return [i for i in items if not isinstance(i, Quarantined)], [i for i in items if isinstance(i, Quarantined)]


def folder_spec(root: Path, glob: str, **extra):
    return build_spec(modality="histopathology", organs=["colon"], root=str(root),
                      layout={"family": "image_folder", "image_glob": glob}, **extra)


# --- one pixel limit, checked from the header ------------------------------------------------


def write_tiled_zero_tiff(path: Path, side: int, compression: str) -> None:
    """A side x side TIFF written tile by tile: the file is small, the declared image huge."""
    tile = np.zeros((1024, 1024), dtype=np.uint8)
    count = (-(-side // 1024)) ** 2
    tifffile.imwrite(path, (tile for _ in range(count)), shape=(side, side), dtype=np.uint8,
                     tile=(1024, 1024), compression=compression)


def test_compressed_tiff_of_20000x20000_is_refused_from_its_header(tmp_path):
    bomb = tmp_path / "bomb.tif"
    write_tiled_zero_tiff(bomb, 20000, "zlib")
    assert bomb.stat().st_size < 2_000_000  # small on disk, 400 MB once decoded
    with pytest.raises(ImageReadError) as raised:
        read_image(bomb)
    assert raised.value.kind == "too_large"
    assert "20000x20000" in raised.value.cause and "max_image_pixels" in raised.value.cause

    records, quarantined = ingest(folder_spec(tmp_path, "*.tif"), tmp_path, tmp_path / "blobs")
    assert records == []
    assert [(q.source_file, q.kind) for q in quarantined] == [("bomb.tif", "too_large")]


def test_pixel_limit_is_set_per_spec_for_pillow_and_tiff_images_and_masks(tmp_path):
    pixels = (np.arange(64 * 64) % 200).astype(np.uint8).reshape(64, 64)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    tifffile.imwrite(tmp_path / "b.tif", pixels)
    (tmp_path / "m.txt").write_text("64 64\n" + "\n".join("0" for _ in range(64 * 64)), encoding="ascii")
    small = PixelLimits(max_image_pixels=4000)
    for name in ("a.png", "b.tif"):
        assert read_image(tmp_path / name)[0].shape == (64, 64)  # default limit: read
        with pytest.raises(ImageReadError) as raised:
            read_image(tmp_path / name, small)
        assert raised.value.kind == "too_large", name
    for name in ("a.png", "b.tif", "m.txt"):
        with pytest.raises(ImageReadError) as raised:
            read_mask(tmp_path / name, binarize=True, limits=small)
        assert raised.value.kind == "too_large", name

    spec = folder_spec(tmp_path, "*.[pt][ni][gf]", limits={"max_image_pixels": 4000})
    records, quarantined = ingest(spec, tmp_path, tmp_path / "blobs")
    assert records == [] and sorted((q.source_file, q.kind) for q in quarantined) == [
        ("a.png", "too_large"), ("b.tif", "too_large")]
    records, _ = ingest(folder_spec(tmp_path, "*.[pt][ni][gf]"), tmp_path, tmp_path / "blobs2")
    assert len(records) == 2


def png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose IHDR declares width x height and which holds no pixel data at all."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))


def test_png_declaring_225_megapixels_is_refused_as_too_large_whatever_the_spec_limit(tmp_path):
    png_header_only(tmp_path / "huge.png", 15000, 15000)
    for limits in (PixelLimits(), PixelLimits(max_image_pixels=10**9)):  # Pillow's own guard then
        with pytest.raises(ImageReadError) as raised:
            read_image(tmp_path / "huge.png", limits)
        assert raised.value.kind == "too_large", raised.value.cause
    records, quarantined = ingest(folder_spec(tmp_path, "*.png"), tmp_path, tmp_path / "blobs")
    assert records == [] and [(q.source_file, q.kind) for q in quarantined] == [("huge.png", "too_large")]


def write_multiframe_dicom(path: Path, frames: int, side: int = 4) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID, ds.SeriesInstanceUID = "OT", "p1", generate_uid()
    ds.Rows = ds.Columns = side
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.NumberOfFrames = frames
    ds.PixelData = (np.arange(frames * side * side) % 251).astype(np.uint8).tobytes()
    ds.save_as(path, enforce_file_format=True)


def test_dicom_of_100000_frames_is_refused_not_read_as_24_rows(tmp_path):
    write_multiframe_dicom(tmp_path / "cine.dcm", 100_000)
    write_multiframe_dicom(tmp_path / "short.dcm", 30)
    spec = build_spec(modality="xray", organs=["chest"], root=str(tmp_path), layout={"family": "dicom"})
    records, quarantined = ingest(spec, tmp_path, tmp_path / "blobs")
    assert {r["source_file"] for r in records} == {"short.dcm"}
    assert [(q.source_file, q.kind) for q in quarantined] == [("cine.dcm", "too_large")]
    assert "100,000 frames" in quarantined[0].reason and "max_frames" in quarantined[0].reason

    tight = build_spec(modality="xray", organs=["chest"], root=str(tmp_path), layout={"family": "dicom"},
                       limits={"max_frames": 200_000, "max_image_pixels": 10})
    records, quarantined = ingest(tight, tmp_path, tmp_path / "blobs2")
    assert records == [] and {(q.source_file, q.kind) for q in quarantined} == {
        ("cine.dcm", "too_large"), ("short.dcm", "too_large")}


def test_nifti_volume_over_the_plane_slice_or_voxel_limit_is_refused_from_its_header(tmp_path):
    volume = np.zeros((16, 16, 8), dtype=np.int16)
    volume[4:8, 4:8, 2:5] = 1
    nib.save(nib.Nifti1Image(volume, np.eye(4)), tmp_path / "case.nii.gz")
    nib.save(nib.Nifti1Image(volume.astype(np.uint8), np.eye(4)), tmp_path / "case_seg.nii.gz")
    layout = {"family": "nifti", "image_glob": "case.nii.gz", "label_replace": [{"old": "case.", "new": "case_seg."}]}

    def run(limits, out):
        return ingest(build_spec(root=str(tmp_path), layout=layout, limits=limits), tmp_path, tmp_path / out)

    records, quarantined = run({}, "a")
    assert records and not quarantined
    for name, limits in (("plane", {"max_image_pixels": 200}), ("slices", {"max_frames": 7}),
                         ("voxels", {"max_volume_voxels": 2000})):
        records, quarantined = run(limits, name)
        assert records == [], name
        assert quarantined and {q.kind for q in quarantined} == {"too_large"}, (name, quarantined)


def test_nifti_header_declaring_a_huge_volume_is_refused_before_any_voxel_is_read(tmp_path):
    image = nib.Nifti1Image(np.zeros((4, 4, 4), dtype=np.uint8), np.eye(4))
    image.header.set_data_shape((30000, 30000, 3000))  # 2.7 T voxels; the file holds none of them
    image.header.write_to(open(tmp_path / "huge.nii", "wb"))
    records, quarantined = ingest(build_spec(root=str(tmp_path), layout={"family": "nifti", "image_glob": "*.nii"}),
                                  tmp_path, tmp_path / "blobs")
    assert records == []
    assert [(q.source_file, q.kind) for q in quarantined] == [("huge.nii", "too_large")]


# --- spec YAML: bounded size and alias expansion ------------------------------------------------

ALIAS_BOMB = textwrap.dedent("""\
    a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
    b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
    c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
    d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
    e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
    f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
    g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
    h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
    i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
    """)


def test_yaml_alias_bomb_spec_is_refused_quickly_naming_the_file(tmp_path):
    spec_yaml = dict(PLACEHOLDER_METADATA, id="bomb")
    text = ALIAS_BOMB + yaml.safe_dump(spec_yaml).replace("organs:\n- brain", "organs: *i")
    path = tmp_path / "bomb.yaml"
    path.write_text(text, encoding="utf-8")
    assert len(ALIAS_BOMB) < 700
    # A child with 3 GB of address space and 120 s: the unfixed loader (over 4 GB) dies there,
    # not here. One BLAS thread, so that numpy's per-thread buffers fit on many-core machines.
    script = textwrap.dedent(f"""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_AS, (3 * 2**30, 3 * 2**30))
        from medtrinity_assets.catalog.load import CatalogError, load_spec
        try:
            load_spec({str(path)!r})
        except CatalogError as error:
            print("REFUSED", error)
            sys.exit(0)
        print("ACCEPTED")
        """)
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("REFUSED"), done.stdout[-500:]
    assert str(path) in done.stdout and "alias" in done.stdout


def test_spec_yaml_over_the_size_limit_is_refused(tmp_path):
    path = tmp_path / "big.yaml"
    text = yaml.safe_dump(dict(PLACEHOLDER_METADATA, id="big")) + "# padding\n" * 200_000  # 2 MB
    path.write_text(text, encoding="utf-8")
    with pytest.raises(CatalogError) as raised:
        load_spec(path)
    assert str(path) in str(raised.value) and "bytes" in str(raised.value)


def test_spec_yaml_with_a_few_aliases_still_loads(tmp_path):
    path = tmp_path / "aliases.yaml"
    data = dict(PLACEHOLDER_METADATA, id="aliases")
    text = yaml.safe_dump(data).replace("organs:\n- brain", "organs: &organs\n- brain") + "diseases: *organs\n"
    path.write_text(text, encoding="utf-8")
    assert load_spec(path).diseases == ["brain"]


# --- compressed TIFF (imagecodecs) --------------------------------------------------------------


@pytest.mark.parametrize("compression", ["lzw", "zlib", "deflate", "packbits"])
def test_lzw_deflate_packbits_tiffs_decode(tmp_path, compression):
    pixels = (np.arange(96 * 80) % 251).astype(np.uint8).reshape(96, 80)
    tifffile.imwrite(tmp_path / "x.tif", pixels, compression=compression)
    decoded, photometric = read_image(tmp_path / "x.tif")
    assert photometric == "MONOCHROME2" and np.array_equal(decoded, pixels)
    assert np.array_equal(read_mask(tmp_path / "x.tif", binarize=False), pixels)


def test_tiff_whose_codec_is_missing_says_imagecodecs_is_not_installed(tmp_path):
    tifffile.imwrite(tmp_path / "x.tif", np.ones((8, 8), dtype=np.uint8), compression="lzw")
    script = textwrap.dedent(f"""
        import sys
        sys.modules["imagecodecs"] = None  # as on a machine without the package
        from medtrinity_assets.imaging.image_io import ImageReadError, read_image
        try:
            read_image({str(tmp_path / "x.tif")!r})
        except ImageReadError as error:
            print(error.kind, "|", error.cause)
        """)
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    kind, cause = done.stdout.strip().split(" | ")
    assert kind == "unsupported"
    assert "LZW" in cause and "'imagecodecs' package, which is not installed" in cause


# --- DICOM codecs: decode where installed, true reasons where not --------------------------------


def test_jpeg_and_jpeg2000_dicoms_decode_with_the_installed_pillow():
    for name in ("SC_rgb_jpeg_dcmtk.dcm", "color3d_jpeg_baseline.dcm", "JPEG2000.dcm"):
        ds = read_dicom(get_testdata_file(name))
        header = read_header(ds)
        frame = decode_frame(ds, header, 0 if header.n_frames > 1 else None)
        assert frame.pixels.shape[:2] == (header.rows, header.columns), name


def test_jpeg_dicom_that_pillow_fails_on_does_not_say_install_pillow():
    ds = read_dicom(get_testdata_file("SC_rgb_jpeg_dcmtk.dcm"))
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11  # header disagrees with the 8-bit JPEG
    with pytest.raises(PixelDecodeError) as raised:
        decode_frame(ds, read_header(ds), None)
    message = str(raised.value)
    assert "install Pillow" not in message
    assert "JPEG Baseline (Process 1)" in message and "installed decoder(s) pillow" in message
    assert raised.value.kind == "unreadable"


def test_dicom_without_an_installed_decoder_names_the_syntax_and_the_packages():
    ds = read_dicom(get_testdata_file("JPEGLSNearLossless_08.dcm"))
    with pytest.raises(PixelDecodeError) as raised:
        decode_frame(ds, read_header(ds), None)
    message = str(raised.value)
    assert "JPEG-LS Lossy (Near-Lossless) Image Compression" in message
    assert "no decoder installed" in message and "pyjpegls" in message and "pylibjpeg-libjpeg" in message
    assert "Pillow" not in message and "pillow" not in message
    assert raised.value.kind == "unsupported"


def test_dicom_reader_quarantines_an_undecodable_codec_as_unsupported(tmp_path):
    (tmp_path / "jls.dcm").write_bytes(Path(get_testdata_file("JPEGLSNearLossless_08.dcm")).read_bytes())
    spec = build_spec(modality="xray", organs=["chest"], root=str(tmp_path), layout={"family": "dicom"})
    records, quarantined = ingest(spec, tmp_path, tmp_path / "blobs")
    assert records == [] and [(q.source_file, q.kind) for q in quarantined] == [("jls.dcm", "unsupported")]
    assert "pyjpegls" in quarantined[0].reason


# --- layering: imaging takes plain parameters ----------------------------------------------------


def test_imaging_modules_do_not_import_the_catalog_or_the_readers():
    imaging = REPO / "medtrinity_assets" / "imaging"
    offenders = []
    for path in sorted(imaging.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else (
                [alias.name for alias in node.names] if isinstance(node, ast.Import) else [])
            for name in names:
                if name.startswith(("medtrinity_assets.catalog", "medtrinity_assets.sources", "medtrinity_assets.stages")):
                    offenders.append(f"{path.name}: {name}")
    assert offenders == []
