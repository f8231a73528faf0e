"""Where an expert runs: CUDA when present (spec.device auto), else the CPU; and how many threads."""

from __future__ import annotations

import os

from medtrinity_assets.grounding.experts.base import ExpertError
from medtrinity_assets.grounding.experts.spec import ExpertSpec


def pick_device(spec: ExpertSpec) -> str:
    import torch

    if spec.device == "cpu":
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    if spec.device == "cuda":
        raise ExpertError(f"expert {spec.id} asks for device: cuda, but torch sees no CUDA device here; use device: auto")
    return "cpu"


def cpu_threads() -> int:
    """The CPUs this process may use (affinity, not the host's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def limit_torch_threads() -> int:
    """Never more intra-op threads than usable CPUs (oversubscription slows every conv); an
    OMP_NUM_THREADS / earlier torch.set_num_threads below that is kept."""
    import torch

    threads = min(torch.get_num_threads(), cpu_threads())
    torch.set_num_threads(threads)
    return threads
