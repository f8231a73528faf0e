"""LIDC-IDRI radiologist reads (LidcReadMessage XML) as nodule masks of a real CT series.

The series is a stretch of the IBSI sarcoma patient's real CT slices, copied into an LIDC-style
folder; the XML is written here in the LIDC schema and names those files' real SOP Instance
UIDs. Expected masks are filled independently with skimage.draw.polygon.
"""

from __future__ import annotations

import shutil
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import needs_realdata
from skimage import draw
from test_dicom_annotations import dicom_spec, ingest, record_masks

from medtrinity_assets.catalog.load import load_spec
from medtrinity_assets.paths import REPO_ROOT, realdata_dir

IBSI_CT = realdata_dir() / "ibsi_sts" / "dicom" / "STS_001" / "CT" / "image"
SERIES_DIR = "LIDC-IDRI/LIDC-IDRI-0001/01-01-2000-NA-30178/3000566.000000-NA-03192"
NS = "http://www.nih.gov"
FIRST, COUNT = 20, 12  # files 000020..000031 of the real series
SHAPE = (202, 198)  # rows, columns of the IBSI CT

# Outlines as (x = column, y = row) pixel points, the way LIDC's edgeMap holds them.
READER_1_SLICE_4 = [(60, 50), (95, 48), (110, 80), (90, 112), (58, 100)]
READER_1_HOLE_SLICE_4 = [(80, 70), (92, 70), (92, 84), (80, 84)]
READER_2_SLICE_4 = [(75, 60), (120, 62), (118, 105), (72, 98)]
READER_1_SLICE_5 = [(65, 55), (100, 55), (100, 95), (65, 95)]
READER_2_SLICE_5 = [(70, 58), (105, 66), (96, 99), (68, 90)]
READER_2_EXTRA_SLICE_8 = [(140, 140), (160, 138), (162, 165), (138, 160)]  # a nodule only reader 2 saw


def polygon_mask(points: list[tuple[float, float]]) -> np.ndarray:
    mask = np.zeros(SHAPE, bool)
    rr, cc = draw.polygon([y for _, y in points], [x for x, _ in points], SHAPE)
    mask[rr, cc] = True
    return mask


def copy_series(root: Path) -> list[pydicom.Dataset]:
    """The real CT slices in an LIDC-style series folder; their headers in slice order."""
    folder = root / SERIES_DIR
    folder.mkdir(parents=True)
    headers = []
    for number in range(FIRST, FIRST + COUNT):
        source = IBSI_CT / f"{number:06d}.dcm"
        shutil.copy(source, folder / f"1-{number:03d}.dcm")
        headers.append(pydicom.dcmread(source, stop_before_pixels=True))
    return sorted(headers, key=lambda ds: float(ds.ImagePositionPatient[2]))


def element(parent: ElementTree.Element, name: str, text: str | None = None) -> ElementTree.Element:
    child = ElementTree.SubElement(parent, f"{{{NS}}}{name}")
    if text is not None:
        child.text = text
    return child


def roi(nodule, header_or_uid, z: float, points, inclusion: bool = True) -> None:
    item = element(nodule, "roi")
    uid = header_or_uid if isinstance(header_or_uid, str) else str(header_or_uid.SOPInstanceUID)
    element(item, "imageZposition", f"{z:.3f}")
    element(item, "imageSOP_UID", uid)
    element(item, "inclusion", "TRUE" if inclusion else "FALSE")
    for x, y in points:
        edge = element(item, "edgeMap")
        element(edge, "xCoord", str(x))
        element(edge, "yCoord", str(y))


def nodule(session, name: str, malignancy: int = 3):
    item = element(session, "unblindedReadNodule")
    element(item, "noduleID", name)
    element(element(item, "characteristics"), "malignancy", str(malignancy))
    return item


def write_xml(path: Path, readers: list[list[list[tuple]]], series_uid: str = "") -> None:
    """An LidcReadMessage: per reader, per nodule, its ROIs as roi() arguments."""
    ElementTree.register_namespace("", NS)
    message = ElementTree.Element(f"{{{NS}}}LidcReadMessage")
    element(element(message, "ResponseHeader"), "SeriesInstanceUid", series_uid)
    for reader in readers:
        session = element(message, "readingSession")
        element(session, "annotationVersion", "3.12")
        for number, rois in enumerate(reader, start=1):
            item = nodule(session, f"Nodule {number:03d}")
            for args in rois:
                roi(item, *args)
    ElementTree.ElementTree(message).write(path, xml_declaration=True, encoding="utf-8")


