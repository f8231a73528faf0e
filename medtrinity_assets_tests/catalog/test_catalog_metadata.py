"""The catalog's metadata: every shipped spec loads, the catalog covers MedTrinity's modalities,
and each spec says how to get its files, whom to cite, and names its organs and findings in the
plain lower-case words that descriptions are made of.

The checks read the raw YAML as well as the validated spec: the spec model lower-cases organs
and diseases on load, so only the file shows whether its author wrote them that way.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import pytest
import yaml

from medtrinity_assets.catalog import load_catalog, load_spec
from medtrinity_assets.catalog.spec import SourceSpec
from medtrinity_assets.paths import catalog_dir

MEDTRINITY_MODALITIES = {
    "ct",
    "mri",
    "xray",
    "ultrasound",
    "dermoscopy",
    "endoscopy",
    "fundus",
    "histopathology",
    "microscopy",
    "pet",
    "mammography",
}
MINIMUM_SOURCES = 90
REALDATA_ROOT = "../shared/realdata"
# Layout keys that hold a path or glob relative to the source root.
PATH_KEY_SUFFIXES = ("glob", "_json", "template", "image_root")
PATH_KEYS = {"csv", "file", "annotations", "class_names_file"}

SPEC_PATHS = sorted(catalog_dir().glob("*.yaml"))


def _layout_paths(value, key: str = "") -> list[tuple[str, str]]:
    """(key, value) of every path-like string in a layout mapping, nested ones included."""
    found = []
    if isinstance(value, dict):
        for child_key, child in value.items():
            found += _layout_paths(child, str(child_key))
    elif isinstance(value, list):
        for child in value:
            found += _layout_paths(child, key)
    elif isinstance(value, str) and (key in PATH_KEYS or key.endswith(PATH_KEY_SUFFIXES)):
        found.append((key, value))
    return found


def metadata_problems(raw: dict, spec: SourceSpec) -> list[str]:
    """What is wrong with one spec's metadata; empty when nothing is."""
    problems = []
    if spec.homepage.scheme != "https":
        problems.append(f"homepage {spec.homepage} is not https")
    if not spec.citation.strip():
        problems.append("citation is empty")
    for field in ("organs", "diseases"):
        for name in raw.get(field) or []:
            if name != name.strip().lower():
                problems.append(f"{field} entry {name!r} is not plain lower-case")
    acquisition = spec.acquisition
    from_realdata = (spec.root or "").startswith(REALDATA_ROOT)
    if spec.access == "open" and not spec.demo and not from_realdata:
        has_url = acquisition.method == "download" and len(acquisition.downloads) >= 1
        has_steps = acquisition.method == "manual" and bool((acquisition.instructions or "").strip())
        if not (has_url or has_steps):
            problems.append("open source needs acquisition.method download with a URL, or manual with instructions")
    if spec.access in ("registration", "credentialed") and not (acquisition.instructions or "").strip():
        problems.append(f"access {spec.access} needs acquisition.instructions")
    # Absolute paths and paths climbing out are refused on load (test_containment); a shipped
    # spec does not even step up and back down.
    for key, path in _layout_paths(raw.get("layout") or {}):
        if ".." in PurePosixPath(path).parts:
            problems.append(f"layout.{key} {path!r} steps out of a folder with '..'")
    return problems


def _raw(path: Path) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def catalog() -> dict[str, SourceSpec]:
    return load_catalog()


def test_every_spec_file_loads_under_its_own_id():
    ids = [load_spec(path).id for path in SPEC_PATHS]
    assert ids == [path.stem for path in SPEC_PATHS]
    assert len(ids) == len(set(ids))


def test_the_catalog_is_large_enough_and_covers_every_medtrinity_modality(catalog):
    assert len(catalog) >= MINIMUM_SOURCES
    missing = MEDTRINITY_MODALITIES - {spec.modality for spec in catalog.values()}
    assert not missing, f"no source of modality {sorted(missing)}"


def test_names_are_unique_so_users_can_tell_sources_apart(catalog):
    names = [spec.name.strip().lower() for spec in catalog.values()]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    assert not duplicates


@pytest.mark.parametrize("path", SPEC_PATHS, ids=[path.stem for path in SPEC_PATHS])
def test_spec_metadata_is_complete(path):
    assert metadata_problems(_raw(path), load_spec(path)) == []


def _broken_copy(tmp_path: Path, change) -> tuple[dict, SourceSpec]:
    raw = _raw(catalog_dir() / "busi.yaml")
    change(raw)
    path = tmp_path / "busi.yaml"
    path.write_text(yaml.safe_dump(raw))
    return raw, load_spec(path)


@pytest.mark.parametrize(
    "change, words",
    [
        (lambda d: d.update(homepage="http://example.org/busi"), "not https"),
        (lambda d: d.update(citation="  "), "citation is empty"),
        (lambda d: d.update(organs=["Breast"]), "not plain lower-case"),
        (lambda d: d.update(diseases=["Malignant breast tumor"]), "not plain lower-case"),
        (lambda d: d.pop("root"), "needs acquisition.method download"),
        (lambda d: (d.pop("root"), d.update(acquisition={"method": "manual", "instructions": " "})), "needs acquisition"),
        (lambda d: d["layout"].update(image_glob="*/images/../images/*.png"), "steps out of a folder"),
    ],
)
def test_the_metadata_check_names_what_is_wrong(tmp_path, change, words):
    raw, spec = _broken_copy(tmp_path, change)
    problems = metadata_problems(raw, spec)
    assert any(words in problem for problem in problems), problems


def test_gated_access_without_instructions_is_refused_on_load(tmp_path):
    from medtrinity_assets.catalog import CatalogError

    with pytest.raises(CatalogError, match="needs acquisition.instructions"):
        _broken_copy(tmp_path, lambda d: d.update(access="credentialed"))


def test_catalog_document_is_generated_from_the_current_specs():
    # docs/CATALOG.md is what users read to pick sources: it must match the specs.
    from medtrinity_assets.catalog import load_catalog
    from medtrinity_assets.catalog.document import catalog_markdown
    from medtrinity_assets.paths import REPO_ROOT

    document = (REPO_ROOT / "docs" / "CATALOG.md").read_text(encoding="utf-8")
    assert document == catalog_markdown(load_catalog()), "run: python -m medtrinity_assets.cli catalog-doc"
