"""The model writer against a real OpenAI-compatible server that misbehaves on a script
(fault_server.py), through the real openai client, the real verifier and real facts."""

from __future__ import annotations

import base64
import json
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import replace

import pytest
from generation.fault_server import FaultServer, Step
from generation.writer_jobs import CT_LIVER, LIVER_KNOWLEDGE as KNOWLEDGE, liver_job

from medtrinity_assets.generation import model_writer
from medtrinity_assets.generation.llm_client import LLMConfigError
from medtrinity_assets.generation.model_writer import (
    BOUNDED_SCHEMA,
    PROMPT_HASH,
    PROMPT_VERSION,
    ModelWriter,
    build_messages,
    read_answer,
)
from medtrinity_assets.generation.verifier import verify
from medtrinity_assets.generation.writers import PART_NAMES, WriterConfig, make_writer

GOOD = {
    "part_modality": "This is a CT image. It measures 500 by 400 pixels.",  # the second says nothing checkable
    "part_organ_tissue": "It shows the liver. The source labels it with the finding liver tumour.",
    "part_roi_analysis": "The tumour lies in the upper left part of the image, on the patient's left side.",
    "part_texture_colour": "The region is hypodense compared with the surrounding liver. Its texture is heterogeneous.",
    "part_relations": "It is small and covers 2.1% of the image.",
    "knowledge_ids": ["liver_tumour", "not_retrieved_entry"],
}
# The same answer with the modality and the patient side wrong.
WRONG = {**GOOD, "part_modality": "This is an MRI image.",
         "part_roi_analysis": "The tumour lies in the upper left part of the image. It is on the patient's right side."}


def answer(parts: dict) -> Step:
    return Step.ok(json.dumps(parts), prompt_tokens=900, completion_tokens=150)


def config(server: FaultServer, **overrides) -> WriterConfig:
    settings = dict(kind="llm", base_url=server.base_url, model="fault-model", api_key_env=None, max_tokens=400,
                    max_retries=2, timeout_s=5.0, prices={"fault-model": (1.0, 4.0)})
    settings.update(overrides)
    return WriterConfig(**settings)


def writer(server: FaultServer, **overrides) -> ModelWriter:
    # Fast backoff, so the fault tests wait for Retry-After and not for the default 1 s steps.
    endpoint = {k: overrides.pop(k) for k in ("max_attempts", "breaker_threshold", "breaker_cooldown_s") if k in overrides}
    return ModelWriter(config(server, **overrides), backoff_base_s=0.01, backoff_max_s=0.05, **endpoint)


def sent_messages(server: FaultServer, index: int) -> list[dict]:
    return server.requests[index]["body"]["messages"]


# --- kept ---------------------------------------------------------------------------------------


def test_verified_answer_is_kept_and_unchecked_sentences_dropped():
    with FaultServer(default=answer(GOOD)) as server, closing(writer(server)) as w:
        written = w.write(liver_job())
    assert written.writer == "llm" and written.fallback_reason is None
    assert written.verified and written.flags == [] == verify(written.description, written.facts)
    # "It measures 500 by 400 pixels." carries no claim the verifier checks: not verified, so not kept.
    assert written.parts["part_modality"] == "This is a CT image."
    assert written.parts["part_relations"] == GOOD["part_relations"]
    assert (written.sentences_written, written.sentences_dropped) == (8, 1)
    assert written.description == "\n\n".join(written.parts[name] for name in PART_NAMES)
    # Only retrieved ids are kept; the cited entry joins the facts the text rests on.
    assert written.knowledge_ids == ["liver_tumour"]
    assert [f.value for f in written.facts.record("knowledge")] == ["liver_tumour"]
    assert (written.model, written.prompt_hash, written.prompt_version) == ("fault-model", PROMPT_HASH, PROMPT_VERSION)
    assert (written.attempts, written.prompt_tokens, written.completion_tokens) == (1, 900, 150)
    assert written.cost_usd == pytest.approx((900 * 1.0 + 150 * 4.0) / 1e6)
    assert not written.cached and written.faults == {}
    body = server.requests[0]["body"]
    assert body["response_format"] == {"type": "json_object", "schema": BOUNDED_SCHEMA}
    assert body["max_tokens"] == 400 and body["model"] == "fault-model"
    user = body["messages"][1]["content"]
    assert '{"roi": "a", "attribute": "patient_side", "value": "left", "provenance": "geometry"' in user
    assert '"attribute": "margin", "value": "ill-defined", "provenance": "measurement", "confidence": 0.45' in user
    assert "[liver_tumour] On contrast CT a liver tumour" in user and "never copy them" in user
    assert "A CT image of the liver with a liver tumour." in user


