"""The writers through the descriptions stage and its Dagster asset, on real demo sources, real
DuckDB/Parquet and a real Dagster instance.

Without a model: the grounded writer through the asset gives the stage's rows, whatever the
concurrency. With a model (``generation.model_writer.ModelWriter``, issue 9): the real
llama.cpp server (SmolLM2-135M) through ``dg.materialize`` of the descriptions asset (every
record comes out, a rerun calls no endpoint, a source can keep the grounded writer, unverified
rows stay out of the LLaVA exports), and the fault server under the stage (no row lost, every
fault counted).
"""

from __future__ import annotations

import json

import dagster as dg
import pyarrow.parquet as pq
import pytest

from medtrinity_assets import stages
from medtrinity_assets.catalog import load_catalog
from medtrinity_assets.catalog.acquire import fetch_package_files
from medtrinity_assets.defs.assets import ASSETS, descriptions, medtrinity_dataset, triplets
from medtrinity_assets.defs.resources import WRITER_RESOURCE, PipelineSettings
from medtrinity_assets.generation.writers import WriterConfig
from medtrinity_assets.paths import DataRoot

pytestmark = pytest.mark.slow


UPSTREAM = (stages.run_normalize, stages.run_ground, stages.run_facts, stages.run_coarse_captions, stages.run_retrieval)
# Small demo sources: 4 records (several rows in flight) and 1 record (the grounded one).
MODEL_SOURCE = "demo_mri_head_multiframe"
GROUNDED_SOURCE = "demo_xray_chest"
MANY_ROWS_SOURCE = "demo_mri_brain_mni"  # 24 records


def _build_upstream(env, shared_knowledge, *source_ids) -> DataRoot:
    """Every stage before descriptions, run for each source in the test's data root."""
    root = shared_knowledge.copy_to(DataRoot(env["var"]))
    catalog = load_catalog()
    for source_id in source_ids:
        spec = catalog[source_id]
        fetch_package_files(spec, env["raw"] / source_id)
        stages.run_ingest(spec, root, "test-salt")
        for runner in UPSTREAM:
            runner(spec, root)
    return root


def _rows(path) -> list[dict]:
    return pq.read_table(path).to_pylist()


def _materialize(instance, selection, partition, writer: dict | None = None):
    run_config = {"resources": {WRITER_RESOURCE: {"config": writer}}} if writer is not None else None
    if partition and not instance.has_dynamic_partition("sources", partition):
        instance.add_dynamic_partitions("sources", [partition])  # as the sensor registers it
    return dg.materialize(
        ASSETS, selection=selection, partition_key=partition, instance=instance,
        resources={"settings": PipelineSettings()}, run_config=run_config, raise_on_error=False,
    )


def _metadata(result, asset: str = "descriptions") -> dict:
    (found,) = [
        e.event_specific_data.materialization.metadata for e in result.all_events
        if e.event_type_value == "ASSET_MATERIALIZATION"
        and e.event_specific_data.materialization.asset_key.to_user_string() == asset
    ]
    return {key: value.value for key, value in found.items()}


# --- the grounded writer (no model) --------------------------------------------------------


def test_grounded_writer_through_the_asset_gives_the_stages_rows(isolated_env, shared_knowledge):
    root = _build_upstream(isolated_env, shared_knowledge, MANY_ROWS_SOURCE)
    spec = load_catalog()[MANY_ROWS_SOURCE]
    stages.run_descriptions(spec, root, WriterConfig(concurrency=4))
    out = root.table("descriptions", MANY_ROWS_SOURCE)
    four_in_flight = out.read_bytes()
    stages.run_descriptions(spec, root)
    # Rows in flight change nothing: the table is byte-identical, in record order.
    assert out.read_bytes() == four_in_flight
    expected = _rows(out)
    assert [r["record_id"] for r in expected] == sorted(r["record_id"] for r in expected)

    with dg.instance_for_test() as instance:
        result = _materialize(instance, dg.AssetSelection.assets(descriptions), MANY_ROWS_SOURCE)
        assert result.success
        metadata = _metadata(result)
    assert _rows(out) == expected
    assert metadata["dagster/row_count"] == metadata["inputs"] == len(expected) == 24
    assert metadata["writer_kind"] == "grounded"
    assert "| grounded-v2 | 24 | 100.0% |" in metadata["writer_mix"]
    assert metadata["fallback_rate"] == 0.0 and metadata["fallbacks"] == 0
    assert metadata["prompt_tokens"] == metadata["completion_tokens"] == 0 and metadata["cost_usd"] == 0.0
    assert metadata["in_flight_max"] == 1 and metadata["rows_per_second"] > 0
    assert "endpoint" not in metadata  # no endpoint was called
    for row in expected:
        assert row["writer"] == "grounded-v2" and row["model"] is None and row["prompt_hash"] is None
        assert row["attempts"] == 0 and row["fallback_reason"] is None