def z_of(header) -> float:
    return float(header.ImagePositionPatient[2])


@pytest.fixture
def lidc_source(tmp_path) -> tuple[Path, list]:
    """Two readers outline one nodule on slices 4 and 5 (reader 1 with a hole on slice 4);
    reader 2 also outlines a nodule on slice 8 alone; reader 1 marks a < 3 mm nodule with one
    point; one outline names an image that is not among the files (and a height off the stack)."""
    root = tmp_path / "src"
    headers = copy_series(root)
    s = headers
    reader_1 = [
        [(s[4], z_of(s[4]), READER_1_SLICE_4), (s[4], z_of(s[4]), READER_1_HOLE_SLICE_4, False),
         (s[5], z_of(s[5]), READER_1_SLICE_5)],
        [(s[10], z_of(s[10]), [(30, 30)])],  # a nodule under 3 mm: one point
        [("1.2.3.4.5.6.7.8.9", -2000.0, READER_1_SLICE_5)],  # an image the download lacks
    ]
    reader_2 = [
        [(s[4], z_of(s[4]), READER_2_SLICE_4), (s[5], z_of(s[5]), READER_2_SLICE_5)],
        [(s[8], z_of(s[8]), READER_2_EXTRA_SLICE_8)],
    ]
    write_xml(root / SERIES_DIR / "069.xml", [reader_1, reader_2], str(s[0].SeriesInstanceUID))
    return root, headers


def lidc_spec(min_readers: int, context: int = 1):
    return dicom_spec(
        slicing={"rule": "annotated_plus_context", "context": context},
        stack_series=True, glob="**/*.dcm", lidc_xml_glob="**/*.xml", lidc_min_readers=min_readers,
    )


def masks_by_slice(ctx, records) -> dict[int, np.ndarray]:
    return {r["slice_index"]: record_masks(ctx, r)["lung nodule"] for r in records if r["annotations"] != "[]"}


@needs_realdata
def test_two_reader_consensus_keeps_the_overlap_and_drops_single_reader_nodules(tmp_path, lidc_source):
    root, headers = lidc_source
    ctx, records, quarantined = ingest(lidc_spec(min_readers=2), root, tmp_path / "out")
    reader_1_slice_4 = polygon_mask(READER_1_SLICE_4) & ~polygon_mask(READER_1_HOLE_SLICE_4)
    expected = {
        4: reader_1_slice_4 & polygon_mask(READER_2_SLICE_4),
        5: polygon_mask(READER_1_SLICE_5) & polygon_mask(READER_2_SLICE_5),
    }
    masks = masks_by_slice(ctx, records)
    assert sorted(masks) == [4, 5]  # reader 2's lone nodule on slice 8 has no second reader
    for index, mask in masks.items():
        assert np.array_equal(mask, expected[index]), index
    # The hole of reader 1 leaves only reader 2 there: below the consensus of two.
    assert polygon_mask(READER_1_HOLE_SLICE_4).any() and not masks[4][polygon_mask(READER_1_HOLE_SLICE_4)].any()
    # The nodule slices plus one slice of context each side.
    assert [r["slice_index"] for r in records] == [3, 4, 5, 6]
    assert {r["source_file"] for r in records if r["slice_index"] == 4} == {f"{SERIES_DIR}/1-{FIRST + 4:03d}.dcm"}
    assert all(r["labels"] == ["lung nodule"] for r in records if r["slice_index"] in masks)
    # The outline on an image the download lacks is reported, without its UID.
    (problem,) = quarantined
    assert problem.source_file == f"{SERIES_DIR}/069.xml"
    assert "1 nodule outline(s) lie on no slice" in problem.reason and "1.2.3.4" not in problem.reason


