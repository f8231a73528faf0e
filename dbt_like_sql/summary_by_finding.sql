-- Per finding label (an image with several labels counts once under each; none -> 'no finding').
WITH findings AS (
    SELECT
        t.*,
        unnest(CASE WHEN len(labels) = 0 THEN ['no finding'] ELSE labels END) AS finding
    FROM {{ ref('stg_triplets') }} AS t
)
SELECT
    finding,
    count(*) AS images,
    count(DISTINCT source_id) AS sources,
    count(DISTINCT modality) AS modalities,
    avg(CAST(verified AS DOUBLE)) AS verified_fraction,
    avg(roi_count) AS mean_rois_per_image
FROM findings
GROUP BY finding
ORDER BY images DESC, finding
