"""The ultralytics YOLO family on real Kvasir-SEG polyps: the dataset it writes, one-epoch
training (segment and detect) on the CPU, save -> load -> predict, bring-your-own checkpoints and
their errors, and ultralytics running offline with its config folder under the data root."""

from __future__ import annotations

import importlib.util
import json
import os
import random
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

# The CPU-light install (make setup PROFILE=cpu) has no ultralytics; the full one, CI's, has.
# Looked up, not imported: importing it here, before ultralytics_env sets its switches, would
# run its online check and replace PIL.Image.open for the rest of the test session.
if importlib.util.find_spec("ultralytics") is None:
    pytest.skip("ultralytics is not installed (the CPU-light install leaves it out)", allow_module_level=True)

from medtrinity_assets.grounding.experts.base import ExpertError, Prediction, Sample, WeightsError
from medtrinity_assets.grounding.experts.spec import ExpertSpec
from medtrinity_assets.grounding.experts.yolo_family import (
    YoloFamily,
    label_lines,
    write_dataset,
)
from medtrinity_assets.paths import realdata_dir

KVASIR = realdata_dir() / "kvasir_seg"
needs_kvasir = pytest.mark.skipif(not KVASIR.is_dir(), reason="../shared/realdata/kvasir_seg is not present")
REPO = Path(__file__).resolve().parents[3]

TWO_POLYPS = "cju0sr5ghl0nd08789uzf1raf"  # one mask, two separate polyps
SIZE = 64


def kvasir_sample(record_id: str, size: int = SIZE, grey: bool = False) -> Sample:
    """A real image and its polyp mask (JPEG: thresholded at 127), resized to ``size``."""
    image = cv2.imread(str(KVASIR / "images" / f"{record_id}.jpg"))[..., ::-1]
    mask = cv2.imread(str(KVASIR / "masks" / f"{record_id}.jpg"), cv2.IMREAD_GRAYSCALE)
    image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
    if grey:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    mask = cv2.resize(mask, (size, size), interpolation=cv2.INTER_NEAREST) > 127
    return Sample(record_id=record_id, source_id="kvasir_seg", patient_hash=record_id,
                  image=np.ascontiguousarray(image), mask=mask)


def kvasir_ids(count: int) -> list[str]:
    ids = sorted(p.stem for p in (KVASIR / "images").glob("*.jpg"))
    return [TWO_POLYPS] + [i for i in ids if i != TWO_POLYPS][: count - 1]


def yolo_spec(task: str = "segment", **overrides) -> ExpertSpec:
    fields = dict(id=f"polyp_{task}", modality="endoscopy", target="polyp", family="yolo",
                  architecture="yolo11n-seg.yaml" if task == "segment" else "yolo11n.yaml", task=task,
                  input_size=SIZE, epochs=1, batch_size=4, seed=0)
    return ExpertSpec(**{**fields, **overrides})


@pytest.fixture(scope="module")
def samples():
    return [kvasir_sample(i) for i in kvasir_ids(8)]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """One data root for the module: ultralytics' config folder lands in it."""
    root = tmp_path_factory.mktemp("var")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MEDTRINITY_HOME", str(root))
        yield root


@pytest.fixture(scope="module")
def trained_segment(samples, data_root, tmp_path_factory):
    torch.set_num_threads(1)
    spec = yolo_spec("segment")
    workdir = tmp_path_factory.mktemp("yolo_segment")
    result = YoloFamily().train(spec, samples[:6], samples[6:], "cpu", workdir)
    return spec, result, workdir


def process_state() -> tuple:
    """What ultralytics would change for the rest of the process if let (threads, determinism,
    environment, the global RNGs)."""
    return (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
            os.environ.get("CUBLAS_WORKSPACE_CONFIG"), os.environ.get("PYTHONHASHSEED"),
            random.getstate(), np.random.get_state()[1].tobytes(), torch.get_rng_state().numpy().tobytes())


def caller_threads() -> int:
    """A thread count other than the one ultralytics' select_device would set (cpu_count - 1, at most 8)."""
    library = min(8, max(1, (os.cpu_count() or 1) - 1))
    return 2 if library != 2 else 3


@pytest.fixture(scope="module")
def trained_detect(samples, data_root, tmp_path_factory):
    torch.set_num_threads(caller_threads())
    random.seed(5)
    before = process_state()
    # Two epochs asked, a time limit crossed by the first: training stops after epoch 1.
    spec = yolo_spec("detect", epochs=2, max_train_minutes=1e-4)
    workdir = tmp_path_factory.mktemp("yolo_detect")
    result = YoloFamily().train(spec, samples[:6], samples[6:], "cpu", workdir)
    after = process_state()
    torch.set_num_threads(1)
    return spec, result, workdir, (before, after)


