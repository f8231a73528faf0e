-- Per imaging modality, across sources.
SELECT
    modality,
    count(DISTINCT source_id) AS sources,
    count(*) AS triplets,
    count(DISTINCT patient_hash) AS patients,
    avg(CAST(verified AS DOUBLE)) AS verified_fraction,
    avg(roi_count) AS mean_rois_per_image
FROM {{ ref('stg_triplets') }}
GROUP BY modality
ORDER BY modality
