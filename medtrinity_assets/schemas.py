"""Column schemas of every stage's table: the contract between stages.

Each stage writes exactly these columns (Parquet, one file per source partition), so the next
stage, the DuckDB checks and the SQL models can rely on them. Nested values that vary in shape
(annotation lists, ROI relations, provenance) are JSON strings, which DuckDB reads with its JSON
functions and which keep the Parquet schema stable across sources.
"""

from __future__ import annotations

import pyarrow as pa

STR = pa.string()
INT = pa.int64()
FLOAT = pa.float64()
BOOL = pa.bool_()
STR_LIST = pa.list_(pa.string())
FLOAT_LIST = pa.list_(pa.float64())

# Stage 1 — ingest. One row per 2D image (a volume slice or a frame is one image). Holds no
# protected health information: the pixels are de-identified arrays in the blob store.
RAW_RECORDS = pa.schema(
    [
        ("record_id", STR),  # stable: hash of source id, relative path, sequence, slice
        ("source_id", STR),
        ("source_file", STR),  # path relative to the source root
        ("sequence", STR),  # e.g. "T1" for multi-sequence MRI, else null
        ("slice_index", INT),  # index along the slicing axis / frame number; -1 for 2D
        ("slice_count", INT),  # slices in the volume; 1 for 2D
        ("modality", STR),  # catalog modality code (spec, or per-file rule)
        ("dicom_modality", STR),  # DICOM Modality tag when the file is DICOM
        ("organs", STR_LIST),
        ("labels", STR_LIST),  # findings of this image (class folder, CSV, annotation labels)
        ("patient_hash", STR),  # salted sha256 of the patient id; never the id itself
        ("pixel_ref", STR),  # blob path of the de-identified pixel array (.npy)
        ("height", INT),
        ("width", INT),
        ("channels", INT),
        ("pixel_dtype", STR),
        ("pixel_units", STR),  # "HU", "SUV", "raw", "rgb"
        ("pixel_spacing_mm", FLOAT_LIST),  # [row, col] or null
        ("annotations", STR),  # JSON list: {"kind": "mask"|"box"|"contour", "label", ...}
        ("photometric", STR),
        # The publisher's own text for this image, de-identified (imaging/deid_text.py), JSON
        # {"captions": [...], "qa": [{"question", "answer"}]}, plus "notes" (clinical notes) and
        # "reports" where a label table declares such columns; null when it has none. Kept
        # beside the generated description, never replaced by it.
        ("source_text", STR),
        # Review flags, e.g. "burned_in_annotation" (DICOM says text is burned into pixels).
        ("flags", STR_LIST),
        # finding | normal | unknown (sources.label_state): normal only where the source says so;
        # a missing label is unknown, never normal. Read it with label_state_of(record).
        ("label_state", STR),
        # Severity / grade values the source gives, "<column>=<value>" (e.g. "diagnosis=2").
        ("grades", STR_LIST),
        # Slice of an annotated volume: "annotated" (cuts the annotated region) or "context"
        # (kept beside it: label_state unknown, no finding label); null for 2D images and for
        # slices of volumes without annotation.
        ("slice_role", STR),
        # Per-image metadata, normalized at ingest (sources/publisher_text.py); null when the
        # source does not say. view: PA | AP | AP supine | lateral | frontal | oblique | CC | MLO |
        # axial | coronal | sagittal. sex: female | male. age_band: decade "40-49", or "90+"; the
        # exact age never leaves ingest.
        ("view", STR),
        ("sex", STR),
        ("age_band", STR),
        # Geometry (imaging.geometry): JSON with the patient direction (DICOM LPS letters
        # L/R, A/P, H/F) of increasing column and row of the stored pixel array, the LPS
        # position (mm) of pixel (0, 0), the row/column direction cosines and spacing where
        # known, and "source": dicom_orientation | dicom_patient_orientation | nifti_affine |
        # declared_view. Null when nothing is known (photos, most 2D files).
        ("image_axes", STR),
        ("laterality", STR),  # left | right | bilateral | null: side of the imaged paired part
        ("frame_kind", STR),  # slice (of a spatial volume) | frame (of a cine loop) | null (2D)
    ]
)