def check_predictions(predictions: list[Prediction], images: list[np.ndarray]) -> None:
    assert len(predictions) == len(images)
    for prediction, image in zip(predictions, images):
        for instance in prediction.instances:
            assert instance.mask.shape == image.shape[:2] and instance.mask.dtype == bool
            assert 0.0 <= instance.score <= 1.0
            x0, y0, x1, y1 = instance.box
            ys, xs = np.nonzero(instance.mask)
            assert (x0, y0, x1, y1) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)


def same_predictions(a: list[Prediction], b: list[Prediction]) -> bool:
    return len(a) == len(b) and all(
        len(p.instances) == len(q.instances)
        and all(i.score == j.score and np.array_equal(i.mask, j.mask) for i, j in zip(p.instances, q.instances))
        for p, q in zip(a, b))


# -- the dataset ------------------------------------------------------------------------------


@needs_kvasir
def test_segment_labels_redraw_the_real_masks(tmp_path):
    """Each polygon, filled again, covers its polyp; two polyps give two lines; a negative image
    gets an empty label file; detect labels are the polyps' boxes."""
    sample = kvasir_sample(TWO_POLYPS, size=256)
    lines = label_lines(sample, "segment")
    assert len(lines) == 2
    redrawn = np.zeros((256, 256), dtype=np.uint8)
    for line in lines:
        values = np.array(line.split()[1:], dtype=float).reshape(-1, 2)
        assert values.min() >= 0 and values.max() <= 1
        cv2.fillPoly(redrawn, [np.round(values * 256).astype(np.int32)], 1)
    overlap = np.logical_and(redrawn > 0, sample.mask).sum() / np.logical_or(redrawn > 0, sample.mask).sum()
    assert overlap > 0.9

    boxes = [np.array(line.split()[1:], dtype=float) for line in label_lines(sample, "detect")]
    assert len(boxes) == 2
    ys, xs = np.nonzero(sample.mask)
    assert min(b[0] - b[2] / 2 for b in boxes) == pytest.approx(xs.min() / 256, abs=1e-5)
    assert max(b[1] + b[3] / 2 for b in boxes) == pytest.approx((ys.max() + 1) / 256, abs=1e-5)

    negative = Sample(record_id="neg", source_id="s", patient_hash="p", image=sample.image,
                      mask=np.zeros((256, 256), dtype=bool))
    data_yaml = write_dataset(yolo_spec(), [sample, negative], [negative], tmp_path / "ds")
    assert (tmp_path / "ds" / "labels" / "train" / "000001.txt").read_text() == ""
    assert len((tmp_path / "ds" / "labels" / "train" / "000000.txt").read_text().splitlines()) == 2
    written = cv2.imread(str(tmp_path / "ds" / "images" / "train" / "000000.png"))
    assert np.array_equal(written[..., ::-1], sample.image)  # true colours on disk
    assert "polyp" in data_yaml.read_text()


# -- segment: train, save, load, predict ------------------------------------------------------


@needs_kvasir
@pytest.mark.slow
def test_segment_train_save_load_predict(trained_segment, samples, tmp_path):
    spec, result, workdir = trained_segment
    family = YoloFamily()
    assert [row["epoch"] for row in result.history] == [1]
    row = result.history[0]
    assert row["train_loss"] > 0 and row["seconds"] > 0
    assert {"val_map50", "val_mask_map50", "train_seg_loss"} <= row.keys()

    path = tmp_path / "polyp.pt"
    family.save(result.model, spec, path)
    loaded = family.load(spec, path, "cpu")
    assert loaded.task == "segment" and dict(loaded.names) == {0: "polyp"}

    # Images of other sizes and a grey one: masks come back at each image's own size.
    other = [kvasir_sample(samples[0].record_id, size=80).image[:48],
             kvasir_sample(samples[1].record_id, size=96, grey=True).image]
    images = [s.image for s in samples] + other
    predictions = family.predict(loaded, spec, images, "cpu")
    check_predictions(predictions, images)
    assert any(p.instances for p in predictions)  # 0.001 confidence keeps even a one-epoch net's guesses

    again = family.predict(family.load(spec, path, "cpu"), spec, images, "cpu")
    assert same_predictions(predictions, again)
    # The trained model in memory is the saved one.
    assert same_predictions(predictions, family.predict(result.model, spec, images, "cpu"))


@needs_kvasir
@pytest.mark.slow
def test_forward_floor_runs_the_predicting_network(trained_segment, samples):
    spec, result, _ = trained_segment
    family = YoloFamily()
    images = [s.image for s in samples]
    before = family.predict(result.model, spec, images, "cpu")
    batch = family.prepare_batch(result.model, spec, images, "cpu")
    assert tuple(batch.shape) == (len(images), 3, SIZE, SIZE) and float(batch.max()) <= 1.0
    assert family.forward_floor(result.model, spec, batch, "cpu") is None
    assert same_predictions(before, family.predict(result.model, spec, images, "cpu"))


