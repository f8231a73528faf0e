"""PHI side doors: images held back for burned-in text never leave the blob store as previews;
with ``pseudonymize_paths`` no real file name reaches a quarantine row, the warehouse or the
Dagster metadata; every file and folder the pipeline writes under the data root has the one
documented mode (README, "File modes")."""

from __future__ import annotations

import base64
import json
import re
import stat
from pathlib import Path

import dagster as dg
import duckdb
import numpy as np
import pytest
from conftest import REALDATA, needs_realdata
from PIL import Image
from spec_factory import build_spec
from imaging.test_burned_in import _run_to_triplets

from medtrinity_assets import stages
from medtrinity_assets.dataset.exports import held_back_flags
from medtrinity_assets.defs.assets import ASSETS_BY_NAME, _report_metadata, _triplet_thumbnails
from medtrinity_assets.defs.resources import PipelineSettings
from medtrinity_assets.defs.sql_models import MODELS, relation_for
from medtrinity_assets.paths import REPO_ROOT, DataRoot
from medtrinity_assets.preview import roi_thumbnail, thumbnails_markdown
from medtrinity_assets.pipeline import run_checks
from medtrinity_assets.quality.sql_models import run_model
from medtrinity_assets.sources.base import pseudonymous_path

EMBEDDED = re.compile(r"!\[([0-9a-f]+)\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)")
# BUSI "benign (1)-(4)" carry side labels and "(6)" calipers (test_burned_in); "(7)" carries none.
BUSI_SUBSET_GLOB = "benign/images/benign ([1-7]).png"


# --- flagged images are never previewed --------------------------------------------------------


def _busi_subset_catalog(folder: Path) -> Path:
    """The shipped BUSI spec limited to seven images, most flagged for burned-in text."""
    text = (REPO_ROOT / "data" / "sources" / "busi.yaml").read_text(encoding="utf-8")
    text = text.replace('image_glob: "*/images/*.png"', f'image_glob: "{BUSI_SUBSET_GLOB}"')
    text = text.replace("root: ../shared/realdata/busi", f"root: {REALDATA / 'busi'}")
    folder.mkdir()
    (folder / "busi.yaml").write_text(text, encoding="utf-8")
    return folder


def _triplet_rows(root: DataRoot) -> list[dict]:
    return duckdb.sql(
        f"""SELECT t.*, n.burned_in FROM read_parquet('{root.table('triplets', 'busi')}') t
            JOIN read_parquet('{root.table('normalized_images', 'busi')}') n USING (record_id)"""
    ).to_arrow_table().to_pylist()


def _assert_no_flagged_pixels(markdown: str, root: DataRoot, rows: list[dict]) -> list[str]:
    """Record ids of the embedded thumbnails, after checking none is a held-back image (by id and by pixels)."""
    embedded = EMBEDDED.findall(markdown)
    flagged = [row for row in rows if held_back_flags(row)]
    assert flagged, "the fixture must hold back some images"
    flagged_pngs = {roi_thumbnail(root.root, row["image_path"], row["rois"], burned_in_json=row["burned_in"]) for row in flagged}
    for record_id, encoded in embedded:
        assert record_id not in {row["record_id"] for row in flagged}
        assert base64.b64decode(encoded) not in flagged_pngs
    return [record_id for record_id, _ in embedded]


@pytest.fixture(scope="module")
def busi_subset(tmp_path_factory):
    """BUSI's first seven benign images run to triplets (descriptions written by the helper)."""
    if not REALDATA.is_dir():
        pytest.skip("../shared/realdata is not present")
    base = tmp_path_factory.mktemp("busi_subset")
    catalog = _busi_subset_catalog(base / "catalog")
    from medtrinity_assets.catalog import load_catalog

    spec = load_catalog(catalog)["busi"]
    root = DataRoot(base / "var")
    _run_to_triplets(spec, root)
    return catalog, root


@needs_realdata
def test_thumbnail_table_embeds_no_image_held_back_for_burned_in_text(busi_subset):
    _, root = busi_subset
    rows = _triplet_rows(root)
    markdown = thumbnails_markdown(root.root, rows)
    shown = _assert_no_flagged_pixels(markdown, root, rows)
    assert shown == [row["record_id"] for row in rows if not held_back_flags(row)]
    # Each held-back row says why it has no picture, without one.
    for row in rows:
        if held_back_flags(row):
            assert f"image withheld ({', '.join(held_back_flags(row))})" in markdown


@needs_realdata
def test_triplets_preview_metadata_shows_only_images_not_held_back(busi_subset):
    catalog, root = busi_subset
    settings = PipelineSettings(data_root=str(root.root), catalog=str(catalog))
    rows = _triplet_rows(root)
    preview = _triplet_thumbnails(settings, "busi")["preview"].value
    shown = _assert_no_flagged_pixels(preview, root, rows)
    # The preview still shows what may be shown.
    assert shown and len(shown) == min(4, sum(1 for row in rows if not held_back_flags(row)))
    assert "image withheld" not in preview


