"""Facts: everything a description writer may say, with where it came from.

DESIGN.md "facts first, words second": writers render facts and never compute them; the
verifier reads a written description back into claims and checks each one against the facts of
the ROI (or the record) it speaks of. A fact is one (attribute, value) about a record
(``roi_id`` None) or about one ROI, with its provenance and a confidence:

- ``annotation``: the publisher's mask, box, contour or label;
- ``geometry``: DICOM orientation/position, the NIfTI affine, pixel spacing;
- ``metadata``: the source spec or a per-image column (modality, organs, view, sex, age band);
- ``publisher_text``: a caption, report or clinical note after free-text de-identification;
- ``measurement``: computed from the pixels by a stated rule (size class, shape, margin, ...);
- ``knowledge``: a retrieved knowledge entry (only ever background, never about this image);
- ``model``: an expert model's output (grounding/model_rois.py): the label and origin of a
  region a model marked, with its score as confidence; never a finding or a label state.

``ATTRIBUTES`` is the closed list of attribute names and, where the attribute is a word, the
words it may take. A value outside it is a programming error, caught when the fact is made.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Iterable, Iterator

PROVENANCES = ("annotation", "geometry", "metadata", "publisher_text", "measurement", "knowledge", "model")

# attribute -> allowed words (None: free value, e.g. a label, a number, a sentence).
ATTRIBUTES: dict[str, tuple[str, ...] | None] = {
    # --- about the record (roi_id None) ---
    "modality": None,  # catalog modality code: ct, mri, xray, ...
    "organ": None,  # one fact per organ (normalized organ word)
    "label_state": ("finding", "normal", "unknown"),
    "finding": None,  # one fact per finding the source names (normalized label)
    "grade": None,  # severity / grade: value "<column>=<value>"
    "view": None,  # PA, AP, lateral, CC, MLO, ...
    "sex": ("female", "male", "other"),
    "age_band": None,  # "40-49", "90+"
    "laterality": ("left", "right", "bilateral"),  # side of the imaged part (left breast, right eye)
    "image_kind": ("single", "slice", "frame"),  # a 2D image, a slice of a volume, a frame of a cine
    "slice_position": None,  # "<index 1-based>/<count>", with image_kind slice or frame
    "plane": ("axial", "coronal", "sagittal"),
    "sequence": None,
    "slice_context": ("outside_annotated_region",),  # a context slice of an annotated volume
    "image_width_px": None,  # exported (normalized) frame
    "image_height_px": None,
    "pixel_spacing_mm": None,  # exported frame, number = mm per pixel (row spacing), value "r x c"
    "annotated_roi_count": None,  # number of annotated ROIs in the image
    "publisher_text": None,  # one de-identified sentence of the publisher's text
    "burned_in_text": ("present",),
    "knowledge": None,  # value = knowledge entry id; text in ``detail``
    # --- about one ROI ---
    "label": None,
    "origin": None,  # annotation:mask | annotation:box | annotation:contour | model:<name>
    "image_horizontal": ("left", "center", "right"),  # image-frame words, always allowed
    "image_vertical": ("upper", "middle", "lower"),
    "patient_side": ("left", "right", "midline"),  # only from geometry or declared laterality
    "size_class": ("small", "medium", "large"),
    "area_fraction": None,  # number, of the exported frame
    "width_px": None,  # box width in the exported frame
    "height_px": None,
    "area_mm2": None,
    "max_diameter_mm": None,
    "count_same_label": None,  # number of annotated ROIs with this ROI's label
    "rank_by_area": None,  # 1 = largest
    "shape": ("round", "oval", "elongated", "irregular"),
    "margin": ("well-defined", "ill-defined"),
    "intensity": ("higher", "lower", "similar"),  # against surrounding tissue; word in ``detail``
    "texture": ("homogeneous", "heterogeneous"),
    "colour": None,  # colour name
    "relation": None,  # value "<relation>", detail = other ROI id
}


@dataclass(frozen=True)
class Fact:
    record_id: str
    roi_id: str | None
    attribute: str
    value: str
    provenance: str
    confidence: float = 1.0
    number: float | None = None
    unit: str | None = None
    # Free detail: the modality's own word for an intensity ("hypoechoic"), the other ROI of a
    # relation, a knowledge passage's text, the column a label came from.
    detail: str | None = None

    def __post_init__(self):
        if self.attribute not in ATTRIBUTES:
            raise ValueError(f"unknown fact attribute {self.attribute!r}")
        allowed = ATTRIBUTES[self.attribute]
        if allowed is not None and self.value not in allowed:
            raise ValueError(f"fact {self.attribute}={self.value!r} is not one of {allowed}")
        if self.provenance not in PROVENANCES and not self.provenance.startswith("model:"):
            raise ValueError(f"unknown provenance {self.provenance!r}")

    def as_row(self, source_id: str) -> dict:
        return {"source_id": source_id, **asdict(self)}


class FactSet:
    """The facts of one record: lookups by ROI and attribute for writers and the verifier."""

    def __init__(self, facts: Iterable[Fact]):
        self.facts: list[Fact] = list(facts)
        # Writers and the verifier look ROI facts up dozens of times per record (hundreds of
        # ROIs on a nuclei tile): index them once; the first fact of an (ROI, attribute) wins.
        self._by_roi: dict[tuple[str, str], Fact] = {}
        for fact in self.facts:
            if fact.roi_id is not None:
                self._by_roi.setdefault((fact.roi_id, fact.attribute), fact)
        ranked = {f.roi_id: f.number for f in self.facts if f.roi_id and f.attribute == "rank_by_area"}
        ids = list(dict.fromkeys(f.roi_id for f in self.facts if f.roi_id))
        self._roi_ids = sorted(ids, key=lambda i: (ranked.get(i) or 1e9, i))

    def __iter__(self) -> Iterator[Fact]:
        return iter(self.facts)

    def __len__(self) -> int:
        return len(self.facts)

    def __eq__(self, other) -> bool:
        return isinstance(other, FactSet) and self.facts == other.facts

    def record(self, attribute: str) -> list[Fact]:
        return [f for f in self.facts if f.roi_id is None and f.attribute == attribute]

    def record_value(self, attribute: str) -> str | None:
        found = self.record(attribute)
        return found[0].value if found else None

    def record_values(self, attribute: str) -> list[str]:
        return list(dict.fromkeys(f.value for f in self.record(attribute)))

    def roi_ids(self) -> list[str]:
        """Annotated ROIs in the order the writer names them (largest first)."""
        return list(self._roi_ids)

    def roi(self, roi_id: str, attribute: str) -> Fact | None:
        return self._by_roi.get((roi_id, attribute))

    def roi_value(self, roi_id: str, attribute: str) -> str | None:
        found = self.roi(roi_id, attribute)
        return found.value if found else None

    def roi_facts(self, roi_id: str) -> list[Fact]:
        return [f for f in self.facts if f.roi_id == roi_id]

    def to_json(self) -> str:
        return json.dumps([asdict(f) for f in self.facts], sort_keys=True)

    @classmethod
    def from_json(cls, text: str | None) -> "FactSet":
        return cls(Fact(**item) for item in json.loads(text or "[]"))
