"""Stage 7a: assemble one source's image - ROI - description triplets.

The join runs inside DuckDB and is written with ``COPY ... TO`` so the rows stream from the
stage tables to the output file without passing through Python: memory stays bounded by
DuckDB's limit, not by the size of the partition. The file is written beside its final path and
renamed into place, so a killed run leaves the previous triplets intact.

Inner joins on ``record_id``: a record that a later stage quarantined (no normalized image, no
ROI, no caption or no description) does not become a triplet.
"""

from __future__ import annotations

from pathlib import Path

from medtrinity_assets import __version__ as PIPELINE_VERSION
from medtrinity_assets.splits import SPLIT_VERSION, split_sql
from medtrinity_assets.duckdb_sql import connect, literal, read_parquet
from medtrinity_assets.grounding.grounded_view import grounded_rois_sql
from medtrinity_assets.paths import DataRoot
from medtrinity_assets.storage import atomic_path

# Annotated ROIs describe what the source's experts drew, so they lead; model-made ROIs next;
# the whole-image fallback last. Larger regions first, roi_id breaks ties so reruns agree.
ROI_ORDER = (
    "CASE WHEN origin LIKE 'annotation:%' THEN 0 WHEN origin = 'whole_image' THEN 2 ELSE 1 END, "
    "area_px DESC NULLS LAST, roi_id"
)
INPUT_TABLES = ("raw_records", "normalized_images", "rois", "coarse_captions", "descriptions")


def burned_in_flag(policy: str) -> str:
    """The review flag an image with detected burned-in text gets under the spec's policy."""
    return "burned_in_text" if policy == "hold_back" else "burned_in_text_kept"


def triplets_query(
    inputs: dict[str, Path], source_id: str, license: str, burned_in_policy: str = "hold_back", rois_sql: str | None = None
) -> str:
    """The SELECT producing exactly ``schemas.TRIPLETS`` columns for one source. ``rois_sql`` is
    the ROI relation to use (stages.grounded_rois_sql: annotation ROIs, and the expert models'
    ROIs of unannotated records); by default the rois table alone."""
    read = {name: read_parquet(path) for name, path in inputs.items()}
    if rois_sql is not None:
        read["rois"] = f"({rois_sql})"
    else:
        read["rois"] = f"(SELECT *, NULL::VARCHAR AS expert_id, NULL::VARCHAR AS weights_sha256, NULL::VARCHAR AS model_provenance FROM {read['rois']})"
    source = literal(source_id)
    split = split_sql("coalesce(nullif(r.patient_hash, ''), r.record_id)")
    return f"""
WITH roi_lists AS (
    SELECT
        record_id,
        list(struct_pack(
            roi_id := roi_id, label := label, origin := origin,
            box := [x0, y0, x1, y1], mask_path := mask_path, confidence := confidence,
            expert_id := expert_id, weights_sha256 := weights_sha256
        ) ORDER BY {ROI_ORDER}) AS roi_list,
        -- The expert models (and their weights) behind the record's model ROIs, for provenance.
        list(DISTINCT struct_pack(expert_id := expert_id, weights_sha256 := weights_sha256, provenance := model_provenance)
                 ORDER BY struct_pack(expert_id := expert_id, weights_sha256 := weights_sha256, provenance := model_provenance))
            FILTER (WHERE expert_id IS NOT NULL) AS experts
    FROM {read['rois']}
    WHERE source_id = {source}
    GROUP BY record_id
)
SELECT
    r.record_id::VARCHAR AS record_id,
    r.source_id::VARCHAR AS source_id,
    n.image_path::VARCHAR AS image_path,
    n.image_sha256::VARCHAR AS image_sha256,
    n.phash::VARCHAR AS phash,
    n.height::BIGINT AS height,
    n.width::BIGINT AS width,
    r.modality::VARCHAR AS modality,
    r.organs::VARCHAR[] AS organs,
    r.labels::VARCHAR[] AS labels,
    to_json(l.roi_list)::VARCHAR AS rois,
    l.roi_list[1].roi_id::VARCHAR AS primary_roi_id,
    c.coarse_caption::VARCHAR AS coarse_caption,
    d.description::VARCHAR AS description,
    r.source_text::VARCHAR AS source_text,
    d.verified::BOOLEAN AS verified,
    d.verifier_flags::VARCHAR[] AS verifier_flags,
    list_concat(
        coalesce(r.flags, []),
        CASE WHEN coalesce(json_extract(n.burned_in, '$.present')::BOOLEAN, false)
             THEN [{literal(burned_in_flag(burned_in_policy))}] ELSE [] END
    )::VARCHAR[] AS flags,
    r.patient_hash::VARCHAR AS patient_hash,
    {split} AS split,
    {literal(license)} AS license,
    json_object(
        'source_file', r.source_file,
        'sequence', r.sequence,
        'slice_index', r.slice_index,
        'intensity_method', n.intensity_method,
        'caption_version', c.caption_version,
        'writer', d.writer,
        'model', d.model,
        'prompt_hash', d.prompt_hash,
        'prompt_version', d.prompt_version,
        'knowledge_ids', d.knowledge_ids,
        'experts', l.experts,
        'split_version', {literal(SPLIT_VERSION)},
        'pipeline_version', {literal(PIPELINE_VERSION)}
    )::VARCHAR AS provenance,
    d.label_state::VARCHAR AS label_state,
    d.facts::VARCHAR AS facts
FROM {read['raw_records']} AS r
JOIN {read['normalized_images']} AS n USING (record_id)
JOIN roi_lists AS l USING (record_id)
JOIN {read['coarse_captions']} AS c USING (record_id)
JOIN {read['descriptions']} AS d USING (record_id)
WHERE r.source_id = {source}
ORDER BY r.record_id
"""


def assemble_triplets(
    data_root: DataRoot,
    source_id: str,
    spec,
    out_path: Path,
    *,
    memory_limit: str = "1GB",
) -> dict:
    """Write the TRIPLETS table of one source to ``out_path``; return its row counts.

    Returns {"rows", "by_split": {split: n}, "records", "records_without_triplet"}.
    Raises FileNotFoundError naming the first missing input table.
    """
    # Tables are named by the partition (a shard of a large source); rows keep the source id.
    partition = getattr(spec, "partition", source_id)
    inputs = {name: data_root.table(name, partition) for name in INPUT_TABLES}
    for name, path in inputs.items():
        if not path.exists():
            raise FileNotFoundError(f"triplets for '{source_id}' need the {name} table, missing: {path}")
    out_path = Path(out_path)
    query = triplets_query(inputs, source_id, spec.license, spec.burned_in_text, grounded_rois_sql(data_root, partition))
    con = connect(memory_limit=memory_limit, threads=2)
    try:
        with atomic_path(out_path) as tmp:
            con.execute(f"COPY ({query}) TO {literal(tmp)} (FORMAT parquet, COMPRESSION zstd)")
        by_split = dict(
            con.execute(
                f"SELECT split, count(*) FROM {read_parquet(out_path)} GROUP BY split ORDER BY split"
            ).fetchall()
        )
        records = con.execute(
            f"SELECT count(*) FROM {read_parquet(inputs['raw_records'])} WHERE source_id = {literal(source_id)}"
        ).fetchall()[0][0]
    finally:
        con.close()
    rows = sum(by_split.values())
    return {"rows": rows, "by_split": by_split, "records": records, "records_without_triplet": records - rows}