@needs_realdata
def test_dagster_event_log_holds_no_thumbnail_of_a_held_back_image(busi_subset, monkeypatch):
    catalog, root = busi_subset
    monkeypatch.setenv("MEDTRINITY_SALT", "test-salt")
    settings = PipelineSettings(data_root=str(root.root), catalog=str(catalog))
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("sources", ["busi"])
        result = dg.materialize([ASSETS_BY_NAME["triplets"]], partition_key="busi", instance=instance, resources={"settings": settings})
        assert result.success
        event = instance.get_latest_materialization_event(dg.AssetKey("triplets"))
        preview = event.asset_materialization.metadata["preview"].value
        stored = json.dumps([str(e.dagster_event) for e in instance.all_logs(result.run_id)])
    shown = _assert_no_flagged_pixels(preview, root, _triplet_rows(root))
    assert shown
    for row in _triplet_rows(root):
        if held_back_flags(row):
            assert base64.b64encode(roi_thumbnail(root.root, row["image_path"], row["rois"], burned_in_json=row["burned_in"])).decode() not in stored


# --- pseudonymized paths reach no quarantine row, model or metadata ------------------------------------

REAL_NAMES = ("Doe", "Jane", "19650412", "Roe", "Richard", "19701101")


def _write_png(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


@pytest.fixture
def named_source(tmp_path):
    """Images named for their patients: one unreadable, one without its mask, one fine."""
    src = tmp_path / "src"
    pixels = (np.arange(64 * 64).reshape(64, 64) % 251).astype(np.uint8)
    mask = np.zeros((64, 64), np.uint8)
    mask[20:40, 20:40] = 255
    unreadable = src / "images" / "Doe_Jane" / "Doe.Jane_19650412.png"
    unreadable.parent.mkdir(parents=True)
    unreadable.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not a png" * 8)
    _write_png(src / "masks" / "Doe_Jane" / "Doe.Jane_19650412.png", mask)
    _write_png(src / "images" / "Roe_Richard" / "Roe.Richard_19701101.png", pixels)
    _write_png(src / "images" / "case_0001" / "scan.png", pixels)
    _write_png(src / "masks" / "case_0001" / "scan.png", mask)
    return build_spec(
        modality="ct", organs=["liver"], root=str(src), pseudonymize_paths=True,
        layout={"family": "image_mask", "image_glob": "images/**/*.png", "mask_replace": [{"old": "images/", "new": "masks/"}]},
    )


def _quarantine_rows(root: DataRoot, stage: str, source_id: str) -> list[dict]:
    return duckdb.sql(f"SELECT * FROM read_parquet('{root.quarantine(stage, source_id)}')").to_arrow_table().to_pylist()


def _assert_no_real_name(text: str) -> None:
    for name in REAL_NAMES:
        assert name not in text, f"{name!r} leaked into: {text[:400]}"


def test_pseudonymized_source_quarantines_under_hashed_paths_with_scrubbed_reasons(named_source, tmp_path):
    root = DataRoot(tmp_path / "var")
    report = stages.run_ingest(named_source, root, "test-salt")
    assert report.rows == 1 and report.quarantined == 2
    rows = _quarantine_rows(root, "raw_records", named_source.id)
    assert {row["source_file"] for row in rows} == {
        pseudonymous_path("test-salt", "images/Doe_Jane/Doe.Jane_19650412.png"),
        pseudonymous_path("test-salt", "images/Roe_Richard/Roe.Richard_19701101.png"),
    }
    for row in rows:
        _assert_no_real_name(json.dumps(row))
    # The reasons stay true: the missing mask is named by its pseudonym.
    absent = next(row["reason"] for row in rows if "absent" in row["reason"])
    assert pseudonymous_path("test-salt", "masks/Roe_Richard/Roe.Richard_19701101.png") in absent

    # The stage's Dagster metadata and its quarantine check.
    metadata = _report_metadata(report)
    _assert_no_real_name(json.dumps({k: str(v) for k, v in metadata.items()}))
    for outcome in run_checks("raw_records", root, named_source.id):
        _assert_no_real_name(outcome.description + json.dumps(outcome.metadata, default=str))

    # The warehouse model that lists an example file per reason.
    model = next(m for m in MODELS if m.name == "qc_quarantine_by_kind")
    con = duckdb.connect(str(tmp_path / "warehouse.duckdb"))
    try:
        run_model(con, model, lambda ref: relation_for(root, ref))
        table = con.sql("SELECT * FROM qc_quarantine_by_kind").to_arrow_table().to_pylist()
    finally:
        con.close()
    assert len(table) == 2
    _assert_no_real_name(json.dumps(table))


def test_source_without_pseudonymized_paths_keeps_real_names_in_quarantine(named_source, tmp_path):
    spec = named_source.model_copy(update={"pseudonymize_paths": False})
    root = DataRoot(tmp_path / "var")
    stages.run_ingest(spec, root, "test-salt")
    files = {row["source_file"] for row in _quarantine_rows(root, "raw_records", spec.id)}
    assert files == {"images/Doe_Jane/Doe.Jane_19650412.png", "images/Roe_Richard/Roe.Richard_19701101.png"}


# --- one file mode for everything written under the data root ------------------------------------------


def _modes(tree: Path) -> dict[str, int]:
    return {str(p.relative_to(tree)): stat.S_IMODE(p.stat().st_mode) for p in [tree, *tree.rglob("*")]}


def _run_small_pipeline(spec, root: DataRoot, tmp_path: Path) -> None:
    """Every kind of write: blobs, stage and quarantine tables, DuckDB COPY tables, exports and
    the dataset card, the warehouse of the SQL models."""
    from medtrinity_assets.dataset.exports import build_dataset
    from medtrinity_assets.defs.sql_models import _model_asset

    _run_to_triplets(spec, root)
    assert root.quarantine("raw_records", spec.id).exists()
    build_dataset([root.table("triplets", spec.id)], root.table("medtrinity_dataset"), root.exports)
    settings = PipelineSettings(data_root=str(root.root))
    model = next(m for m in MODELS if m.name == "qc_quarantine_by_kind")
    with dg.instance_for_test() as instance:
        assert dg.materialize([_model_asset(model)], instance=instance, resources={"settings": settings}).success


@pytest.mark.parametrize("configured", [None, "0600"])
def test_every_file_and_folder_under_the_data_root_has_the_policy_mode(named_source, tmp_path, monkeypatch, configured):
    from medtrinity_assets.storage import dir_mode, file_mode

    if configured:
        monkeypatch.setenv("MEDTRINITY_FILE_MODE", configured)
    else:
        monkeypatch.delenv("MEDTRINITY_FILE_MODE", raising=False)
    # A permissive umask must not widen the modes; the policy is explicit.
    import os

    old_umask = os.umask(0o022)
    try:
        root = DataRoot(tmp_path / "var")
        _run_small_pipeline(named_source, root, tmp_path)
    finally:
        os.umask(old_umask)
    expected_file = int(configured, 8) if configured else 0o640
    assert file_mode() == expected_file and dir_mode() == (expected_file | (expected_file & 0o444) >> 2)
    modes = _modes(root.root)
    assert {"exports/dataset_card.md", "warehouse.duckdb", "tables/triplets/test_source.parquet"} <= set(modes)
    assert any(name.startswith("blobs/images/") for name in modes)
    wrong = {
        name: oct(mode) for name, mode in modes.items()
        if mode != (dir_mode() if (root.root / name).is_dir() else file_mode())
    }
    assert not wrong, wrong


def test_patient_salt_stays_owner_only_whatever_the_policy(tmp_path, monkeypatch):
    from medtrinity_assets.settings import load_or_create_salt

    monkeypatch.delenv("MEDTRINITY_SALT", raising=False)
    monkeypatch.setenv("MEDTRINITY_FILE_MODE", "0644")
    load_or_create_salt(tmp_path / "var")
    assert stat.S_IMODE((tmp_path / "var" / "secrets").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "var" / "secrets" / "patient_salt").stat().st_mode) == 0o600


