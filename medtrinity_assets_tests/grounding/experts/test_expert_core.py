"""The expert core on real images: samples from a data root built by the pipeline's own stages,
the patient split, train -> save -> load -> predict, reuse and retraining, bring-your-own
weights (state dict, TorchScript, MONAI bundle) and their errors. Tiny settings (12 Kvasir-SEG
images, input 64 px, one epoch) keep each test to seconds."""

from __future__ import annotations

import json
import shutil
import zipfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from expert_fixtures import KVASIR, BUSI, busi_source, expert_spec, ground, kvasir_source
from medtrinity_assets.grounding.experts.apply import applicable_experts, find_rois, load_for_inference
from medtrinity_assets.grounding.experts.base import ExpertError, WeightsError
from medtrinity_assets.grounding.experts.families import family
from medtrinity_assets.grounding.experts.metrics import evaluate
from medtrinity_assets.grounding.experts.monai_family import build_network, network_args
from medtrinity_assets.grounding.experts.samples import train_source_ids, training_samples
from medtrinity_assets.grounding.experts.training import train_expert
from medtrinity_assets.grounding.experts.weights import current_manifest
from medtrinity_assets.paths import DataRoot

needs_realdata = pytest.mark.skipif(not KVASIR.is_dir() or not BUSI.is_dir(), reason="../shared/realdata is not present")
pytestmark = [needs_realdata, pytest.mark.realdata]


