"""Layout-family parameters, one module per family group; each reader in
``medtrinity_assets.sources`` reads the model of its family."""

from medtrinity_assets.catalog.layouts.boxes import BoxAnnotations, BoxesLayout, CocoLayout
from medtrinity_assets.catalog.layouts.common import Modality, Replace, Strict
from medtrinity_assets.catalog.layouts.dicom import DicomLayout
from medtrinity_assets.catalog.layouts.image_mask import ImageMaskLayout, MaskFile
from medtrinity_assets.catalog.layouts.nifti import NiftiLayout
from medtrinity_assets.catalog.layouts.tabular import (
    AllNegative,
    CaptionsLayout,
    FlagValues,
    GradeColumn,
    ImageCsvLayout,
    ImageFolderLayout,
)

__all__ = [
    "AllNegative",
    "BoxAnnotations",
    "BoxesLayout",
    "CaptionsLayout",
    "CocoLayout",
    "DicomLayout",
    "FlagValues",
    "GradeColumn",
    "ImageCsvLayout",
    "ImageFolderLayout",
    "ImageMaskLayout",
    "MaskFile",
    "Modality",
    "NiftiLayout",
    "Replace",
    "Strict",
]
