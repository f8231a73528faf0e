"""DICOM helpers every reader of DICOM files shares (the dicom family, and boxes for RSNA's .dcm
rows): de-identification before decoding and the geometry a record keeps of one frame."""

from __future__ import annotations

from typing import Optional

from medtrinity_assets.imaging.deid import SUV_RETAIN_OPTIONS, apply_basic_profile
from medtrinity_assets.imaging.dicom_io import DicomHeader
from medtrinity_assets.imaging.geometry import dicom_axes
from medtrinity_assets.sources.base import IngestContext


def deidentify_dataset(ctx: IngestContext, ds, header: DicomHeader):
    """Apply the PS3.15 Basic Profile to the dataset before its pixels are decoded.

    Only pixels and allowlisted technical values leave ingest anyway (read_header); this is
    defence in depth, so no later code can reach an identifier through the dataset. It runs
    after read_header, which keeps the UIDs that group series and match annotations in memory.
    PET keeps the weight and times that the SUV conversion needs (PS3.15 retain options).
    """
    retain = SUV_RETAIN_OPTIONS if header.modality == "PT" else ()
    apply_basic_profile(ds, ctx.salt, retain=retain)
    return ds


def dicom_geometry(header: DicomHeader, frame: Optional[int], frame_kind: Optional[str]) -> dict:
    """make_record's geometry arguments for one frame (or a single-frame file: ``frame`` None)."""
    position = header.position
    if frame is not None and header.frame_positions:
        position = header.frame_positions[frame]
    return {
        "image_axes": dicom_axes(header.orientation, position, header.pixel_spacing_mm, header.patient_orientation),
        "view": header.view_position,
        "laterality": header.laterality,
        "frame_kind": frame_kind,
    }
