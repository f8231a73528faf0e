"""Stopping the CLI: Dagster turns Ctrl-C into a failed step, so the loop over sources went on
to the next source (and `demo --local-model` left its server running when killed harder).
SIGTERM and SIGINT now stop the command: no further source starts, and the exit status is 130.
The CLI is started as a non-interactive shell starts a background job (CI, `make demo &`):
SIGINT ignored from the start, which Dagster then also gives to SIGTERM after each run."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import needs_realdata
from medtrinity_assets.paths import REPO_ROOT

WORKTREE = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@needs_realdata
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_the_cli_before_the_next_source(tmp_path, sig):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO_ROOT / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    env = {**os.environ, "DAGSTER_HOME": str(home), "MEDTRINITY_HOME": str(tmp_path / "var"), "PYTHONPATH": str(WORKTREE)}
    cli = subprocess.Popen(
        [sys.executable, "-m", "medtrinity_assets.cli", "materialize", "busi", "ham10000", "covid_chestxray"],
        cwd=WORKTREE, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    try:
        lines = []
        for line in cli.stdout:
            lines.append(line)
            if "knowledge_base" in line:
                break
        assert any("knowledge_base" in line and " ok " in line for line in lines), "".join(lines)
        time.sleep(3)  # inside busi's partition run now
        cli.send_signal(sig)
        rest, _ = cli.communicate(timeout=120)
    finally:
        cli.kill()
    output = "".join(lines) + rest
    assert cli.returncode == 130, output
    assert "interrupted" in output
    # Neither later source was started, and no dataset was assembled from a half run.
    assert "ham10000" not in rest and "covid_chestxray" not in rest and "medtrinity_dataset" not in rest, output
