-- Per source: size, patients, split balance, how much is verified and annotated, how much
-- carries the publisher's own text, how many images carry review flags.
SELECT
    source_id,
    count(*) AS triplets,
    count(DISTINCT patient_hash) AS patients,
    count(*) FILTER (split = 'train') AS train,
    count(*) FILTER (split = 'val') AS val,
    count(*) FILTER (split = 'test') AS test,
    avg(CAST(verified AS DOUBLE)) AS verified_fraction,
    avg(roi_count) AS mean_rois_per_image,
    avg(CAST(primary_roi_origin LIKE 'annotation:%' AS DOUBLE)) AS annotated_fraction,
    string_agg(DISTINCT license, '; ') AS license,
    avg(CAST(has_source_text AS DOUBLE)) AS source_text_fraction,
    count(*) FILTER (len(flags) > 0) AS flagged
FROM {{ ref('stg_triplets') }}
GROUP BY source_id
ORDER BY source_id
