"""Acquisition of sources whose files an installed Python package ships (the demo sources).

Files are copied, never linked, so the pipeline reads them from ``data/raw/<id>/`` exactly as it
reads a downloaded source. A file already there with the same bytes is left untouched: a rerun
changes nothing, so the raw-folder fingerprint (and the sensor watching it) stays the same.
"""

from __future__ import annotations

import filecmp
import importlib.util
import shutil
from pathlib import Path
from typing import Mapping

from medtrinity_assets.catalog.spec import PackageFile, SourceSpec
from medtrinity_assets.storage import atomic_path


class AcquisitionError(RuntimeError):
    """A package or file a source spec names is not installed; the message says which."""


def package_folder(package: str) -> Path:
    """The folder of an importable package, found without importing it (no side effects)."""
    try:
        found = importlib.util.find_spec(package)
    except (ImportError, ValueError) as error:
        found, reason = None, str(error)
    else:
        reason = "not installed"
    if found is None or not found.submodule_search_locations:
        raise AcquisitionError(f"package '{package}' is {reason}: install it (pip install) to fetch this demo source")
    return Path(list(found.submodule_search_locations)[0])


def _package_files(entry: PackageFile) -> list[Path]:
    base = package_folder(entry.package)
    matches = sorted(p for p in base.glob(entry.path) if p.is_file())
    if not matches:
        raise AcquisitionError(f"package '{entry.package}' ({base}) has no file matching '{entry.path}'")
    return matches


def fetch_package_files(spec: SourceSpec, dest: Path) -> list[Path]:
    """Copy the spec's package files into ``dest/<to>/``; return the destination paths."""
    if spec.acquisition.method != "package":
        raise AcquisitionError(f"source '{spec.id}' is acquired by hand ({spec.acquisition.method}), not from a package")
    dest = Path(dest)
    written: list[Path] = []
    for entry in spec.acquisition.files:
        folder = dest / entry.to if entry.to else dest
        for source in _package_files(entry):
            target = folder / source.name
            if not (target.is_file() and filecmp.cmp(source, target, shallow=False)):
                with atomic_path(target) as tmp:
                    shutil.copyfile(source, tmp)
            written.append(target)
    return written


def fetch_demo_sources(catalog: Mapping[str, SourceSpec], raw_dir: Path) -> dict[str, list[Path]]:
    """Fetch every demo source of the catalog into ``raw_dir/<id>/``."""
    return {
        source_id: fetch_package_files(spec, Path(raw_dir) / source_id)
        for source_id, spec in sorted(catalog.items())
        if spec.demo and spec.acquisition.method == "package"
    }