# Every stage may quarantine inputs it cannot use; the rest of the partition goes on.
QUARANTINE = pa.schema(
    [
        ("source_id", STR),
        ("source_file", STR),
        ("record_id", STR),  # null when the failure came before a record existed
        ("stage", STR),
        ("kind", STR),  # sources.base.QUARANTINE_KINDS
        ("reason", STR),
    ]
)

# Stage 2 — normalize. Content-addressed PNG, bounded size.
NORMALIZED_IMAGES = pa.schema(
    [
        ("record_id", STR),
        ("source_id", STR),
        ("image_sha256", STR),
        ("image_path", STR),  # relative to the data root
        ("height", INT),
        ("width", INT),
        ("channels", INT),
        ("scale", FLOAT),  # normalized size / original size
        ("intensity_method", STR),  # e.g. "ct_window:brain(L40,W80)", "percentile:0.5-99.5"
        ("phash", STR),  # 64-bit DCT perceptual hash, hex
        # Burned-in text and overlay markers found in the display image (imaging/burned_in.py),
        # JSON {"present": bool, "score": float, "boxes": [[x0, y0, x1, y1], ...] in this image's
        # pixels, "kinds": ["text" | "marker" | "overlay", ...] one per box}.
        ("burned_in", STR),
    ]
)

# Stage 3 — ground. One row per ROI, in normalized image coordinates (x1, y1 exclusive).
ROIS = pa.schema(
    [
        ("roi_id", STR),
        ("record_id", STR),
        ("source_id", STR),
        ("label", STR),
        ("origin", STR),  # annotation:mask | annotation:box | annotation:contour | whole_image
        ("confidence", FLOAT),
        ("image_height", INT),
        ("image_width", INT),
        ("x0", INT),
        ("y0", INT),
        ("x1", INT),
        ("y1", INT),
        ("width_px", INT),  # box width in the exported (normalized) frame
        ("height_px", INT),  # box height in the exported frame
        ("mask_path", STR),  # blob path of the ROI mask PNG (null for whole_image)
        ("contour", STR),  # JSON [[x, y], ...], simplified outline
        ("area_px", INT),
        ("area_fraction", FLOAT),
        ("area_mm2", FLOAT),
        ("max_diameter_mm", FLOAT),  # longest distance across (Feret), when pixel spacing is known
        ("centroid_x", FLOAT),  # fraction of width
        ("centroid_y", FLOAT),  # fraction of height
        ("horizontal", STR),  # image side: left | center | right
        ("vertical", STR),  # upper | middle | lower
        ("patient_side", STR),  # right | left | midline | null: from geometry only (grounding.patient_side)
        ("size_class", STR),  # small | medium | large
        ("shape", STR),  # round | oval | elongated | irregular
        ("circularity", FLOAT),
        ("solidity", FLOAT),
        ("eccentricity", FLOAT),
        ("convexity", FLOAT),  # convex-hull perimeter / perimeter (1 = smooth convex outline)
        ("shape_confidence", FLOAT),  # 0.5-1: how far the shape measures are from their thresholds
        ("intensity_contrast", FLOAT),  # (mean inside - mean ring) / dynamic range
        ("intensity_word", STR),  # e.g. hyperdense, hypoechoic, darker, brighter
        ("ring_excluded_fraction", FLOAT),  # share of the comparison ring left out as background/air
        ("texture", STR),  # homogeneous | heterogeneous
        ("texture_ratio", FLOAT),  # std inside / std ring
        ("margin", STR),  # well-defined | ill-defined
        ("margin_sharpness", FLOAT),  # boundary gradient / ring gradient (a measurement)
        ("edge_contrast", FLOAT),  # |outer band - inner band| / pooled std across the outline
        ("margin_confidence", FLOAT),  # 0.5-1, calibrated on BUSI (grounding/attributes.py)
        ("colour", STR),  # colour name for RGB images, else null
        ("count_same_label", INT),  # ROIs with this label in the image
        ("rank_by_area", INT),  # 1 = largest annotated ROI of the image; null for whole_image
        ("specks_dropped", INT),  # mask components under the minimum area dropped from this ROI's annotation
        ("box_agreement", FLOAT),  # IoU with the matched publisher box; null when none
        ("relations", STR),  # JSON [{"roi_id", "label", "relation", "distance"}]
        ("patient_side_source", STR),  # geometry | declared_view | null (no patient side)
    ]
)

