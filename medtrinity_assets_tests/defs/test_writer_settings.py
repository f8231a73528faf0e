"""The writer resource and its wiring: the descriptions asset alone takes it and sits in the
Dagster pool "llm"; the shipped instance limits that pool; run config beats the environment,
which beats the defaults; a source can have a writer of its own; the CLI flags become run config."""

from __future__ import annotations

import argparse
import shutil

import dagster as dg
import pytest

from medtrinity_assets.cli import add_writer_flags, writer_config
from medtrinity_assets.defs.assets import ASSETS_BY_NAME
from medtrinity_assets.defs.resources import WRITER_ENV, WRITER_RESOURCE, WriterSettings
from medtrinity_assets.definitions import defs
from medtrinity_assets.paths import REPO_ROOT, DataRoot
from medtrinity_assets.pipeline import STAGES


@pytest.fixture
def clean_writer_env(monkeypatch):
    for name in WRITER_ENV.values():
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_only_the_descriptions_asset_is_in_the_llm_pool_and_has_the_writer():
    pools = {name: asset.op.pool for name, asset in ASSETS_BY_NAME.items()}
    assert pools["descriptions"] == "llm"
    # model_rois holds expert networks: the "gpu" pool (deploy/dagster.postgres.yaml).
    assert {name: pool for name, pool in pools.items() if pool} == {"descriptions": "llm", "model_rois": "gpu"}
    assert WRITER_RESOURCE in ASSETS_BY_NAME["descriptions"].resource_defs
    assert [s.name for s in STAGES if s.uses_writer] == ["descriptions"]
    # The whole code location still resolves with the resource bound to the asset.
    assert defs.resolve_implicit_global_asset_job_def() is not None


def test_the_shipped_instance_limits_the_llm_pool(tmp_path, monkeypatch):
    shutil.copy(REPO_ROOT / "dagster_home" / "dagster.yaml", tmp_path / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    with dg.DagsterInstance.get() as instance:
        config = instance.get_concurrency_config()
        assert config.pool_config.default_pool_limit == 1
        assert config.run_queue_config.max_concurrent_runs == 2


def test_run_config_then_environment_then_defaults(clean_writer_env, tmp_path):
    root = DataRoot(tmp_path)
    assert WriterSettings().config_for("any", root).kind == "grounded"

    clean_writer_env.setenv("MEDTRINITY_WRITER", "llm")
    clean_writer_env.setenv("MEDTRINITY_LLM_BASE_URL", "http://127.0.0.1:9/v1")
    clean_writer_env.setenv("MEDTRINITY_LLM_MODEL", "from-env")
    clean_writer_env.setenv("MEDTRINITY_LLM_API_KEY_ENV", "none")
    clean_writer_env.setenv("MEDTRINITY_LLM_CONCURRENCY", "3")
    settings = WriterSettings(model="from-run", max_tokens=99, prices={"from-run": [0.5, 1.5]}, per_source={"kept": "grounded"})
    config = settings.config_for("other", root)
    assert (config.kind, config.base_url, config.model) == ("llm", "http://127.0.0.1:9/v1", "from-run")
    assert config.api_key_env is None  # "none": a local server that checks no key
    assert (config.concurrency, config.max_tokens) == (3, 99)
    assert config.prices == {"from-run": (0.5, 1.5)}
    assert config.cache_dir == root.llm_cache
    assert config.temperature == 0.2  # neither run config nor environment: the writer's default
    assert settings.config_for("kept", root).kind == "grounded"

    with pytest.raises(ValueError, match="writer kind"):
        WriterSettings(kind="poet").config_for("other", root)
    clean_writer_env.delenv("MEDTRINITY_LLM_BASE_URL")
    with pytest.raises(ValueError, match="base_url and model"):
        WriterSettings(model="").config_for("other", root)


def test_cli_flags_become_the_resources_run_config():
    parser = argparse.ArgumentParser()
    add_writer_flags(parser)
    args = parser.parse_args(
        ["--writer", "vlm", "--base-url", "http://h/v1", "--model", "m", "--concurrency", "4",
         "--api-key-env", "MY_KEY", "--per-source", "busi=grounded"]
    )
    config = writer_config(args)
    assert config == {
        "kind": "vlm", "base_url": "http://h/v1", "model": "m", "api_key_env": "MY_KEY",
        "concurrency": 4, "per_source": {"busi": "grounded"},
    }
    assert writer_config(parser.parse_args([])) == {}  # nothing given: environment and defaults
    # The run config the CLI builds is accepted by the resource as it is.
    assert WriterSettings(**config).config_for("busi", DataRoot(REPO_ROOT / "var")).kind == "grounded"
    with pytest.raises(SystemExit):
        writer_config(parser.parse_args(["--per-source", "busi"]))
