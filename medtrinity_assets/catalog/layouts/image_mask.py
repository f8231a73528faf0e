"""Parameters of the image + mask family (2D images with segmentation masks)."""

from __future__ import annotations

import re
import string
from typing import Literal, Optional

from pydantic import Field, model_validator

from medtrinity_assets.catalog.layouts.common import Replace, Strict

# Names every mask template may use besides the named groups of image_regex.
TEMPLATE_FIELDS = frozenset({"stem", "name", "parent", "suffix"})


def template_fields(template: str) -> set[str]:
    """The {field} names a path template uses; ValueError for a malformed template."""
    names = set()
    for _, field, _, _ in string.Formatter().parse(template):
        if field is None:
            continue
        if not field.isidentifier():
            raise ValueError(f"template {template!r}: field {{{field}}} must be a plain name")
        names.add(field)
    return names


class MaskFile(Strict):
    """One mask of an image, found by template or replacement; used when an image has several
    masks with different meanings (JSRT: lungs, heart, clavicles in separate folders; IDRiD:
    one folder per lesion type, most images lacking some of them)."""

    # Template with {stem} (image file name without suffix), {name}, {parent} (folder of the
    # image, relative to the root), {suffix} (".png") and the named groups of layout.image_regex.
    template: Optional[str] = None
    replace: list[Replace] = Field(default_factory=list)
    label: str
    # An absent optional mask means "this finding is not in the image" (IDRiD haemorrhages).
    optional: bool = False
    # Whether this mask outlines a finding (IDRiD lesions) or anatomy (IDRiD optic disc, JSRT
    # lungs); None: the layout's masks_are_findings.
    finding: Optional[bool] = None

    @model_validator(mode="after")
    def _one_rule(self) -> "MaskFile":
        if bool(self.template) == bool(self.replace):
            raise ValueError("a mask entry needs exactly one of 'template' or 'replace'")
        return self


class ImageMaskLayout(Strict):
    """2D images with binary, multi-class or instance-label masks.

    Pairing: ``mask_replace`` (string replacements on the image path), or ``mask_template``
    (template with {stem}, {name}, {parent}, {suffix} and the named groups of ``image_regex``),
    or ``masks`` (several masks per image, each with its own label).

    Encodings: binary (PNG/GIF/BMP/TIFF, grey or RGB: 0 and one other value, or as ``binarize``
    says; JPEG: grey >= mask_threshold is inside); multi-class (``label_values``: each value its own
    annotation; a value that is neither a label nor background quarantines the image); instance
    labels (``instances``: one annotation holding every object, with its instance count).
    """

    family: Literal["image_mask"]
    image_glob: str
    # Images whose relative path does not match (re.search) are skipped (e.g. the masks, when
    # they share a folder); its named groups are fields of the mask templates.
    image_regex: Optional[str] = None
    mask_replace: list[Replace] = Field(default_factory=list)
    mask_template: Optional[str] = None
    masks: list[MaskFile] = Field(default_factory=list)
    # An image whose mask is absent is kept without ROI (True) or quarantined (False).
    mask_optional: bool = False
    # Further masks of the same image, globbed beside the first mask; "{mask_stem}" is the
    # first mask's file stem (BUSI: "{mask_stem}_[0-9]*.png" finds "x_mask_1.png").
    extra_mask_glob: Optional[str] = None
    # Binary masks stored as lossy JPEG (Kvasir-SEG), or lossless with binarize "threshold":
    # grey value >= threshold is inside.
    mask_threshold: int = Field(128, ge=1, le=255)
    # Lossless binary masks: "single_value" holds 0 and one other value (0/255, 0/1), and a
    # mask with more values quarantines its image (declare label_values to map each value to a
    # finding instead); "threshold": graded or anti-aliased masks, grey >= mask_threshold is
    # inside; "any_nonzero": every non-zero value is inside (class or id masks as one region).
    binarize: Literal["single_value", "threshold", "any_nonzero"] = "single_value"
    # Multi-class masks: pixel value -> finding label (REFUGE: {0: optic cup, 128: optic disc});
    # `background_value` is background; any other value present quarantines the image.
    label_values: dict[int, str] = Field(default_factory=dict)
    background_value: int = 0
    # Masks hold one integer per object (nuclei): kept as ONE label mask marked "instances".
    instances: bool = False
    # Instance masks as text: "miccai_txt" = first line "W H", then W*H integers.
    instance_format: Literal["image", "miccai_txt"] = "image"
    # The pairing rule gives a glob, each matching file one object's binary mask, numbered
    # 1..n in path order (DSB 2018 stage1_train: "{parent}/../masks/*.png"). Needs instances.
    instance_files: bool = False
    # Label of the mask annotations when the image has no label of its own; default: the
    # spec's first disease. Set it where that would be wrong (HAM10000 masks every class).
    mask_label: Optional[str] = None
    # Masks that outline lesions make their image a finding and enter its labels; masks of
    # anatomy (lungs, vessels, optic disc, nuclei, glands, fetal head) are ROIs only: the label
    # state then comes from the spec's labels rule (class folder / file-name pattern).
    masks_are_findings: bool = True

    @model_validator(mode="after")
    def _one_pairing(self) -> "ImageMaskLayout":
        rules = sum([bool(self.mask_replace), bool(self.mask_template), bool(self.masks)])
        if rules != 1:
            raise ValueError("layout needs exactly one of 'mask_replace', 'mask_template' or 'masks'")
        if self.label_values and self.instances:
            raise ValueError("layout.label_values and layout.instances exclude each other")
        if self.instance_format != "image" and not self.instances:
            raise ValueError("layout.instance_format needs layout.instances: true")
        if self.instance_files and (not self.instances or self.instance_format != "image" or self.masks):
            raise ValueError("layout.instance_files needs layout.instances: true, image masks and one pairing rule (not 'masks')")
        if self.instance_files and self.extra_mask_glob:
            raise ValueError("layout.instance_files already reads every file the glob matches; drop extra_mask_glob")
        if self.label_values and self.masks:
            # Each entry of `masks` names its own label; label_values would rename it per pixel.
            raise ValueError("layout.label_values applies to one mask per image; 'masks' entries carry their own labels")
        if self.extra_mask_glob and self.masks:
            raise ValueError("layout.extra_mask_glob globs beside the one mask of mask_replace/mask_template, not 'masks'")
        if self.binarize != "single_value" and (self.label_values or (self.instances and not self.instance_files)):
            raise ValueError("layout.binarize applies to binary masks, not to label_values or instance-label masks")
        if self.background_value in self.label_values:
            raise ValueError(f"layout.background_value {self.background_value} is also a key of label_values")
        return self

    @model_validator(mode="after")
    def _templates_use_known_fields(self) -> "ImageMaskLayout":
        groups: set[str] = set()
        if self.image_regex:
            try:
                groups = set(re.compile(self.image_regex).groupindex)
            except re.error as error:
                raise ValueError(f"layout.image_regex is not a valid regular expression: {error}") from None
        templates = [("mask_template", self.mask_template)] + [
            (f"masks[{index}].template", entry.template) for index, entry in enumerate(self.masks)
        ]
        for where, template in templates:
            if not template:
                continue
            unknown = template_fields(template) - TEMPLATE_FIELDS - groups
            if unknown:
                known = ", ".join(sorted(TEMPLATE_FIELDS | groups))
                raise ValueError(
                    f"layout.{where} uses {{{'}, {'.join(sorted(unknown))}}}, which is neither one of {known} "
                    "nor a named group (?P<name>...) of layout.image_regex"
                )
        return self
