"""A chat-completions client that an unreliable endpoint cannot break (issue 9, item 4).

``ChatEndpoint`` wraps the official ``openai`` client (its own retries off) and adds what a
pipeline needs from any OpenAI-compatible server (OpenAI, vLLM, llama.cpp, Ollama):

- a timeout per request;
- bounded retries with exponential backoff and jitter; on 429/503 (any retryable status that
  sends it) the wait is at least the server's ``Retry-After`` (seconds or an HTTP date) or
  ``retry-after-ms``; a wait longer than ``max_retry_after_s`` is not waited for: the call fails;
- a circuit breaker: after ``breaker_threshold`` consecutive 5xx, timeout or connection failures
  the circuit opens for ``breaker_cooldown_s``; calls then fail fast with ``CircuitOpenError``
  and never reach the server; after the cool-down one trial call is let through (half-open): a
  success closes the circuit, a failure opens it again;
- a response cache on disk keyed by sha256 of (model, canonical JSON of messages and params,
  attempt; an image's data URL enters as its own sha256, not as megabytes), holding the response text, finish reason and usage, written atomically (temp file
  then rename), so a rerun of a partition makes no call;
- ``FaultCounts``, every call and fault counted, with tokens and cost from an optional price
  table (per million input / output tokens), ready for Dagster materialization metadata.

The response body is parsed here, not by the SDK: a body that is not a chat completion (bad
JSON, no choices, no text) is a fault of kind ``malformed``, retried like a 5xx but not counted
towards the circuit. A response cut off by the token limit (``finish_reason == "length"``) is a
success with ``ChatResult.truncated`` set and counted in ``FaultCounts.truncated``; whether to
retry it (with more tokens, or ``attempt=1`` for a fresh sample) is the writer's call.

``parse_json_object`` reads the JSON object a model was asked for out of its text: code fences
stripped, the first balanced ``{...}`` that parses is returned; text with an object that never
closes raises ``TruncatedOutputError``, text with none that parses ``MalformedOutputError``.

Use::

    config = EndpointConfig(base_url="http://127.0.0.1:8080/v1", model="smollm2", api_key_env=None,
                            timeout_s=60, cache_dir=data_root / "llm_cache",
                            prices={"gpt-4o-mini": Price(0.15, 0.60)})
    with ChatEndpoint(config) as endpoint:
        result = endpoint.complete(messages, max_tokens=512, response_format={"type": "json_object"})
        parts = parse_json_object(result.text)      # TruncatedOutputError if result.truncated
    metadata = endpoint.counts.as_metadata()         # calls, retries, http_429, ..., cost_usd

Nothing here depends on Dagster or on the writers.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import os
import random
import re
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import openai

# ---------------------------------------------------------------------------------------------
# Errors


class LLMError(Exception):
    """Base of every error this module raises."""


class LLMConfigError(LLMError):
    """The endpoint is misconfigured (e.g. the API key's environment variable is not set)."""


class EndpointError(LLMError):
    """A call failed for good: a non-retryable answer, or the retries ran out.

    ``kind`` is one of ``http_429``, ``http_5xx``, ``http_4xx``, ``timeout``, ``connection``,
    ``malformed``; ``status`` the last HTTP status (None without one); ``attempts`` how many
    requests were made.
    """

    def __init__(self, message: str, *, kind: str, status: int | None = None, attempts: int = 0):
        super().__init__(message)
        self.kind = kind
        self.status = status
        self.attempts = attempts


class CircuitOpenError(LLMError):
    """The circuit breaker is open: the call was refused without reaching the endpoint."""

    def __init__(self, message: str, *, retry_in_s: float):
        super().__init__(message)
        self.retry_in_s = retry_in_s


class ModelOutputError(LLMError):
    """The model's text does not hold the JSON object asked for."""


class MalformedOutputError(ModelOutputError):
    """No JSON object in the text parses."""


class TruncatedOutputError(MalformedOutputError):
    """The text opens a JSON object that never closes: the output was cut off."""


# ---------------------------------------------------------------------------------------------
# Counting and pricing


@dataclass
class FaultCounts:
    """Calls and faults of one endpoint (or a sum of several): goes into Dagster metadata.

    ``calls`` counts ``complete`` calls (cache hits included), ``requests`` the HTTP requests
    made, ``retries`` the requests after the first of a call, ``failures`` the calls that raised,
    ``cache_errors`` the answers that could not be written to the cache (returned all the same).
    Tokens and ``cost_usd`` are those of requests made in this run; cache hits cost nothing.
    """

    calls: int = 0
    requests: int = 0
    cache_hits: int = 0
    retries: int = 0
    http_429: int = 0
    http_5xx: int = 0
    http_4xx: int = 0
    timeouts: int = 0
    connection_errors: int = 0
    malformed: int = 0
    truncated: int = 0
    circuit_open: int = 0
    failures: int = 0
    cache_errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0

    def __add__(self, other: FaultCounts) -> FaultCounts:
        return FaultCounts(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})

    def as_metadata(self) -> dict[str, int | float]:
        """Plain numbers, one per field (cost rounded to 1e-6 USD)."""
        out = asdict(self)
        out["cost_usd"] = round(self.cost_usd, 6)
        return out