def test_a_writer_that_raises_quarantines_only_that_record(isolated_env, shared_knowledge, monkeypatch):
    from medtrinity_assets.generation import writers

    root = _build_upstream(isolated_env, shared_knowledge, MANY_ROWS_SOURCE)
    # A bug planted in the real writer for one record (not an endpoint fault: those never raise).
    victim = sorted(r["record_id"] for r in _rows(root.table("coarse_captions", MANY_ROWS_SOURCE)))[5]
    write = writers.GroundedWriter.write

    def write_or_raise(self, job):
        if job.record_id == victim:
            raise RuntimeError("a writer bug")
        return write(self, job)

    monkeypatch.setattr(writers.GroundedWriter, "write", write_or_raise)
    report = stages.run_descriptions(load_catalog()[MANY_ROWS_SOURCE], root, WriterConfig(concurrency=3))
    assert report.inputs == 24 and report.rows == 23 and report.quarantined == 1
    assert report.kinds == {"stage_error": 1}
    written = [r["record_id"] for r in _rows(root.table("descriptions", MANY_ROWS_SOURCE))]
    assert victim not in written and written == sorted(written)
    (reason,) = [r["reason"] for r in _rows(root.quarantine("descriptions", MANY_ROWS_SOURCE))]
    assert "a writer bug" in reason


def test_vision_jobs_carry_the_normalized_image_and_every_roi(isolated_env, shared_knowledge):
    from medtrinity_assets.duckdb_sql import stream_rows

    root = _build_upstream(isolated_env, shared_knowledge, MODEL_SOURCE)
    rois = _rows(root.table("rois", MODEL_SOURCE))
    jobs = list(stream_rows(stages._description_jobs_sql(root, MODEL_SOURCE, with_image=True)))
    assert len(jobs) == len(_rows(root.table("coarse_captions", MODEL_SOURCE))) == 4
    box = ("roi_id", "label", "x0", "y0", "x1", "y1", "mask_path")
    for job in jobs:
        assert (root.root / job["image_path"]).is_file()
        expected = sorted(({k: r[k] for k in box} for r in rois if r["record_id"] == job["record_id"]), key=lambda r: r["roi_id"])
        assert expected and [dict(r) for r in job["rois"]] == expected
    # A text model's jobs read neither.
    assert "image_path" not in next(stream_rows(stages._description_jobs_sql(root, MODEL_SOURCE, with_image=False)))


# --- model writers (ModelWriter, generation/model_writer.py) ----------------------------


def _local_writer(server, **overrides) -> dict:
    """Run config of the writer resource for the local llama.cpp server: small answers and one
    retry, so the 135M model on two cores answers a record in seconds."""
    return {
        "kind": "llm", "base_url": server.base_url, "model": server.model, "api_key_env": "none",
        "response_format": "json_object", "max_tokens": 320, "max_retries": 1, "concurrency": 2,
        # The server answers one request at a time: the second in flight waits in its queue, so
        # the timeout covers two answers on a busy two-core machine.
        "temperature": 0.0, "timeout_s": 600.0, **overrides,
    }


def test_llm_writer_through_the_asset(isolated_env, shared_knowledge, llama_server):
    root = _build_upstream(isolated_env, shared_knowledge, MODEL_SOURCE, GROUNDED_SOURCE)
    writer = _local_writer(llama_server, per_source={GROUNDED_SOURCE: "grounded"}, prices={llama_server.model: [1.0, 2.0]})
    records = len(_rows(root.table("coarse_captions", MODEL_SOURCE)))
    with dg.instance_for_test() as instance:
        first = _materialize(instance, dg.AssetSelection.assets(descriptions), MODEL_SOURCE, writer)
        assert first.success
        metadata = _metadata(first)
        table = root.table("descriptions", MODEL_SOURCE)
        rows = _rows(table)

        # Every record comes out: written by the model or fallen back, never lost.
        assert metadata["inputs"] == metadata["dagster/row_count"] == len(rows) == records == 4
        assert metadata["quarantined"] == 0
        assert metadata["writer_kind"] == "llm"
        assert metadata["fallbacks"] == sum(r["fallback_reason"] is not None for r in rows)
        assert metadata["fallback_rate"] == round(metadata["fallbacks"] / records, 4)
        assert metadata["endpoint"]["requests"] >= records and metadata["rows_from_cache"] == 0
        assert metadata["prompt_tokens"] == metadata["endpoint"]["prompt_tokens"] > 0
        assert metadata["cost_usd"] > 0  # priced per million tokens by the run config
        assert 1 <= metadata["in_flight_max"] <= 2
        mix = {r["writer"] for r in rows}
        assert all(f"| {w} |" in metadata["writer_mix"] for w in mix)
        for row in rows:
            assert row["attempts"] >= 1 and row["prompt_hash"]
            assert row["verified"] == (not row["verifier_flags"])

        # A rerun asks the response cache, not the endpoint.
        rerun = _materialize(instance, dg.AssetSelection.assets(descriptions), MODEL_SOURCE, writer)
        assert rerun.success
        again = _metadata(rerun)
        assert again["endpoint"]["requests"] == 0 and again["endpoint"]["cache_hits"] > 0
        assert again["rows_from_cache"] == records and again["prompt_tokens"] == again["cost_usd"] == 0
        text = ("record_id", "description", "writer", "model", "prompt_hash", "verified", "verifier_flags")
        assert [{k: r[k] for k in text} for r in _rows(table)] == [{k: r[k] for k in text} for r in rows]

        # The per-source override: the same run config keeps this source on the grounded writer.
        grounded = _materialize(instance, dg.AssetSelection.assets(descriptions), GROUNDED_SOURCE, writer)
        assert grounded.success
        assert _metadata(grounded)["writer_kind"] == "grounded" and "endpoint" not in _metadata(grounded)
        assert {r["writer"] for r in _rows(root.table("descriptions", GROUNDED_SOURCE))} == {"grounded-v2"}

        # Triplets carry how their text was made; the LLaVA exports hold verified rows only.
        for source in (MODEL_SOURCE, GROUNDED_SOURCE):
            assert _materialize(instance, dg.AssetSelection.assets(triplets), source).success
        assert _materialize(instance, dg.AssetSelection.assets(medtrinity_dataset), None).success
    provenance = [json.loads(r["provenance"]) for r in _rows(root.table("triplets", MODEL_SOURCE))]
    assert {(p["writer"], p["model"]) for p in provenance} == {(r["writer"], r["model"]) for r in rows}
    verified = {r["record_id"] for s in (MODEL_SOURCE, GROUNDED_SOURCE) for r in _rows(root.table("descriptions", s)) if r["verified"]}
    exported = [json.loads(line) for path in root.exports.glob("llava_*.jsonl") for line in path.read_text().splitlines()]
    assert exported and {r["id"] for r in exported} <= verified


