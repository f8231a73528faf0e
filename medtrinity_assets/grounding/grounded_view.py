"""The ROIs every stage after grounding describes: one SQL relation over the rois and model_rois tables.

Annotation ROIs always win. A record with none has a whole_image row in ``rois``; where an
expert model marked regions on it (``model_rois.applied``) those replace the whole_image row.
Kept free of the imaging code so the dataset layer and the stages can build the query cheaply.
"""

from __future__ import annotations

from medtrinity_assets.duckdb_sql import read_parquet
from medtrinity_assets.paths import DataRoot

# The columns of a model ROI that only the model_rois table has (the drift check's inputs).
_MODEL_ONLY_COLUMNS = ("annotated", "applied", "iou_vs_annotation", "target_labels", "iou_floor")


def grounded_rois_sql(data_root: DataRoot, source_id: str) -> str:
    """The ROIs downstream stages describe: the annotation ROIs, and for a record without any,
    the expert models' ROIs in place of its whole_image entry.

    Rows have the ROIS columns plus expert_id, weights_sha256 and model_provenance (null for
    annotation rows). A data root without a model_rois table for the source (written before
    experts existed) gives the rois table alone."""
    rois = read_parquet(data_root.table("rois", source_id))
    model_path = data_root.table("model_rois", source_id)
    if not model_path.exists():
        return f"""SELECT *, NULL::VARCHAR AS expert_id, NULL::VARCHAR AS weights_sha256,
                          NULL::VARCHAR AS model_provenance FROM {rois}"""
    model = read_parquet(model_path)
    # "applied" was decided when model_rois ran; a record annotated since (rois rematerialized
    # first) keeps its annotation alone.
    applied = f"""SELECT * FROM {model} WHERE applied
                  AND record_id NOT IN (SELECT record_id FROM {rois} WHERE origin <> 'whole_image')"""
    return f"""
        SELECT * FROM {rois}
        WHERE NOT (origin = 'whole_image' AND record_id IN (SELECT record_id FROM ({applied})))
        UNION ALL BY NAME
        SELECT * EXCLUDE ({", ".join(_MODEL_ONLY_COLUMNS)}) FROM ({applied})
    """
