"""Shared fixtures: isolated data roots so tests never touch the user's var/ or data/raw/."""

from __future__ import annotations

import os

import pytest

# Nothing may be fetched from a model hub, in tests as in production.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from medtrinity_assets.paths import realdata_dir

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