def test_endpoint_faults_lose_no_row_and_are_counted(isolated_env, shared_knowledge, tmp_path):
    from generation.fault_server import FaultServer, Step

    root = _build_upstream(isolated_env, shared_knowledge, MODEL_SOURCE)
    records = len(_rows(root.table("coarse_captions", MODEL_SOURCE)))
    script = [Step.error(500), Step.error(429, retry_after="1"), Step.malformed(), Step.cutoff(), Step.error(503, retry_after="1")]
    with FaultServer(script) as server:
        config = WriterConfig(kind="llm", base_url=server.base_url, model="fault-model", api_key_env=None,
                              concurrency=2, max_retries=1, timeout_s=5.0, cache_dir=tmp_path / "cache")
        report = stages.run_descriptions(load_catalog()[MODEL_SOURCE], root, config)
    rows = _rows(root.table("descriptions", MODEL_SOURCE))
    assert report.inputs == report.rows == len(rows) == records and report.quarantined == 0
    faults = report.extra["endpoint"]
    assert faults["http_5xx"] >= 2 and faults["http_429"] >= 1 and faults["malformed"] >= 1
    assert faults["requests"] == server.request_count
    assert report.extra["fallbacks"] == sum(r["fallback_reason"] is not None for r in rows) >= 1
    assert sum(report.extra["writer_mix"].values()) == records
    assert all(r["verified"] == (not r["verifier_flags"]) for r in rows)


def test_an_image_with_burned_in_text_is_never_sent_to_a_vision_model(isolated_env, shared_knowledge, tmp_path):
    """Burned-in text can be a name, a date or an id: such an image (flagged by the normalize
    stage) is described from the text alone, whatever the spec's burned_in_text policy; the
    other images of the partition are sent with their ROI outlines."""
    import pyarrow as pa

    from generation.fault_server import FaultServer, Step

    root = _build_upstream(isolated_env, shared_knowledge, MODEL_SOURCE)
    normalized = root.table("normalized_images", MODEL_SOURCE)
    table = pq.read_table(normalized)
    planted = table.column("record_id")[0].as_py()
    flags = [json.dumps({"present": True, "kinds": ["text"]}) if rid == planted else value
             for rid, value in zip(table.column("record_id").to_pylist(), table.column("burned_in").to_pylist())]
    pq.write_table(table.set_column(table.schema.get_field_index("burned_in"), "burned_in", pa.array(flags, pa.string())), normalized)
    records = len(_rows(root.table("coarse_captions", MODEL_SOURCE)))
    with FaultServer(default=Step.ok(json.dumps({"part_modality": "x"}))) as server:
        config = WriterConfig(kind="vlm", base_url=server.base_url, model="vision-model", api_key_env=None,
                              max_retries=0, cache_dir=tmp_path / "cache")
        report = stages.run_descriptions(load_catalog()[MODEL_SOURCE], root, config)
        contents = [request["body"]["messages"][1]["content"] for request in server.requests]
    assert report.rows == records
    with_image = [c for c in contents if isinstance(c, list) and any(part["type"] == "image_url" for part in c)]
    text_only = [c for c in contents if isinstance(c, str)]
    assert len(contents) == records and len(with_image) == records - 1 and len(text_only) == 1
