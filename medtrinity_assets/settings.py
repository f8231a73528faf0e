"""Run-time settings that are not part of a source spec: the patient-hash salt."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from medtrinity_assets.storage import SECRET_FILE_MODE, make_dirs, write_bytes_atomic


def load_or_create_salt(data_root: Path) -> str:
    """The secret salt for patient hashes.

    ``MEDTRINITY_SALT`` wins; otherwise a random salt is created once under the data root and
    reused, so patient hashes (and therefore splits) are stable across runs but cannot be
    recomputed from a patient id by anyone without this file.
    """
    from_env = os.environ.get("MEDTRINITY_SALT")
    if from_env:
        return from_env
    from medtrinity_assets.objectstore import is_remote

    if is_remote(data_root):
        # Workers sharing an object store root must hash with one salt; a file each of them
        # might create at once could differ, and a secret does not belong beside the data.
        raise RuntimeError(
            f"the data root {data_root} is on an object store: set MEDTRINITY_SALT (the same secret for every "
            "worker, e.g. from a Kubernetes secret) instead of a salt file under the data root"
        )
    path = Path(data_root) / "secrets" / "patient_salt"
    if not path.exists():
        make_dirs(Path(data_root))  # the data root itself follows the policy; only secrets/ is 0700
        write_bytes_atomic(path, secrets.token_hex(32).encode("ascii"), mode=SECRET_FILE_MODE)
    return path.read_text(encoding="ascii").strip()
