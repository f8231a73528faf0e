"""The real server of the tests: ``generation.local_server`` (llama-cpp-python serving
SmolLM2-135M-Instruct), plus the rule that a missing package skips the test, or fails it under CI."""

from __future__ import annotations

import os

import pytest

from medtrinity_assets.generation.local_server import (  # noqa: F401  (re-exported for the tests)
    MODEL_ALIAS,
    LlamaServer,
    free_port,
    llama_server,
    missing_packages,
    server_command,
    smollm2_gguf,
    stop,
)


def require_packages() -> None:
    """Skip the calling test when a package is missing, naming it; under CI=true fail instead,
    so that a CI image that lost the server never turns the real-server tests into skips."""
    missing = missing_packages()
    if not missing:
        return
    message = "the real-server tests need " + ", ".join(missing) + " (pip install -r requirements.lock)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)