def test_tolerant_reading_of_key_spellings_and_sentence_lists():
    variant = {
        "Modality": ["This is a CT image"],
        "Organ and tissue": "It shows the liver.",
        "3. ROI analysis": ["The tumour lies in the upper left part of the image", "It is on the patient's left side."],
        "texture_color": "The region is hypodense.",
        "RELATIONS": "It covers 2.1% of the image.",
        "knowledge": "liver_tumour",
    }
    read = read_answer("Here is the JSON:\n```json\n" + json.dumps({"description": variant}) + "\n```", ["liver_tumour"])
    assert read.missing == [] and read.knowledge_ids == ["liver_tumour"]
    assert read.parts["part_modality"] == "This is a CT image."
    assert read.parts["part_roi_analysis"] == ("The tumour lies in the upper left part of the image. "
                                               "It is on the patient's left side.")
    with FaultServer(default=Step.ok(json.dumps(variant))) as server, closing(writer(server)) as w:
        written = w.write(liver_job())
    assert written.writer == "llm" and written.verified and written.attempts == 1


def test_a_sentence_copied_from_a_passage_is_not_kept():
    copied = "On contrast CT a liver tumour is often a focal hypodense mass."
    assert copied[:-1] in KNOWLEDGE["knowledge_texts"][0]
    pasted = {**GOOD, "part_texture_colour": "The region is hypodense compared with the surrounding liver. " + copied}
    with FaultServer(default=answer(pasted)) as server, closing(writer(server)) as w:
        written = w.write(liver_job())
    assert written.writer == "llm" and written.verified
    assert written.parts["part_texture_colour"] == "The region is hypodense compared with the surrounding liver."
    assert "focal hypodense mass" not in written.description


def test_response_format_follows_the_config():
    with FaultServer(default=answer(GOOD)) as server:
        with closing(writer(server, response_format="json_schema")) as w:
            w.write(liver_job())
        with closing(writer(server, response_format="none")) as w:
            w.write(liver_job())
    strict = server.requests[0]["body"]["response_format"]
    assert strict["type"] == "json_schema" and strict["json_schema"]["strict"] is True
    assert strict["json_schema"]["schema"] == model_writer.OUTPUT_SCHEMA  # no length keywords for strict mode
    assert strict["json_schema"]["schema"]["required"] == [*PART_NAMES, "knowledge_ids"]
    assert "response_format" not in server.requests[1]["body"]


def test_rows_written_from_several_threads_are_all_kept():
    with FaultServer(default=answer(GOOD)) as server, closing(writer(server, concurrency=4)) as w:
        with ThreadPoolExecutor(4) as pool:
            rows = list(pool.map(w.write, [liver_job(f"rec{i}") for i in range(8)]))
        counts = w.endpoint_counts()
    assert [r.writer for r in rows] == ["llm"] * 8 and all(r.verified for r in rows)
    assert {r.facts.facts[0].record_id for r in rows} == {f"rec{i}" for i in range(8)}
    assert (counts.calls, counts.requests, counts.prompt_tokens) == (8, 8, 8 * 900)


# --- the verifier's feedback -----------------------------------------------------------------------


def test_contradiction_is_sent_back_and_the_correction_kept():
    with FaultServer([answer(WRONG), answer(GOOD)]) as server, closing(writer(server)) as w:
        written = w.write(liver_job())
    assert written.writer == "llm" and written.verified and written.attempts == 2
    assert written.faults == {"unverified": 1}
    assert written.parts["part_modality"] == "This is a CT image."
    assert (written.prompt_tokens, written.completion_tokens) == (1800, 300)
    follow_up = sent_messages(server, 1)
    assert "seed" not in server.requests[0]["body"] and server.requests[1]["body"]["seed"] == 1  # a fresh sample
    assert follow_up[:2] == sent_messages(server, 0)
    assert follow_up[2] == {"role": "assistant", "content": json.dumps(WRONG)}
    feedback = follow_up[3]["content"]
    assert follow_up[3]["role"] == "user"
    assert '"This is an MRI image." is wrong' in feedback and "the modality is ct" in feedback
    assert "\"It is on the patient's right side.\" is wrong" in feedback and "is left" in feedback
    assert "upper left part of the image. It" not in feedback  # the verified sentence is not flagged


