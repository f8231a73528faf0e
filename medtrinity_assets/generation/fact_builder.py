"""Build one record's facts from the stage tables (raw record, normalized image, ROIs).

This is the only place that turns columns into statements a writer may make, so every rule
about what may be said lives here:

- patient-side words only when grounding recorded where the side came from
  (``patient_side_source``: DICOM/NIfTI geometry or a declared view); an ROI without it gets
  image-frame words only;
- the label state is the source's: finding, normal (the source positively says so) or
  unknown; unknown is never turned into normal;
- sizes are given in the exported (normalized) frame, and in millimetres only where the pixel
  spacing is known;
- margin and shape carry the confidence grounding measured, so a writer can hedge or omit them;
- a whole-image ROI (nothing annotated) contributes no region facts at all;
- an expert model's ROI (origin ``model:<expert_id>``, used only where nothing is annotated)
  gives region facts whose label and origin have provenance ``model`` and the model's score as
  confidence; it never changes the label state (unknown stays unknown) nor adds a finding.

Columns added by later grounding/ingest work are read with ``.get`` so tables written before
them still build (without the facts those columns would give).
"""

from __future__ import annotations

import json

from medtrinity_assets.generation.facts import Fact, FactSet
from medtrinity_assets.generation.publisher_findings import publisher_text_facts
from medtrinity_assets.imaging.burned_in import BurnedIn
from medtrinity_assets.imaging.geometry import anatomical_plane, decode_axes
from medtrinity_assets.sources.label_state import label_state_of
from medtrinity_assets.vocabulary import (
    INTENSITY_DIRECTION,
    MODEL_ORIGIN_PREFIX,
    is_model_origin,
    as_list,
    normalize_label,
    parse_relations,
    plane_for,
    record_organs,
    rois_by_area,
)


