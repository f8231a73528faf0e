"""The demo sources: their specs load, their package files arrive, and they ingest."""

from __future__ import annotations

import json

import importlib.util

import pytest

from medtrinity_assets.catalog import load_catalog
from medtrinity_assets.catalog.acquire import (
    AcquisitionError,
    fetch_demo_sources,
    fetch_package_files,
)
from medtrinity_assets.catalog.spec import SourceSpec
from medtrinity_assets.paths import REPO_ROOT
from medtrinity_assets.sources import read_source
from medtrinity_assets.sources.base import IngestContext, Quarantined
from medtrinity_assets.storage import BlobStore

CATALOG = REPO_ROOT / "data" / "sources"
DEMO_IDS = sorted(p.stem for p in CATALOG.glob("demo_*.yaml"))
REQUIRED_MODALITIES = {"xray", "ct", "mri", "ultrasound", "nuclear_medicine", "fundus", "histopathology", "microscopy"}


@pytest.fixture(scope="module")
def demo_specs() -> dict[str, SourceSpec]:
    catalog = load_catalog(CATALOG)
    return {i: catalog[i] for i in DEMO_IDS}


def test_demo_specs_cover_the_required_modalities(demo_specs):
    assert {s.modality for s in demo_specs.values()} >= REQUIRED_MODALITIES
    families = {s.layout.family for s in demo_specs.values()}
    assert {"dicom", "nifti", "image_folder"} <= families
    for spec in demo_specs.values():
        assert spec.demo and spec.access == "package" and spec.acquisition.method == "package"
        assert spec.root is None  # files land in data/raw/<id>/ via acquisition
        assert spec.license and spec.citation and spec.organs


def test_every_demo_source_is_fetched_and_a_rerun_changes_nothing(demo_specs, tmp_path):
    fetched = fetch_demo_sources(demo_specs, tmp_path)
    assert sorted(fetched) == DEMO_IDS
    stamps = {}
    for source_id, files in fetched.items():
        assert files, source_id
        for file in files:
            assert file.is_file() and file.stat().st_size > 0 and file.parent == tmp_path / source_id
            stamps[file] = file.stat().st_mtime_ns
    again = fetch_demo_sources(demo_specs, tmp_path)
    assert again == fetched
    assert {f: f.stat().st_mtime_ns for f in stamps} == stamps  # identical files are not rewritten


def test_a_changed_file_is_replaced(demo_specs, tmp_path):
    spec = demo_specs["demo_ct_head"]
    (target,) = fetch_package_files(spec, tmp_path)
    original = target.read_bytes()
    target.write_bytes(b"stale")
    fetch_package_files(spec, tmp_path)
    assert target.read_bytes() == original


def test_missing_package_or_file_is_a_clear_error(demo_specs, tmp_path):
    spec = demo_specs["demo_ct_head"]
    no_package = spec.model_copy(update={"acquisition": spec.acquisition.model_copy(update={"files": [spec.acquisition.files[0].model_copy(update={"package": "no_such_package_xyz"})]})})
    with pytest.raises(AcquisitionError, match="package 'no_such_package_xyz' is not installed"):
        fetch_package_files(no_package, tmp_path)
    no_file = spec.model_copy(update={"acquisition": spec.acquisition.model_copy(update={"files": [spec.acquisition.files[0].model_copy(update={"path": "data/NOPE_*.dcm"})]})})
    with pytest.raises(AcquisitionError, match="no file matching 'data/NOPE_\\*.dcm'"):
        fetch_package_files(no_file, tmp_path)


@pytest.mark.parametrize("source_id", [i for i in DEMO_IDS])
def test_demo_source_ingests_without_quarantine(demo_specs, source_id, tmp_path):
    spec = demo_specs[source_id]
    module = {"image_folder": "medtrinity_assets.sources.image_folder"}.get(spec.layout.family)
    if module and importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is written by another part of the project")
    fetch_package_files(spec, tmp_path / "raw")
    ctx = IngestContext(spec=spec, root=tmp_path / "raw", blobs=BlobStore(tmp_path / "out"), salt="s")
    items = list(read_source(ctx))
    quarantined = [i for i in items if isinstance(i, Quarantined)]
    records = [i for i in items if not isinstance(i, Quarantined)]
    assert not quarantined, quarantined
    assert 1 <= len(records) <= 24
    assert all(r["organs"] == spec.organs for r in records)
    if spec.id == "demo_mri_brain_mni":
        with_label = [r for r in records if any(a["label"] == "grey matter" for a in json.loads(r["annotations"]))]
        # Only the context slices at the two ends of the labelled range may lack grey matter.
        assert len(records) == 24 and len(with_label) >= 22
        # Grey matter is anatomy (finding_labels: []): a mask, never a finding of the template.
        assert all(r["labels"] == [] and r["label_state"] == "unknown" for r in records)
    if spec.id == "demo_ct_head":
        assert records[0]["pixel_units"] == "HU"
    if spec.id == "demo_ultrasound_heart":
        assert len(records) == 12 and all(r["pixel_units"] == "rgb" for r in records)
