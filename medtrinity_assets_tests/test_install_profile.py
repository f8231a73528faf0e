"""The install profiles are derived from the one lock file (medtrinity_assets/install_profile.py)."""

from pathlib import Path

import pytest

from medtrinity_assets.install_profile import CPU_TORCH, main, requirements

LOCK = (Path(__file__).resolve().parents[1] / "requirements.lock").read_text()


def test_full_profile_is_the_lock_file_itself():
    assert requirements("full", LOCK).splitlines() == LOCK.splitlines()


def test_cpu_profile_drops_gpu_and_yolo_wheels_and_pins_the_cpu_torch():
    cpu = requirements("cpu", LOCK).splitlines()
    names = {line.split("==")[0].lower() for line in cpu if "==" in line}
    assert not {name for name in names if name.startswith(("nvidia-", "cuda-"))}
    assert not names & {"triton", "torchvision", "ultralytics", "ultralytics-thop", "ultralytics-platform"}
    assert cpu.count(CPU_TORCH) == 1 and sum(line.startswith("torch==") for line in cpu) == 1
    # Everything else of the lock is kept, pinned as it is there.
    dropped = [line for line in LOCK.splitlines() if line not in cpu]
    assert dropped and all(
        line.split("==")[0].lower() in {"torch", "torchvision", "triton"} or line.lower().startswith(("nvidia-", "cuda-", "ultralytics"))
        for line in dropped
    )
    assert {"monai", "dagster", "duckdb", "sentence-transformers"} <= names


def test_unknown_profile_is_refused(capsys, tmp_path):
    with pytest.raises(ValueError, match="unknown install profile 'gpu'"):
        requirements("gpu", LOCK)
    assert main(["cpu", str(tmp_path / "missing.lock")]) == 2
    assert "missing.lock" in capsys.readouterr().err
