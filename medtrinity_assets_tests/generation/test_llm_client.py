"""The LLM client against a real (fault-injecting) HTTP server through the real openai client."""

from __future__ import annotations

import base64
import email.utils
import random
import threading
import time

import pytest
from generation.fault_server import FaultServer, Step

from medtrinity_assets.generation import llm_client
from medtrinity_assets.generation.llm_client import (
    ChatEndpoint,
    CircuitOpenError,
    EndpointConfig,
    EndpointError,
    FaultCounts,
    LLMConfigError,
    MalformedOutputError,
    Price,
    TruncatedOutputError,
    parse_json_object,
    retry_after_seconds,
)

MESSAGES = [{"role": "system", "content": "Answer in JSON."}, {"role": "user", "content": "Describe ROI 1."}]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class RecordingSleep:
    """Sleeps for real (the server sees real time) and records each wait."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        time.sleep(seconds)


@pytest.fixture
def server():
    with FaultServer() as srv:
        yield srv


def endpoint(server: FaultServer, **overrides) -> ChatEndpoint:
    settings = dict(
        base_url=server.base_url,
        model="fault-model",
        api_key_env=None,
        timeout_s=2.0,
        max_attempts=3,
        backoff_base_s=0.01,
        backoff_max_s=0.05,
        breaker_threshold=5,
        breaker_cooldown_s=30.0,
    )
    extra = {k: overrides.pop(k) for k in ("sleep", "clock") if k in overrides}
    settings.update(overrides)
    return ChatEndpoint(EndpointConfig(**settings), rng=random.Random(0), **extra)


def test_ok_call_returns_text_and_usage(server):
    result = endpoint(server).complete(MESSAGES)
    assert parse_json_object(result.text) == {"modality": "CT", "organ": "liver"}
    assert (result.finish_reason, result.prompt_tokens, result.completion_tokens) == ("stop", 120, 30)
    assert not result.truncated and not result.cached and result.attempts == 1
    body = server.requests[0]["body"]
    assert body["model"] == "fault-model" and body["messages"] == MESSAGES and body["temperature"] == 0.0


def test_429_retry_after_is_honoured(server):
    server.push(Step.error(429, retry_after="1"), Step.ok())
    sleep = RecordingSleep()
    ep = endpoint(server, sleep=sleep)
    started = time.monotonic()
    result = ep.complete(MESSAGES)
    elapsed = time.monotonic() - started
    assert elapsed >= 1.0
    assert sleep.waits and sleep.waits[0] >= 1.0
    assert result.attempts == 2 and server.request_count == 2
    counts = ep.counts
    assert (counts.http_429, counts.retries, counts.requests, counts.failures) == (1, 1, 2, 0)


def test_503_is_retried_with_backoff(server):
    server.push(Step.error(503), Step.error(503), Step.ok())
    sleep = RecordingSleep()
    ep = endpoint(server, sleep=sleep)
    result = ep.complete(MESSAGES)
    assert result.attempts == 3 and server.request_count == 3
    assert ep.counts.http_5xx == 2 and ep.counts.retries == 2
    # exponential: the second wait is about twice the first (jitter at most 25 % off)
    assert len(sleep.waits) == 2 and 0.0075 <= sleep.waits[0] <= 0.01 and 0.015 <= sleep.waits[1] <= 0.02


def test_retry_after_beyond_the_cap_fails_without_waiting(server):
    server.push(Step.error(503, retry_after="3600"))
    sleep = RecordingSleep()
    ep = endpoint(server, sleep=sleep, max_retry_after_s=10)
    with pytest.raises(EndpointError) as info:
        ep.complete(MESSAGES)
    assert info.value.kind == "http_5xx" and info.value.status == 503 and "3600" in str(info.value)
    assert sleep.waits == [] and server.request_count == 1 and ep.counts.failures == 1


def test_retries_are_bounded(server):
    server.default = Step.error(503)
    ep = endpoint(server, max_attempts=3)
    with pytest.raises(EndpointError) as info:
        ep.complete(MESSAGES)
    assert info.value.attempts == 3 and server.request_count == 3
    assert ep.counts.http_5xx == 3 and ep.counts.failures == 1


def test_repeated_500_opens_the_circuit_then_half_open_trial(server):
    server.default = Step.error(500)
    clock = FakeClock()
    ep = endpoint(server, max_attempts=3, breaker_threshold=3, breaker_cooldown_s=30.0, clock=clock)
    with pytest.raises(EndpointError):
        ep.complete(MESSAGES)
    assert server.request_count == 3 and ep.breaker.state == "open"

    started = time.monotonic()
    with pytest.raises(CircuitOpenError) as info:
        ep.complete([{"role": "user", "content": "another record"}])
    assert time.monotonic() - started < 0.5
    assert server.request_count == 3  # failed fast: nothing sent
    assert "circuit open" in str(info.value) and info.value.retry_in_s == pytest.approx(30.0)
    assert ep.counts.circuit_open == 1

    # after the cool-down one trial goes out; it fails: open again, still nothing more sent
    clock.now += 31
    with pytest.raises(CircuitOpenError):
        ep.complete(MESSAGES)
    assert server.request_count == 4 and ep.breaker.state == "open"

    # the next trial succeeds: closed
    clock.now += 31
    server.default = Step.ok()
    assert ep.complete(MESSAGES).text
    assert server.request_count == 5 and ep.breaker.state == "closed"


def test_429_does_not_open_the_circuit(server):
    server.push(*[Step.error(429, retry_after="0")] * 3, Step.ok())
    ep = endpoint(server, max_attempts=4, breaker_threshold=2)
    assert ep.complete(MESSAGES).attempts == 4
    assert ep.breaker.state == "closed" and ep.counts.http_429 == 3


def test_slow_response_times_out_and_is_retried(server):
    server.push(Step.slow(3.0), Step.ok())
    ep = endpoint(server, timeout_s=0.3)
    started = time.monotonic()
    result = ep.complete(MESSAGES)
    assert time.monotonic() - started < 2.5
    assert result.attempts == 2 and server.request_count == 2
    assert ep.counts.timeouts == 1 and ep.counts.retries == 1


def test_per_call_timeout_overrides_the_config(server):
    server.push(Step.slow(3.0))
    ep = endpoint(server, timeout_s=10.0, max_attempts=1)
    started = time.monotonic()
    with pytest.raises(EndpointError) as info:
        ep.complete(MESSAGES, timeout_s=0.2)
    assert info.value.kind == "timeout" and time.monotonic() - started < 2.0


def test_connection_refused_counts_towards_the_circuit():
    srv = FaultServer().start()
    url = srv.base_url
    srv.stop()
    ep = ChatEndpoint(
        EndpointConfig(base_url=url, model="m", api_key_env=None, timeout_s=1, max_attempts=2,
                       backoff_base_s=0.01, breaker_threshold=2),
        rng=random.Random(0),
    )
    with pytest.raises(EndpointError) as info:
        ep.complete(MESSAGES)
    assert info.value.kind == "connection" and ep.counts.connection_errors == 2
    assert ep.breaker.state == "open"


def test_malformed_bodies_are_counted_and_retried(server):
    server.push(Step.malformed(), Step.no_choices(), Step.ok())
    ep = endpoint(server)
    result = ep.complete(MESSAGES)
    assert result.attempts == 3 and ep.counts.malformed == 2
    assert ep.breaker.state == "closed"


def test_malformed_to_the_end_is_a_typed_failure(server):
    server.default = Step.malformed()
    ep = endpoint(server, max_attempts=2)
    with pytest.raises(EndpointError) as info:
        ep.complete(MESSAGES)
    assert info.value.kind == "malformed" and ep.counts.malformed == 2 and ep.counts.failures == 1


def test_cut_off_output_is_detected_and_reported(server):
    server.push(Step.cutoff())
    ep = endpoint(server)
    result = ep.complete(MESSAGES, max_tokens=16)
    assert result.truncated and result.finish_reason == "length"
    assert ep.counts.truncated == 1 and server.request_count == 1
    assert server.requests[0]["body"]["max_tokens"] == 16
    with pytest.raises(TruncatedOutputError):
        parse_json_object(result.text)


def test_client_errors_are_not_retried(server):
    server.push(Step.error(400))
    ep = endpoint(server)
    with pytest.raises(EndpointError) as info:
        ep.complete(MESSAGES)
    assert info.value.kind == "http_4xx" and info.value.status == 400 and server.request_count == 1


def test_cache_second_identical_call_makes_no_request(server, tmp_path):
    ep = endpoint(server, cache_dir=tmp_path / "cache")
    first = ep.complete(MESSAGES, max_tokens=64)
    second = ep.complete(MESSAGES, max_tokens=64)
    assert server.request_count == 1
    assert second.cached and second.text == first.text and second.key == first.key
    assert (second.prompt_tokens, second.completion_tokens) == (120, 30)
    assert ep.counts.cache_hits == 1 and ep.counts.calls == 2

    # a rerun (a new endpoint on the same cache) makes no call either
    rerun = endpoint(server, cache_dir=tmp_path / "cache")
    assert rerun.complete(MESSAGES, max_tokens=64).cached and server.request_count == 1

    # other params, or a writer's retry (attempt=1), are other keys
    ep.complete(MESSAGES, max_tokens=65)
    ep.complete(MESSAGES, max_tokens=64, attempt=1)
    assert server.request_count == 3


def test_cache_is_written_atomically(server, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    ep = endpoint(server, cache_dir=cache)
    result = ep.complete(MESSAGES)
    files = [p for p in cache.rglob("*") if p.is_file()]
    assert [p.name for p in files] == [f"{result.key}.json"]

    def crash(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(llm_client.os, "replace", crash)
    other = ep.complete([{"role": "user", "content": "other"}])
    assert other.text and not other.cached  # the answer is returned all the same
    assert ep.counts.cache_errors == 1
    files = [p for p in cache.rglob("*") if p.is_file()]
    assert [p.name for p in files] == [f"{result.key}.json"]  # no temp file, no half entry


def test_damaged_cache_entry_is_a_miss(server, tmp_path):
    ep = endpoint(server, cache_dir=tmp_path)
    result = ep.complete(MESSAGES)
    ep.cache.path(result.key).write_text('{"key": "trunc')
    assert not ep.complete(MESSAGES).cached and server.request_count == 2
    assert ep.complete(MESSAGES).cached


def test_cost_from_usage_and_price_table(server, tmp_path):
    prices = {"fault-model": Price(input_per_million=2.0, output_per_million=8.0)}
    ep = endpoint(server, prices=prices, cache_dir=tmp_path)
    result = ep.complete(MESSAGES)
    assert result.cost_usd == pytest.approx(120 * 2.0 / 1e6 + 30 * 8.0 / 1e6)
    assert ep.complete(MESSAGES).cost_usd == 0.0  # a cache hit costs nothing
    meta = ep.counts.as_metadata()
    assert meta["cost_usd"] == pytest.approx(0.00048)
    assert (meta["prompt_tokens"], meta["completion_tokens"], meta["cache_hits"]) == (120, 30, 1)
    assert endpoint(server, prices={"other": Price(1, 1)}).complete(MESSAGES).cost_usd == 0.0


def test_api_key_comes_from_the_named_environment_variable(server, monkeypatch):
    monkeypatch.delenv("MEDTRINITY_TEST_LLM_KEY", raising=False)
    with pytest.raises(LLMConfigError, match="MEDTRINITY_TEST_LLM_KEY"):
        endpoint(server, api_key_env="MEDTRINITY_TEST_LLM_KEY")
    monkeypatch.setenv("MEDTRINITY_TEST_LLM_KEY", "sk-test-123")
    endpoint(server, api_key_env="MEDTRINITY_TEST_LLM_KEY").complete(MESSAGES)
    headers = {k.lower(): v for k, v in server.requests[-1]["headers"].items()}
    assert headers["authorization"] == "Bearer sk-test-123"


def test_counts_are_consistent_across_threads(server):
    server.push(*[Step.error(503)] * 4)
    ep = endpoint(server, max_attempts=5)
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            ep.complete([{"role": "user", "content": f"record {i}"}])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    counts = ep.counts
    assert counts.calls == 8 and counts.requests == server.request_count == 12
    assert counts.http_5xx == 4 and counts.retries == 4


def test_retry_after_parsing():
    assert retry_after_seconds({"Retry-After": "7"}) == 7.0
    assert retry_after_seconds({"retry-after-ms": "250", "Retry-After": "7"}) == 0.25
    now = 1_800_000_000.0
    date = email.utils.formatdate(now + 12, usegmt=True)
    assert retry_after_seconds({"Retry-After": date}, now=now) == pytest.approx(12.0)
    assert retry_after_seconds({"Retry-After": email.utils.formatdate(now - 60, usegmt=True)}, now=now) == 0.0
    assert retry_after_seconds({"Retry-After": "soon"}) is None
    assert retry_after_seconds({}) is None


def test_fault_counts_add_and_metadata():
    total = FaultCounts(calls=2, http_429=1, cost_usd=0.1) + FaultCounts(calls=3, timeouts=2, cost_usd=0.2)
    assert (total.calls, total.http_429, total.timeouts) == (5, 1, 2)
    assert total.as_metadata()["cost_usd"] == pytest.approx(0.3)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"a": 1}', {"a": 1}),
        ('```json\n{"a": {"b": [1, 2]}}\n```', {"a": {"b": [1, 2]}}),
        ('Here is the JSON:\n```\n{"a": "x}"}\n```\nDone.', {"a": "x}"}),
        ('Sure! {"a": "quote \\" and { brace"} trailing words', {"a": 'quote " and { brace'}),
        ('{"a": [1, 2,],}', {"a": [1, 2]}),
        ("Use {placeholder} then {\"a\": 2}", {"a": 2}),
        ('```json\n{"a": 3}', {"a": 3}),
        ('{"a": "view: PA }\n{", "b": "c"}', {"a": "view: PA }\n{", "b": "c"}),  # a raw newline in a string
    ],
)
def test_parse_json_object_tolerates_model_habits(text, expected):
    assert parse_json_object(text) == expected


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ('{"modality": "CT", "organ": "li', TruncatedOutputError),
        ('```json\n{"a": {"b": 1}\n', TruncatedOutputError),
        ("no json here", MalformedOutputError),
        ("{not: json}", MalformedOutputError),
        ("[1, 2]", MalformedOutputError),
    ],
)
def test_parse_json_object_raises_typed_errors(text, error):
    with pytest.raises(error):
        parse_json_object(text)
    if error is MalformedOutputError:
        with pytest.raises(MalformedOutputError) as info:
            parse_json_object(text)
        assert not isinstance(info.value, TruncatedOutputError)


def test_data_urls_enter_the_cache_key_as_their_digest():
    def with_image(payload: bytes) -> list[dict]:
        url = "data:image/png;base64," + base64.b64encode(payload).decode()
        return [MESSAGES[0], {"role": "user", "content": [{"type": "text", "text": "Describe ROI 1."},
                                                          {"type": "image_url", "image_url": {"url": url}}]}]

    big = bytes(range(256)) * 4096  # 1 MiB of image
    other = big[:-1] + b"\x00"
    material = llm_client.cache_material("m", with_image(big), {"temperature": 0.0})
    assert len(material) < 1000 and "data-sha256:" in material
    key = llm_client.cache_key("m", with_image(big), {})
    assert key == llm_client.cache_key("m", with_image(big), {})
    assert key != llm_client.cache_key("m", with_image(other), {})
    # Text-only messages keep the keys they had.
    assert llm_client.cache_material("m", MESSAGES, {}) == llm_client.canonical_json({"model": "m", "messages": MESSAGES, "params": {}})
