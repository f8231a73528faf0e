"""Parameters of the image + mask family (2D images with segmentation masks)."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, model_validator

from medtrinity_assets.catalog.layouts.common import Replace, Strict


class MaskFile(Strict):
    """One mask of an image, found by template or replacement; used when an image has several
    masks with different meanings (JSRT: lungs, heart, clavicles in separate folders)."""

    # Template with {stem} (image file name without suffix), {name}, {parent} (folder of the
    # image, relative to the root) and the named groups of layout.image_regex.
    template: Optional[str] = None
    replace: list[Replace] = Field(default_factory=list)
    label: str
    optional: bool = False

    @model_validator(mode="after")
    def _one_rule(self) -> "MaskFile":
        if bool(self.template) == bool(self.replace):
            raise ValueError("a mask entry needs exactly one of 'template' or 'replace'")
        return self


class ImageMaskLayout(Strict):
    """2D images with binary, multi-class or instance-label masks.

    Pairing: ``mask_replace`` (string replacements on the image path), or ``mask_template``
    (template with {stem}, {name}, {parent} and the named groups of ``image_regex``), or
    ``masks`` (several masks per image, each with its own label).
    """

    family: Literal["image_mask"]
    image_glob: str
    # Images whose path does not match are skipped (e.g. the masks, when they share a folder).
    image_regex: Optional[str] = None
    mask_replace: list[Replace] = Field(default_factory=list)
    mask_template: Optional[str] = None
    masks: list[MaskFile] = Field(default_factory=list)
    # An image whose mask is absent is kept without ROI (True) or quarantined (False).
    mask_optional: bool = False
    # Further masks of the same image, globbed beside the first mask; "{mask_stem}" is the
    # first mask's file stem (BUSI: "{mask_stem}_[0-9]*.png" finds "x_mask_1.png").
    extra_mask_glob: Optional[str] = None
    # Binary masks stored as RGB or lossy JPEG (Kvasir-SEG): grey value >= threshold is inside.
    mask_threshold: int = Field(128, ge=1, le=255)
    # Multi-class masks: pixel value -> finding label (REFUGE: {0: optic cup, 128: optic disc});
    # other values, and `background_value`, are background.
    label_values: dict[int, str] = Field(default_factory=dict)
    background_value: int = 0
    # Masks hold one integer per object (nuclei): kept as ONE label mask marked "instances".
    instances: bool = False
    # Instance masks as text: "miccai_txt" = first line "W H", then W*H integers.
    instance_format: Literal["image", "miccai_txt"] = "image"
    # Label of the mask annotations when the image has no label of its own; default: the
    # spec's first disease. Set it where that would be wrong (HAM10000 masks every class).
    mask_label: Optional[str] = None

    @model_validator(mode="after")
    def _one_pairing(self) -> "ImageMaskLayout":
        rules = sum([bool(self.mask_replace), bool(self.mask_template), bool(self.masks)])
        if rules != 1:
            raise ValueError("layout needs exactly one of 'mask_replace', 'mask_template' or 'masks'")
        if self.label_values and self.instances:
            raise ValueError("layout.label_values and layout.instances exclude each other")
        return self