# Stage 3a — expert models' ROIs (grounding/model_rois.py): the ROIS columns, so downstream
# reads one shape, plus where the ROI came from and how it compares with the annotation. Model
# ROIs are computed on every record of a partition an expert applies to; ``applied`` ones (the
# record has no annotation ROI) replace the record's whole_image entry downstream
# (stages.grounded_rois_sql); on annotated records they only feed the drift check.
MODEL_ROIS = pa.schema(
    list(ROIS)
    + [
        pa.field("expert_id", STR),
        pa.field("weights_sha256", STR),  # the weight file the ROI came from
        pa.field("model_provenance", STR),  # trained (here, from annotated partitions) | brought
        pa.field("annotated", BOOL),  # the record has annotation ROIs
        pa.field("applied", BOOL),  # used as the record's ROI downstream (= not annotated)
        # Best IoU of this ROI's mask against the record's annotation of the expert's labels (each
        # annotated region or their union); null on an unannotated record.
        pa.field("iou_vs_annotation", FLOAT),
        # The annotation labels the IoU is taken against (normalized; empty: every label).
        pa.field("target_labels", STR_LIST),
        pa.field("iou_floor", FLOAT),  # the expert spec's min_iou_on_annotated (the drift check's floor)
    ]
)

# Stage 3b — facts: everything a writer may say about a record or one of its ROIs, with its
# provenance (generation/facts.py). One row per fact; ``roi_id`` null for record-level facts.
FACTS = pa.schema(
    [
        ("source_id", STR),
        ("record_id", STR),
        ("roi_id", STR),
        ("attribute", STR),
        ("value", STR),
        ("provenance", STR),  # annotation | geometry | metadata | publisher_text | measurement | knowledge | model
        ("confidence", FLOAT),
        ("number", FLOAT),
        ("unit", STR),
        ("detail", STR),
    ]
)

# Stage 4 — coarse caption (MedTrinity's metadata integration).
COARSE_CAPTIONS = pa.schema(
    [
        ("record_id", STR),
        ("source_id", STR),
        ("coarse_caption", STR),
        ("caption_version", STR),
    ]
)

# Stage 5 — knowledge chunks (unpartitioned) and per-record retrieval.
KNOWLEDGE_CHUNKS = pa.schema(
    [
        ("chunk_id", STR),
        ("entry_id", STR),
        ("finding", STR),
        ("kind", STR),  # finding | normal | anatomy
        ("section", STR),  # definition | appearance | typical_location | differential
        ("modalities", STR_LIST),
        ("organs", STR_LIST),
        ("text", STR),
        ("origin", STR),  # file the entry came from
    ]
)

RETRIEVED_KNOWLEDGE = pa.schema(
    [
        ("record_id", STR),
        ("source_id", STR),
        ("query", STR),
        ("knowledge_ids", STR_LIST),
        ("knowledge_texts", STR_LIST),
        ("distances", FLOAT_LIST),
        # JSON list, one object per retrieved entry in rank order: entry_id, kind, finding,
        # definition, appearance (on this record's modality, or null), typical_location,
        # appearance_conflict (why the appearance was left out, or null). Writers phrase these
        # in their own words; the entry ids go to provenance.
        ("knowledge_sections", STR),
    ]
)

