"""The ultralytics YOLO family: detection and instance segmentation built from a model yaml.

Training writes the samples as a YOLO dataset (PNG images, one label file per image: a polygon
per object for ``segment``, a box for ``detect``, an empty file for an image without the target)
and trains a network built from ``spec.architecture`` with no pretrained weights (nothing is
fetched). Ultralytics is imported through ``ultralytics_env`` so it runs offline with its
config folder under the data root.
"""

from __future__ import annotations

import csv
import shutil
import time
from pathlib import Path

import cv2
import numpy as np

from medtrinity_assets.grounding.experts.base import (
    ExpertError,
    Instance,
    Prediction,
    Sample,
    TrainResult,
    WeightsError,
)
from medtrinity_assets.grounding.experts.spec import ExpertSpec
from medtrinity_assets.grounding.experts.ultralytics_env import ensure_ready, process_state_kept

CHECKPOINT_ATTR = "medtrinity_checkpoint"  # a trained model carries its best.pt bytes for save
PREDICT_BATCH = 32  # images per predictor call: memory stays flat whatever the partition size
# Keep nearly everything (ultralytics validates at 0.001 too): the shared postprocess applies
# spec.confidence_threshold, and mAP needs the low-confidence tail. The number kept per image is
# bounded instead: each is a full-size mask, and at 20 per image making them took longer than the
# network itself (Kvasir, 512 px, CPU); postprocess keeps at most max_rois, so twice that leaves
# room for what its area cut drops.
PREDICT_CONF = 0.001
MAX_DET_PER_ROI = 2

# Train arguments the family sets itself; spec.network may set any other ultralytics train argument.
OWN_ARGS = frozenset({"data", "project", "name", "exist_ok", "device", "model", "resume", "pretrained", "task", "mode"})
NO_AUGMENT = dict(hsv_h=0.0, hsv_s=0.0, hsv_v=0.0, degrees=0.0, translate=0.0, scale=0.0, shear=0.0,
                  perspective=0.0, flipud=0.0, fliplr=0.0, mosaic=0.0, mixup=0.0, copy_paste=0.0)


def _yolo_class():
    ensure_ready()
    from ultralytics import YOLO

    return YOLO


def ultralytics_device(device: str) -> str:
    """'cpu' | 'cuda' | 'cuda:N' -> the form ultralytics' select_device takes ('cpu', '0', 'N')."""
    if device.startswith("cuda"):
        return device.partition(":")[2] or "0"
    return device


# -- the dataset ------------------------------------------------------------------------------


def _objects(sample: Sample) -> list[np.ndarray]:
    """One bool mask per object: the sample's instances, else the connected parts of its mask."""
    if sample.instances:
        return [np.asarray(m, dtype=bool) for m in sample.instances if np.any(m)]
    if not np.any(sample.mask):
        return []
    count, labels = cv2.connectedComponents(np.asarray(sample.mask, dtype=np.uint8), connectivity=8)
    return [labels == k for k in range(1, count)]


