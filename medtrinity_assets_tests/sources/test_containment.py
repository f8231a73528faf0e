"""Containment: a source spec never reaches outside its folder.

A contributed spec, or a symbolic link planted in a source folder, must not make fetch write, or
ingest / the sensor / check-source read, anything outside the source folder; a folder linking to
itself must not hang them; quarantine reasons name the file and the problem, never its contents.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from spec_factory import PLACEHOLDER_METADATA, build_spec

from medtrinity_assets import cli
from medtrinity_assets.catalog import CatalogError, load_spec
from medtrinity_assets.catalog.acquire import AcquisitionError, fetch_downloads, fetch_package_files
from medtrinity_assets.sources.check import check_source
from medtrinity_assets.catalog.fingerprint import folder_fingerprint
from medtrinity_assets.paths import REPO_ROOT
from medtrinity_assets.sources import IngestContext, Quarantined, read_source
from medtrinity_assets.storage import BlobStore

SECRET = "SECRET-CONTENT-never-in-a-reason"


def save_png(path: Path, value: int = 90, size=(12, 16)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.full(size, value, dtype=np.uint8)
    pixels[2:6, 3:9] = 200
    Image.fromarray(pixels).save(path)


def ingest(tmp_path: Path, root: Path, layout: dict, **fields):
    spec = build_spec(root=str(root), layout=layout, **fields)
    ctx = IngestContext(spec=spec, root=root, blobs=BlobStore(tmp_path / "out"), salt="s")
    items = list(read_source(ctx))
    return [i for i in items if not isinstance(i, Quarantined)], [i for i in items if isinstance(i, Quarantined)]


def write_spec(folder: Path, **fields) -> Path:
    data = {**PLACEHOLDER_METADATA, **fields}
    path = folder / f"{data['id']}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def run_isolated(code: str, timeout: float = 60, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run code in a child Python (this checkout first on sys.path) that is killed after
    ``timeout`` seconds: a walk that loops fails the test instead of hanging the suite."""
    # This checkout and the tests' helpers (spec_factory) first, as pytest has them.
    child_env = {**os.environ, **(env or {}), "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(Path(__file__).parents[1])])}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, env=child_env, cwd=REPO_ROOT)


# --- acquisition: `to` stays in the source folder -------------------------------------------


@pytest.mark.parametrize("to", ["../elsewhere", "/tmp/elsewhere", "a/../../elsewhere"])
def test_download_to_outside_the_source_folder_is_a_spec_error_naming_the_field(tmp_path, to):
    path = write_spec(tmp_path, acquisition={"method": "download", "downloads": [{"url": "https://example.org/x.zip", "to": to}]})
    with pytest.raises(CatalogError, match=r"acquisition\.downloads\.0\.to.*leaves the source folder"):
        load_spec(path)


@pytest.mark.parametrize("field, value", [("to", "../../elsewhere"), ("to", "/etc"), ("path", "../../../etc/passwd")])
def test_package_copy_leaving_its_folders_is_a_spec_error_naming_the_field(tmp_path, field, value):
    entry = {"package": "pydicom", "path": "x.dcm", field: value}
    path = write_spec(tmp_path, access="package", acquisition={"method": "package", "files": [entry]})
    with pytest.raises(CatalogError, match=rf"acquisition\.files\.0\.{field}.*leaves the source folder"):
        load_spec(path)


def test_package_copy_through_a_link_leading_outside_writes_nothing_there(tmp_path, monkeypatch):
    package = tmp_path / "packages" / "containment_demo_pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "scan.txt").write_text("data")
    monkeypatch.syspath_prepend(str(tmp_path / "packages"))
    dest, outside = tmp_path / "raw" / "demo", tmp_path / "outside"
    dest.mkdir(parents=True)
    outside.mkdir()
    os.symlink(outside, dest / "release")  # a folder the spec's `to` names, planted as a link
    spec = build_spec(access="package", acquisition={"method": "package", "files": [
        {"package": "containment_demo_pkg", "path": "scan.txt", "to": "release"}]})
    with pytest.raises(AcquisitionError, match="leads outside the source folder"):
        fetch_package_files(spec, dest)
    assert list(outside.iterdir()) == []


def test_download_through_a_link_leading_outside_is_refused_before_fetching(tmp_path):
    dest, outside = tmp_path / "raw" / "open", tmp_path / "outside"
    dest.mkdir(parents=True)
    outside.mkdir()
    os.symlink(outside, dest / "release")
    spec = build_spec(acquisition={"method": "download", "downloads": [{"url": "http://127.0.0.1:9/scans.bin", "to": "release"}]})
    with pytest.raises(AcquisitionError, match="leads outside the source folder"):
        fetch_downloads(spec, dest, log=lambda line: None, attempts=1, retry_delay_s=0)
    assert list(outside.iterdir()) == []


# --- symbolic links inside a source ---------------------------------------------------------


def test_link_to_an_image_outside_the_source_is_quarantined_not_ingested(tmp_path):
    root, outside = tmp_path / "src", tmp_path / "outside"
    save_png(root / "images" / "kept.png")
    save_png(outside / "private.png", value=10)
    os.symlink(outside / "private.png", root / "images" / "linked.png")
    os.symlink(outside, root / "images" / "more")  # a folder link leading out, globbed by */*.png
    records, quarantined = ingest(tmp_path, root, {"family": "image_folder", "image_glob": "images/**/*.png"})
    assert [r["source_file"] for r in records] == ["images/kept.png"]
    outside_rows = {q.source_file: q for q in quarantined if q.kind == "outside_source"}
    assert set(outside_rows) == {"images/linked.png", "images/more"}
    assert all("outside the source folder" in q.reason and str(outside) not in q.reason for q in outside_rows.values())

    records, _ = ingest(tmp_path, root, {"family": "image_folder", "image_glob": "images/*/*.png"})
    assert records == []


def test_csv_row_naming_a_link_to_a_file_outside_is_quarantined(tmp_path):
    root, outside = tmp_path / "src", tmp_path / "outside"
    save_png(root / "images" / "a.png")
    save_png(outside / "private.png", value=10)
    os.symlink(outside / "private.png", root / "images" / "b.png")
    (root / "labels.csv").write_text("id,finding\na,mass\nb,mass\n")
    records, quarantined = ingest(tmp_path, root, {"family": "image_csv", "csv": "labels.csv", "id_column": "id",
                                                   "path_template": "images/{id}.png", "label_column": "finding"})
    assert [r["source_file"] for r in records] == ["images/a.png"]
    assert {(q.source_file, q.kind) for q in quarantined} >= {("images/b.png", "outside_source")}


def test_box_table_row_naming_a_dicom_linked_from_outside_is_not_read(tmp_path):
    from pydicom.data import get_testdata_file

    root = tmp_path / "src"
    (root / "images").mkdir(parents=True)
    os.symlink(get_testdata_file("CT_small.dcm"), root / "images" / "ct1.dcm")  # a file elsewhere
    (root / "boxes.csv").write_text("id,x0,y0,x1,y1\nct1,10,20,30,40\n")
    records, quarantined = ingest(tmp_path, root, {"family": "boxes", "boxes": {
        "format": "csv", "file": "boxes.csv", "id_column": "id", "path_template": "images/{id}.dcm",
        "fixed_label": "nodule", "box_columns": ["x0", "y0", "x1", "y1"]}}, modality="ct")
    assert records == []
    assert {(q.source_file, q.kind) for q in quarantined} == {("images/ct1.dcm", "outside_source")}


def test_label_csv_that_links_outside_is_refused_and_its_contents_never_echoed(tmp_path):
    root, outside = tmp_path / "src", tmp_path / "outside"
    save_png(root / "images" / "a.png")
    outside.mkdir()
    (outside / "secrets.txt").write_text(f"{SECRET}:x:0:0\nline two\n")
    os.symlink(outside / "secrets.txt", root / "labels.csv")
    records, quarantined = ingest(tmp_path, root, {"family": "image_csv", "csv": "labels.csv", "id_column": "id",
                                                   "path_template": "images/{id}.png"})
    assert records == []
    assert [(q.source_file, q.kind) for q in quarantined] == [("labels.csv", "outside_source"), ("labels.csv", "outside_source")]
    assert not any(SECRET in q.reason for q in quarantined)


def test_self_linking_folders_do_not_hang_ingest_the_sensor_or_check_source(tmp_path):
    root = tmp_path / "src"
    save_png(root / "a" / "x.png")
    save_png(root / "a" / "b" / "y.png")
    # Two links back up the tree: a walk that follows links without remembering where it has
    # been visits 2^depth folders and never ends.
    os.symlink("..", root / "a" / "up")
    os.symlink("../..", root / "a" / "b" / "top")
    os.symlink(".", root / "a" / "b" / "here")
    os.symlink("/", root / "a" / "filesystem")  # and one that leaves: never walked
    catalog = tmp_path / "catalog"
    catalog.mkdir()
    write_spec(catalog, id="looped", root=str(root), layout={"family": "image_folder", "image_glob": "**/*.png"})
    result = run_isolated(f"""
        import json
        from pathlib import Path
        import dagster as dg
        from spec_factory import build_spec
        from medtrinity_assets import cli
        from medtrinity_assets.defs.automation import raw_files_sensor
        from medtrinity_assets.defs.resources import PipelineSettings
        from medtrinity_assets.sources.check import _files_under, check_source
        from medtrinity_assets.catalog.fingerprint import folder_fingerprint
        from medtrinity_assets.sources import IngestContext, Quarantined, read_source
        from medtrinity_assets.storage import BlobStore
        root = Path({str(root)!r})
        spec = build_spec(root=str(root), layout={{"family": "image_folder", "image_glob": "**/*.png"}})
        items = list(read_source(IngestContext(spec=spec, root=root, blobs=BlobStore(Path({str(tmp_path / 'out')!r})), salt="s")))
        report = check_source(spec)
        print(json.dumps({{
            "records": sorted(i["source_file"] for i in items if not isinstance(i, Quarantined)),
            "outside": sorted(i.source_file for i in items if isinstance(i, Quarantined) and i.kind == "outside_source"),
            "fingerprint": folder_fingerprint(root), "has_files": cli._has_files(root),
            "walked": _files_under(root), "images": report.images,
            "sensor": [r.partition_key for r in raw_files_sensor(dg.build_sensor_context(
                instance=dg.DagsterInstance.ephemeral(), resources={{"settings": PipelineSettings()}})).run_requests],
        }}))
    """, env={"MEDTRINITY_CATALOG": str(catalog), "MEDTRINITY_ALLOWED_ROOTS": str(tmp_path)})
    assert result.returncode == 0, result.stderr[-2000:]
    found = json.loads(result.stdout)
    assert found["records"] == ["a/b/y.png", "a/x.png"]
    assert found["outside"] == ["a/filesystem"]
    assert found["fingerprint"] and found["has_files"] and found["images"] == 2
    assert found["walked"] == ["a/b/y.png", "a/x.png"]  # each real folder once, nothing of /
    assert found["sensor"] == ["looped"]


def test_fingerprint_and_check_source_never_walk_a_linked_folder_outside(tmp_path):
    root, outside = tmp_path / "src", tmp_path / "outside"
    save_png(root / "x.png")
    save_png(outside / "private.png")
    before = folder_fingerprint(root)
    os.symlink(outside, root / "elsewhere")
    assert folder_fingerprint(root) == before
    (outside / "changed.txt").write_text("a change outside the source is not a change of the source")
    assert folder_fingerprint(root) == before
    report = check_source(build_spec(root=str(root), layout={"family": "image_folder", "image_glob": "*.png"}))
    assert report.images == 1 and not any("private" in item for item in report.unused_files.items)


def test_links_that_stay_inside_the_source_are_followed(tmp_path):
    root = tmp_path / "src"
    save_png(root / "store" / "x.png")
    os.symlink("store", root / "images")  # a publisher's alias folder, inside the source
    records, quarantined = ingest(tmp_path, root, {"family": "image_folder", "image_glob": "images/*.png"})
    assert [r["source_file"] for r in records] == ["images/x.png"] and quarantined == []


def test_a_source_folder_that_is_itself_a_link_to_another_disk_is_read(tmp_path):
    disk, raw = tmp_path / "disk" / "scans", tmp_path / "raw"
    save_png(disk / "images" / "x.png")
    raw.mkdir()
    os.symlink(disk, raw / "test_source")
    records, quarantined = ingest(tmp_path, raw / "test_source", {"family": "image_folder", "image_glob": "images/*.png"})
    assert [r["source_file"] for r in records] == ["images/x.png"] and quarantined == []
    assert folder_fingerprint(raw / "test_source") is not None


# --- roots and layout paths -----------------------------------------------------------------


@pytest.mark.parametrize("root", ["/etc", "../../..", "/"])
def test_spec_root_outside_the_raw_folder_and_allowlist_is_refused(tmp_path, monkeypatch, root):
    monkeypatch.setenv("MEDTRINITY_RAW", str(tmp_path / "raw"))
    monkeypatch.delenv("MEDTRINITY_ALLOWED_ROOTS", raising=False)
    with pytest.raises(CatalogError, match=r"field 'root'.*MEDTRINITY_ALLOWED_ROOTS"):
        load_spec(write_spec(tmp_path, root=root))


def test_spec_root_under_the_raw_folder_or_an_allowed_folder_is_accepted(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDTRINITY_RAW", str(tmp_path / "raw"))
    monkeypatch.delenv("MEDTRINITY_ALLOWED_ROOTS", raising=False)
    assert load_spec(write_spec(tmp_path, root=str(tmp_path / "raw" / "test_source"))).root
    with pytest.raises(CatalogError, match="field 'root'"):
        load_spec(write_spec(tmp_path, root=str(tmp_path / "mounted" / "scans")))
    monkeypatch.setenv("MEDTRINITY_ALLOWED_ROOTS", os.pathsep.join([str(tmp_path / "other"), str(tmp_path / "mounted")]))
    assert load_spec(write_spec(tmp_path, root=str(tmp_path / "mounted" / "scans"))).root


def test_check_source_refuses_a_root_climbing_to_the_filesystem_root_at_once(tmp_path):
    path = write_spec(tmp_path, root="../../../../../../..", layout={"family": "image_folder", "image_glob": "**/*.png"})
    result = run_isolated(f"""
        import sys
        from medtrinity_assets import cli
        sys.exit(cli.main(["check-source", {str(path)!r}]))
    """, env={"MEDTRINITY_RAW": str(tmp_path / "raw"), "MEDTRINITY_ALLOWED_ROOTS": ""})
    assert result.returncode == 1 and "field 'root'" in result.stderr


@pytest.mark.parametrize("layout, field", [
    ({"family": "image_csv", "csv": "/etc/passwd", "id_column": "id", "path_template": "{id}.png"}, "layout.csv"),
    ({"family": "image_csv", "csv": "../../etc/passwd", "id_column": "id", "path_template": "{id}.png"}, "layout.csv"),
    ({"family": "image_csv", "csv": "t.csv", "id_column": "id", "path_template": "../{id}.png"}, "layout.path_template"),
    ({"family": "image_folder", "image_glob": "../*/*.png"}, "layout.image_glob"),
    ({"family": "image_mask", "image_glob": "*.png", "mask_template": "../../{stem}.png"}, "layout.mask_template"),
    ({"family": "image_mask", "image_glob": "*.png", "masks": [{"template": "/masks/{stem}.png", "label": "x"}]},
     "layout.masks[0].template"),
    ({"family": "captions", "annotations": "/etc/hosts", "image_field": "i", "caption_field": "c"}, "layout.annotations"),
    ({"family": "dicom", "glob": "/**/*.dcm"}, "layout.glob"),
])
def test_layout_paths_leaving_the_source_are_spec_errors_naming_the_field(tmp_path, layout, field):
    with pytest.raises(CatalogError, match=rf"{re.escape(field)} .* leaves the source folder"):
        load_spec(write_spec(tmp_path, layout=layout))


def test_mask_replace_climbing_out_of_the_source_reads_no_mask_there(tmp_path):
    root, outside = tmp_path / "src", tmp_path / "outside"
    save_png(root / "images" / "case.png")
    mask = np.zeros((12, 16), dtype=np.uint8)
    mask[1:5, 1:5] = 255
    outside.mkdir()
    Image.fromarray(mask).save(outside / "case.png")
    records, quarantined = ingest(tmp_path, root, {"family": "image_mask", "image_glob": "images/*.png",
                                                   "mask_replace": [{"old": "images/", "new": "../outside/"}]})
    assert records == []
    assert [(q.source_file, q.kind) for q in quarantined] == [("images/case.png", "outside_source")]
    assert "leads outside the source folder" in quarantined[0].reason


def test_mask_that_is_a_link_outside_the_source_is_not_read(tmp_path):
    root, outside = tmp_path / "src", tmp_path / "outside"
    save_png(root / "images" / "case.png")
    save_png(outside / "case_mask.png", value=255)
    (root / "masks").mkdir()
    os.symlink(outside / "case_mask.png", root / "masks" / "case.png")
    records, quarantined = ingest(tmp_path, root, {"family": "image_mask", "image_glob": "images/*.png",
                                                   "mask_replace": [{"old": "images/", "new": "masks/"}]})
    assert records == []
    assert ("images/case.png", "outside_source") in {(q.source_file, q.kind) for q in quarantined}


def test_nifti_volume_linked_from_outside_is_not_read(tmp_path):
    import nibabel as nib

    root, outside = tmp_path / "src", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    volume = nib.Nifti1Image(np.zeros((8, 8, 4), dtype=np.int16), np.eye(4))
    nib.save(volume, outside / "private.nii.gz")
    os.symlink(outside / "private.nii.gz", root / "case.nii.gz")
    records, quarantined = ingest(tmp_path, root, {"family": "nifti", "image_glob": "*.nii.gz"}, modality="ct")
    assert records == [] and ("case.nii.gz", "outside_source") in {(q.source_file, q.kind) for q in quarantined}


# --- reasons name the file and the problem, never its contents -------------------------------


def test_csv_without_the_declared_columns_does_not_echo_its_header(tmp_path):
    root = tmp_path / "src"
    save_png(root / "a.png")
    (root / "labels.csv").write_text(f"{SECRET},other\nx,y\n")
    _, quarantined = ingest(tmp_path, root, {"family": "image_csv", "csv": "labels.csv", "id_column": "id",
                                             "path_template": "{id}.png"})
    (reason,) = [q.reason for q in quarantined if q.source_file == "labels.csv"]
    assert "lacks column(s) id" in reason and SECRET not in reason


def test_box_files_reasons_do_not_echo_lines_or_headers(tmp_path):
    root = tmp_path / "src"
    save_png(root / "images" / "p.png")
    (root / "labels").mkdir()
    (root / "labels" / "p.txt").write_text(f"0 0.5 {SECRET} 0.1 0.1\n")
    (root / "classes.txt").write_text("nodule\n")
    (root / "boxes.csv").write_text(f"{SECRET},x0\np.png,1\n")
    _, yolo = ingest(tmp_path, root, {"family": "boxes", "image_glob": "images/*.png", "boxes": {
        "format": "yolo", "annotation_template": "labels/{stem}.txt", "class_names_file": "classes.txt"}})
    _, table = ingest(tmp_path, root, {"family": "boxes", "image_glob": "images/*.png", "boxes": {
        "format": "csv", "file": "boxes.csv", "id_column": "image", "path_template": "images/{id}",
        "fixed_label": "nodule", "box_columns": ["x0", "y0", "x1", "y1"]}})
    reasons = [q.reason for q in yolo + table]
    assert any("malformed YOLO line" in r for r in reasons) and any("lacks column(s) image, y0, x1, y1" in r for r in reasons)
    assert not any(SECRET in r for r in reasons)


def test_yolo_label_file_linked_from_outside_is_not_read(tmp_path):
    root, outside = tmp_path / "src", tmp_path / "outside"
    save_png(root / "images" / "p.png")
    (root / "labels").mkdir()
    outside.mkdir()
    (outside / "secrets").write_text(f"{SECRET} line\n")
    os.symlink(outside / "secrets", root / "labels" / "p.txt")
    (root / "classes.txt").write_text("nodule\n")
    _, quarantined = ingest(tmp_path, root, {"family": "boxes", "image_glob": "images/*.png", "boxes": {
        "format": "yolo", "annotation_template": "labels/{stem}.txt", "class_names_file": "classes.txt"}})
    assert ("labels/p.txt", "outside_source") in {(q.source_file, q.kind) for q in quarantined}
    assert not any(SECRET in q.reason for q in quarantined)


def test_per_image_polygon_xml_linked_from_outside_is_not_read(tmp_path):
    root, outside = tmp_path / "src", tmp_path / "outside"
    save_png(root / "images" / "p.png")
    (root / "xml").mkdir()
    outside.mkdir()
    (outside / "shapes.xml").write_text('<A><Shape Type="Polygon"><Points><Point X="1" Y="1"/><Point X="9" Y="1"/>'
                                        '<Point X="9" Y="9"/></Points></Shape></A>')
    os.symlink(outside / "shapes.xml", root / "xml" / "p.xml")
    records, quarantined = ingest(tmp_path, root, {"family": "boxes", "image_glob": "images/*.png", "boxes": {
        "format": "xml_polygons", "annotation_template": "xml/{stem}.xml", "fixed_label": "tumour",
        "xml": {"shape_path": ".//Shape[@Type='Polygon']", "point_path": "Points/Point"}}})
    assert ("xml/p.xml", "outside_source") in {(q.source_file, q.kind) for q in quarantined}
    assert [json.loads(r["annotations"]) for r in records] == [[]]


def test_ranges_file_linked_from_outside_is_not_read(tmp_path):
    root, outside = tmp_path / "src", tmp_path / "outside"
    save_png(root / "frame_1.png")
    outside.mkdir()
    (outside / "README").write_text("frames 1-25: sequence 1\n")
    os.symlink(outside / "README", root / "README.txt")
    records, quarantined = ingest(tmp_path, root, {"family": "image_folder", "image_glob": "*.png"}, patient={
        "source": "ranges", "pattern": r"frame_(\d+)", "ranges_file": "README.txt",
        "range_regex": r"frames (?P<first>\d+)-(?P<last>\d+): sequence (?P<group>\d+)"})
    assert records == []
    assert ("README.txt", "outside_source") in {(q.source_file, q.kind) for q in quarantined}


def test_dataset_json_entry_pointing_outside_is_not_echoed(tmp_path):
    root = tmp_path / "src"
    root.mkdir()
    (root / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "1": "tumour"}, "training": [
        {"image": f"../{SECRET}.nii.gz", "label": "./labelsTr/x.nii.gz"}, {"nothing": SECRET}]}))
    _, quarantined = ingest(tmp_path, root, {"family": "nifti", "dataset_json": "dataset.json"}, modality="ct")
    assert ("dataset.json", "outside_source") in {(q.source_file, q.kind) for q in quarantined}
    assert not any(SECRET in q.reason for q in quarantined)

    (root / "dataset.json").write_text(json.dumps({"labels": {SECRET: "tumour"}, "training": []}))
    _, quarantined = ingest(tmp_path, root, {"family": "nifti", "dataset_json": "dataset.json"}, modality="ct")
    assert any("keys must be integers" in q.reason for q in quarantined)
    assert not any(SECRET in q.reason for q in quarantined)


