-- What each stage could not use, per source and kind of problem, most frequent first.
-- Kinds are a closed list (sources/base.py QUARANTINE_KINDS); the reasons stay in the quarantine table.
SELECT
    source_id,
    stage,
    kind,
    count(*) AS files,
    count(record_id) AS records,
    min(source_file) AS example_file
FROM {{ ref('quarantine') }}
GROUP BY source_id, stage, kind
ORDER BY files DESC, source_id, stage, kind