def outer_polygon(mask: np.ndarray) -> np.ndarray | None:
    """The outer contour of a mask's largest part as (N, 2) pixel x, y; None under 3 points."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return None
    contour = max(contours, key=cv2.contourArea).reshape(-1, 2)
    return contour if len(contour) >= 3 else None


def _mask_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    # Row and column projections, not np.nonzero: this runs on every predicted full-size mask.
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if len(rows) == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def label_lines(sample: Sample, task: str) -> list[str]:
    """The YOLO label file of one sample (class 0 = the target), coordinates normalized to [0, 1]."""
    h, w = sample.mask.shape[:2] if sample.mask is not None else sample.image.shape[:2]
    lines = []
    if task == "detect":
        boxes = list(sample.boxes) or [b for b in (_mask_box(m) for m in _objects(sample)) if b]
        for x0, y0, x1, y1 in boxes:
            x0, x1 = max(0, x0), min(w, x1)
            y0, y1 = max(0, y0), min(h, y1)
            if x1 > x0 and y1 > y0:
                lines.append(f"0 {(x0 + x1) / 2 / w:.6f} {(y0 + y1) / 2 / h:.6f} {(x1 - x0) / w:.6f} {(y1 - y0) / h:.6f}")
        return lines
    for mask in _objects(sample):
        polygon = outer_polygon(mask)
        if polygon is None:  # a part of one or two pixels: its box as a polygon
            box = _mask_box(mask)
            if box is None:
                continue
            x0, y0, x1, y1 = box
            polygon = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=float)
        xy = np.clip(polygon / np.array([w, h], dtype=float), 0.0, 1.0)
        lines.append("0 " + " ".join(f"{v:.6f}" for v in xy.reshape(-1)))
    return lines


def _write_png(path: Path, image: np.ndarray) -> None:
    # cv2 writes BGR; an RGB sample is flipped so the file holds its true colours (ultralytics reads
    # files with cv2 and flips back, and predict flips RGB arrays the same way).
    array = image if image.ndim == 2 else np.ascontiguousarray(image[..., ::-1])
    if not cv2.imwrite(str(path), array):
        raise ExpertError(f"could not write the training image {path}")


def write_dataset(spec: ExpertSpec, train: list[Sample], val: list[Sample], folder: Path) -> Path:
    """Write the samples as a YOLO dataset under ``folder``; return its data.yaml."""
    import yaml

    if folder.exists():
        shutil.rmtree(folder)  # a dataset from an earlier run must not leak stale files in
    for split, samples in (("train", train), ("val", val)):
        images, labels = folder / "images" / split, folder / "labels" / split
        images.mkdir(parents=True)
        labels.mkdir(parents=True)
        for index, sample in enumerate(samples):
            stem = f"{index:06d}"  # record ids may hold characters a file name cannot
            _write_png(images / f"{stem}.png", sample.image)
            text = "\n".join(label_lines(sample, spec.task))
            (labels / f"{stem}.txt").write_text(text + "\n" if text else "")
    data_yaml = folder / "data.yaml"
    data_yaml.write_text(yaml.safe_dump({
        "path": str(folder), "train": "images/train", "val": "images/val", "names": {0: spec.target},
    }, sort_keys=False))
    return data_yaml


# -- the training history ---------------------------------------------------------------------


def _number(text: str) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def read_history(results_csv: Path) -> list[dict]:
    """Per-epoch rows from ultralytics' results.csv: losses, validation mAP50 (boxes and, for a
    segmenter, masks) and the seconds each epoch took (the csv holds the cumulative time)."""
    if not results_csv.is_file():
        return []
    with results_csv.open(newline="") as handle:
        rows = [{key.strip(): _number(value) for key, value in row.items()} for row in csv.DictReader(handle)]
    history, previous = [], 0.0
    for row in rows:
        train_losses = {k.split("/", 1)[1]: v for k, v in row.items() if k.startswith("train/") and v is not None}
        val_losses = [v for k, v in row.items() if k.startswith("val/") and v is not None]
        elapsed = row.get("time") or 0.0
        entry = {
            "epoch": int(row["epoch"]),
            "train_loss": float(sum(train_losses.values())),
            **{f"train_{name}": value for name, value in train_losses.items()},
            "val_loss": float(sum(val_losses)) if val_losses else None,
            "val_map50": row.get("metrics/mAP50(B)"),
            "val_map50_95": row.get("metrics/mAP50-95(B)"),
            "seconds": round(elapsed - previous, 3),
        }
        if "metrics/mAP50(M)" in row:
            entry["val_mask_map50"] = row.get("metrics/mAP50(M)")
        history.append(entry)
        previous = elapsed
    return history


# -- the family -------------------------------------------------------------------------------


class YoloFamily:
    """Ultralytics YOLO, detect or segment; stateless like every family."""

    name = "yolo"
    weights_ext = "pt"  # ultralytics loads checkpoints by this suffix (weights.save_weights names files with it)

    def train(self, spec: ExpertSpec, train: list[Sample], val: list[Sample], device: str, workdir: Path) -> TrainResult:
        if not train:
            raise ExpertError(f"expert {spec.id}: no training samples")
        YOLO = _yolo_class()
        workdir = Path(workdir)
        # Ultralytics validates every epoch; with no held-out image it validates on the training
        # images (the caller's own metrics say which split they measured).
        data_yaml = write_dataset(spec, train, val or train, workdir / "dataset")
        on_cuda = device.startswith("cuda")
        args = dict(
            epochs=spec.epochs, imgsz=spec.input_size, batch=spec.batch_size, seed=spec.seed, deterministic=True,
            optimizer="AdamW", lr0=spec.learning_rate,  # spec.learning_rate means what it says
            workers=0,  # no worker processes: the asset's process owns the data
            # CPU trains in fp32. On CUDA, bf16: amp=True would run ultralytics' AMP check, which
            # downloads a model to compare against.
            amp="bf16" if on_cuda else False,
            plots=False,  # the asset draws its own curves from the history
            val=True, verbose=False, exist_ok=True,
        )
        if not spec.augment:
            args.update(NO_AUGMENT)
        extra = dict(spec.network)  # any other ultralytics train argument, e.g. mosaic, optimizer
        clash = sorted(OWN_ARGS & extra.keys())
        if clash:
            raise ExpertError(f"expert {spec.id}: network may not set {clash}; the yolo family sets them")
        args.update(extra)

        start = time.perf_counter()
        with process_state_kept():  # building the network draws from the global RNG too
            model = YOLO(spec.architecture)
            if model.task != spec.task:
                raise ExpertError(f"expert {spec.id}: {spec.architecture} builds a {model.task} model, "
                                  f"the spec says task {spec.task}")
            if spec.max_train_minutes:
                model.add_callback("on_fit_epoch_end", _time_limit(spec.max_train_minutes * 60))
            try:
                model.train(data=str(data_yaml), project=str(workdir / "runs"), name=spec.id,
                            device=ultralytics_device(device), pretrained=False, **args)
            except SyntaxError as error:  # ultralytics' answer to an unknown or ill-typed train argument
                raise ExpertError(f"expert {spec.id}: ultralytics rejected the training arguments: {error}") from error
        seconds = time.perf_counter() - start
        trainer = model.trainer
        best = next((Path(p) for p in (trainer.best, trainer.last) if p and Path(p).is_file()), None)
        if best is None:
            raise ExpertError(f"expert {spec.id}: ultralytics wrote no best.pt or last.pt under {trainer.save_dir}")
        # The bytes save writes: the caller may remove workdir before saving, and the model in
        # memory is fused (and so changed) by the first predict; best.pt is what was validated.
        setattr(model, CHECKPOINT_ATTR, best.read_bytes())
        history = read_history(Path(trainer.save_dir) / "results.csv")
        return TrainResult(model=model, history=history, device=device, seconds=seconds)

    def save(self, model: object, spec: ExpertSpec, path: Path) -> None:
        """Write the run's best.pt (last.pt when no epoch improved) to ``path``, byte for byte; a
        model that was loaded, not trained here, is written with ultralytics' own save."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        checkpoint = getattr(model, CHECKPOINT_ATTR, None)
        if checkpoint is not None:
            path.write_bytes(checkpoint)
        else:
            model.save(str(path))

    def load(self, spec: ExpertSpec, path: Path, device: str) -> object:
        path = Path(path)
        if not path.is_file():  # ultralytics would try to download a missing name: check first
            raise WeightsError(f"expert {spec.id}: weight file {path} does not exist")
        if path.suffix != ".pt":
            raise WeightsError(f"expert {spec.id}: {path} is not an ultralytics checkpoint (.pt); the yolo family loads those")
        YOLO = _yolo_class()
        try:
            model = YOLO(str(path))
        except Exception as error:  # a pickle of something else, a state dict, a truncated file
            raise WeightsError(f"expert {spec.id}: {path} is not an ultralytics checkpoint: {error}") from error
        if model.task != spec.task:
            raise WeightsError(f"expert {spec.id}: {path} holds a {model.task} model; the spec asks for task {spec.task}")
        names = dict(getattr(model, "names", None) or {})
        if len(names) > 1 and spec.target not in names.values():
            raise WeightsError(f"expert {spec.id}: {path} predicts classes {sorted(names.values())}, "
                               f"none of them the target {spec.target!r}")
        return model

    def predict(self, model: object, spec: ExpertSpec, images: list[np.ndarray], device: str) -> list[Prediction]:
        ensure_ready()
        target_class = _target_class(model, spec)
        predictions = []
        for start in range(0, len(images), PREDICT_BATCH):
            chunk = images[start:start + PREDICT_BATCH]
            with process_state_kept():
                results = model.predict([_to_bgr(image) for image in chunk], imgsz=spec.input_size, conf=PREDICT_CONF,
                                        max_det=MAX_DET_PER_ROI * spec.max_rois, retina_masks=True, verbose=False,
                                        device=ultralytics_device(device))
            predictions.extend(_prediction(result, image.shape[:2], target_class) for result, image in zip(results, chunk))
        return predictions

    def prepare_batch(self, model: object, spec: ExpertSpec, images: list[np.ndarray], device: str):
        """The network's input tensor for ``images`` (what forward_floor is timed on)."""
        return floor_batch(spec, images, device)

    def forward_floor(self, model: object, spec: ExpertSpec, batch: object, device: str) -> None:
        import torch

        network = floor_network(model, device)
        with torch.inference_mode():
            network(batch.to(device))
        if device.startswith("cuda"):
            torch.cuda.synchronize()


