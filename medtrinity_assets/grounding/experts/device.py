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


THREADS_ENV = "MEDTRINITY_TORCH_THREADS"


def limit_torch_threads() -> int:
    """Never more intra-op threads than usable CPUs; an OMP_NUM_THREADS / earlier
    torch.set_num_threads below that is kept, and MEDTRINITY_TORCH_THREADS sets it outright.

    Oversubscription is ruinous, not mild: on the 2-core development machine with a load of 7,
    one UNet training step (batch 8, 64 px) took 1.9 s with 2 threads and 0.12 s with 1. On a
    shared machine set MEDTRINITY_TORCH_THREADS=1 (or the cores left free)."""
    import torch

    wanted = os.environ.get(THREADS_ENV, "").strip()
    if wanted:
        if not wanted.isdigit() or int(wanted) < 1:
            raise ExpertError(f"{THREADS_ENV}={wanted!r} is not a positive number of threads")
        threads = min(int(wanted), cpu_threads())
    else:
        threads = min(torch.get_num_threads(), cpu_threads())
    torch.set_num_threads(threads)
    return threads
