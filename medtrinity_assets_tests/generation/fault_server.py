"""A small OpenAI-compatible server that misbehaves on a script, for the LLM client's fault tests.

``FaultServer(script)`` listens on 127.0.0.1 (a free port) and answers each POST to
``/v1/chat/completions`` with the next ``Step`` of its script; when the script is spent it
answers ``default`` (ok). Every request it got is recorded (path, headers, JSON body), also the
ones whose client gave up waiting. Use it as a context manager::

    with FaultServer([Step.status(429, retry_after="1"), Step.ok("{}")]) as server:
        ...  # base_url=server.base_url
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

DEFAULT_TEXT = '{"modality": "CT", "organ": "liver"}'


@dataclass(frozen=True)
class Step:
    """One scripted answer. ``kind``: ok, status, slow, malformed, cutoff, no_choices."""

    kind: str
    text: str = DEFAULT_TEXT
    status: int = 200
    retry_after: str | None = None
    delay_s: float = 0.0
    prompt_tokens: int = 120
    completion_tokens: int = 30

    @classmethod
    def ok(cls, text: str = DEFAULT_TEXT, *, prompt_tokens: int = 120, completion_tokens: int = 30) -> Step:
        return cls("ok", text=text, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)

    @classmethod
    def error(cls, status: int, *, retry_after: str | None = None) -> Step:
        """An HTTP error with an OpenAI-style error body (429, 500, 503, 400, ...)."""
        return cls("status", status=status, retry_after=retry_after)

    @classmethod
    def slow(cls, delay_s: float, text: str = DEFAULT_TEXT) -> Step:
        """A valid answer, sent after ``delay_s`` (beyond the client's timeout)."""
        return cls("slow", text=text, delay_s=delay_s)

    @classmethod
    def malformed(cls) -> Step:
        """Status 200, content type JSON, a body that is not JSON (cut mid-object)."""
        return cls("malformed")

    @classmethod
    def no_choices(cls) -> Step:
        """Status 200, valid JSON that is not a chat completion."""
        return cls("no_choices")

    @classmethod
    def cutoff(cls, text: str = '{"modality": "CT", "organ": "li', *, completion_tokens: int = 16) -> Step:
        """A completion stopped by the token limit: finish_reason "length", text cut off."""
        return cls("cutoff", text=text, completion_tokens=completion_tokens)


def completion_body(text: str, finish_reason: str, prompt_tokens: int, completion_tokens: int, model: str) -> dict:
    return {
        "id": "chatcmpl-fault",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason}
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


class FaultServer:
    def __init__(self, script: list[Step] | None = None, default: Step | None = None):
        self._script: deque[Step] = deque(script or [])
        self.default = default or Step.ok()
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    # -- control ------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    @property
    def request_count(self) -> int:
        with self._lock:
            return len(self.requests)

    def push(self, *steps: Step) -> None:
        with self._lock:
            self._script.extend(steps)

    def start(self) -> FaultServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FaultServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _next(self, record: dict[str, Any]) -> Step:
        with self._lock:
            self.requests.append(record)
            return self._script.popleft() if self._script else self.default

    # -- the handler --------------------------------------------------------------------------

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    body = {"_raw": raw.decode("utf-8", "replace")}
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._send(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
                    return
                step = server._next({"path": self.path, "headers": dict(self.headers), "body": body})
                model = body.get("model", "fault-model") if isinstance(body, dict) else "fault-model"
                try:
                    self._answer(step, model)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout): expected for slow steps

            def _answer(self, step: Step, model: str) -> None:
                if step.kind == "ok":
                    self._send(200, completion_body(step.text, "stop", step.prompt_tokens, step.completion_tokens, model))
                elif step.kind == "cutoff":
                    self._send(200, completion_body(step.text, "length", step.prompt_tokens, step.completion_tokens, model))
                elif step.kind == "slow":
                    if server._stop.wait(step.delay_s):
                        return
                    self._send(200, completion_body(step.text, "stop", step.prompt_tokens, step.completion_tokens, model))
                elif step.kind == "status":
                    headers = {"Retry-After": step.retry_after} if step.retry_after is not None else {}
                    error = {"error": {"message": f"scripted {step.status}", "type": "server_error", "code": step.status}}
                    self._send(step.status, error, headers)
                elif step.kind == "malformed":
                    self._send_raw(200, b'{"id": "chatcmpl-fault", "choices": [{"message": {"content": "{\\"mod')
                elif step.kind == "no_choices":
                    self._send(200, {"id": "chatcmpl-fault", "object": "chat.completion", "detail": "no choices"})
                else:
                    raise ValueError(f"unknown step kind {step.kind!r}")

            def _send(self, status: int, payload: dict, headers: dict[str, str] | None = None) -> None:
                self._send_raw(status, json.dumps(payload).encode("utf-8"), headers)

            def _send_raw(self, status: int, data: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

        return Handler