def test_broken_yolo_data_yaml_is_reported_by_line_not_quoted(tmp_path):
    root = tmp_path / "src"
    save_png(root / "images" / "p.png")
    (root / "data.yaml").write_text(f"names: [nodule\n{SECRET}: : x\n")
    _, quarantined = ingest(tmp_path, root, {"family": "boxes", "image_glob": "images/*.png", "boxes": {
        "format": "yolo", "annotation_template": "labels/{stem}.txt", "class_names_file": "data.yaml"}})
    (reason,) = [q.reason for q in quarantined if q.source_file == "data.yaml"]
    assert reason.startswith("not a YOLO data.yaml") and "line 2" in reason and SECRET not in reason


def test_cli_check_source_with_an_explicit_root_is_trusted(tmp_path, monkeypatch, capsys):
    # A folder given on the command line is the caller's choice; only a spec's root is checked.
    monkeypatch.setenv("MEDTRINITY_RAW", str(tmp_path / "raw"))
    root = tmp_path / "elsewhere"
    save_png(root / "x.png")
    path = write_spec(tmp_path, annotation_kinds=["none"], layout={"family": "image_folder", "image_glob": "*.png"})
    assert cli.main(["check-source", str(path), "--root", str(root)]) == 0
    assert "OK: 1 images" in capsys.readouterr().out

