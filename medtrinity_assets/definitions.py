"""The one Definitions object: assets, expert models, checks, SQL models, sensors, schedule and resources."""


import dagster as dg

from medtrinity_assets.defs.assets import ASSETS, quarantine
from medtrinity_assets.defs.automation import (
    raw_files_sensor,
    refresh_sources_schedule,
    source_pipeline_job,
)
from medtrinity_assets.defs.catalog import every_spec_loads, source_catalog
from medtrinity_assets.defs.executors import executor_from_env
from medtrinity_assets.defs.experts import EXPERT_ASSETS, expert_training_sensor
from medtrinity_assets.defs.resources import PipelineSettings
from medtrinity_assets.defs.sql_models import SQL_ASSETS

defs = dg.Definitions(
    assets=[*ASSETS, *EXPERT_ASSETS, quarantine, source_catalog, *SQL_ASSETS],
    asset_checks=[every_spec_loads],
    jobs=[source_pipeline_job],
    sensors=[raw_files_sensor, expert_training_sensor],
    schedules=[refresh_sources_schedule],
    # The descriptions asset's writer resource (defs/resources.py WriterSettings) is bound to
    # that asset (defs/assets.py), not listed here: Dagster refuses the same key in both places,
    # and bound to the asset it is there in every run, the CLI's and the tests' included. The
    # launchpad configures it per run under resources.writer.
    resources={"settings": PipelineSettings()},
    # Dagster's default unless MEDTRINITY_EXECUTOR says celery or k8s (defs/executors.py).
    executor=executor_from_env(),
)