# -- detect, time limit, bring your own -------------------------------------------------------


@needs_kvasir
@pytest.mark.slow
def test_training_and_prediction_leave_the_process_as_they_found_it(trained_detect, samples, tmp_path):
    """Ultralytics sets torch's threads, deterministic mode and the global seeds for itself; a
    MONAI expert or a test running after it in the same process must not inherit them."""
    spec, result, _, (before, after) = trained_detect
    assert after == before
    family = YoloFamily()
    path = tmp_path / "det.pt"
    family.save(result.model, spec, path)
    fresh = family.load(spec, path, "cpu")  # a new predictor: select_device runs again
    torch.set_num_threads(caller_threads())
    before = process_state()
    family.predict(fresh, spec, [s.image for s in samples[:2]], "cpu")
    assert process_state() == before
    torch.set_num_threads(1)



@needs_kvasir
@pytest.mark.slow
def test_detect_stops_at_the_time_limit_and_fills_boxes(trained_detect, samples, tmp_path):
    spec, result, workdir, _ = trained_detect
    assert [row["epoch"] for row in result.history] == [1]  # epochs=2, but the limit was crossed
    assert "val_mask_map50" not in result.history[0]
    family = YoloFamily()
    # As train_expert does: the run folder is gone and the model has predicted (evaluation)
    # before it is saved; the saved file still gives the same predictions.
    shutil.rmtree(workdir)
    images = [s.image for s in samples]
    in_memory = family.predict(result.model, spec, images, "cpu")
    path = tmp_path / "det.pt"
    family.save(result.model, spec, path)
    predictions = family.predict(family.load(spec, path, "cpu"), spec, images, "cpu")
    assert same_predictions(predictions, in_memory)
    check_predictions(predictions, images)
    instances = [i for p in predictions for i in p.instances]
    assert instances
    for instance in instances:  # a detector's mask is its box, filled
        x0, y0, x1, y1 = instance.box
        assert instance.mask.sum() == (x1 - x0) * (y1 - y0)


@needs_kvasir
@pytest.mark.slow
def test_brought_checkpoints_load_or_fail_naming_the_file(trained_segment, trained_detect, samples, tmp_path):
    family = YoloFamily()
    seg_spec, seg_result, seg_workdir = trained_segment
    # The run's own best.pt (save writes it byte for byte), named by a spec the way a user brings weights.
    folder = tmp_path / "experts"
    folder.mkdir()
    family.save(seg_result.model, seg_spec, folder / "my_polyps.pt")
    assert (folder / "my_polyps.pt").read_bytes() == next(seg_workdir.rglob("best.pt")).read_bytes()
    brought = yolo_spec("segment", weights="my_polyps.pt")
    model = family.load(brought, brought.weights_path(folder), "cpu")
    check_predictions(family.predict(model, brought, [samples[0].image], "cpu"), [samples[0].image])

    # A detector's checkpoint for a segmenting spec.
    detect_spec, detect_result, _, _ = trained_detect
    detect_best = tmp_path / "detector_best.pt"
    family.save(detect_result.model, detect_spec, detect_best)
    with pytest.raises(WeightsError, match="detect") as error:
        family.load(seg_spec, detect_best, "cpu")
    assert str(detect_best) in str(error.value)

    missing = tmp_path / "nowhere" / "polyp.pt"
    with pytest.raises(WeightsError, match="does not exist") as error:
        family.load(seg_spec, missing, "cpu")
    assert str(missing) in str(error.value)

    state_dict = tmp_path / "state_dict.pt"
    torch.save({"weight": torch.zeros(3)}, state_dict)
    with pytest.raises(WeightsError, match="not an ultralytics checkpoint") as error:
        family.load(seg_spec, state_dict, "cpu")
    assert str(state_dict) in str(error.value)


# -- offline and project-local ----------------------------------------------------------------

