"""The LLM benchmark's own machinery: what it records and replays, the faults it injects, the
rows it keeps. Against the real FaultServer standing in for the model (the benchmark itself runs
the real llama.cpp server)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from generation.fault_server import FaultServer, Step

from medtrinity_assets import bench_llm
from medtrinity_assets.generation.llm_client import ChatEndpoint, EndpointConfig
from medtrinity_assets.paths import DataRoot

MESSAGES = [{"role": "system", "content": "Answer in JSON."}, {"role": "user", "content": "Which organ?"}]
MODEL_ANSWER = '{"part_modality": "An ultrasound image of the breast."}'


def _endpoint(base_url: str, **overrides) -> ChatEndpoint:
    config = dict(base_url=base_url, model="bench-model", api_key_env=None, max_tokens=64, backoff_base_s=0.05)
    return ChatEndpoint(EndpointConfig(**{**config, **overrides}))


def test_in_flight_counts_overlapping_requests():
    exchanges = [bench_llm.Exchange({}, 0.0, 4.0), bench_llm.Exchange({}, 1.0, 3.0), bench_llm.Exchange({}, 4.0, 6.0)]
    peak, mean, busy = bench_llm.in_flight(exchanges, 0.0, 8.0)
    assert peak == 2  # the third starts when the first ends: not three at once
    assert mean == pytest.approx((4 + 2 + 2) / 8)
    assert busy == pytest.approx(6 / 8)  # idle from 6 to 8 only


def test_recorded_requests_are_replayed_unchanged():
    with FaultServer(default=Step.ok(MODEL_ANSWER, completion_tokens=11)) as model:
        endpoint = _endpoint(model.base_url)
        with bench_llm.record_requests() as exchanges:
            endpoint.complete(MESSAGES, response_format={"type": "json_object"})
            endpoint.complete(MESSAGES, attempt=1, temperature=0.7)
        endpoint.close()
        assert [e.text for e in exchanges] == [MODEL_ANSWER, MODEL_ANSWER]
        assert [e.completion_tokens for e in exchanges] == [11, 11]
        sent_by_pipeline = [r["body"] for r in model.requests]

        from openai import OpenAI

        with OpenAI(base_url=model.base_url, api_key="x", max_retries=0) as client:
            alone = bench_llm.replay(client, exchanges, concurrency=2)
        replayed = [r["body"] for r in model.requests[len(sent_by_pipeline):]]
    assert alone["requests"] == 2 and alone["completion_tokens"] == 22
    key = lambda body: bench_llm.request_key(body)  # noqa: E731
    assert sorted(map(key, replayed)) == sorted(map(key, sent_by_pipeline))
    assert {body["temperature"] for body in replayed} == {0.0, 0.7}


@pytest.mark.parametrize("kind", ["429", "500", "malformed", "cutoff", "mixed"])
def test_fault_proxy_puts_faults_between_real_answers(kind):
    with FaultServer(default=Step.ok(MODEL_ANSWER, completion_tokens=10)) as model:
        from openai import OpenAI

        memo: dict = {}
        with OpenAI(base_url=model.base_url, api_key="x", max_retries=0) as upstream, \
                bench_llm.fault_proxy(kind, upstream, memo) as proxy:
            endpoint = _endpoint(proxy.base_url)
            results = [endpoint.complete(MESSAGES) for _ in range(6)]
            counts = endpoint.counts
            endpoint.close()
            injected = sum(proxy.injected.values())
        upstream_calls = model.request_count
    # Two faults in the first six answers plus the retries, every one injected by the proxy.
    assert injected == 2 if kind == "cutoff" else injected >= 2
    assert upstream_calls == 1  # one distinct request: the model answered once, the memo did the rest
    if kind == "cutoff":
        cut = [r for r in results if r.truncated]
        assert len(cut) == 2 and all(r.text == MODEL_ANSWER[: len(MODEL_ANSWER) // 2] for r in cut)
        assert counts.truncated == 2
    else:
        assert all(r.text == MODEL_ANSWER for r in results)
        assert counts.retries == injected
        field = {"429": "http_429", "500": "http_5xx", "malformed": "malformed"}.get(kind)
        if field:
            assert getattr(counts, field) == injected


def test_limit_rows_keeps_the_first_records_by_id(tmp_path):
    root = DataRoot(tmp_path)
    table = pa.table({"record_id": ["c", "a", "d", "b"], "caption": ["3", "1", "4", "2"]})
    source = bench_llm._all_captions(root, "src")
    source.parent.mkdir(parents=True)
    pq.write_table(table, source)
    root.table("coarse_captions", "src").parent.mkdir(parents=True)
    assert bench_llm.limit_rows(root, "src", 2) == 2
    assert pq.read_table(root.table("coarse_captions", "src")).column("record_id").to_pylist() == ["a", "b"]
    assert bench_llm.limit_rows(root, "src", 10) == 4  # from the full table again, not the cut one
