"""LIDC-IDRI radiologist reads (TCIA's LidcReadMessage XML) turned into per-slice nodule masks.

One XML per CT series lies next to its DICOM files. It holds up to four ``readingSession``
elements, one per radiologist; each marks ``unblindedReadNodule`` elements whose ``roi``
elements outline the nodule on one slice: ``edgeMap`` points in pixel coordinates
(xCoord = column, yCoord = row) of the image whose SOPInstanceUID is ``imageSOP_UID``, and
``inclusion`` FALSE for an outline that cuts a hole out of the nodule on that slice.

- Each outline is filled with ``skimage.draw.polygon`` (pixels whose centre lies inside), as
  RTSTRUCT contours are; a reader's nodule on a slice is its included outlines minus its holes.
- Nodules under 3 mm carry a single edgeMap point (the reader marked a location, not an
  extent) and ``nonNodule`` elements mark what is not a nodule: neither becomes a mask.
- Consensus: a pixel is in the mask when at least ``layout.lidc_min_readers`` readers have any
  nodule covering it on that slice. The XML does not say which readers' nodules are the same
  nodule (that needs clustering across readers), so counting per pixel over all nodules of a
  slice is the rule that needs no matching; distinct nodules rarely overlap, so it seldom
  differs from a per-nodule count.
- An outline finds its slice by SOP Instance UID, else by ``imageZposition`` within half a slice
  gap of a slice of the series the XML names (or whose images its other outlines name).

An XML that cannot be parsed or names no image among the files, and outlines that fit no slice
or whose coordinates are not numbers, are quarantined with counts, never with UIDs or free text.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Iterable, Optional
from xml.etree.ElementTree import Element

import numpy as np
from defusedxml import DefusedXmlException
from defusedxml import ElementTree as SafeElementTree
from skimage import draw

from medtrinity_assets.catalog.layouts import DicomLayout
from medtrinity_assets.sources.base import Quarantined
from medtrinity_assets.sources.dicom_annotations import ImagePlane, PlaneIndex, PlaneKey, PlaneMasks, add_mask, merge_masks, plane_sort_key

ROOT_ELEMENT = "LidcReadMessage"


def _local(tag: str) -> str:
    """Element name without its namespace ("{http://www.nih.gov}roi" -> "roi"): matching on the
    local name reads files with and without the namespace declaration alike."""
    return tag.rsplit("}", 1)[-1]


def _children(element: Element, name: str) -> list[Element]:
    return [child for child in element if _local(child.tag) == name]


def _text(element: Element, name: str) -> str:
    found = _children(element, name)
    return (found[0].text or "").strip() if found else ""


def _descendants(element: Element, name: str) -> list[Element]:
    return [item for item in element.iter() if _local(item.tag) == name]


class _Outlines:
    """What one XML's ROIs come to: per reader, per plane, the pixels the reader's nodules cover."""

    def __init__(self) -> None:
        self.coverage: dict[int, dict[PlaneKey, np.ndarray]] = defaultdict(dict)
        self.unplaced = 0
        self.malformed = 0
        self.off_grid = 0


def _roi_points(roi: Element) -> Optional[np.ndarray]:
    """(row, column) of an ROI's edgeMap points; None when a coordinate is not a number."""
    points = []
    for edge in _children(roi, "edgeMap"):
        try:
            points.append((float(_text(edge, "yCoord")), float(_text(edge, "xCoord"))))
        except ValueError:
            return None
    return np.asarray(points, dtype=np.float64).reshape(-1, 2)


def _fill(points: np.ndarray, plane: ImagePlane) -> Optional[np.ndarray]:
    """Boolean mask of an outline on ``plane``; None when no part of it is on the pixel grid."""
    shape = (plane.rows, plane.columns)
    mask = np.zeros(shape, dtype=bool)
    rr, cc = draw.polygon(points[:, 0], points[:, 1], shape)
    mask[rr, cc] = True
    if mask.any():
        return mask
    # A degenerate outline (a line, two points) has no pixel centre inside: keep its points.
    r, c = np.rint(points[:, 0]).astype(int), np.rint(points[:, 1]).astype(int)
    inside = (r >= 0) & (r < shape[0]) & (c >= 0) & (c < shape[1])
    if not inside.any():
        return None
    mask[r[inside], c[inside]] = True
    return mask


def _plane_at_height(index: PlaneIndex, series_keys: list[str], z_text: str) -> Optional[ImagePlane]:
    """The slice of the XML's series at ``imageZposition`` (mm, patient z), if any lies within
    half a slice gap. LIDC series are axial, so the point is taken on the z axis through the
    series' first slice origin."""
    try:
        height = float(z_text)
    except ValueError:
        return None
    for key in series_keys:
        anchor = next((p for p in index.series.get(key, []) if p.has_geometry and p.origin is not None), None)
        if anchor is None:
            continue
        found = index.planes_at([key], np.asarray([[anchor.origin[0], anchor.origin[1], height]]))
        if found:
            return found[0]
    return None


