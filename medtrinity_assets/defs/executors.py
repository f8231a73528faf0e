"""Which executor runs a run's steps, chosen by the environment of the code location, so one
image serves a laptop, a Celery cluster and Kubernetes (docs/DEPLOY.md).

MEDTRINITY_EXECUTOR:
- unset or ``multiprocess``: Dagster's default, one process per step on the run's machine;
- ``in_process``: every step in the run's own process;
- ``celery``: each step is a Celery task taken by a ``dagster-celery`` worker (any machine that
  reaches the broker, the instance's Postgres and the data root); broker and result backend from
  DAGSTER_CELERY_BROKER_URL and DAGSTER_CELERY_BACKEND_URL, so runs a sensor or the schedule
  starts need no run config; the workers read the same settings from deploy/celery.yaml;
- ``k8s``: each step in its own Kubernetes job (``dagster-k8s``, installed in the image for it).
The executor is the code location's, not the run's: Dagster reads it when the definitions load.
"""

from __future__ import annotations

import os

import dagster as dg

EXECUTOR_ENV = "MEDTRINITY_EXECUTOR"
CELERY_ENV = {"broker": "DAGSTER_CELERY_BROKER_URL", "backend": "DAGSTER_CELERY_BACKEND_URL"}
# The Celery app's settings, the same on the run's side and the workers' (deploy/celery.yaml; a
# test keeps the two equal). Steps run for minutes to hours: a worker takes one at a time and
# acknowledges it when done (acks_late, prefetch 1), so a busy worker holds no second step while
# others idle, and a step whose worker died is handed out again. Redis hands an unacknowledged
# task to another worker after visibility_timeout: above the longest step (run monitoring's
# max_runtime_seconds, 12 h), or a long step would run twice.
CELERY_SETTINGS = {
    "task_acks_late": True,
    "worker_prefetch_multiplier": 1,
    "broker_transport_options": {
        "visibility_timeout": 46800,
        # dagster-celery's defaults for reaching the broker (this dict replaces theirs).
        "max_retries": 3,
        "interval_start": 0,
        "interval_step": 0.2,
        "interval_max": 0.5,
    },
}
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

            return celery_executor.configured(
                {**{key: {"env": name} for key, name in CELERY_ENV.items()}, "config_source": CELERY_SETTINGS}
            )
        if kind == "k8s":
            from dagster_k8s import k8s_job_executor

            return k8s_job_executor
    except ImportError as error:
        raise RuntimeError(f"{EXECUTOR_ENV}={kind} needs the package {_PACKAGES[kind]} (pip install it): {error}") from error
    raise ValueError(f"{EXECUTOR_ENV}={kind!r}: expected one of multiprocess, in_process, celery, k8s")
