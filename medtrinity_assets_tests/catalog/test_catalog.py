"""Loading the catalog: every shipped spec is valid, and a broken spec fails with its file and
field named."""

from __future__ import annotations

import pytest
import yaml

from medtrinity_assets.catalog import CatalogError, load_catalog_report, load_spec
from medtrinity_assets.paths import catalog_dir

VALID = yaml.safe_load((catalog_dir() / "busi.yaml").read_text())


def _write(tmp_path, data, name="busi"):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_every_shipped_spec_loads_and_names_its_file():
    # A broken spec no longer stops the catalog (it is left out), so check for problems here.
    loaded = load_catalog_report()
    assert not loaded.problems, [problem.message for problem in loaded.problems]
    catalog = loaded.specs
    assert len(catalog) >= 20
    assert {spec.modality for spec in catalog.values()} >= {"ct", "mri", "xray", "ultrasound", "fundus", "histopathology", "microscopy"}


def test_a_valid_copy_loads(tmp_path):
    assert load_spec(_write(tmp_path, VALID)).id == "busi"


@pytest.mark.parametrize(
    "change, field, words",
    [
        (lambda d: d.update(licence="CC BY"), "licence", "unknown key"),
        (lambda d: d["layout"].update(mask_glob="*.png"), "layout.image_mask.mask_glob", "unknown key"),
        (lambda d: d.pop("modality"), "modality", "required but missing"),
        (lambda d: d.update(modality="photograph"), "modality", "photograph"),
        (lambda d: d.update(homepage="not a url"), "homepage", "url"),
        (lambda d: d["layout"].update(family="zip_archive"), "layout", "zip_archive"),
    ],
)
def test_a_broken_spec_fails_naming_file_and_field(tmp_path, change, field, words):
    data = yaml.safe_load(yaml.safe_dump(VALID))
    change(data)
    path = _write(tmp_path, data)
    with pytest.raises(CatalogError) as error:
        load_spec(path)
    message = str(error.value)
    assert str(path) in message
    assert f"field '{field}" in message
    assert words.lower() in message.lower()


def test_id_must_match_the_file_name(tmp_path):
    with pytest.raises(CatalogError, match="field 'id'.*file name"):
        load_spec(_write(tmp_path, VALID, name="busi_copy"))


def test_invalid_yaml_and_non_mapping_fail_clearly(tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text("id: [unclosed\n")
    with pytest.raises(CatalogError, match="not valid YAML"):
        load_spec(bad)
    bad.write_text("- just\n- a list\n")
    with pytest.raises(CatalogError, match="expected a mapping"):
        load_spec(bad)
