"""The real server of the tests (llama_server.py) answers the official ``openai`` client: chat,
usage counts, JSON mode; and its throughput is measured (printed for the benchmark, not asserted)."""

from __future__ import annotations

import json
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import pytest

from generation import llama_server as _llama

MESSAGES = [
    {"role": "system", "content": "You are a concise medical assistant."},
    {"role": "user", "content": "In one sentence: which organ does the left ventricle belong to?"},
]


def test_gguf_comes_from_the_installed_wheel():
    _llama.require_packages()
    gguf = _llama.smollm2_gguf()
    assert gguf.name.endswith(".gguf") and gguf.stat().st_size > 50_000_000
    with open(gguf, "rb") as f:
        assert f.read(4) == b"GGUF"


def test_chat_completion_returns_text_and_usage(llama_server):
    response = llama_server.client().chat.completions.create(
        model=llama_server.model, messages=MESSAGES, max_tokens=48, temperature=0.0, seed=7,
    )
    text = response.choices[0].message.content
    assert text and text.strip()
    assert response.choices[0].finish_reason in {"stop", "length"}
    assert response.usage.prompt_tokens > 10
    assert 0 < response.usage.completion_tokens <= 48
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens


def test_json_object_response_format_gives_parseable_json(llama_server):
    # llama-cpp-python turns response_format json_object into a JSON grammar, so even a 135M model
    # writes valid JSON; with a "schema" beside the type the grammar follows that schema.
    schema = {
        "type": "object",
        "properties": {"organ": {"type": "string", "maxLength": 40}, "is_heart": {"type": "boolean"}},
        "required": ["organ", "is_heart"],
    }
    response = llama_server.client().chat.completions.create(
        model=llama_server.model,
        messages=[*MESSAGES[:1], {"role": "user", "content": "Which organ holds the left ventricle? "
                                  "Answer as JSON with keys organ and is_heart."}],
        max_tokens=96, temperature=0.0, seed=7,
        response_format={"type": "json_object", "schema": schema},
    )
    choice = response.choices[0]
    assert choice.finish_reason == "stop", choice.message.content
    payload = json.loads(choice.message.content)
    assert set(payload) == {"organ", "is_heart"}
    assert isinstance(payload["organ"], str) and isinstance(payload["is_heart"], bool)


def test_json_object_without_schema_gives_a_json_object(llama_server):
    response = llama_server.client().chat.completions.create(
        model=llama_server.model,
        messages=[*MESSAGES[:1], {"role": "user", "content": "Give a JSON object with the key organ "
                                  "naming the organ that holds the left ventricle."}],
        max_tokens=96, temperature=0.0, seed=7, response_format={"type": "json_object"},
    )
    choice = response.choices[0]
    assert choice.finish_reason == "stop", choice.message.content
    assert isinstance(json.loads(choice.message.content), dict)


def test_openai_json_schema_response_format_is_refused(llama_server):
    # llama-cpp-python 0.3.36 knows response_format types "text" and "json_object" only; OpenAI's
    # structured-output type "json_schema" fails request validation, answered as HTTP 500 (not a
    # 4xx): a writer must send {"type": "json_object", "schema": ...} to this server, and must not
    # count this 500 as the endpoint failing. Should a release accept it, this test says so.
    import openai

    with pytest.raises(openai.APIStatusError) as refused:
        llama_server.client().chat.completions.create(
            model=llama_server.model, messages=MESSAGES, max_tokens=16,
            response_format={"type": "json_schema", "json_schema": {
                "name": "organ", "schema": {"type": "object", "properties": {"organ": {"type": "string"}}}}},
        )
    assert refused.value.status_code == 500
    assert "json_object" in str(refused.value)


def test_server_process_group_is_gone_after_the_context(tmp_path):
    _llama.require_packages()
    with _llama.llama_server(tmp_path / "server.log") as server:
        assert server.client().models.list().data[0].id == server.model
        pid, url = server.pid, urlsplit(server.base_url)
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)
    with pytest.raises(OSError):
        socket.create_connection((url.hostname, url.port), timeout=1.0).close()


def _run(client, model, n_requests: int, concurrency: int, max_tokens: int) -> dict:
    def one(i: int):
        start = time.monotonic()
        r = client.chat.completions.create(
            model=model, max_tokens=max_tokens, temperature=0.7, seed=i,
            messages=[MESSAGES[0], {"role": "user", "content": f"Describe finding number {i} of a chest "
                                    "X-ray with a small nodule in the right upper lobe."}],
        )
        return r.usage.prompt_tokens, r.usage.completion_tokens, time.monotonic() - start

    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        results = list(pool.map(one, range(n_requests)))
    wall = time.monotonic() - start
    completion = sum(r[1] for r in results)
    return {
        "concurrency": concurrency, "requests": n_requests, "wall_s": round(wall, 2),
        "prompt_tokens": sum(r[0] for r in results), "completion_tokens": completion,
        "completion_tokens_per_s": round(completion / wall, 1),
        "mean_latency_s": round(sum(r[2] for r in results) / n_requests, 2),
    }


@pytest.mark.slow
def test_throughput_is_measured(llama_server, record_property):
    """Tokens/s of the server alone at concurrency 1 and 2, printed (run with -s to see them) and
    recorded as properties for the benchmark; nothing is asserted about speed."""
    client = llama_server.client()
    _run(client, llama_server.model, 1, 1, 8)  # warm-up
    print(f"\nllama_server startup {llama_server.startup_s:.1f} s")
    for concurrency in (1, 2):
        figures = _run(client, llama_server.model, 4, concurrency, 64)
        print(f"llama_server throughput {json.dumps(figures)}")
        record_property(f"throughput_c{concurrency}", figures)
        assert figures["completion_tokens"] > 0
