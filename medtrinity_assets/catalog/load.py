"""Load and validate the catalog: every ``*.yaml`` under the catalog folder is one source."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import ValidationError

from medtrinity_assets.bounded_yaml import YamlLimitError, load_yaml_file
from medtrinity_assets.catalog.spec import SourceSpec
from medtrinity_assets.containment import is_inside
from medtrinity_assets.paths import REPO_ROOT, allowed_source_roots, catalog_dir, raw_dir
from medtrinity_assets.validation import validation_problems


log = logging.getLogger(__name__)


class CatalogError(ValueError):
    """A spec that cannot be used; the message names the file and the field."""

    def __init__(self, message: str, fields: tuple[str, ...] = ()):
        super().__init__(message)
        self.fields = fields


@dataclass(frozen=True)
class SpecProblem:
    """A spec left out of the catalog: its file, the fields at fault (none for unreadable YAML)
    and the full message."""

    file: Path
    fields: tuple[str, ...]
    message: str


@dataclass(frozen=True)
class CatalogLoad:
    specs: dict[str, SourceSpec]
    problems: list[SpecProblem]


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
        fields = tuple(dict.fromkeys(".".join(str(part) for part in item["loc"]) or "<top level>" for item in error.errors()))
        raise CatalogError(f"{path}: invalid source spec:\n  " + "\n  ".join(problems), fields) from None
    if spec.id != path.stem:
        raise CatalogError(f"{path}: field 'id': '{spec.id}' must match the file name '{path.stem}'", ("id",))
    if spec.root and not any(is_inside(allowed, source_root(spec)) for allowed in allowed_source_roots()):
        allowed = ", ".join(str(p) for p in allowed_source_roots())
        raise CatalogError(
            f"{path}: field 'root': '{spec.root}' is outside the folders sources may live in ({allowed}); "
            "move the files there or add their folder to MEDTRINITY_ALLOWED_ROOTS",
            ("root",),
        )
    return spec


def load_catalog_report(folder: Path | None = None) -> CatalogLoad:
    """Every spec loaded on its own: one broken file is reported (and logged), never stops the rest."""
    folder = Path(folder) if folder else catalog_dir()
    paths = sorted(folder.glob("*.yaml"))
    if not paths:
        raise CatalogError(f"{folder}: no source specs (*.yaml) found")
    specs, problems = {}, []
    for path in paths:
        try:
            spec = load_spec(path)
        except CatalogError as error:
            problems.append(SpecProblem(path, error.fields, str(error)))
            log.warning("source spec left out of the catalog: %s", error)
            continue
        except OSError as error:  # a folder named *.yaml, a file the user may not read
            problems.append(SpecProblem(path, (), f"{path}: cannot be read: {error.strerror}"))
            log.warning("source spec left out of the catalog: %s", problems[-1].message)
            continue
        specs[spec.id] = spec
    return CatalogLoad(specs, problems)


def load_catalog(folder: Path | None = None) -> dict[str, SourceSpec]:
    """The usable specs by id; broken ones are left out (listed by ``load_catalog_report``)."""
    return load_catalog_report(folder).specs


def source_root(spec: SourceSpec) -> Path:
    """The folder holding a source's files: its ``root`` if set, else ``data/raw/<id>``."""
    if spec.root:
        root = Path(spec.root)
        return root if root.is_absolute() else (REPO_ROOT / root).resolve()
    return raw_dir() / spec.id
