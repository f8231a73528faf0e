"""Parameters of the box families: COCO JSON, YOLO text, Pascal VOC XML, CSV rows, circles.

``BoxAnnotations`` is the one description of "where the boxes are"; it serves both as the
``boxes`` layout family (images + boxes) and as a source's ``extra_boxes`` overlay, which adds
boxes from a second file to the records any family reads (covid-chestxray: CSV labels plus
COCO lung boxes), matched by the image path relative to the source root.
"""

from __future__ import annotations

import re
from typing import Literal, Optional

from pydantic import Field, model_validator

from medtrinity_assets.catalog.layouts.common import Strict


class XmlShapes(Strict):
    """Where polygons are in an XML file of any schema, by ElementTree paths (its XPath subset:
    "Annotations/Annotation[@Type='Polygon']", ".//Shape[@Type='Polygon']").

    ASAP / CAMELYON: shape_path ".//Annotation[@Type='Polygon']", point_path
    "Coordinates/Coordinate", label_attribute "PartOfGroup", order_attribute "Order".
    """

    # Each shape element, searched from the document root (or from each image element).
    shape_path: str
    # Each point element, searched from its shape; its coordinates in pixels of the image.
    point_path: str
    x_attribute: str = "X"
    y_attribute: str = "Y"
    # Label: this attribute of the shape, else the box spec's fixed_label.
    label_attribute: Optional[str] = None
    # Points are sorted by this attribute when the file numbers them (ASAP "Order").
    order_attribute: Optional[str] = None
    # One file for many images (the box spec's `file`): each image element, and the attribute
    # naming its image (filled into path_template as {id}).
    image_path: Optional[str] = None
    image_attribute: Optional[str] = None


