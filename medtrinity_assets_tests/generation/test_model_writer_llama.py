"""The model writer against the real llama.cpp server (SmolLM2-135M-Instruct): every row comes
back, kept rows are verified, and a rerun is answered from the response cache alone."""

from __future__ import annotations

from contextlib import closing
from dataclasses import replace

import pytest
from generation.writer_jobs import chest_job, liver_job

from medtrinity_assets.generation.model_writer import PROMPT_HASH, PROMPT_VERSION, ModelWriter
from medtrinity_assets.generation.verifier import verify
from medtrinity_assets.generation.writers import PART_NAMES, WriterConfig


@pytest.mark.slow
def test_smollm2_rows_come_back_verified_or_fallen_back(llama_server, tmp_path):
    config = WriterConfig(kind="llm", base_url=llama_server.base_url, model=llama_server.model, api_key_env=None,
                          max_tokens=400, temperature=0.2, max_retries=1, timeout_s=600.0,
                          cache_dir=tmp_path / "cache")
    # Two rows, one feedback retry each: at most four requests of a 135M model on two shared cores.
    jobs = [liver_job(), chest_job()]
    with closing(ModelWriter(config)) as writer:
        rows = [writer.write(job) for job in jobs]
        counts = writer.endpoint_counts()
    for job, row in zip(jobs, rows):
        print(f"\n{job.record_id}: writer={row.writer} attempts={row.attempts} faults={row.faults} "
              f"sentences={row.sentences_written} dropped={row.sentences_dropped} reason={row.fallback_reason}")
        assert all(row.parts[name].strip() for name in PART_NAMES)
        assert row.flags == verify(row.description, row.facts)  # the flags are those of the final text
        assert (row.prompt_hash, row.model) == (PROMPT_HASH, llama_server.model)
        assert row.attempts >= 1 and row.prompt_tokens > 0 and row.completion_tokens > 0
        if row.writer == "llm":
            assert row.fallback_reason is None and row.flags == [] and row.prompt_version == PROMPT_VERSION
        else:
            assert row.writer == "grounded-v2" and row.fallback_reason
    assert counts.failures == 0 and counts.requests == sum(row.attempts for row in rows)

    # A rerun reads every answer from the cache: no request, the same rows.
    with closing(ModelWriter(config)) as writer:
        again = [writer.write(job) for job in jobs]
        assert writer.endpoint_counts().requests == 0
    assert [replace(row, cached=False) for row in again] == rows and all(row.cached for row in again)
