"""Ultralytics, offline and project-local.

Ultralytics reads its switches from the environment once, when it is first imported (``ONLINE``
is a DNS lookup at import; the config folder, ``USER_CONFIG_DIR``, is fixed then), and at train
time it fetches a font it cannot find, sends analytics when ``sync`` is on and, on CUDA, downloads
a model for its AMP check. So ``import_ultralytics`` sets the switches first, points the config
folder into the data root, puts a font there and turns the networked settings off. Every use of
ultralytics in this project goes through it.

The config folder is ``<data root>/ultralytics`` (``MEDTRINITY_HOME``), not ``~/.config``: the
data root holds everything the pipeline writes, so a run stays movable and wipeable in one place,
and a test with its own data root leaves the user's folders alone. It is fixed for the process at
the first import (ultralytics' own rule); ``ensure_ready`` puts the font back if the folder has
been removed since.
"""

from __future__ import annotations

import importlib
import os
import random
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from medtrinity_assets.paths import DataRoot

FONTS = ("Arial.ttf", "Arial.Unicode.ttf")  # the names ultralytics' check_font asks for

# Settings that would reach the network or write outside the config folder; applied on every use.
OFFLINE_SETTINGS = {
    "sync": False,  # analytics events
    "api_key": "",  # Ultralytics Platform uploads
    "clearml": False, "comet": False, "dvc": False, "mlflow": False, "raytune": False,
    "tensorboard": False, "wandb": False,
    "vscode_msg": False, "openvino_msg": False,
}


def config_dir() -> Path:
    """The folder ultralytics uses (YOLO_CONFIG_DIR); settings and fonts live in its ``Ultralytics/``."""
    return DataRoot.from_env().local / "ultralytics"  # a local folder, also with the data root on an object store


def _set_switches() -> None:
    os.environ["YOLO_OFFLINE"] = "1"  # ONLINE = False without a DNS lookup; downloads fail fast
    os.environ["YOLO_AUTOINSTALL"] = "False"  # never pip-install a missing requirement
    os.environ.setdefault("YOLO_VERBOSE", "False")  # progress bars and banners off (errors still show)
    os.environ["YOLO_CONFIG_DIR"] = str(config_dir())
    # The Platform callback uploads a training run when it finds a key; nothing here may do that.
    os.environ.pop("ULTRALYTICS_API_KEY", None)


def _place_fonts(folder: Path) -> None:
    """Copy matplotlib's bundled DejaVuSans under the names ultralytics asks for, so check_font
    finds a local file and never downloads Arial (it does so when labels or plots need a font)."""
    import matplotlib

    source = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    folder.mkdir(parents=True, exist_ok=True)
    for name in FONTS:
        target = folder / name
        if not target.is_file():
            tmp = target.with_name(f".{name}.{os.getpid()}.part")
            shutil.copyfile(source, tmp)
            tmp.replace(target)  # atomic: a concurrent run never sees a half-written font


def ensure_ready():
    """Import ultralytics offline (first call) and make sure its settings and fonts are in place.
    Returns the ``ultralytics`` module."""
    if "ultralytics" not in sys.modules:
        _set_switches()
        # The font goes in before the import so even an import-time font lookup finds it.
        _place_fonts(Path(os.environ["YOLO_CONFIG_DIR"]) / "Ultralytics")
        # Ultralytics sets OMP_NUM_THREADS=1 when it is unset; torch imported after that would
        # train on one core. Import torch first and take the variable back.
        torch = importlib.import_module("torch")
        omp = os.environ.get("OMP_NUM_THREADS")
        # Importing ultralytics also replaces PIL.Image.open (an unreadable file then raises
        # ModuleNotFoundError for pi_heif instead of UnidentifiedImageError, so ingest would lose
        # its quarantine reason) and torch.save, for the whole process: both are put back.
        from PIL import Image

        pil_open, torch_save = Image.open, torch.save
        importlib.import_module("ultralytics")
        Image.open, torch.save = pil_open, torch_save
        if omp is None:
            os.environ.pop("OMP_NUM_THREADS", None)
    import ultralytics
    from ultralytics.utils import SETTINGS, USER_CONFIG_DIR

    _place_fonts(Path(USER_CONFIG_DIR))
    wanted = dict(OFFLINE_SETTINGS)
    # Default runs/weights/datasets folders are the git root or the cwd; keep them in the config
    # folder so nothing ultralytics writes on its own lands in the repository.
    base = Path(USER_CONFIG_DIR)
    wanted.update(runs_dir=str(base / "runs"), weights_dir=str(base / "weights"), datasets_dir=str(base / "datasets"))
    changed = {key: value for key, value in wanted.items() if SETTINGS.get(key) != value}
    if changed:
        SETTINGS.update(changed)  # writes settings.json only when something differs
    return ultralytics


def user_config_dir() -> Path:
    """The config folder ultralytics actually uses in this process (after ensure_ready)."""
    ensure_ready()
    from ultralytics.utils import USER_CONFIG_DIR

    return Path(USER_CONFIG_DIR)


@contextmanager
def process_state_kept() -> Iterator[None]:
    """Run an ultralytics call without it changing the process for everything after it.

    Its select_device sets torch's CPU threads to cpu_count - 1 (at most 8) on every train and
    first predict: the call runs with the caller's thread count instead. Deterministic training
    switches torch into deterministic mode, sets CUBLAS_WORKSPACE_CONFIG and PYTHONHASHSEED and
    reseeds the global RNGs: all are put back afterwards, so a MONAI expert or any other code in
    the same process (a Dagster run, the test session) is unaffected.
    """
    ensure_ready()
    import numpy as np
    import torch
    from ultralytics.utils import torch_utils

    threads = torch.get_num_threads()
    det = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    fill = torch.utils.deterministic.fill_uninitialized_memory
    env = {key: os.environ.get(key) for key in ("CUBLAS_WORKSPACE_CONFIG", "PYTHONHASHSEED")}
    rng = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    library_threads = torch_utils.NUM_THREADS
    torch_utils.NUM_THREADS = threads  # what select_device sets
    try:
        yield
    finally:
        torch_utils.NUM_THREADS = library_threads
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(det[0], warn_only=det[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn
        torch.utils.deterministic.fill_uninitialized_memory = fill
        for key, value in env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        random.setstate(rng[0])
        np.random.set_state(rng[1])
        torch.set_rng_state(rng[2])
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
