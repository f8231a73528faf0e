"""Load and validate the catalog: every ``*.yaml`` under the catalog folder is one source."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import ValidationError

from medtrinity_assets.bounded_yaml import YamlLimitError, load_yaml_file
from medtrinity_assets.catalog.spec import SourceSpec
from medtrinity_assets.paths import REPO_ROOT, catalog_dir, raw_dir
from medtrinity_assets.validation import validation_problems


class CatalogError(ValueError):
    """A spec that cannot be used; the message names the file and the field."""


def load_spec(path: Path) -> SourceSpec:
    path = Path(path)
    try:
        # Bounded: a contributed spec must not be able to exhaust memory (alias bomb, huge file).
        data = load_yaml_file(path)
    except YamlLimitError as error:
        raise CatalogError(str(error)) from None
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise CatalogError(f"{path}: not valid YAML: {error}") from error
    if not isinstance(data, dict):
        raise CatalogError(f"{path}: expected a mapping of fields, got {type(data).__name__}")
    try:
        spec = SourceSpec.model_validate(data)
    except ValidationError as error:
        problems = validation_problems(error, show_input=True)
        raise CatalogError(f"{path}: invalid source spec:\n  " + "\n  ".join(problems)) from None
    if spec.id != path.stem:
        raise CatalogError(f"{path}: field 'id': '{spec.id}' must match the file name '{path.stem}'")
    return spec


def load_catalog(folder: Path | None = None) -> dict[str, SourceSpec]:
    folder = Path(folder) if folder else catalog_dir()
    specs = {}
    for path in sorted(folder.glob("*.yaml")):
        spec = load_spec(path)
        specs[spec.id] = spec
    if not specs:
        raise CatalogError(f"{folder}: no source specs (*.yaml) found")
    return specs


def source_root(spec: SourceSpec) -> Path:
    """The folder holding a source's files: its ``root`` if set, else ``data/raw/<id>``."""
    if spec.root:
        root = Path(spec.root)
        return root if root.is_absolute() else (REPO_ROOT / root).resolve()
    return raw_dir() / spec.id