@dataclass(frozen=True)
class Price:
    """USD per million input (prompt) and output (completion) tokens."""

    input_per_million: float
    output_per_million: float

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input_per_million + completion_tokens * self.output_per_million) / 1e6


def price_for(prices: Price | Mapping[str, Price] | None, model: str) -> Price | None:
    """The price of ``model``: one price for every model, a table by model name, or none."""
    if prices is None or isinstance(prices, Price):
        return prices
    return prices.get(model)


# ---------------------------------------------------------------------------------------------
# Retry-After


def retry_after_seconds(headers: Mapping[str, str] | None, *, now: float | None = None) -> float | None:
    """Seconds the server asks us to wait, from ``retry-after-ms`` or ``Retry-After``.

    ``Retry-After`` is delta-seconds or an HTTP date (RFC 9110); a date in the past is 0.
    Unparseable or absent: None. ``now`` is a Unix time (for tests).
    """
    if not headers:
        return None
    lowered = {k.lower(): v for k, v in headers.items()}
    ms = lowered.get("retry-after-ms")
    if ms is not None:
        try:
            value = float(ms) / 1000.0
            if value >= 0:
                return value
        except ValueError:
            pass
    raw = lowered.get("retry-after")
    if raw is None:
        return None
    raw = raw.strip()
    try:
        value = float(raw)
        return value if value >= 0 else None
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


# ---------------------------------------------------------------------------------------------
# Circuit breaker


class CircuitBreaker:
    """Closed → open after ``threshold`` consecutive failures → half-open after ``cooldown_s``.

    Half-open lets one trial call through at a time; its success closes the circuit, its
    failure opens it for another cool-down. Thread-safe.
    """

    def __init__(self, threshold: int, cooldown_s: float, clock: Callable[[], float] = time.monotonic):
        self.threshold = max(1, threshold)
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._opened_at: float | None = None
        self._trial_in_flight = False

    @property
    def state(self) -> str:
        with self._lock:
            return self._state()

    def _state(self) -> str:
        if self._opened_at is None:
            return "closed"
        if self._clock() - self._opened_at >= self.cooldown_s:
            return "half_open"
        return "open"

    def before_request(self) -> None:
        """Raise ``CircuitOpenError`` unless a request may go out now."""
        with self._lock:
            state = self._state()
            if state == "closed":
                return
            if state == "half_open" and not self._trial_in_flight:
                self._trial_in_flight = True
                return
            remaining = max(0.0, self.cooldown_s - (self._clock() - (self._opened_at or 0.0)))
            raise CircuitOpenError(
                f"circuit open after {self._failures} consecutive endpoint failures; "
                f"next trial in {remaining:.1f} s",
                retry_in_s=remaining,
            )

    def record_success(self) -> None:
        with self._lock:
            self._failures = 0
            self._opened_at = None
            self._trial_in_flight = False

    def record_failure(self) -> None:
        with self._lock:
            self._failures += 1
            if self._trial_in_flight or self._failures >= self.threshold:
                self._opened_at = self._clock()
            self._trial_in_flight = False

    def record_neutral(self) -> None:
        """An answer that says nothing about the server's health (429, 4xx, bad body)."""
        with self._lock:
            self._trial_in_flight = False