def test_a_part_of_bare_words_is_no_sentence_and_is_asked_again():
    # As SmolLM2 answers: bare words, and a lower-case run whose readable claim (CT, liver) is true.
    terse = {**GOOD, "part_modality": "CT.", "part_organ_tissue": ["ct liver, image caption: a CT of the liver",
                                                                  "It shows the liver."]}
    with FaultServer([answer(terse), answer(GOOD)]) as server, closing(writer(server)) as w:
        written = w.write(liver_job())
    assert written.writer == "llm" and written.attempts == 2 and written.faults == {}
    feedback = sent_messages(server, 1)[3]["content"]
    assert "part_modality: no full sentence states a fact" in feedback and "part_organ_tissue" not in feedback
    terse_parts = read_answer(json.dumps(terse), []).parts
    judged = model_writer.judge({name: model_writer.split_sentences(terse_parts[name]) for name in PART_NAMES},
                                liver_job().facts)
    assert judged.status["part_modality"] == ["fragment"]
    assert judged.status["part_organ_tissue"] == ["fragment", "verified"]


def test_still_wrong_after_retries_drops_the_sentence_or_falls_back():
    # Only the side sentence is wrong; its part keeps a verified sentence.
    side_wrong = {**GOOD, "part_roi_analysis": WRONG["part_roi_analysis"]}
    with FaultServer(default=answer(side_wrong)) as server:
        with closing(writer(server)) as w:
            dropped = w.write(liver_job())
        assert server.request_count == 3  # the first answer and two retries, no more
        # The last retry carries the first prompt, the latest answer and its findings only.
        assert [m["role"] for m in sent_messages(server, 2)] == ["system", "user", "assistant", "user"]
        with closing(writer(server, on_unverified="fallback")) as w:
            fallen = w.write(liver_job())
    assert dropped.writer == "llm" and dropped.verified and dropped.attempts == 3
    assert dropped.parts["part_roi_analysis"] == "The tumour lies in the upper left part of the image."
    assert "right" not in dropped.description and dropped.faults == {"unverified": 3}
    assert (dropped.sentences_written, dropped.sentences_dropped) == (9, 2)
    assert fallen.writer == "grounded-v2" and fallen.model == "fault-model" and fallen.attempts == 3
    assert fallen.fallback_reason == "unverified after 3 attempts: 1 sentence not supported by the facts"
    # The grounded text carries its own verdict.
    assert fallen.flags == verify(fallen.description, fallen.facts) == []


def test_a_part_left_without_a_verified_sentence_falls_back():
    with FaultServer(default=answer(WRONG)) as server, closing(writer(server, max_retries=1)) as w:
        written = w.write(liver_job())
    assert server.request_count == 2 and written.writer == "grounded-v2"
    assert written.fallback_reason == "unverified after 2 attempts: no verified sentence left in part_modality"
    assert written.faults == {"unverified": 2} and written.parts["part_modality"].startswith(("This", "The", "Modality", "We"))


# --- faults ----------------------------------------------------------------------------------------


def test_malformed_then_incomplete_then_good():
    incomplete = {k: v for k, v in GOOD.items() if k != "part_relations"}
    script = [Step.ok("I am sorry, I cannot write JSON."), answer(incomplete), answer(GOOD)]
    with FaultServer(script) as server, closing(writer(server)) as w:
        written = w.write(liver_job())
    assert written.writer == "llm" and written.verified and written.attempts == 3
    assert written.faults == {"incomplete": 1, "malformed": 1}
    # A bad answer is asked for again, not argued with: same messages, a fresh cache key.
    assert sent_messages(server, 0) == sent_messages(server, 1) == sent_messages(server, 2)


def test_cut_off_every_time_falls_back_and_is_counted():
    with FaultServer(default=Step.cutoff()) as server, closing(writer(server)) as w:
        written = w.write(liver_job())
        counts = w.endpoint_counts()
    assert server.request_count == 3 and written.writer == "grounded-v2" and written.verified
    assert written.fallback_reason == "truncated output after 3 attempts"
    assert written.faults == {"truncated": 3} and counts.truncated == 3
    assert written.attempts == 3 and written.completion_tokens == 3 * 16


def test_server_errors_open_the_circuit_and_every_row_still_comes_back():
    with FaultServer(default=Step.error(500)) as server, closing(
        writer(server, max_attempts=2, breaker_threshold=3, breaker_cooldown_s=60.0)
    ) as w:
        rows = [w.write(liver_job(f"rec{i}")) for i in range(3)]
        counts = w.endpoint_counts()
    assert [r.writer for r in rows] == ["grounded-v2"] * 3 and all(r.verified for r in rows)
    assert rows[0].fallback_reason == "endpoint: http_5xx after 2 requests"
    assert rows[0].faults == {"endpoint_error": 1}
    # The third failure opens the circuit inside the second row; the third row sends nothing.
    assert rows[1].fallback_reason == rows[2].fallback_reason == "endpoint: circuit open"
    assert rows[2].faults == {"circuit_open": 1} and rows[2].attempts == 0
    assert server.request_count == 3 and counts.http_5xx == 3 and counts.circuit_open == 2