class BoxAnnotations(Strict):
    # keyed_json: one JSON object keyed by image id, each value holding a list of boxes under
    # `boxes_key` (Kvasir-SEG kavsir_bboxes.json: {id: {height, width, bbox: [{label, xmin,
    # ymin, xmax, ymax}]}}); `box_columns` name the four coordinate keys, `label_column` the
    # label key, `path_template` the image of an id; `height` / `width` keys are checked.
    # xml_polygons: polygons in XML of any schema, located by the `xml` block; one XML per image
    # (annotation_template) or one for all (file, with xml.image_path / image_attribute). The
    # polygons are contours: grounding rasterizes each into a mask ROI.
    format: Literal["coco", "yolo", "voc", "csv", "circles", "keyed_json", "xml_polygons"]
    # coco / keyed_json: the JSON file; csv / circles: the table file.
    file: Optional[str] = None
    # coco / csv / circles: folder the table's image names are relative to.
    image_root: str = "."
    # yolo / voc: template of the annotation file of an image: {stem}, {name}, {parent}
    # (e.g. "labels/{stem}.txt", "Annotations/{stem}.xml"); an image without one has no box.
    annotation_template: Optional[str] = None
    # yolo: class index -> name, in order; or a file with one name per line / data.yaml.
    class_names: list[str] = Field(default_factory=list)
    class_names_file: Optional[str] = None
    # csv / circles: table parsing.
    delimiter: str = ","  # " " splits on runs of whitespace (MIAS Info.txt)
    has_header: bool = True
    columns: list[str] = Field(default_factory=list)  # names for a header-less table
    # A free-text preamble before the table (MIAS Info.txt: licence, column legend, notes):
    # lines before the first line matching `preamble_until` are skipped (that line is the header
    # or the first row); when `row_regex` is given, only lines matching it are rows (after the
    # header, if any). Either way the table is read one line per row.
    preamble_until: Optional[str] = None
    row_regex: Optional[str] = None
    # A row naming a finding without coordinates (MIAS "mdb059 F CIRC B *NOTE 3*": widely
    # spread calcifications): "report" it and keep the image without that label, or keep its
    # label at "image_label" level (a finding with no ROI). A row has no coordinates when none
    # of its coordinate cells is a number.
    rows_without_coordinates: Literal["report", "image_label"] = "report"
    # Further columns: {column: {raw value: label}}; the mapped labels join the image's labels
    # ("" maps a value to nothing). {column: {raw value: value}} in `column_fields` are kept as
    # fields of the row's box annotations (MIAS severity B/M -> {"severity": "benign"}); a row
    # without coordinates has no box, so only its labels are kept. A value not in the mapping is
    # reported and the row's box is kept without it.
    column_labels: dict[str, dict[str, str]] = Field(default_factory=dict)
    column_fields: dict[str, dict[str, str]] = Field(default_factory=dict)
    id_column: Optional[str] = None  # image name / id column
    path_template: str = "{id}"  # image path from the id: "{id}.png", "stage_2_train_images/{id}.dcm"
    label_column: Optional[str] = None
    fixed_label: Optional[str] = None
    # csv: the four box columns, in the order `box_format` reads them.
    box_columns: list[str] = Field(default_factory=list)
    box_format: Literal["xyxy", "xywh", "cxcywh"] = "xyxy"
    normalized: bool = False  # coordinates in 0..1 of the image size
    # circles: centre and radius columns, in pixels; the origin of y (MIAS: bottom left).
    center_columns: list[str] = Field(default_factory=list)
    radius_column: Optional[str] = None
    y_origin: Literal["top", "bottom"] = "top"
    # Rows whose label is in `empty_labels` mark an image without finding (RSNA "Target 0",
    # VinDr "No finding"): the image is kept, no box is made.
    empty_labels: list[str] = Field(default_factory=list)
    # False for boxes that outline anatomy (covid-chestxray's lung boxes): they become ROIs of
    # the image but not findings in its labels.
    boxes_are_findings: bool = True
    # The raw labels the file may use; when given, a box with another label (and not in the
    # spec's labels.rename) is reported and dropped instead of becoming an unexpected finding.
    known_labels: list[str] = Field(default_factory=list)
    # keyed_json: the key of each image's box list.
    boxes_key: str = "bbox"
    # "roi": the boxes become ROIs. "reference": boxes a publisher gives beside masks (Kvasir-SEG):
    # grounding matches them to the mask components and records the agreement; they are
    # never ROIs or findings of their own. Only for the extra_boxes overlay.
    role: Literal["roi", "reference"] = "roi"
    # xml_polygons: where the shapes, points and labels are.
    xml: Optional[XmlShapes] = None

    @property
    def listed(self) -> bool:
        """Whether the annotation file lists the images (else each image has its own file)."""
        return self.format in ("coco", "csv", "circles", "keyed_json") or (self.format == "xml_polygons" and bool(self.file))

    @model_validator(mode="after")
    def _needs(self) -> "BoxAnnotations":
        fmt = self.format
        if fmt in ("coco", "csv", "circles", "keyed_json") and not self.file:
            raise ValueError(f"box format '{fmt}' needs 'file'")
        if fmt in ("yolo", "voc") and not self.annotation_template:
            raise ValueError(f"box format '{fmt}' needs 'annotation_template'")
        if fmt == "yolo" and not (self.class_names or self.class_names_file):
            raise ValueError("box format 'yolo' needs 'class_names' or 'class_names_file'")
        if fmt in ("csv", "circles") and not self.id_column:
            raise ValueError(f"box format '{fmt}' needs 'id_column'")
        if fmt in ("csv", "circles") and not self.has_header and not self.columns:
            raise ValueError(f"box format '{fmt}' with has_header false needs 'columns'")
        if fmt in ("csv", "circles") and not (self.label_column or self.fixed_label):
            raise ValueError(f"box format '{fmt}' needs 'label_column' or 'fixed_label'")
        if fmt in ("csv", "keyed_json") and len(self.box_columns) != 4:
            raise ValueError(f"box format '{fmt}' needs four 'box_columns'")
        if fmt == "keyed_json" and not (self.label_column or self.fixed_label):
            raise ValueError("box format 'keyed_json' needs 'label_column' or 'fixed_label'")
        if fmt == "circles" and (len(self.center_columns) != 2 or not self.radius_column):
            raise ValueError("box format 'circles' needs two 'center_columns' and 'radius_column'")
        if fmt == "xml_polygons":
            if self.xml is None:
                raise ValueError("box format 'xml_polygons' needs the 'xml' block (shape_path, point_path...)")
            if bool(self.file) == bool(self.annotation_template):
                raise ValueError("box format 'xml_polygons' needs either 'file' (one XML) or 'annotation_template' (one per image)")
            if self.file and not (self.xml.image_path and self.xml.image_attribute):
                raise ValueError("xml_polygons with one 'file' needs xml.image_path and xml.image_attribute")
            if not (self.xml.label_attribute or self.fixed_label):
                raise ValueError("box format 'xml_polygons' needs xml.label_attribute or 'fixed_label'")
        elif self.xml is not None:
            raise ValueError("the 'xml' block is for box format 'xml_polygons'")
        table_options = {
            "preamble_until": self.preamble_until, "row_regex": self.row_regex, "column_labels": self.column_labels,
            "column_fields": self.column_fields, "rows_without_coordinates": self.rows_without_coordinates != "report",
        }
        used = sorted(name for name, value in table_options.items() if value)
        if used and fmt not in ("csv", "circles"):
            raise ValueError(f"{', '.join(used)}: only for the table formats csv and circles, not '{fmt}'")
        for name in ("preamble_until", "row_regex"):
            try:
                re.compile(getattr(self, name) or "")
            except re.error as error:
                raise ValueError(f"{name} is not a valid regex: {error}") from None
        return self


class CocoLayout(Strict):
    """Images with boxes (and optional polygons) in a COCO JSON file."""

    family: Literal["coco"]
    annotations: str
    image_root: str = "."
    # Keep images of the JSON that have no annotation (as whole-image records).
    keep_unannotated: bool = True
    # As BoxAnnotations.known_labels: category names outside it (and labels.rename) are reported.
    known_labels: list[str] = Field(default_factory=list)


class BoxesLayout(Strict):
    """Images listed by a glob (yolo, voc) or by the box table (csv, circles), with boxes."""

    family: Literal["boxes"]
    boxes: BoxAnnotations
    # yolo / voc: the images; csv / circles: optional, to also keep images with no row.
    image_glob: Optional[str] = None

    @model_validator(mode="after")
    def _needs_images(self) -> "BoxesLayout":
        if not self.boxes.listed and not self.image_glob:
            raise ValueError(f"layout.image_glob is needed for box format '{self.boxes.format}' with one file per image")
        if self.boxes.format == "coco":
            raise ValueError("COCO files use layout family 'coco'")
        if self.boxes.role != "roi":
            raise ValueError("boxes.role 'reference' is for extra_boxes beside masks; a boxes layout's boxes are its ROIs")
        return self