# Stage 6 — multigranular description, MedTrinity's five parts, verified.
DESCRIPTION_PARTS = ("modality", "organ_tissue", "roi_analysis", "texture_colour", "relations")
DESCRIPTIONS = pa.schema(
    [
        ("record_id", STR),
        ("source_id", STR),
        ("description", STR),
        ("part_modality", STR),
        ("part_organ_tissue", STR),
        ("part_roi_analysis", STR),
        ("part_texture_colour", STR),
        ("part_relations", STR),
        ("writer", STR),
        ("prompt_version", STR),
        ("knowledge_ids", STR_LIST),
        ("verified", BOOL),  # True when the verifier found no contradiction
        ("verifier_flags", STR_LIST),  # one entry per contradiction found
        ("label_state", STR),  # finding | normal | unknown (the source's, never guessed)
        ("facts", STR),  # JSON list of the facts the description was written from (knowledge included)
        # How the text was made (generation/writers.py Written): null model and prompt hash and
        # zero counts for the grounded writer; fallback_reason set when a model writer's row
        # was written by the grounded writer instead.
        ("model", STR),
        ("prompt_hash", STR),
        ("attempts", INT),
        ("prompt_tokens", INT),
        ("completion_tokens", INT),
        ("cost_usd", FLOAT),
        ("fallback_reason", STR),
        ("sentences_written", INT),
        ("sentences_dropped", INT),
    ]
)

# Stage 7 — assembled triplets (per source) and the final dataset (all sources).
TRIPLETS = pa.schema(
    [
        ("record_id", STR),
        ("source_id", STR),
        ("image_path", STR),
        ("image_sha256", STR),
        ("phash", STR),
        ("height", INT),
        ("width", INT),
        ("modality", STR),
        ("organs", STR_LIST),
        ("labels", STR_LIST),
        # JSON list of {roi_id, label, origin, box, mask_path, confidence, expert_id, weights_sha256}
        # (the last two name the model and weights behind a model ROI; null for annotation ROIs)
        ("rois", STR),
        ("primary_roi_id", STR),
        ("coarse_caption", STR),
        ("description", STR),
        # The publisher's caption / question-answer JSON from RAW_RECORDS, next to the
        # pipeline's own description (never merged into it); null when the source has none.
        ("source_text", STR),
        ("verified", BOOL),
        ("verifier_flags", STR_LIST),
        # RAW_RECORDS review flags; rows with a flag in dataset.exports.HELD_BACK_FLAGS stay in
        # the dataset table but out of the training exports.
        ("flags", STR_LIST),
        ("patient_hash", STR),
        ("split", STR),  # train | val | test, by patient
        ("license", STR),
        ("provenance", STR),  # JSON: source file, slice, stage versions, knowledge ids, experts (model ROIs' expert and weights)
        ("label_state", STR),  # finding | normal | unknown
        ("facts", STR),  # JSON list of facts (attribute, value, provenance, confidence, ...)
    ]
)

DATASET = pa.schema(
    list(TRIPLETS)
    + [
        pa.field("duplicate_of", STR),  # the kept row, when the pixels confirmed the hash match
        # Rows showing the same pixels under other labels: this row is held out of training.
        pa.field("duplicate_conflicts", STR_LIST),
    ]
)

# Every hash match the dedup pass looked at (dataset/dedup.py), with what the pixels said:
# one row per candidate pair, the later row first and the kept row it was compared with.
DUPLICATE_PAIRS = pa.schema(
    [
        ("record_id", STR),
        ("source_id", STR),
        ("patient_hash", STR),
        ("labels", STR_LIST),
        ("label_state", STR),
        ("kept_record_id", STR),
        ("kept_source_id", STR),
        ("kept_patient_hash", STR),
        ("kept_labels", STR_LIST),
        ("kept_label_state", STR),
        ("match", STR),  # exact (same sha256) | near (phash within the Hamming limit)
        ("phash_distance", INT),
        ("correlation", FLOAT),  # Pearson, after alignment; null when not compared
        ("ssim", FLOAT),
        ("verdict", STR),  # confirmed | conflict | rejected
        ("reason", STR),
        ("cross_patient", BOOL),  # both patient hashes known and different
        ("cross_source", BOOL),
    ]
)
