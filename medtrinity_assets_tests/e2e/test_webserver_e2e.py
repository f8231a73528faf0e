"""End to end through the real web server: start dagster-webserver on loopback, launch runs
through its GraphQL API the way the UI does, wait for them, and check what they wrote."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest
import requests

from medtrinity_assets.catalog import load_catalog
from medtrinity_assets.catalog.acquire import fetch_package_files
from medtrinity_assets.paths import REPO_ROOT, DataRoot

pytestmark = pytest.mark.slow

SOURCE = "demo_microscopy_cell"

LAUNCH = """
mutation Launch($executionParams: ExecutionParams!) {
  launchPipelineExecution(executionParams: $executionParams) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message stack }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on InvalidSubsetError { message }
    ... on PipelineNotFoundError { message }
  }
}
"""

RUN_STATUS = """
query Status($runId: ID!) {
  runOrError(runId: $runId) { __typename ... on Run { status } }
}
"""

LOCATIONS = """
query { workspaceOrError { __typename ... on Workspace { locationEntries {
  name loadStatus locationOrLoadError { __typename ... on RepositoryLocation { repositories { name } }
  ... on PythonError { message } } } } } }
"""

CHECKS = """
query Checks($key: AssetKeyInput!) {
  assetNodes(assetKeys: [$key]) { assetChecksOrError { __typename ... on AssetChecks {
    checks { name executionForLatestMaterialization { status evaluation { success } } } } } }
}
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _graphql(url: str, query: str, variables: dict | None = None) -> dict:
    response = requests.post(f"{url}/graphql", json={"query": query, "variables": variables or {}}, timeout=60)
    response.raise_for_status()
    body = response.json()
    assert "errors" not in body, body["errors"]
    return body["data"]


@pytest.fixture(scope="module")
def webserver(tmp_path_factory, shared_knowledge):
    home = tmp_path_factory.mktemp("dagster_home")
    data_root = tmp_path_factory.mktemp("var")
    # The session's store: the knowledge_base run launched below then embeds nothing again.
    shared_knowledge.copy_to(DataRoot(data_root))
    raw = tmp_path_factory.mktemp("raw")
    # The webserver alone has no daemon to dequeue runs, so launch them directly.
    (home / "dagster.yaml").write_text(
        "telemetry:\n  enabled: false\n"
        "run_coordinator:\n  module: dagster.core.run_coordinator\n  class: DefaultRunCoordinator\n"
    )
    spec = load_catalog()[SOURCE]
    fetch_package_files(spec, raw / SOURCE)
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "MEDTRINITY_HOME": str(data_root),
        "MEDTRINITY_RAW": str(raw),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    port = _free_port()
    log = open(home / "webserver.log", "wb")
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "dagster-webserver"), "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
        cwd=REPO_ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        # Own process group: the webserver and its code server are killed together at the end.
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert process.poll() is None, (home / "webserver.log").read_text()[-3000:]
            try:
                entries = _graphql(url, LOCATIONS)["workspaceOrError"]["locationEntries"]
                if entries and entries[0]["loadStatus"] == "LOADED":
                    location = entries[0]["locationOrLoadError"]
                    assert location["__typename"] == "RepositoryLocation", location
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, "webserver did not load the code location in time"
            time.sleep(1)
        yield {"url": url, "location": entries[0]["name"], "repository": location["repositories"][0]["name"], "data_root": data_root}
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        log.close()


def _launch(server: dict, job: str, assets: list[str] | None = None, partition: str | None = None) -> str:
    selector = {"repositoryLocationName": server["location"], "repositoryName": server["repository"], "jobName": job}
    if assets:
        selector["assetSelection"] = [{"path": [a]} for a in assets]
    tags = [{"key": "dagster/partition", "value": partition}] if partition else []
    result = _graphql(
        server["url"],
        LAUNCH,
        {"executionParams": {"selector": selector, "runConfigData": {}, "mode": "default", "executionMetadata": {"tags": tags}}},
    )["launchPipelineExecution"]
    assert result["__typename"] == "LaunchRunSuccess", result
    return result["run"]["runId"]


def _wait(server: dict, run_id: str, timeout: float = 420) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = _graphql(server["url"], RUN_STATUS, {"runId": run_id})["runOrError"]["status"]
        if status in {"SUCCESS", "FAILURE", "CANCELED"}:
            return status
        time.sleep(2)
    raise AssertionError(f"run {run_id} did not finish in {timeout}s")


ADD_PARTITION = """
mutation Add($selector: RepositorySelector!, $name: String!, $key: String!) {
  addDynamicPartition(repositorySelector: $selector, partitionsDefName: $name, partitionKey: $key) {
    __typename
    ... on PythonError { message }
  }
}
"""

PARTITION_KEYS = """
query Keys($key: AssetKeyInput!) { assetNodes(assetKeys: [$key]) { partitionKeys } }
"""


def test_launch_partition_through_graphql(webserver):
    kb_run = _launch(webserver, "__ASSET_JOB", assets=["knowledge_base"])
    assert _wait(webserver, kb_run) == "SUCCESS"

    # No partition until one is registered (the sensor, or the UI's "add partition" as here).
    assert _graphql(webserver["url"], PARTITION_KEYS, {"key": {"path": ["raw_records"]}})["assetNodes"][0]["partitionKeys"] == []
    selector = {"repositoryLocationName": webserver["location"], "repositoryName": webserver["repository"]}
    added = _graphql(webserver["url"], ADD_PARTITION, {"selector": selector, "name": "sources", "key": SOURCE})
    assert added["addDynamicPartition"]["__typename"] == "AddDynamicPartitionSuccess", added
    assert _graphql(webserver["url"], PARTITION_KEYS, {"key": {"path": ["raw_records"]}})["assetNodes"][0]["partitionKeys"] == [SOURCE]

    run_id = _launch(webserver, "source_pipeline", partition=SOURCE)
    assert _wait(webserver, run_id) == "SUCCESS"

    triplets = webserver["data_root"] / "tables" / "triplets" / f"{SOURCE}.parquet"
    rows = duckdb.sql(f"SELECT count(*), count(description), count(DISTINCT image_sha256) FROM read_parquet('{triplets}')").fetchall()[0]
    assert rows[0] > 0 and rows[1] == rows[0] and rows[2] == rows[0]

    checks = _graphql(webserver["url"], CHECKS, {"key": {"path": ["triplets"]}})["assetNodes"][0]["assetChecksOrError"]["checks"]
    assert checks, "the triplets asset shows no checks in the UI"
    statuses = {c["name"]: c["executionForLatestMaterialization"]["status"] for c in checks}
    assert all(status == "SUCCEEDED" for status in statuses.values()), statuses
