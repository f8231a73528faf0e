"""Parameters of the DICOM family: images, multi-frame files, series, RTSTRUCT and SEG."""

from __future__ import annotations

import re
from typing import Literal, Optional

from pydantic import Field, field_validator

from medtrinity_assets.catalog.layouts.common import Strict


class DicomLayout(Strict):
    """DICOM files: single images, multi-frame files, or series stacked into volumes.

    Annotation objects found among the files are matched to the images they reference by UID:
    RTSTRUCT contours (rasterized per slice) and DICOM SEG segments (binary or fractional).
    LIDC-IDRI's XML nodule outlines are read when ``lidc_xml_glob`` names them.
    """

    family: Literal["dicom"]
    glob: str = "**/*.dcm"
    # Stack files of one SeriesInstanceUID into a volume (CT/MR series) and slice it by rule.
    stack_series: bool = False
    # Glob (relative to the root) of files to leave out, e.g. a DICOMDIR or vendor extras.
    exclude_glob: Optional[str] = None
    # RTSTRUCT ROI name (regex, matched case-insensitively against ROIName) -> finding label.
    # ROIs matching no entry are ignored (body outlines, couch, planning structures). Empty:
    # every ROI is kept as "structure <ROI number>" (ROI names are free text and may hold
    # identifiers, so only names the spec maps become labels).
    rtstruct_rois: dict[str, str] = Field(default_factory=dict)
    # DICOM SEG segment label (regex on SegmentLabel) -> finding label; empty keeps all segments
    # as "structure <segment number>".
    seg_segments: dict[str, str] = Field(default_factory=dict)
    # Image with BurnedInAnnotation = YES (text such as names burned into the pixels):
    # "quarantine" leaves it out with that reason; "flag" keeps it with the record flag
    # "burned_in_annotation" so exports can leave it out or a reviewer can check it.
    burned_in_annotation: Literal["quarantine", "flag"] = "quarantine"
    # LIDC-IDRI radiologist reads (LidcReadMessage XML, one per series next to its DICOM files;
    # sources.lidc_xml): glob (relative to the root) of the XML files; None reads no XML.
    lidc_xml_glob: Optional[str] = None
    # A pixel is in the nodule mask when at least this many radiologists' nodule outlines on
    # that slice cover it (LIDC has up to 4 readers; 2 is the common 50% consensus).
    lidc_min_readers: int = Field(1, ge=1, le=4)
    # Finding label of the consensus nodule mask.
    lidc_label: str = "lung nodule"

    @field_validator("rtstruct_rois", "seg_segments")
    @classmethod
    def _patterns_compile(cls, mapping: dict[str, str]) -> dict[str, str]:
        # A bad pattern must fail when the spec loads, not half-way through a partition.
        for pattern in mapping:
            try:
                re.compile(pattern)
            except re.error as error:
                raise ValueError(f"pattern {pattern!r} is not a valid regular expression: {error}") from None
        return mapping