def floor_network(model, device: str):
    """The network predict runs (fused conv+bn, eval mode), for the bare forward pass."""
    network = model.model.to(device).eval()
    if hasattr(network, "is_fused") and not network.is_fused():
        network.fuse()  # predict fuses too (AutoBackend): the floor measures the same layers
    return network


def floor_batch(spec: ExpertSpec, images: list[np.ndarray], device: str):
    """The tensor the floor is measured on: the images squared to input_size, float in [0, 1],
    N x 3 x S x S (what predict's letterbox hands the network for mixed-size images)."""
    import torch

    size = spec.input_size
    arrays = [cv2.resize(_to_bgr(image)[..., ::-1], (size, size), interpolation=cv2.INTER_LINEAR) for image in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div(255).contiguous().to(device)


def _time_limit(seconds: float):
    """An epoch-end callback that stops training after the epoch that crosses ``seconds``.
    (Ultralytics' own ``time`` argument re-plans the epochs to fill the time instead, which would
    override spec.epochs.)"""
    started = time.perf_counter()

    def stop_when_over(trainer) -> None:
        if time.perf_counter() - started > seconds:
            trainer.stop = True

    return stop_when_over


def _to_bgr(image: np.ndarray) -> np.ndarray:
    """uint8 HxW or HxWx3 RGB -> HxWx3 BGR, the channel order ultralytics expects of arrays."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ExpertError(f"the yolo family takes uint8 images, got {image.dtype}")
    if image.ndim == 2:
        return np.ascontiguousarray(np.repeat(image[..., None], 3, axis=2))
    if image.ndim == 3 and image.shape[2] == 3:
        return np.ascontiguousarray(image[..., ::-1])
    raise ExpertError(f"the yolo family takes HxW or HxWx3 images, got shape {image.shape}")


def _target_class(model, spec: ExpertSpec) -> int | None:
    """The class index of the target in a multi-class checkpoint (None: every class is it)."""
    names = dict(getattr(model, "names", None) or {})
    if len(names) <= 1:
        return None
    return next(index for index, name in names.items() if name == spec.target)


def _prediction(result, shape: tuple[int, int], target_class: int | None) -> Prediction:
    h, w = shape
    boxes = result.boxes
    if boxes is None or len(boxes) == 0:
        return Prediction(instances=())
    scores = boxes.conf.cpu().numpy().astype(float)
    classes = boxes.cls.cpu().numpy().astype(int)
    xyxy = boxes.xyxy.cpu().numpy()
    masks = result.masks.data.cpu().numpy() > 0.5 if result.masks is not None else None
    instances = []
    for i, score in enumerate(scores):
        if target_class is not None and classes[i] != target_class:
            continue
        if masks is not None:
            mask = masks[i]
            if mask.shape != (h, w):  # retina masks are at the image size; guard all the same
                mask = cv2.resize(mask.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)
        else:
            x0, y0, x1, y1 = xyxy[i]
            mask = np.zeros((h, w), dtype=bool)
            mask[max(0, int(np.floor(y0))):min(h, int(np.ceil(y1))), max(0, int(np.floor(x0))):min(w, int(np.ceil(x1)))] = True
        box = _mask_box(mask)
        if box is None:
            continue  # a box whose mask is empty at this size holds nothing to report
        instances.append(Instance(mask=mask, score=float(min(1.0, max(0.0, score))), box=box))
    instances.sort(key=lambda inst: -inst.score)
    return Prediction(instances=tuple(instances))
