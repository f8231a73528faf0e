"""The pinned requirements of an install profile, written to stdout (the Makefile's setup).

``full`` is requirements.lock as it is: PyTorch with torchvision (a CUDA build: the only pairing
of the two that installs and imports on this project's reference machine) and ultralytics.
``cpu`` leaves out what only a GPU or the YOLO expert family needs: the CUDA libraries
(``nvidia-*``), triton, torchvision and ultralytics, and pins PyTorch's CPU build instead.

Derived from the one lock file at setup time, so the two profiles cannot drift apart. Runs on
the interpreter that creates the venv, before anything is installed: standard library only.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

# The CPU build of PyTorch that pip finds for Python 3.11 here (a local wheel; elsewhere PyTorch's
# CPU index: pip install torch==<version> --index-url https://download.pytorch.org/whl/cpu).
CPU_TORCH = "torch==2.13.0"

# Distributions a CPU-only install leaves out: GPU runtime libraries and their Python bindings
# (nvidia-*, cuda-*), the GPU compiler (triton), and the YOLO family (ultralytics needs
# torchvision, whose PyPI wheels only import beside the CUDA torch).
_CPU_LEFT_OUT = re.compile(r"^(torch|torchvision|triton|nvidia-[a-z0-9-]+|cuda-[a-z-]+|ultralytics(-[a-z]+)?)==", re.IGNORECASE)

PROFILES = ("full", "cpu")


def requirements(profile: str, lock_text: str) -> str:
    """The lock's lines for ``profile``: unchanged for ``full``; for ``cpu`` without the GPU
    and YOLO distributions and with :data:`CPU_TORCH`."""
    if profile not in PROFILES:
        raise ValueError(f"unknown install profile {profile!r}; known: {', '.join(PROFILES)}")
    lines = lock_text.splitlines()
    if profile == "full":
        return "\n".join(lines) + "\n"
    kept = [line for line in lines if not _CPU_LEFT_OUT.match(line.strip())]
    return "\n".join([*kept, CPU_TORCH]) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m medtrinity_assets.install_profile {full|cpu} requirements.lock", file=sys.stderr)
        return 2
    profile, lock = argv
    try:
        sys.stdout.write(requirements(profile, Path(lock).read_text()))
    except (ValueError, FileNotFoundError) as error:
        print(f"install_profile: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