# A fresh interpreter (ultralytics decides ONLINE and its config folder at first import): every
# non-loopback connect, DNS lookup and download command is recorded and refused; then it trains.
OFFLINE_SCRIPT = textwrap.dedent('''
    import json, socket, subprocess, sys
    from pathlib import Path
    attempts = []
    real_connect = socket.socket.connect
    def connect(self, address):
        host = address[0] if isinstance(address, tuple) else address
        if self.family == socket.AF_UNIX or str(host).startswith("127.") or host in ("::1", "localhost"):
            return real_connect(self, address)
        attempts.append(f"connect {address}")
        raise OSError("network refused by the test")
    socket.socket.connect = connect
    def getaddrinfo(host, *args, **kwargs):
        attempts.append(f"dns {host}")
        raise socket.gaierror("network refused by the test")
    socket.getaddrinfo = getaddrinfo
    real_popen = subprocess.Popen.__init__
    def popen(self, args, *a, **k):
        text = " ".join(map(str, args)) if isinstance(args, (list, tuple)) else str(args)
        if any(word in text for word in ("curl", "wget", "pip")):
            attempts.append(f"run {text}")
            raise OSError("network refused by the test")
        return real_popen(self, args, *a, **k)
    subprocess.Popen.__init__ = popen

    import torch
    torch.set_num_threads(1)
    from test_yolo_family import kvasir_ids, kvasir_sample, yolo_spec
    from medtrinity_assets.grounding.experts.yolo_family import YoloFamily
    samples = [kvasir_sample(i) for i in kvasir_ids(4)]
    spec = yolo_spec("segment", batch_size=2)
    result = YoloFamily().train(spec, samples[:3], samples[3:], "cpu", Path(sys.argv[1]))
    YoloFamily().save(result.model, spec, Path(sys.argv[1]) / "out.pt")
    from ultralytics.utils import USER_CONFIG_DIR
    print(json.dumps({"attempts": attempts, "epochs": len(result.history), "config": str(USER_CONFIG_DIR)}))
''')


@needs_kvasir
@pytest.mark.slow
def test_training_reaches_no_network_and_writes_no_home_config(tmp_path):
    home, root, work = tmp_path / "home", tmp_path / "var", tmp_path / "work"
    for folder in (home, root, work):
        folder.mkdir()
    env = {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"), "MEDTRINITY_HOME": str(root),
           "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(REPO), str(Path(__file__).parent)])}
    for key in ("YOLO_CONFIG_DIR", "YOLO_OFFLINE"):
        env.pop(key, None)
    command = [sys.executable, "-c", OFFLINE_SCRIPT, str(work)]
    # Where user namespaces allow it, the interpreter also runs with no network at all.
    if shutil.which("unshare") and subprocess.run(["unshare", "-rn", "true"], capture_output=True).returncode == 0:
        command = ["unshare", "-rn", *command]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["attempts"] == []
    assert report["epochs"] == 1 and (work / "out.pt").stat().st_size > 0

    config = root / "ultralytics" / "Ultralytics"
    assert Path(report["config"]) == config
    assert (config / "Arial.ttf").is_file() and (config / "Arial.Unicode.ttf").is_file()
    settings = json.loads((config / "settings.json").read_text())
    assert settings["sync"] is False and settings["runs_dir"].startswith(str(config))
    assert not (home / ".config" / "Ultralytics").exists()
    assert not any(home.rglob("*")) or all("Ultralytics" not in str(p) for p in home.rglob("*"))


@needs_kvasir
def test_network_arguments_are_checked_before_training(samples, data_root, tmp_path):
    """spec.network passes ultralytics train arguments through; one the family sets itself, or
    one ultralytics does not know, is an ExpertError naming the expert."""
    family = YoloFamily()
    with pytest.raises(ExpertError, match=r"polyp_segment: network may not set \['data'\]"):
        family.train(yolo_spec(network={"data": "elsewhere.yaml"}), samples[:2], samples[2:3], "cpu", tmp_path / "a")
    with pytest.raises(ExpertError, match="polyp_segment: ultralytics rejected.*bogus_option"):
        family.train(yolo_spec(network={"bogus_option": 1}), samples[:2], samples[2:3], "cpu", tmp_path / "b")
    with pytest.raises(ExpertError, match="builds a detect model"):
        family.train(yolo_spec(architecture="yolo11n.yaml"), samples[:2], samples[2:3], "cpu", tmp_path / "c")


def test_importing_ultralytics_leaves_pillow_and_torch_save_alone(tmp_path):
    """Ultralytics replaces PIL.Image.open and torch.save when imported; an unreadable image
    would then raise ModuleNotFoundError (pi_heif) and ingest would lose its quarantine reason.
    A fresh interpreter: in this one ultralytics may be imported already."""
    code = textwrap.dedent("""
        import io, torch
        from PIL import Image
        before = (Image.open, torch.save)
        from medtrinity_assets.grounding.experts.ultralytics_env import ensure_ready
        ensure_ready()
        assert (Image.open, torch.save) == before, "patched"
        try:
            Image.open(io.BytesIO(b"this is a text file"))
        except Image.UnidentifiedImageError:
            print("unidentified")
    """)
    env = {**os.environ, "MEDTRINITY_HOME": str(tmp_path), "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "unidentified", done.stdout + done.stderr