@needs_realdata
def test_one_reader_suffices_for_the_union_of_all_outlines(tmp_path, lidc_source):
    root, headers = lidc_source
    ctx, records, quarantined = ingest(lidc_spec(min_readers=1), root, tmp_path / "out")
    reader_1_slice_4 = polygon_mask(READER_1_SLICE_4) & ~polygon_mask(READER_1_HOLE_SLICE_4)
    expected = {
        4: reader_1_slice_4 | polygon_mask(READER_2_SLICE_4),
        5: polygon_mask(READER_1_SLICE_5) | polygon_mask(READER_2_SLICE_5),
        8: polygon_mask(READER_2_EXTRA_SLICE_8),
    }
    masks = masks_by_slice(ctx, records)
    assert sorted(masks) == sorted(expected)  # the single-point nodule on slice 10 makes no mask
    for index, mask in masks.items():
        assert np.array_equal(mask, expected[index]), index
    assert [r["slice_index"] for r in records] == [3, 4, 5, 6, 7, 8, 9]
    assert len(quarantined) == 1
    # A rerun gives the same rows.
    _, again, _ = ingest(lidc_spec(min_readers=1), root, tmp_path / "out2")
    assert [r["record_id"] for r in again] == [r["record_id"] for r in records]
    assert [r["annotations"] for r in again] == [r["annotations"] for r in records]


@needs_realdata
def test_outline_with_an_unknown_uid_is_placed_by_its_z_position(tmp_path):
    root = tmp_path / "src"
    headers = copy_series(root)
    target = headers[7]
    # Re-exported images get new UIDs; the height still names the slice (half a gap off here).
    write_xml(root / SERIES_DIR / "069.xml", [[[("1.2.3.4", z_of(target) + 1.2, READER_1_SLICE_5)]]],
              str(target.SeriesInstanceUID))
    ctx, records, quarantined = ingest(lidc_spec(min_readers=1), root, tmp_path / "out")
    assert quarantined == []
    masks = masks_by_slice(ctx, records)
    assert sorted(masks) == [7] and np.array_equal(masks[7], polygon_mask(READER_1_SLICE_5))


@needs_realdata
def test_malformed_and_foreign_xml_are_quarantined_and_the_images_still_read(tmp_path):
    root = tmp_path / "src"
    copy_series(root)
    (root / SERIES_DIR / "069.xml").write_text("<LidcReadMessage><readingSession></LidcReadMessage>")
    (root / SERIES_DIR / "cxr.xml").write_text(f'<IdriReadMessage xmlns="{NS}"><CXRreadingSession/></IdriReadMessage>')
    # A read message about another series: its UIDs match nothing among the files.
    write_xml(root / "other.xml", [[[("1.2.3.4", 10.0, READER_1_SLICE_5)]]], "1.2.3.999")
    ctx, records, quarantined = ingest(lidc_spec(min_readers=1), root, tmp_path / "out")
    reasons = {q.source_file: q.reason for q in quarantined}
    assert sorted(reasons) == [f"{SERIES_DIR}/069.xml", f"{SERIES_DIR}/cxr.xml", "other.xml"]
    assert reasons[f"{SERIES_DIR}/069.xml"].startswith("not a well-formed XML file")
    assert "not an LIDC CT read message" in reasons[f"{SERIES_DIR}/cxr.xml"]
    assert "not among the source's DICOM files" in reasons["other.xml"]
    # No nodule masks: the series falls back to every_k, images unharmed.
    assert records and all(r["annotations"] == "[]" for r in records)


def test_lidc_catalog_spec_reads_the_xml_with_two_reader_consensus():
    spec = load_spec(REPO_ROOT / "data" / "sources" / "lidc_idri.yaml")
    assert spec.layout.lidc_xml_glob and spec.layout.lidc_min_readers == 2
    assert spec.slicing.rule == "annotated_plus_context" and "lung nodule" in spec.diseases
    assert "mask" in spec.annotation_kinds


@needs_realdata
def test_lidc_xml_with_an_entity_declaration_is_refused_not_expanded(tmp_path):
    """An entity declaration could expand into gigabytes (or read another file): refused as
    unsupported, its expansion never reaching a reason; the images still read."""
    root = tmp_path / "src"
    copy_series(root)
    (root / SERIES_DIR / "069.xml").write_text(
        '<?xml version="1.0"?><!DOCTYPE m [<!ENTITY x "xxxxxxxxxx"><!ENTITY y "&x;&x;&x;&x;&x;&x;">]>'
        "<LidcReadMessage><readingSession>&y;</readingSession></LidcReadMessage>"
    )
    ctx, records, quarantined = ingest(lidc_spec(min_readers=1), root, tmp_path / "out")
    assert [(q.source_file, q.kind) for q in quarantined] == [(f"{SERIES_DIR}/069.xml", "unsupported")]
    assert "xxxx" not in quarantined[0].reason
    assert records