def _number(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number == number else None  # NaN is "not measured"


def _record_facts(record: dict, annotated: list[dict], spec, add) -> None:
    """Facts of the record itself; ``annotated`` are its annotated ROIs."""
    modality = record.get("modality") or spec.modality
    add("modality", modality, "metadata")
    for organ in record_organs(record, spec):
        add("organ", organ, "metadata")

    state = label_state_of(record)
    add("label_state", state, "annotation" if annotated else "metadata")
    # Only the record's labels are findings: an ROI's label may name anatomy (lung boxes, a
    # grey-matter map), which ingest keeps out of ``labels``.
    findings = [normalize_label(l) for l in as_list(record.get("labels"))]
    if state == "finding":
        annotated_labels = {normalize_label(r.get("label") or "") for r in annotated}
        for finding in dict.fromkeys(f for f in findings if f):
            add("finding", finding, "annotation" if finding in annotated_labels else "metadata")
    for grade in as_list(record.get("grades")):
        add("grade", str(grade), "metadata")
    if record.get("slice_role") == "context":
        add("slice_context", "outside_annotated_region", "annotation")

    if record.get("sequence"):
        add("sequence", str(record["sequence"]), "metadata")
    laterality = str(record.get("laterality") or "").lower()
    if laterality in ("left", "right", "bilateral"):
        add("laterality", laterality, "metadata")

    count = int(record.get("slice_count") or 1)
    index = record.get("slice_index")
    kind = record.get("frame_kind") or ("slice" if count > 1 else None)
    if kind in ("slice", "frame") and index is not None and index >= 0:
        add("image_kind", kind, "metadata")
        add("slice_position", f"{int(index) + 1}/{count}", "metadata", number=float(int(index) + 1))
        # The layout's slicing axis (NIfTI), else the plane the DICOM orientation gives.
        plane = (plane_for(spec, record) or anatomical_plane(decode_axes(record.get("image_axes")))) if kind == "slice" else None
        if plane:
            add("plane", plane, "geometry")
    else:
        add("image_kind", "single", "metadata")

    width, height = record.get("image_width"), record.get("image_height")
    if width and height:
        add("image_width_px", str(int(width)), "measurement", number=float(width), unit="px")
        add("image_height_px", str(int(height)), "measurement", number=float(height), unit="px")
    spacing = [_number(s) for s in as_list(record.get("pixel_spacing_mm"))]
    scale = _number(record.get("scale"))
    if len(spacing) == 2 and all(spacing) and scale:
        row_mm, col_mm = spacing[0] / scale, spacing[1] / scale
        add("pixel_spacing_mm", f"{row_mm:.3g} x {col_mm:.3g}", "geometry", number=row_mm, unit="mm")
    add("annotated_roi_count", str(len(annotated)), "annotation", number=float(len(annotated)))

    # DICOM's BurnedInAnnotation (metadata) or the pixel detector of normalize (measurement).
    detected = BurnedIn.from_json(record["burned_in"]).present if record.get("burned_in") else False
    if detected:
        add("burned_in_text", "present", "measurement")
    elif "burned_in_annotation" in set(as_list(record.get("flags"))):
        add("burned_in_text", "present", "metadata")


def _roi_facts(roi: dict, rank: int, add) -> None:
    rid = roi["roi_id"]

    def put(attribute, value, provenance, **kw):
        if value is not None and value != "":
            add(attribute, value, provenance, roi_id=rid, **kw)

    origin = str(roi.get("origin") or "")
    from_annotation = origin.startswith("annotation")
    # An expert model's ROI: its label and origin are the model's, with its score as the
    # confidence; the expert and its weights ride in the origin's detail (for the writer and
    # the provenance). Measurements of the marked region stay measurements of that region.
    from_model = is_model_origin(origin)
    score = _number(roi.get("confidence"))
    source = "annotation" if from_annotation else "model"
    label_confidence = (score if score is not None else 0.0) if from_model else 1.0
    detail = None
    if from_model:
        detail = json.dumps({"expert_id": roi.get("expert_id") or origin[len(MODEL_ORIGIN_PREFIX):],
                             "weights_sha256": roi.get("weights_sha256"), "provenance": roi.get("model_provenance")},
                            sort_keys=True)
    put("label", normalize_label(roi["label"]) if roi.get("label") else None, source, confidence=label_confidence)
    put("origin", origin, source, confidence=(score if from_model and score is not None else score or 1.0), detail=detail)
    put("rank_by_area", str(rank), "measurement", number=float(rank))
    put("image_horizontal", roi.get("horizontal"), "measurement")
    put("image_vertical", roi.get("vertical"), "measurement")
    side_source = roi.get("patient_side_source")
    if roi.get("patient_side") and side_source:
        put("patient_side", roi["patient_side"], "geometry" if side_source == "geometry" else "metadata", detail=side_source)
    put("size_class", roi.get("size_class"), "measurement")
    fraction = _number(roi.get("area_fraction"))
    if fraction is not None:
        put("area_fraction", f"{fraction:.4f}", "measurement", number=fraction)
    width = _number(roi.get("width_px"))
    height = _number(roi.get("height_px"))
    if width is None and roi.get("x1") is not None and roi.get("x0") is not None:
        width, height = float(roi["x1"] - roi["x0"]), float(roi["y1"] - roi["y0"])
    if width is not None and height is not None:
        put("width_px", str(int(width)), "measurement", number=width, unit="px")
        put("height_px", str(int(height)), "measurement", number=height, unit="px")
    for column, attribute in (("area_mm2", "area_mm2"), ("max_diameter_mm", "max_diameter_mm")):
        value = _number(roi.get(column))
        if value is not None:
            put(attribute, f"{value:.1f}", "geometry", number=value, unit="mm2" if column == "area_mm2" else "mm")
    count = roi.get("count_same_label")
    if count:
        put("count_same_label", str(int(count)), source, number=float(count))
    if from_annotation or roi.get("shape"):
        # A model's outline is only as sure as the model: its score caps the shape and margin
        # confidence, so the writer hedges or leaves them out for a doubtful region.
        cap = min(1.0, score) if from_model and score is not None else 1.0
        shape_confidence = _number(roi.get("shape_confidence"))
        put("shape", roi.get("shape"), "measurement", confidence=cap * (1.0 if shape_confidence is None else shape_confidence))
        margin_confidence = _number(roi.get("margin_confidence"))
        put("margin", roi.get("margin"), "measurement", confidence=cap * (1.0 if margin_confidence is None else margin_confidence))
    word = roi.get("intensity_word")
    if word in INTENSITY_DIRECTION:
        put("intensity", INTENSITY_DIRECTION[word], "measurement", number=_number(roi.get("intensity_contrast")), detail=word)
    put("texture", roi.get("texture"), "measurement")
    put("colour", roi.get("colour"), "measurement")
    for relation in parse_relations(roi.get("relations")):
        if relation.get("relation") and relation.get("roi_id"):
            put("relation", str(relation["relation"]), "measurement", number=_number(relation.get("distance")), detail=str(relation["roi_id"]))


def build_facts(record: dict, rois: list[dict], spec) -> FactSet:
    """Facts of one record. ``record`` is a RAW_RECORDS row joined with its normalized image
    (``image_width``, ``image_height``, ``scale``); ``rois`` its ROIS rows."""
    rois = list(rois or [])
    record_id = record["record_id"]
    facts: list[Fact] = []

    def add(attribute, value, provenance, *, roi_id=None, confidence=1.0, number=None, unit=None, detail=None):
        facts.append(Fact(record_id, roi_id, attribute, str(value), provenance, float(confidence), number, unit, detail))

    ranked = rois_by_area(rois)
    # A model's ROIs are regions to describe, never annotation: the label state, the finding
    # provenance and the annotated count come from the annotation ROIs alone.
    _record_facts(record, [r for r in ranked if not is_model_origin(r.get("origin"))], spec, add)
    # The publisher's finding statements (de-identified at ingest), view, sex and age band.
    facts.extend(publisher_text_facts(record))
    for rank, roi in enumerate(ranked, start=1):
        _roi_facts(roi, rank, add)
    return FactSet(facts)