# ---------------------------------------------------------------------------------------------
# Response cache


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def _digest_data_urls(value: Any) -> Any:
    """``value`` with every data URL (an image sent to a vision model) replaced by its sha256:
    the key material stays small and still tells two images apart."""
    if isinstance(value, str):
        if value.startswith("data:"):
            return "data-sha256:" + hashlib.sha256(value.encode("utf-8")).hexdigest()
        return value
    if isinstance(value, Mapping):
        return {k: _digest_data_urls(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_digest_data_urls(v) for v in value]
    return value


def cache_material(model: str, messages: Sequence[Mapping[str, Any]], params: Mapping[str, Any]) -> str:
    """What a cache key hashes: canonical JSON of the model, the messages (data URLs as their
    digest) and the request parameters."""
    return canonical_json({"model": model, "messages": _digest_data_urls(list(messages)), "params": dict(params)})


def cache_key(model: str, messages: Sequence[Mapping[str, Any]], params: Mapping[str, Any]) -> str:
    """sha256 of ``cache_material``."""
    return hashlib.sha256(cache_material(model, messages, params).encode("utf-8")).hexdigest()


class ResponseCache:
    """One JSON file per key under ``root/<key[:2]>/<key>.json``, written temp-then-rename."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        path = self.path(key)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return None  # a damaged entry is a miss; the next success overwrites it
        if not isinstance(data, dict) or data.get("key") != key or not isinstance(data.get("text"), str):
            return None
        return data

    def put(self, key: str, entry: Mapping[str, Any]) -> Path:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{key[:16]}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump({**entry, "key": key}, fh, ensure_ascii=False, sort_keys=True)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        return path


# ---------------------------------------------------------------------------------------------
# The endpoint


@dataclass(frozen=True)
class EndpointConfig:
    """Where and how to call. ``api_key_env`` names the environment variable holding the key;
    None for a local server that wants none."""

    base_url: str
    model: str
    api_key_env: str | None = "OPENAI_API_KEY"
    timeout_s: float = 120.0
    max_attempts: int = 4
    backoff_base_s: float = 1.0
    backoff_max_s: float = 30.0
    jitter: float = 0.25
    max_retry_after_s: float = 120.0
    breaker_threshold: int = 5
    breaker_cooldown_s: float = 60.0
    cache_dir: str | os.PathLike[str] | None = None
    prices: Price | Mapping[str, Price] | None = None
    temperature: float | None = 0.0
    max_tokens: int | None = None


@dataclass(frozen=True)
class ChatResult:
    text: str
    finish_reason: str | None
    model: str
    key: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    cached: bool = False
    attempts: int = 0

    @property
    def truncated(self) -> bool:
        """Cut off by the token limit: the text is probably incomplete."""
        return self.finish_reason == "length"


class _Malformed(Exception):
    pass


_NO_KEY = "no-key"


class ChatEndpoint:
    """Chat completions at one OpenAI-compatible endpoint; safe to share between threads."""

    def __init__(
        self,
        config: EndpointConfig,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        client: openai.OpenAI | None = None,
    ):
        self.config = config
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self._counts = FaultCounts()
        self.breaker = CircuitBreaker(config.breaker_threshold, config.breaker_cooldown_s, clock)
        self.cache = ResponseCache(config.cache_dir) if config.cache_dir is not None else None
        self.price = price_for(config.prices, config.model)
        self._client = client or openai.OpenAI(
            base_url=config.base_url,
            api_key=self._api_key(config),
            timeout=config.timeout_s,
            max_retries=0,
        )

    @staticmethod
    def _api_key(config: EndpointConfig) -> str:
        if config.api_key_env is None:
            return _NO_KEY
        key = os.environ.get(config.api_key_env)
        if not key:
            raise LLMConfigError(
                f"the API key's environment variable {config.api_key_env} is not set "
                "(set it, or set api_key_env to None for a local server that needs no key)"
            )
        return key

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> ChatEndpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- counters -----------------------------------------------------------------------------

    @property
    def counts(self) -> FaultCounts:
        """A snapshot of the counts so far."""
        with self._lock:
            return FaultCounts(**asdict(self._counts))

    def _count(self, **increments: float) -> None:
        with self._lock:
            for name, value in increments.items():
                setattr(self._counts, name, getattr(self._counts, name) + value)

    # -- the call -----------------------------------------------------------------------------

    def request_params(self, **overrides: Any) -> dict[str, Any]:
        """The parameters sent with the messages: config defaults, then ``overrides`` (None
        values dropped)."""
        params: dict[str, Any] = {"temperature": self.config.temperature, "max_tokens": self.config.max_tokens}
        params.update(overrides)
        return {k: v for k, v in params.items() if v is not None}

    def key_for(self, messages: Sequence[Mapping[str, Any]], *, attempt: int = 0, **params: Any) -> str:
        material = self.request_params(**params)
        if attempt:
            material["_attempt"] = attempt
        return cache_key(self.config.model, messages, material)

    def complete(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        attempt: int = 0,
        use_cache: bool = True,
        timeout_s: float | None = None,
        **params: Any,
    ) -> ChatResult:
        """One chat completion. ``params`` (temperature, max_tokens, response_format, ...) go
        to the endpoint and into the cache key; ``attempt`` > 0 asks for a fresh answer to the
        same prompt (a writer's retry) while still caching it for reruns.

        Raises ``CircuitOpenError`` (fast, nothing sent) or ``EndpointError`` (retries spent or
        a non-retryable answer). A truncated answer is returned, not raised.
        """
        self._count(calls=1)
        sent = self.request_params(**params)
        key = self.key_for(messages, attempt=attempt, **params)
        if self.cache is not None and use_cache:
            hit = self.cache.get(key)
            if hit is not None:
                self._count(cache_hits=1)
                usage = hit.get("usage") or {}
                return ChatResult(
                    text=hit["text"],
                    finish_reason=hit.get("finish_reason"),
                    model=hit.get("model", self.config.model),
                    key=key,
                    prompt_tokens=int(usage.get("prompt_tokens") or 0),
                    completion_tokens=int(usage.get("completion_tokens") or 0),
                    cost_usd=0.0,
                    cached=True,
                    attempts=0,
                )
        text, finish_reason, prompt_tokens, completion_tokens, attempts = self._call_with_retries(
            messages, sent, timeout_s if timeout_s is not None else self.config.timeout_s
        )
        cost = self.price.cost(prompt_tokens, completion_tokens) if self.price else 0.0
        self._count(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            cost_usd=cost,
            truncated=1 if finish_reason == "length" else 0,
        )
        if self.cache is not None:
            entry = {
                "model": self.config.model,
                "params": sent,
                "text": text,
                "finish_reason": finish_reason,
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens},
            }
            try:
                self.cache.put(key, entry)
            except OSError:
                self._count(cache_errors=1)  # a paid answer is not thrown away for want of a cache
        return ChatResult(
            text=text,
            finish_reason=finish_reason,
            model=self.config.model,
            key=key,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            cost_usd=cost,
            cached=False,
            attempts=attempts,
        )

    def _backoff(self, retry: int) -> float:
        delay = min(self.config.backoff_max_s, self.config.backoff_base_s * (2 ** (retry - 1)))
        return delay * (1.0 - self.config.jitter * self._rng.random())

    def _call_with_retries(
        self, messages: Sequence[Mapping[str, Any]], params: Mapping[str, Any], timeout_s: float
    ) -> tuple[str, str | None, int, int, int]:
        cfg = self.config
        attempts = 0
        while True:
            try:
                self.breaker.before_request()
            except CircuitOpenError:
                self._count(circuit_open=1, failures=1)
                raise
            attempts += 1
            self._count(requests=1, retries=1 if attempts > 1 else 0)
            retry_after: float | None = None
            try:
                raw = self._client.chat.completions.with_raw_response.create(
                    model=cfg.model, messages=list(messages), timeout=timeout_s, **params
                )
                parsed = _parse_completion(raw.http_response.content)
            except openai.APITimeoutError as exc:
                self._count(timeouts=1)
                self.breaker.record_failure()
                kind, status, error = "timeout", None, exc
            except openai.APIConnectionError as exc:
                self._count(connection_errors=1)
                self.breaker.record_failure()
                kind, status, error = "connection", None, exc
            except openai.APIStatusError as exc:
                status = exc.status_code
                retry_after = retry_after_seconds(exc.response.headers)
                error = exc
                if status == 429:
                    self._count(http_429=1)
                    self.breaker.record_neutral()
                    kind = "http_429"
                elif status >= 500:
                    self._count(http_5xx=1)
                    self.breaker.record_failure()
                    kind = "http_5xx"
                else:
                    self._count(http_4xx=1, failures=1)
                    self.breaker.record_neutral()
                    raise EndpointError(
                        f"endpoint answered {status}: {_short(exc)}", kind="http_4xx", status=status, attempts=attempts
                    ) from exc
            except _Malformed as exc:
                self._count(malformed=1)
                self.breaker.record_neutral()
                kind, status, error = "malformed", None, exc
            except BaseException:
                self.breaker.record_neutral()  # never leave a half-open trial marked in flight
                raise
            else:
                self.breaker.record_success()
                return (*parsed, attempts)

            if attempts >= cfg.max_attempts:
                self._count(failures=1)
                raise EndpointError(
                    f"{kind} after {attempts} attempts: {_short(error)}", kind=kind, status=status, attempts=attempts
                ) from error
            delay = self._backoff(attempts)
            if retry_after is not None:
                if retry_after > cfg.max_retry_after_s:
                    self._count(failures=1)
                    raise EndpointError(
                        f"{kind}: the endpoint asks to wait {retry_after:.0f} s, over max_retry_after_s "
                        f"{cfg.max_retry_after_s:.0f} s",
                        kind=kind,
                        status=status,
                        attempts=attempts,
                    ) from error
                delay = max(delay, retry_after)
            self._sleep(delay)


def _short(error: BaseException, limit: int = 200) -> str:
    text = str(error).replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _parse_completion(body: bytes) -> tuple[str, str | None, int, int]:
    """(text, finish_reason, prompt_tokens, completion_tokens) of a chat.completion body."""
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise _Malformed(f"response body is not JSON: {body[:80]!r}") from exc
    if not isinstance(data, dict):
        raise _Malformed("response body is not a JSON object")
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise _Malformed("response has no choices")
    choice = choices[0]
    message = choice.get("message")
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, list):  # content parts
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    if not isinstance(content, str):
        raise _Malformed("response choice has no text content")
    finish_reason = choice.get("finish_reason")
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    return content, finish_reason if isinstance(finish_reason, str) else None, _int(usage.get("prompt_tokens")), _int(
        usage.get("completion_tokens")
    )


def _int(value: Any) -> int:
    try:
        return max(0, int(value))
    except (TypeError, ValueError):
        return 0


# ---------------------------------------------------------------------------------------------
# JSON out of model text

_FENCE = re.compile(r"```[A-Za-z0-9_-]*[ \t]*\n?(.*?)(?:```|\Z)", re.S)
_TRAILING_COMMA = re.compile(r",\s*([}\]])")


def parse_json_object(text: str) -> dict[str, Any]:
    """The first JSON object in a model's text.

    Code fences are stripped (an unclosed fence too); each ``{`` is tried in turn, its balanced
    ``{...}`` span (strings and escapes respected) parsed, a trailing comma and raw control
    characters inside strings tolerated. Raises
    ``TruncatedOutputError`` when an object opens and never closes, else
    ``MalformedOutputError`` when none parses.
    """
    if not isinstance(text, str):
        raise MalformedOutputError(f"model output is {type(text).__name__}, not text")
    fenced = _FENCE.findall(text)
    candidates = [block for block in fenced if "{" in block] + [text]
    saw_unclosed = False
    for candidate in candidates:
        start = candidate.find("{")
        while start != -1:
            end = _balanced_end(candidate, start)
            if end is None:
                saw_unclosed = True
                break  # every later "{" lies inside this unclosed object
            span = candidate[start : end + 1]
            for attempt in (span, _TRAILING_COMMA.sub(r"\1", span)):
                try:
                    value = json.loads(attempt, strict=False)  # a raw newline inside a string: a model habit
                except ValueError:
                    continue
                if isinstance(value, dict):
                    return value
            start = candidate.find("{", start + 1)
    if saw_unclosed:
        raise TruncatedOutputError(f"JSON object never closes (output cut off?): ...{text[-60:]!r}")
    raise MalformedOutputError(f"no JSON object parses in the output: {text[:80]!r}")


def _balanced_end(text: str, start: int) -> int | None:
    depth = 0
    in_string = False
    escaped = False
    for i in range(start, len(text)):
        ch = text[i]
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
            if depth == 0:
                return i  # a "]" here is a mismatch: the span fails to parse, the next "{" is tried
    return None


__all__ = [
    "ChatEndpoint",
    "ChatResult",
    "CircuitBreaker",
    "CircuitOpenError",
    "EndpointConfig",
    "EndpointError",
    "FaultCounts",
    "LLMConfigError",
    "LLMError",
    "MalformedOutputError",
    "ModelOutputError",
    "Price",
    "ResponseCache",
    "TruncatedOutputError",
    "cache_key",
    "cache_material",
    "parse_json_object",
    "price_for",
    "retry_after_seconds",
]
