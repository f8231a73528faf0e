"""MEDTRINITY_EXECUTOR picks the code location's executor; a missing integration names its package."""

from __future__ import annotations

import importlib.util

import dagster as dg
import pytest

from medtrinity_assets.defs.executors import executor_from_env


def test_default_and_named_executors():
    assert executor_from_env("") is None
    assert executor_from_env("multiprocess") is None
    assert executor_from_env("in_process") is dg.in_process_executor
    assert executor_from_env("Celery").name == "celery"


def test_k8s_needs_dagster_k8s():
    if importlib.util.find_spec("dagster_k8s") is None:
        with pytest.raises(RuntimeError, match=r"dagster-k8s==0\.29\.27"):
            executor_from_env("k8s")
    else:
        assert executor_from_env("k8s").name == "k8s"


def test_an_unknown_executor_is_an_error_listing_the_choices():
    with pytest.raises(ValueError, match="multiprocess, in_process, celery, k8s"):
        executor_from_env("dask")


def test_the_environment_is_read_when_no_value_is_given(monkeypatch):
    monkeypatch.setenv("MEDTRINITY_EXECUTOR", "celery")
    assert executor_from_env().name == "celery"


def test_the_workers_config_matches_the_executor_s():
    # Both sides of a Celery deployment must agree: the run's executor (code) and the workers
    # (deploy/celery.yaml, what `dagster-celery worker start -y` reads).
    import yaml

    from medtrinity_assets.defs.executors import CELERY_ENV, CELERY_SETTINGS
    from medtrinity_assets.paths import REPO_ROOT

    shipped = yaml.safe_load((REPO_ROOT / "deploy" / "celery.yaml").read_text())["execution"]["config"]
    assert shipped["config_source"] == CELERY_SETTINGS
    assert {key: shipped[key] for key in CELERY_ENV} == {key: {"env": name} for key, name in CELERY_ENV.items()}