@pytest.fixture(autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # the test machine's cores are shared
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def kvasir_root(tmp_path_factory):
    """A data root with raw_records, normalized_images and rois of 12 Kvasir-SEG images."""
    tmp = tmp_path_factory.mktemp("kvasir")
    source = kvasir_source(tmp / "kvasir_seg")
    root = DataRoot(tmp / "var")
    ground(source, root)
    return root, {source.id: source}


def fresh_copy(kvasir_root, tmp_path) -> tuple[DataRoot, dict]:
    root, catalog = kvasir_root
    shutil.copytree(root.root, tmp_path / "var")
    return DataRoot(tmp_path / "var"), catalog


def test_samples_join_images_and_masks_and_split_by_patient(kvasir_root):
    root, catalog = kvasir_root
    spec = expert_spec()
    assert train_source_ids(spec, catalog, root) == ["kvasir_seg"]
    train, val, info = training_samples(spec, root, catalog)
    assert len(train) + len(val) == 12 and train and val
    assert not {s.patient_hash for s in train} & {s.patient_hash for s in val}
    for sample in train + val:
        assert sample.image.dtype == np.uint8 and sample.image.shape[:2] == sample.mask.shape
        assert max(sample.image.shape[:2]) == 512  # the normalized image, not the raw file
        assert sample.mask.any() and len(sample.boxes) == len(sample.instances) >= 1
        union = np.logical_or.reduce(sample.instances)
        assert (union == sample.mask).all()
        for x0, y0, x1, y1 in sample.boxes:
            assert sample.mask[y0:y1, x0:x1].any()
    assert info["counts"]["train_images"] == len(train) and info["counts"]["positives"] == 12
    # A label no annotation carries: no training source, a clear error.
    with pytest.raises(ExpertError, match="no partition of modality endoscopy"):
        training_samples(expert_spec(train_labels=["tumour"]), root, catalog)


def test_a_sharded_source_trains_on_all_its_shards(kvasir_root, tmp_path):
    """The same 12 images ingested as two shards (tables per shard): the same samples, and a
    data fingerprint that covers both shards."""
    from medtrinity_assets.grounding.experts.weights import data_fingerprint

    root, catalog = kvasir_root
    source = catalog["kvasir_seg"]
    sharded = DataRoot(tmp_path / "sharded")
    for key in ("kvasir_seg.s0of2", "kvasir_seg.s1of2"):
        ground(source.for_partition(key), sharded)
    assert not sharded.table("rois", "kvasir_seg").exists()
    assert all(pq.read_metadata(sharded.table("rois", key)).num_rows for key in ("kvasir_seg.s0of2", "kvasir_seg.s1of2"))
    spec = expert_spec()
    assert train_source_ids(spec, catalog, sharded) == ["kvasir_seg"]

    def ids(found):
        return sorted(sample.record_id for sample in found)

    whole_train, whole_val, _ = training_samples(spec, root, catalog)
    train, val, _ = training_samples(spec, sharded, catalog)
    assert (ids(train), ids(val)) == (ids(whole_train), ids(whole_val)) and len(train) + len(val) == 12
    before = data_fingerprint(spec, sharded, ["kvasir_seg"])
    sharded.table("rois", "kvasir_seg.s1of2").write_bytes(root.table("rois", "kvasir_seg").read_bytes())
    assert data_fingerprint(spec, sharded, ["kvasir_seg"]) != before  # a change in either shard counts


@pytest.mark.slow  # its own BUSI data root and a training run: about 6-12 s here
def test_normal_images_join_as_empty_negatives(tmp_path):
    source = busi_source(tmp_path / "busi", {"benign": 4, "malignant": 2, "normal": 3})
    root = DataRoot(tmp_path / "var")
    ground(source, root)
    spec = expert_spec(id="lesion_test", modality="ultrasound", target="lesion", split="record")
    train, val, info = training_samples(spec, root, {source.id: source})
    samples = train + val
    assert info["counts"]["negatives"] == 3 and info["counts"]["positives"] == 6
    assert sum(not s.mask.any() and not s.boxes for s in samples) == 3
    assert all(s.image.ndim == 2 for s in samples)  # grey ultrasound: repeated to three channels
    if train and val:
        impl = family("monai")
        result = impl.train(spec, train, val, "cpu", tmp_path)
        metrics = evaluate(impl, result.model, spec, val, "cpu")
        assert metrics["images"] == len(val) and 0.0 <= metrics["dice"] <= 1.0
    # train_labels narrows the target: malignant only; benign images are neither target nor normal.
    only = expert_spec(id="lesion_test", modality="ultrasound", target="lesion", split="record",
                       train_labels=["malignant breast tumor"])
    try:
        train, val, info = training_samples(only, root, {source.id: source})
    except ExpertError as error:
        assert "validation" in str(error)  # 5 images may all fall on one side
    else:
        assert info["counts"]["positives"] == 2 and info["counts"]["skipped"] == 4


def test_train_save_load_predict_round_trip_and_reuse(kvasir_root, tmp_path):
    root, catalog = fresh_copy(kvasir_root, tmp_path)
    spec = expert_spec(epochs=2)
    with pytest.raises(ExpertError, match="has no trained weights yet: materialize the asset expert_polyp_test"):
        load_for_inference(spec, root, tmp_path)
    outcome = train_expert(spec, root, catalog, tmp_path)
    manifest = outcome.manifest
    assert not outcome.reused and manifest.provenance == "trained"
    weights = root.root / manifest.path
    import hashlib

    assert weights.name == f"{hashlib.sha256(weights.read_bytes()).hexdigest()}.pt"
    assert json.loads((weights.parent / "current.json").read_text())["sha256"] == manifest.sha256
    assert [h["epoch"] for h in manifest.history] == [1, 2]
    assert set(manifest.history[0]) >= {"train_loss", "val_dice", "seconds", "lr"}
    assert set(manifest.metrics) >= {"dice", "box_iou", "map50", "precision", "recall", "images", "seconds"}
    assert manifest.train_records + manifest.val_records == 12
    # The best epoch was chosen on the 'val' patients; the 'test' patients are measured apart.
    counts = outcome.info["counts"]
    assert counts["selection_images"] + counts["test_images"] == manifest.val_records
    assert counts["test_images"] > 0 and manifest.metrics["test"]["images"] == counts["test_images"]

    train, val, _ = training_samples(spec, root, catalog)
    images = [s.image for s in val]
    # The model in memory and the one read back from its file predict the same.
    impl = family("monai")
    trained = impl.train(spec, train, val, "cpu", tmp_path).model
    impl.save(trained, spec, tmp_path / "saved.pt")
    loaded = impl.load(spec, tmp_path / "saved.pt", "cpu")
    before = impl.predict(trained, spec, images, "cpu")
    after = impl.predict(loaded, spec, images, "cpu")
    for one, two, image in zip(before, after, images):
        assert one.probability.shape == image.shape[:2]
        assert np.array_equal(one.probability, two.probability)
        assert [i.box for i in one.instances] == [i.box for i in two.instances]
        assert [i.score for i in one.instances] == [i.score for i in two.instances]
    first = load_for_inference(spec, root, tmp_path)
    rois = find_rois(first, images)
    assert len(rois) == len(images) and all(len(r) <= spec.max_rois for r in rois)
    assert all(i.score >= spec.confidence_threshold for r in rois for i in r)

    # Unchanged data and spec: reused, no training.
    again = train_expert(spec, root, catalog, tmp_path)
    assert again.reused and again.manifest.sha256 == manifest.sha256
    # The upstream stages rerun on the same files write the same bytes: still reused.
    ground(catalog["kvasir_seg"], root)
    assert train_expert(spec, root, catalog, tmp_path).reused
    # The rois partition changes (one ROI row fewer): retrained, new manifest in use.
    table = root.table("rois", "kvasir_seg")
    rows = pq.read_table(table)
    pq.write_table(rows.slice(0, rows.num_rows - 1), table)
    changed = train_expert(spec, root, catalog, tmp_path)
    assert not changed.reused and changed.manifest.data_fingerprint != manifest.data_fingerprint
    assert current_manifest(root, spec.id).data_fingerprint == changed.manifest.data_fingerprint
    # A spec edited after training is refused at inference until retrained.
    with pytest.raises(ExpertError, match="earlier version of its spec"):
        load_for_inference(expert_spec(epochs=3), root, tmp_path)


def _reference(spec):
    torch.manual_seed(1)
    net = build_network(spec.architecture, network_args(spec))
    net.eval()
    return net


def _bundle(folder, spec, net, yaml_config=False, script=False):
    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    args = network_args(spec)
    config = {"network_def": {"_target_": "monai.networks.nets.UNet", **args}}
    if yaml_config:
        import yaml

        (folder / "configs" / "inference.yaml").write_text(yaml.safe_dump(config))
    else:
        (folder / "configs" / "inference.json").write_text(json.dumps(config))
    if script:
        torch.jit.trace(net, torch.zeros(1, 3, 64, 64)).save(str(folder / "models" / "model.ts"))
    else:
        torch.save(net.state_dict(), folder / "models" / "model.pt")


@pytest.mark.parametrize("kind", ["state_dict", "torchscript", "bundle_folder", "bundle_zip", "bundle_ts"])
def test_brought_weights_load_and_predict(kvasir_root, tmp_path, kind):
    root, catalog = fresh_copy(kvasir_root, tmp_path)
    spec = expert_spec()
    net = _reference(spec)
    if kind == "state_dict":
        name = "mine.pt"
        torch.save(net.state_dict(), tmp_path / name)
    elif kind == "torchscript":
        name = "mine.ts"
        torch.jit.trace(net, torch.zeros(1, 3, 64, 64)).save(str(tmp_path / name))
    else:
        # A folder with a JSON config and a state dict; a zip with a YAML config; a TorchScript model.ts.
        _bundle(tmp_path / "bundle", spec, net, yaml_config=kind == "bundle_zip", script=kind == "bundle_ts")
        name = "bundle"
        if kind == "bundle_zip":
            with zipfile.ZipFile(tmp_path / "bundle.zip", "w") as archive:
                for path in (tmp_path / "bundle").rglob("*"):
                    archive.write(path, "polyp_bundle/" + path.relative_to(tmp_path / "bundle").as_posix())
            shutil.rmtree(tmp_path / "bundle")
            name = "bundle.zip"
    brought = expert_spec(weights=name)
    outcome = train_expert(brought, root, catalog, tmp_path)
    assert outcome.manifest.provenance == "brought" and outcome.manifest.history == []
    assert outcome.manifest.metrics["images"] == outcome.manifest.val_records > 0
    assert train_expert(brought, root, catalog, tmp_path).reused

    expert = load_for_inference(brought, root, tmp_path)
    _, val, _ = training_samples(spec, root, catalog)
    image = val[0].image
    got = expert.family.predict(expert.model, brought, [image], "cpu")[0].probability
    x = expert.family.prepare_batch(expert.model, brought, [image], "cpu")
    with torch.inference_mode():
        expected = torch.sigmoid(net(x))[0, 0]
    from medtrinity_assets.grounding.experts.monai_family import _resize

    expected = _resize(expected[None], image.shape[:2], "bilinear")[0].numpy()
    assert got.shape == image.shape[:2]
    assert np.allclose(got, expected, atol=1e-5)


def test_missing_and_incompatible_weights_name_the_file(kvasir_root, tmp_path):
    root, catalog = kvasir_root
    missing = expert_spec(weights="nowhere/model.pt")
    with pytest.raises(WeightsError, match=str(tmp_path / "nowhere" / "model.pt")):
        train_expert(missing, root, catalog, tmp_path)
    with pytest.raises(WeightsError, match="nowhere/model.pt"):
        load_for_inference(missing, root, tmp_path)

    other = expert_spec(network={"channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 1})
    torch.save(build_network("unet", network_args(other)).state_dict(), tmp_path / "other.pt")
    with pytest.raises(WeightsError, match=r"other\.pt.*does not fit.*size mismatch"):
        load_for_inference(expert_spec(weights="other.pt"), root, tmp_path)
    (tmp_path / "notes.pt").write_text("these are not weights")
    with pytest.raises(WeightsError, match=r"notes\.pt.*not a torch weights file"):
        load_for_inference(expert_spec(weights="notes.pt"), root, tmp_path)
    (tmp_path / "yolo.pt").write_bytes(b"")
    with pytest.raises(WeightsError, match=r"yolo\.pt.*yolo family"):
        load_for_inference(expert_spec(weights="yolo.pt", weights_format="ultralytics"), root, tmp_path)
    (tmp_path / "half_bundle" / "configs").mkdir(parents=True)
    (tmp_path / "half_bundle" / "configs" / "inference.json").write_text(json.dumps({"network_def": {"_target_": "monai.networks.nets.UNet", **network_args(expert_spec())}}))
    with pytest.raises(WeightsError, match=r"half_bundle.*neither models/model.pt nor models/model.ts"):
        load_for_inference(expert_spec(weights="half_bundle"), root, tmp_path)


def test_applicable_experts_by_modality_sources_and_organs(kvasir_root):
    _, catalog = kvasir_root
    source = catalog["kvasir_seg"]
    experts = {
        "a": expert_spec(id="any_endo"),
        "b": expert_spec(id="colon_only", organs=["colon"]),
        "c": expert_spec(id="stomach_only", organs=["stomach"]),
        "d": expert_spec(id="named", apply_to=["kvasir_seg"], organs=["stomach"]),
        "e": expert_spec(id="elsewhere", apply_to=["cvc_clinicdb"]),
        "f": expert_spec(id="ultra", modality="ultrasound"),
    }
    assert [s.id for s in applicable_experts(experts, source)] == ["any_endo", "colon_only", "named"]
    assert family("monai").name == "monai"
    with pytest.raises(ExpertError, match="unknown expert family"):
        family("sam")


def test_segresnet_stops_at_the_time_limit_and_training_is_reproducible(kvasir_root, tmp_path):
    root, catalog = fresh_copy(kvasir_root, tmp_path)
    spec = expert_spec(architecture="segresnet", network={"init_filters": 8}, epochs=3, max_train_minutes=1e-4)
    first = train_expert(spec, root, catalog, tmp_path)
    assert len(first.manifest.history) == 1  # the first epoch crossed the limit
    # Same spec, same data, same seed: the same bytes, so the same content-addressed file.
    again = train_expert(spec, root, catalog, tmp_path, force=True)
    assert not again.reused and again.manifest.sha256 == first.manifest.sha256
    expert = load_for_inference(spec, root, tmp_path)
    assert expert.model.info["architecture"] == "segresnet"
    # A unet spec cannot load a segresnet file.
    with pytest.raises(WeightsError, match="holds a MONAI segresnet"):
        family("monai").load(expert_spec(), root.root / first.manifest.path, "cpu")


def test_an_empty_validation_side_is_a_clear_error(kvasir_root, tmp_path):
    root, catalog = fresh_copy(kvasir_root, tmp_path)
    spec = expert_spec()
    _, val, _ = training_samples(spec, root, catalog)
    # Drop the validation patients' annotations: their images become unknown, not negatives.
    table = root.table("rois", "kvasir_seg")
    rois = pq.read_table(table)
    dropped = {s.record_id for s in val}
    kept = [r for r in rois.to_pylist() if r["record_id"] not in dropped]
    pq.write_table(pa.Table.from_pylist(kept, rois.schema), table)
    with pytest.raises(ExpertError, match=r"left \d+ training and 0 validation images \(\d+ \+ 0 patients\)"):
        train_expert(spec, root, catalog, tmp_path)


def test_brought_weights_without_annotated_partitions_are_recorded_unevaluated(kvasir_root, tmp_path):
    _, catalog = kvasir_root
    root = DataRoot(tmp_path / "var")  # nothing grounded here
    spec = expert_spec()
    torch.save(_reference(spec).state_dict(), tmp_path / "mine.pt")
    outcome = train_expert(expert_spec(weights="mine.pt"), root, catalog, tmp_path)
    assert outcome.manifest.provenance == "brought" and outcome.manifest.metrics == {}
    assert "not evaluated" in outcome.info["note"]
    assert outcome.manifest.path == str((tmp_path / "mine.pt").resolve())
    expert = load_for_inference(expert_spec(weights="mine.pt"), root, tmp_path)
    assert expert.manifest.sha256 == outcome.manifest.sha256


def test_a_family_whose_packages_are_missing_names_them_and_the_install(monkeypatch):
    """The CPU-light install leaves ultralytics out: asking for such a family says what is
    missing and which install has it, before any import is tried."""
    from medtrinity_assets.grounding.experts import families

    monkeypatch.setitem(families.REQUIRED_PACKAGES, "yolo", ("ultralytics", "no_such_package_medtrinity"))
    with pytest.raises(ExpertError, match=r"'yolo' needs (ultralytics and )?no_such_package_medtrinity.*make setup PROFILE=cpu.*'monai'"):
        families.family("yolo")
    assert type(families.family("monai")).__name__ == "MonaiFamily"
