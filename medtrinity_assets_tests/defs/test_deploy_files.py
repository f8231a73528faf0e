"""The deployment files agree with each other and with the code: the image serves the port and
module the Helm values name, copies files that exist and are not ignored, pins the Dagster
integrations of the locked Dagster, and the Helm instance settings match the Postgres template's."""

from __future__ import annotations

import fnmatch
import re

import yaml

from medtrinity_assets.paths import REPO_ROOT

DEPLOY = REPO_ROOT / "deploy"


def _helm() -> dict:
    return yaml.safe_load((DEPLOY / "helm" / "values.yaml").read_text())


def _template() -> dict:
    return yaml.safe_load((DEPLOY / "dagster.postgres.yaml").read_text())


def _pins(path) -> dict[str, str]:
    lines = [line.strip() for line in path.read_text().splitlines() if "==" in line and not line.startswith("#")]
    return {re.sub(r"\[.*\]", "", name).lower(): version for name, version in (line.split("==") for line in lines)}


def test_the_helm_deployment_runs_the_image_s_code_server():
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    (deployment,) = _helm()["dagster-user-deployments"]["deployments"]
    exposed = re.search(r"^EXPOSE (\d+)", dockerfile, re.MULTILINE).group(1)
    assert deployment["port"] == int(exposed)
    assert f'"-p", "{exposed}"' in dockerfile
    args = deployment["dagsterApiGrpcArgs"]
    module, attribute = args[args.index("-m") + 1], args[args.index("-a") + 1]
    assert f'"-m", "{module}", "-a", "{attribute}"' in dockerfile
    import importlib

    import dagster as dg

    assert isinstance(getattr(importlib.import_module(module), attribute), dg.Definitions)
    env = {item["name"]: item["value"] for item in deployment["env"]}
    assert env["MEDTRINITY_EXECUTOR"] == "k8s"


def test_the_helm_instance_matches_the_postgres_template():
    helm, template = _helm(), _template()
    assert helm["postgresql"]["postgresqlScheme"] == template["storage"]["postgres"]["postgres_db"]["scheme"]
    pools = template["concurrency"]["pools"]
    assert helm["concurrency"]["pools"] == {
        "defaultLimit": pools["default_limit"], "granularity": pools["granularity"], "opGranularityRunBuffer": pools["op_granularity_run_buffer"],
    }
    retries = helm["dagsterDaemon"]["runRetries"]
    assert (retries["maxRetries"], retries["retryOnAssetOrOpFailure"]) == (
        template["run_retries"]["max_retries"], template["run_retries"]["retry_on_asset_or_op_failure"],
    )
    monitoring = helm["dagsterDaemon"]["runMonitoring"]
    assert monitoring["enabled"] and template["run_monitoring"]["enabled"]
    assert monitoring["freeSlotsAfterRunEndSeconds"] == template["run_monitoring"]["free_slots_after_run_end_seconds"]


def test_the_image_copies_files_that_exist_and_are_not_ignored():
    ignored = [line.strip() for line in (REPO_ROOT / ".dockerignore").read_text().splitlines() if line.strip() and not line.startswith("#")]
    copies = re.findall(r"^COPY (?!--from)(.+)$", (DEPLOY / "Dockerfile").read_text(), re.MULTILINE)
    sources = [source for line in copies for source in line.split()[:-1]]
    assert "requirements.lock" in sources and "medtrinity_assets" in sources
    for source in sources:
        assert (REPO_ROOT / source).exists(), source
        assert not any(fnmatch.fnmatch(source, pattern) or source.startswith(pattern.rstrip("/") + "/") for pattern in ignored), source


def test_the_integrations_match_the_locked_dagster():
    lock = _pins(REPO_ROOT / "requirements.lock")
    k8s = _pins(DEPLOY / "requirements-k8s.txt")
    # Dagster's integration libraries are numbered 0.(minor+16).patch beside dagster 1.minor.patch.
    major, minor, patch = lock["dagster"].split(".")
    expected = f"0.{int(minor) + 16}.{patch}"
    assert lock["dagster-postgres"] == lock["dagster-celery"] == k8s["dagster-k8s"] == expected
    # The k8s extras replace the lock only where dagster-k8s requires it.
    assert {name for name in k8s if name in lock and k8s[name] != lock[name]} == {"kubernetes"}
