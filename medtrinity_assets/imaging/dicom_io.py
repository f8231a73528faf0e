"""Decode DICOM pixels into physically meaningful arrays, reading only allowlisted header values.

``read_header`` is the only place a DICOM header is looked at: it returns a ``DicomHeader`` of
technical values (``deid.ALLOWED_KEYWORDS``: pixel encoding, spacing, plane geometry, view and
laterality), the grouping values used in memory to stack series
and to match annotation objects (UIDs, plane geometry, never written out), and the patient id,
which the reader hashes at once. Annotation objects (RTSTRUCT, SEG) are read by
``sources.dicom_annotations``, which takes only their references, geometry, ROI/segment names
and segment pixels. ``decode_frame`` returns pixels with the
Modality LUT applied (CT in Hounsfield units, PET in SUV when the header allows), MONOCHROME1
inverted so that bright always means dense, and colour images as 8-bit RGB. For PET it reads,
in memory, the dose, time and weight values of the SUV factor (Units, DecayCorrection,
PatientWeight, SeriesTime, AcquisitionTime, RadiopharmaceuticalInformationSequence); only the
scaled pixels leave.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, apply_modality_lut, pixel_array
from pydicom.pixels.decoders.base import get_decoder

from medtrinity_assets.imaging.deid import has_burned_in_annotation
from medtrinity_assets.imaging.limits import PixelLimits

# Objects that carry no image to describe (structure sets, segmentations, reports, plans, dose
# grids, presentation states...). RTSTRUCT and SEG among them are annotation objects: the dicom
# reader turns them into ROIs of the images they reference (sources.dicom_annotations).
ANNOTATION_MODALITIES = frozenset({"RTSTRUCT", "SEG"})
NON_IMAGE_MODALITIES = frozenset(
    {"RTSTRUCT", "SEG", "SR", "RTPLAN", "RTDOSE", "RTRECORD", "RTIMAGE_PLAN", "KO", "PR", "REG", "DOC", "RWV", "FID", "PLAN", "AU", "ECG", "HD"}
)


class NotAnImageObject(ValueError):
    """A DICOM object without an image to describe (RTSTRUCT, SEG, SR...)."""


class PixelDecodeError(ValueError):
    """Pixel data present but not decoded; the message names the transfer syntax and either the
    installed decoders that failed or the packages that would decode it.

    ``kind``: "unsupported" when no installed decoder handles the transfer syntax, else
    "unreadable" (sources.base.QUARANTINE_KINDS).
    """

    def __init__(self, message: str, kind: str = "unreadable"):
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class DicomHeader:
    """The values a reader may use. Nothing else of the header leaves ``read_header``."""

    modality: Optional[str]
    rows: int
    columns: int
    n_frames: int
    photometric: str
    pixel_spacing_mm: Optional[list[float]]
    slice_thickness: Optional[float]
    has_pixels: bool
    # In memory only, for grouping and ordering a series; never written to a record.
    series_uid: Optional[str]
    position: Optional[tuple[float, float, float]]
    orientation: Optional[tuple[float, ...]]
    instance_number: Optional[int]
    # In memory only, hashed at once by the reader (sources.base.patient_hash).
    patient_id: Optional[str]
    # In memory only, to match RTSTRUCT / SEG objects to the images they reference.
    sop_instance_uid: Optional[str] = None
    frame_of_reference_uid: Optional[str] = None
    # Multi-frame files: ImagePositionPatient of each frame (per-frame functional groups).
    frame_positions: Optional[tuple[tuple[float, float, float], ...]] = None
    # BurnedInAnnotation (0028,0301) is "YES": text such as a name may be in the pixels.
    burned_in_annotation: bool = False
    # Geometry and view (technical, kept by PS3.15; deid.ALLOWED_KEYWORDS): PatientOrientation
    # of projection images, ViewPosition, ImageLaterality (else the series' Laterality), and the
    # tags FrameIncrementPointer names (FrameTime: a cine loop).
    patient_orientation: Optional[tuple[str, ...]] = None
    view_position: Optional[str] = None
    laterality: Optional[str] = None
    frame_increment_pointers: tuple[int, ...] = ()

    @property
    def slice_normal(self) -> Optional[np.ndarray]:
        if not self.orientation or len(self.orientation) != 6:
            return None
        row, col = np.array(self.orientation[:3]), np.array(self.orientation[3:])
        return np.cross(row, col)


@dataclass(frozen=True)
class DecodedFrame:
    pixels: np.ndarray  # (H, W) or (H, W, 3) uint8 RGB
    pixel_units: str  # "HU", "SUV", "raw", "rgb"
    photometric: str  # of ``pixels``: MONOCHROME2 (bright = dense) or RGB


def _floats(value) -> Optional[list[float]]:
    if value is None:
        return None
    try:
        return [float(v) for v in (value if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else [value])]
    except (TypeError, ValueError):
        return None


def functional_group_value(ds: Dataset, group: str, keyword: str, frame: Optional[int] = None):
    """A value from Enhanced multi-frame functional groups: per-frame first, then shared."""
    sources = []
    if frame is not None and "PerFrameFunctionalGroupsSequence" in ds and frame < len(ds.PerFrameFunctionalGroupsSequence):
        sources.append(ds.PerFrameFunctionalGroupsSequence[frame])
    if "SharedFunctionalGroupsSequence" in ds and len(ds.SharedFunctionalGroupsSequence):
        sources.append(ds.SharedFunctionalGroupsSequence[0])
    for item in sources:
        if group in item and len(item[group].value):
            value = item[group].value[0].get(keyword)
            if value is not None:
                return value
    return None


# Values larger than this are left in the file when only the header is wanted: their place and
# length are noted, which is what ``pixel_data_problem`` checks.
DEFERRED_VALUE_BYTES = 4096


def read_dicom(path: Path, with_pixels: bool = True) -> Dataset:
    """Parse a DICOM file; an empty file gets a clear error instead of pydicom's EOF.

    ``with_pixels=False`` reads the header without loading the pixel data, whose place and
    length in the file stay known (``pixel_data_problem``)."""
    path = Path(path)
    if path.stat().st_size == 0:
        raise ValueError("empty file (0 bytes)")
    options = {} if with_pixels else {"defer_size": DEFERRED_VALUE_BYTES}
    try:
        return pydicom.dcmread(path, **options)
    except pydicom.errors.InvalidDicomError:
        # Older writers (RT planning systems especially) omit the 128-byte preamble and file
        # meta: read the bare dataset, but only accept it if it names its SOP class, so that
        # a text or image file forced through the parser is still rejected.
        ds = pydicom.dcmread(path, force=True, **options)
        if "SOPClassUID" not in ds:
            raise
        return ds


def read_header(ds: Dataset) -> DicomHeader:
    # Some writers fill PixelSpacing with zeros (e.g. a CR without calibration): not a spacing.
    candidates = (
        _floats(ds.get("PixelSpacing")),
        _floats(ds.get("ImagerPixelSpacing")),
        _floats(functional_group_value(ds, "PixelMeasuresSequence", "PixelSpacing", 0)),
    )
    spacing = next((c for c in candidates if c and len(c) >= 2 and min(c[:2]) > 0), None)
    position = _floats(ds.get("ImagePositionPatient")) or _floats(
        functional_group_value(ds, "PlanePositionSequence", "ImagePositionPatient", 0)
    )
    orientation = _floats(ds.get("ImageOrientationPatient")) or _floats(
        functional_group_value(ds, "PlaneOrientationSequence", "ImageOrientationPatient", 0)
    )
    thickness = _floats(ds.get("SliceThickness"))
    instance = ds.get("InstanceNumber")
    n_frames = int(ds.get("NumberOfFrames") or 1)
    patient_id = ds.get("PatientID")
    return DicomHeader(
        modality=(str(ds.get("Modality")).strip().upper() or None) if ds.get("Modality") else None,
        rows=int(ds.get("Rows") or 0),
        columns=int(ds.get("Columns") or 0),
        n_frames=n_frames,
        photometric=str(ds.get("PhotometricInterpretation") or "MONOCHROME2").strip().upper(),
        pixel_spacing_mm=spacing[:2] if spacing and len(spacing) >= 2 else None,
        slice_thickness=thickness[0] if thickness else None,
        has_pixels=any(tag in ds for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")),
        series_uid=str(ds.get("SeriesInstanceUID")) if ds.get("SeriesInstanceUID") else None,
        position=tuple(position[:3]) if position and len(position) >= 3 else None,
        orientation=tuple(orientation[:6]) if orientation and len(orientation) >= 6 else None,
        instance_number=int(instance) if instance not in (None, "") else None,
        patient_id=str(patient_id) if patient_id not in (None, "") else None,
        sop_instance_uid=_uid(ds, "SOPInstanceUID"),
        frame_of_reference_uid=_uid(ds, "FrameOfReferenceUID"),
        frame_positions=_frame_positions(ds, n_frames) if n_frames > 1 else None,
        burned_in_annotation=has_burned_in_annotation(ds),
        patient_orientation=_strings(ds.get("PatientOrientation")),
        view_position=_text(ds.get("ViewPosition")),
        laterality=_text(ds.get("ImageLaterality")) or _text(ds.get("Laterality")),
        frame_increment_pointers=_tags(ds.get("FrameIncrementPointer")),
    )


def _text(value) -> Optional[str]:
    text = str(value).strip() if value not in (None, "") else ""
    return text or None


def _strings(value) -> Optional[tuple[str, ...]]:
    if value in (None, ""):
        return None
    values = value if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else str(value).split("\\")
    return tuple(str(v).strip() for v in values)


def _tags(value) -> tuple[int, ...]:
    if value in (None, ""):
        return ()
    values = value if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else [value]
    return tuple(int(v) for v in values)


def _uid(ds: Dataset, keyword: str) -> Optional[str]:
    value = ds.get(keyword)
    return str(value).strip() if value not in (None, "") else None


def _frame_positions(ds: Dataset, n_frames: int) -> Optional[tuple[tuple[float, float, float], ...]]:
    """Per-frame positions of an enhanced multi-frame image; None unless every frame has one."""
    positions = []
    for frame in range(n_frames):
        position = _floats(functional_group_value(ds, "PlanePositionSequence", "ImagePositionPatient", frame))
        if not position or len(position) < 3:
            return None
        positions.append(tuple(position[:3]))
    return tuple(positions)


def check_size(header: DicomHeader, limits: PixelLimits) -> None:
    """Raise ``imaging.limits.TooLarge`` when Rows x Columns x NumberOfFrames is over
    ``limits``; from the header alone, so call it before decoding (a 100000-frame file is
    refused, not sampled)."""
    what = "multi-frame DICOM" if header.n_frames > 1 else "DICOM image"
    limits.check_volume(header.rows, header.columns, header.n_frames, what)


def check_is_image(header: DicomHeader) -> None:
    """Raise ``NotAnImageObject`` for objects without an image."""
    if header.modality in ANNOTATION_MODALITIES:
        raise NotAnImageObject(
            f"not an image object (Modality={header.modality}): an annotation object, read as ROIs of the images it references"
        )
    if header.modality in NON_IMAGE_MODALITIES:
        raise NotAnImageObject(f"not an image object (Modality={header.modality}): nothing to describe")
    if not header.has_pixels:
        # Compressed pixel data cut off before its end is dropped by the parser: say so too.
        raise NotAnImageObject(
            f"not an image object (Modality={header.modality}): the file has no pixel data (or ends inside it)"
        )


def pixel_data_problem(ds: Dataset) -> Optional[str]:
    """Why a file's pixel data cannot be whole, from its header alone (read with
    ``with_pixels=False``), or None: the value runs past the end of the file (a copy cut short)
    or holds fewer bytes than Rows x Columns x samples x bits x frames need. Encapsulated
    (compressed) data cut short is dropped by the parser: the file then has no pixel data."""
    from pydicom.pixels.utils import get_expected_length

    element = ds.get_item("PixelData", keep_deferred=True)
    if element is None:
        return None  # no image: check_is_image says so
    syntax = (getattr(ds, "file_meta", None) or {}).get("TransferSyntaxUID")
    if (syntax is not None and syntax.is_encapsulated) or getattr(element, "length", None) == 0xFFFFFFFF:
        return None  # compressed, parsed to its delimiter: whole as far as the header can tell
    if isinstance(element, RawDataElement):
        # A deflated file is parsed from its inflated copy: positions are not file offsets.
        if not (syntax is not None and syntax.is_deflated):
            in_file = Path(ds.filename).stat().st_size - element.value_tell
            if element.length > in_file:
                return (
                    f"pixel data cut short: the header announces {element.length} bytes, "
                    f"the file ends after {max(in_file, 0)} (a truncated copy)"
                )
        length = element.length
    else:
        length = len(element.value or b"")
    try:
        expected = get_expected_length(ds, "bytes")
    except (AttributeError, KeyError, TypeError, ValueError):
        return None  # a header too incomplete to say: decoding reports it
    if length < expected:
        return f"pixel data holds {length} bytes, less than expected ({expected} bytes for its rows, columns, bits and frames)"
    return None


def _rescale(ds: Dataset, frame: Optional[int]) -> tuple[float, float, Optional[str]]:
    slope = ds.get("RescaleSlope")
    intercept = ds.get("RescaleIntercept")
    rescale_type = ds.get("RescaleType")
    if slope is None and intercept is None:
        slope = functional_group_value(ds, "PixelValueTransformationSequence", "RescaleSlope", frame)
        intercept = functional_group_value(ds, "PixelValueTransformationSequence", "RescaleIntercept", frame)
        rescale_type = functional_group_value(ds, "PixelValueTransformationSequence", "RescaleType", frame)
    return (
        float(slope) if slope not in (None, "") else 1.0,
        float(intercept) if intercept not in (None, "") else 0.0,
        str(rescale_type).upper() if rescale_type else None,
    )


def _stored_range(ds: Dataset) -> tuple[float, float]:
    bits = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 16)
    if int(ds.get("PixelRepresentation") or 0) == 1:
        return -(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1
    return 0.0, 2.0**bits - 1


def _dicom_time_seconds(value) -> Optional[float]:
    if not value:
        return None
    text = str(value).strip()
    try:
        hours, minutes = int(text[0:2]), int(text[2:4] or 0)
        seconds = float(text[4:] or 0)
    except ValueError:
        return None
    return hours * 3600 + minutes * 60 + seconds


def suv_factor(ds: Dataset) -> Optional[float]:
    """Body-weight SUV per (Bq/ml): weight [g] / decay-corrected injected dose [Bq].

    None when the header lacks what is needed (units other than BQML, no weight, dose, half-life
    or times); the reader then keeps raw values and says so. Only the factor leaves this function.
    """
    units = str(ds.get("Units") or "").upper()
    weight_kg = ds.get("PatientWeight")
    info = ds.get("RadiopharmaceuticalInformationSequence")
    if units != "BQML" or not weight_kg or not info:
        return None
    try:
        item = info[0]
        dose = float(item.RadionuclideTotalDose)
        half_life = float(item.RadionuclideHalfLife)
        start = _dicom_time_seconds(item.get("RadiopharmaceuticalStartTime"))
        scan = _dicom_time_seconds(ds.get("SeriesTime") or ds.get("AcquisitionTime"))
        if dose <= 0 or half_life <= 0 or start is None or scan is None:
            return None
        elapsed = (scan - start) % 86400  # an injection before midnight and a scan after it
        decay = str(ds.get("DecayCorrection") or "START").upper()
        decayed_dose = dose * 2.0 ** (-elapsed / half_life) if decay == "START" else dose
        return float(weight_kg) * 1000.0 / decayed_dose
    except (AttributeError, TypeError, ValueError, IndexError):
        return None


def _compact(values: np.ndarray) -> np.ndarray:
    """Integral values as the smallest fitting int type (CT HU as int16), else float32."""
    if values.dtype.kind in "iu":
        if values.dtype.itemsize > 2 and values.size:
            info = np.iinfo(np.int16)
            if info.min <= values.min() and values.max() <= info.max:
                return values.astype(np.int16)
        return values
    finite = np.isfinite(values).all()
    if finite and values.size and np.array_equal(values, np.round(values)):
        low, high = values.min(), values.max()
        for dtype in (np.int16, np.int32):
            info = np.iinfo(dtype)
            if info.min <= low and high <= info.max:
                return values.astype(dtype)
    return values.astype(np.float32)


def _to_uint8_rgb(rgb: np.ndarray, bits: int) -> np.ndarray:
    if rgb.dtype == np.uint8:
        return rgb
    top = float(2**bits - 1) if bits > 8 else float(rgb.max() or 1)
    return np.clip(np.round(rgb.astype(np.float64) * (255.0 / top)), 0, 255).astype(np.uint8)


def _decode_error(ds: Dataset, error: Exception) -> PixelDecodeError:
    """Why the pixels were not decoded, from pydicom's own registry of decoders for the
    transfer syntax: which are installed (and failed), or which packages would decode it."""
    syntax = getattr(getattr(ds, "file_meta", None), "get", lambda *_: None)("TransferSyntaxUID")
    name = getattr(syntax, "name", str(syntax))
    # pydicom lists each plugin's failure on its own line after a summary line; keep them, joined.
    detail = " ".join(line.strip() for line in str(error).strip().splitlines())[:300]
    try:
        decoder = get_decoder(syntax)
    except (NotImplementedError, TypeError, ValueError):
        return PixelDecodeError(f"cannot decode pixel data ({name}): pydicom has no decoder for this transfer syntax", "unsupported")
    if decoder.is_native:  # uncompressed: pydicom itself reads it, no codec involved
        return PixelDecodeError(f"cannot decode pixel data ({name}): {type(error).__name__}: {detail}")
    # "gdcm - requires gdcm>=3.0.10" -> "gdcm (requires gdcm>=3.0.10)"
    missing = "; ".join(item.replace(" - ", " (", 1) + ")" for item in decoder.missing_dependencies)
    if not decoder.available_plugins:
        return PixelDecodeError(
            f"cannot decode pixel data ({name}): no decoder installed for this transfer syntax; "
            f"one of these would decode it: {missing}", "unsupported",
        )
    installed = ", ".join(decoder.available_plugins)
    others = f" (not installed: {missing})" if missing else ""
    return PixelDecodeError(
        f"cannot decode pixel data ({name}) with the installed decoder(s) {installed}{others}: "
        f"{type(error).__name__}: {detail}"
    )


def decode_frame(ds: Dataset, header: DicomHeader, index: Optional[int] = None) -> DecodedFrame:
    """Pixels of one frame (``index``) or of a single-frame file (``index=None``)."""
    try:
        # as_rgb: pydicom (or the JPEG / JPEG 2000 codec) turns every YBR variant into RGB.
        raw = pixel_array(ds, index=index, as_rgb=True)
    except Exception as error:  # pydicom raises RuntimeError/ValueError/NotImplementedError
        raise _decode_error(ds, error) from error
    photometric = "RGB" if header.photometric.startswith("YBR") else header.photometric
    bits = int(ds.get("BitsStored") or 8)

    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(raw, ds)
        lut_bits = int(ds.RedPaletteColorLookupTableDescriptor[2]) if "RedPaletteColorLookupTableDescriptor" in ds else 8
        return DecodedFrame(_to_uint8_rgb(rgb, lut_bits), "rgb", "RGB")
    if raw.ndim == 3 and raw.shape[-1] == 3:
        return DecodedFrame(_to_uint8_rgb(raw, bits), "rgb", "RGB")
    if raw.ndim != 2:
        raise PixelDecodeError(f"unexpected pixel array shape {raw.shape} for one frame")

    if "ModalityLUTSequence" in ds:
        values = np.asarray(apply_modality_lut(raw, ds), dtype=np.float64)
        low, high = float(values.min()), float(values.max())
        rescale_type = None
    else:
        slope, intercept, rescale_type = _rescale(ds, index)
        if raw.dtype.kind in "iu" and float(slope).is_integer() and float(intercept).is_integer():
            # Integer rescale (CT: slope 1, intercept -1024) stays in integers: exact, and it
            # skips the float64 copy and rounding test that were a third of a CT slice's ingest.
            values = raw.astype(np.int32) * int(slope) + int(intercept)
        else:
            values = raw.astype(np.float64) * slope + intercept
        stored_low, stored_high = _stored_range(ds)
        low, high = sorted((stored_low * slope + intercept, stored_high * slope + intercept))

    units = "raw"
    if header.modality == "CT" and rescale_type in (None, "HU"):
        units = "HU"
    elif header.modality == "PT":
        factor = suv_factor(ds)
        if str(ds.get("Units") or "").upper() == "GML":  # the scanner already stored body-weight SUV
            units = "SUV"
        elif factor is not None:
            values = values * factor
            units = "SUV"

    if photometric == "MONOCHROME1":
        # MONOCHROME1 shows low values white; flip within the value range so bright = dense.
        values = (low + high) - values
    return DecodedFrame(_compact(values), units, "MONOCHROME2")