def test_429_waits_for_retry_after():
    with FaultServer([Step.error(429, retry_after="1"), answer(GOOD)]) as server, closing(writer(server)) as w:
        started = time.monotonic()
        written = w.write(liver_job())
        waited = time.monotonic() - started
        counts = w.endpoint_counts()
    assert waited >= 1.0 and server.request_count == 2
    assert written.writer == "llm" and written.attempts == 1  # one answer, reached on the second request
    assert (counts.http_429, counts.retries, counts.requests) == (1, 1, 2)


def test_rerun_with_the_cache_makes_no_request_and_writes_the_same(tmp_path):
    with FaultServer([answer(WRONG), answer(GOOD)]) as server, closing(writer(server, cache_dir=tmp_path)) as w:
        first = w.write(liver_job())
    with FaultServer(default=Step.error(500)) as server, closing(writer(server, cache_dir=tmp_path)) as w:
        again = w.write(liver_job())
        counts = w.endpoint_counts()
    assert server.request_count == 0 and counts.requests == 0 and counts.cache_hits == 2
    assert first.writer == "llm" and not first.cached and again.cached
    assert replace(again, cached=False) == first


def test_missing_api_key_is_an_error_naming_the_variable(monkeypatch):
    monkeypatch.delenv("MEDTRINITY_TEST_LLM_KEY", raising=False)
    with FaultServer() as server:
        with pytest.raises(LLMConfigError, match="MEDTRINITY_TEST_LLM_KEY"):
            make_writer(config(server, api_key_env="MEDTRINITY_TEST_LLM_KEY"))
        monkeypatch.setenv("MEDTRINITY_TEST_LLM_KEY", "sk-test")
        with FaultServer(default=answer(GOOD)) as keyed, closing(make_writer(config(keyed, api_key_env="MEDTRINITY_TEST_LLM_KEY"))) as w:
            assert w.write(liver_job()).writer == "llm"
        assert keyed.requests[0]["headers"]["Authorization"] == "Bearer sk-test"


# --- the vision writer ------------------------------------------------------------------------------


def test_vlm_messages_carry_the_image_as_a_content_part():
    url = "data:image/png;base64," + base64.b64encode(b"\x89PNG fake bytes").decode()
    rois = [{"roi_id": "whole", "origin": "whole_image"}, {"roi_id": "b", "origin": "annotation:box"},
            {"roi_id": "a", "origin": "annotation:mask"}]
    messages = build_messages(liver_job().facts, KNOWLEDGE, "caption", CT_LIVER, image_url=url, rois=rois)
    assert model_writer.VLM_NOTE in messages[0]["content"]
    text, image = messages[1]["content"]
    assert text["type"] == "text" and "patient_side" in text["text"]
    # The overlay's numbers follow the ROIs' order; the whole-image entry keeps its number, undrawn.
    assert text["text"].endswith("Outlined on the image: 2 = roi b, 3 = roi a")
    assert image == {"type": "image_url", "image_url": {"url": url}}


def test_vlm_without_an_image_writes_from_the_text_and_says_so():
    with FaultServer(default=answer(GOOD)) as server, closing(writer(server, kind="vlm")) as w:
        written = w.write(liver_job())
    assert written.writer == "llm" and written.faults == {"image_unavailable": 1} and written.verified
    assert isinstance(server.requests[0]["body"]["messages"][1]["content"], str)


def test_vlm_sends_the_overlay_and_a_rerun_hits_the_cache(tmp_path):
    pytest.importorskip("medtrinity_assets.generation.roi_overlay")
    from PIL import Image

    image = tmp_path / "images" / "rec1.png"
    image.parent.mkdir()
    Image.new("L", (96, 64), 90).save(image)
    rois = ({"roi_id": "a", "label": "liver tumour", "origin": "annotation:box", "x0": 10, "y0": 8, "x1": 40, "y1": 30,
             "mask_path": None},)
    vision_job = replace(liver_job(), image_path=image, rois=rois, data_root=tmp_path)
    cache = tmp_path / "cache"
    with FaultServer(default=answer(GOOD)) as server:
        with closing(writer(server, kind="vlm", cache_dir=cache)) as w:
            first = w.write(vision_job)
        with closing(writer(server, kind="vlm", cache_dir=cache)) as w:
            again = w.write(vision_job)
    assert server.request_count == 1 and again.cached and replace(again, cached=False) == first
    assert first.writer == "vlm" and first.verified and first.faults == {}
    text, picture = server.requests[0]["body"]["messages"][1]["content"]
    assert text["type"] == "text" and picture["type"] == "image_url"
    assert text["text"].endswith("Outlined on the image: 1 = roi a")
    png = base64.b64decode(picture["image_url"]["url"].removeprefix("data:image/png;base64,"))
    assert png.startswith(b"\x89PNG")
