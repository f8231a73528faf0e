-- What each stage could not use, per source and reason, most frequent first.
SELECT
    source_id,
    stage,
    reason,
    count(*) AS files,
    count(record_id) AS records,
    min(source_file) AS example_file
FROM {{ ref('quarantine') }}
GROUP BY source_id, stage, reason
ORDER BY files DESC, source_id, stage, reason
