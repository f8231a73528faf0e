"""Which executor runs a run's steps, chosen by the environment of the code location, so one
image serves a laptop, a Celery cluster and Kubernetes (docs/DEPLOY.md).

MEDTRINITY_EXECUTOR:
- unset or ``multiprocess``: Dagster's default, one process per step on the run's machine;
- ``in_process``: every step in the run's own process;
- ``celery``: each step is a Celery task taken by a ``dagster-celery`` worker (any machine that
  reaches the broker, the instance's Postgres and the data root); the broker and result backend
  come from the run config (``execution: config: broker/backend``);
- ``k8s``: each step in its own Kubernetes job (``dagster-k8s``, installed in the image for it).
The executor is the code location's, not the run's: Dagster reads it when the definitions load.
"""

from __future__ import annotations

import os

import dagster as dg

EXECUTOR_ENV = "MEDTRINITY_EXECUTOR"
# The Dagster integration libraries are versioned 0.x beside dagster 1.x (1.13.27 -> 0.29.27).
_PACKAGES = {"celery": "dagster-celery==0.29.27", "k8s": "dagster-k8s==0.29.27"}


def executor_from_env(value: str | None = None) -> dg.ExecutorDefinition | None:
    """The executor MEDTRINITY_EXECUTOR names; None for Dagster's default."""
    kind = (value if value is not None else os.environ.get(EXECUTOR_ENV, "")).strip().lower()
    try:
        if kind in ("", "multiprocess", "default"):
            return None
        if kind == "in_process":
            return dg.in_process_executor
        if kind == "celery":
            from dagster_celery import celery_executor

            return celery_executor
        if kind == "k8s":
            from dagster_k8s import k8s_job_executor

            return k8s_job_executor
    except ImportError as error:
        raise RuntimeError(f"{EXECUTOR_ENV}={kind} needs the package {_PACKAGES[kind]} (pip install it): {error}") from error
    raise ValueError(f"{EXECUTOR_ENV}={kind!r}: expected one of multiprocess, in_process, celery, k8s")