def _read_nodule(nodule: Element, index: PlaneIndex, series_keys: list[str], outlines: _Outlines, reader: int) -> None:
    included: dict[PlaneKey, np.ndarray] = {}
    holes: dict[PlaneKey, np.ndarray] = {}
    for roi in _children(nodule, "roi"):
        points = _roi_points(roi)
        if points is None:
            outlines.malformed += 1
            continue
        if len(points) < 2:
            continue  # a nodule under 3 mm: a marked location, no outline to fill
        plane = index.plane_by_sop(_text(roi, "imageSOP_UID"), None)
        if plane is None:
            plane = _plane_at_height(index, series_keys, _text(roi, "imageZposition"))
        if plane is None:
            outlines.unplaced += 1
            continue
        mask = _fill(points, plane)
        if mask is None:
            outlines.off_grid += 1
            continue
        target = holes if _text(roi, "inclusion").upper() == "FALSE" else included
        target[plane.key] = target[plane.key] | mask if plane.key in target else mask
    coverage = outlines.coverage[reader]
    for key, mask in included.items():
        nodule_mask = mask & ~holes[key] if key in holes else mask
        coverage[key] = coverage[key] | nodule_mask if key in coverage else nodule_mask


def _series_keys(message: Element, index: PlaneIndex) -> list[str]:
    """Series the XML applies to: those holding the images its outlines name, else the series
    its header names."""
    sop_uids = {(roi_uid.text or "").strip() for roi_uid in _descendants(message, "imageSOP_UID")}
    series_uids = {(item.text or "").strip() for item in _descendants(message, "SeriesInstanceUid")}
    return index.candidate_series(sop_uids - {""}, series_uids - {""}, [])


def lidc_masks(source_file: str, message: Element, layout: DicomLayout, index: PlaneIndex, masks: PlaneMasks) -> list[Quarantined]:
    """Add the consensus nodule masks of one parsed LidcReadMessage to ``masks``; return what
    could not be used."""
    series_keys = _series_keys(message, index)
    if not series_keys:
        return [Quarantined(source_file, "LIDC read message whose images (SOP instances and series) are not among the "
                            "source's DICOM files; left out", kind="orphan")]
    outlines = _Outlines()
    for reader, session in enumerate(_children(message, "readingSession")):
        for nodule in _children(session, "unblindedReadNodule"):
            _read_nodule(nodule, index, series_keys, outlines, reader)
    label = layout.lidc_label.strip().lower()
    counts: dict[PlaneKey, np.ndarray] = {}
    for coverage in outlines.coverage.values():
        for key, mask in coverage.items():
            counts[key] = counts[key] + mask if key in counts else mask.astype(np.uint8)
    for key in sorted(counts, key=plane_sort_key):
        consensus = counts[key] >= layout.lidc_min_readers
        if consensus.any():
            add_mask(masks, key, label, consensus)
    problems = []
    if outlines.unplaced:
        problems.append(Quarantined(source_file, f"{outlines.unplaced} nodule outline(s) lie on no slice among the source's "
                                    "files (neither by SOP instance UID nor by z position); left out", kind="orphan"))
    if outlines.malformed:
        problems.append(Quarantined(source_file, f"{outlines.malformed} nodule outline(s) have edgeMap coordinates that are "
                                    "not numbers; left out", kind="invalid_annotation"))
    if outlines.off_grid:
        problems.append(Quarantined(source_file, f"{outlines.off_grid} nodule outline(s) lie outside the pixel grid of "
                                    "their slice; left out", kind="invalid_annotation"))
    return problems


def collect_lidc_annotations(
    root: Path, layout: DicomLayout, xml_files: list[str], planes: Iterable[ImagePlane], masks: PlaneMasks
) -> list[Quarantined]:
    """Add the nodule masks of every LIDC XML (relative paths, sorted) to ``masks``; return the
    Quarantined for what could not be read or placed."""
    index = PlaneIndex(planes)
    problems: list[Quarantined] = []
    for source_file in xml_files:
        try:
            message = SafeElementTree.parse(root / source_file).getroot()
        except DefusedXmlException as error:
            # An entity declaration could expand into gigabytes or read another file.
            problems.append(Quarantined(source_file, f"XML declares entities or external references ({type(error).__name__}): refused", kind="unsupported"))
            continue
        except SafeElementTree.ParseError as error:
            # The parser's message is a position ("line 3, column 4"), never the file's text.
            problems.append(Quarantined(source_file, f"not a well-formed XML file: {error}", kind="unreadable"))
            continue
        except OSError as error:
            problems.append(Quarantined(source_file, f"unreadable XML file: {type(error).__name__}", kind="unreadable"))
            continue
        if _local(message.tag) != ROOT_ELEMENT:
            # IdriReadMessage files hold chest radiograph reads, which have no CT slice to mark.
            problems.append(Quarantined(source_file, f"not an LIDC CT read message (root element is not {ROOT_ELEMENT}); "
                                        "left out", kind="unsupported"))
            continue
        # Each XML fills its own masks first, so one that fails half-way adds nothing.
        own: PlaneMasks = {}
        try:
            problems.extend(lidc_masks(source_file, message, layout, index, own))
        except Exception as error:  # one malformed read message must not stop the source
            problems.append(Quarantined(source_file, f"unusable LIDC read message: {type(error).__name__}", kind="invalid_annotation"))
            continue
        merge_masks(masks, own)
    return problems