@pytest.mark.parametrize("bad", ["rw", "0777", "0400", "0o640x"])
def test_file_mode_setting_refuses_modes_that_are_not_owner_read_write_data(monkeypatch, bad):
    from medtrinity_assets.storage import file_mode

    monkeypatch.setenv("MEDTRINITY_FILE_MODE", bad)
    with pytest.raises(ValueError, match="MEDTRINITY_FILE_MODE"):
        file_mode()


def test_knowledge_base_chroma_folder_has_the_policy_mode(tmp_path, monkeypatch):
    """Chroma writes its SQLite and index files itself, with the umask's modes."""
    import os
    import shutil

    from medtrinity_assets.storage import dir_mode, file_mode

    monkeypatch.delenv("MEDTRINITY_FILE_MODE", raising=False)
    knowledge = tmp_path / "knowledge"
    knowledge.mkdir()
    shutil.copy(REPO_ROOT / "data" / "knowledge" / "brain.yaml", knowledge)
    root = DataRoot(tmp_path / "var")
    old_umask = os.umask(0o022)
    try:
        assert stages.run_knowledge_base(root, knowledge).rows > 0
    finally:
        os.umask(old_umask)
    modes = _modes(root.root)
    assert "chroma/chroma.sqlite3" in modes
    wrong = {name: oct(mode) for name, mode in modes.items()
             if mode != (dir_mode() if (root.root / name).is_dir() else file_mode())}
    assert not wrong, wrong
