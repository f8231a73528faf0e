"""The MONAI family: a 2D UNet or SegResNet segmenting one target (sigmoid foreground).

Input: three channels, a grey image repeated (RGB endoscopy and dermoscopy images stay RGB, so
one network shape serves every modality); values scaled to [0, 1]; each image resized (MONAI
Resize, area) to a square ``input_size``. The saved file records the channel count, the input
size and the network arguments, so a model loads without its spec's defaults changing under it.

Training: DiceCELoss (sigmoid), AdamW with a cosine schedule, MONAI random flips, 90-degree
rotations and a small intensity jitter, seeded by ``monai.utils.set_determinism``. The state
with the best validation Dice is kept; training stops after the epoch that crosses
``max_train_minutes``. Images are resized once before the first epoch (uint8 in RAM), so an
epoch costs only augmentation and the network.
"""

from __future__ import annotations

import copy
import io
import math
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from medtrinity_assets.grounding.experts.base import ExpertError, Instance, Prediction, Sample, TrainResult, WeightsError
from medtrinity_assets.grounding.experts.device import limit_torch_threads
from medtrinity_assets.grounding.experts.spec import ExpertSpec

SAVED_FORMAT = "medtrinity-monai/1"
IN_CHANNELS = 3
EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)
# A bundle zip is unpacked to a temporary folder: refuse one that would unpack past this.
MAX_BUNDLE_BYTES = 4 << 30

DEFAULT_NETWORKS = {
    # Batch norm: faster than MONAI's instance-norm default on CPU and better on these 2D photos.
    "unet": {"channels": [16, 32, 64, 128, 256], "strides": [2, 2, 2, 2], "num_res_units": 2, "norm": "batch"},
    "segresnet": {"init_filters": 16},
}


@dataclass
class MonaiModel:
    """A loaded network with what predict needs to feed it."""

    net: object  # torch.nn.Module or a TorchScript module
    in_channels: int
    input_size: int
    info: dict = field(default_factory=dict)  # architecture, network args, where it came from


def network_args(spec: ExpertSpec, architecture: str | None = None) -> dict:
    architecture = architecture or spec.architecture
    args = dict(DEFAULT_NETWORKS[architecture])
    args.update(spec.network)
    args.setdefault("in_channels", IN_CHANNELS)
    args.setdefault("out_channels", 1)
    args["spatial_dims"] = 2
    return args


def build_network(architecture: str, args: dict):
    from monai.networks.nets import SegResNet, UNet

    try:
        return (UNet if architecture == "unet" else SegResNet)(**args)
    except TypeError as error:
        raise ExpertError(f"network arguments {args} do not fit MONAI {architecture}: {error}") from None


def _strides_product(model_info: dict) -> int:
    args = model_info.get("network") or {}
    if model_info.get("architecture") == "unet":
        return int(np.prod(args.get("strides", [2, 2, 2, 2])))
    if model_info.get("architecture") == "segresnet":
        return 2 ** (len(args.get("blocks_down", (1, 2, 2, 4))) - 1)
    return 1


# --- image <-> tensor ------------------------------------------------------------------------


def _channels_first(image: np.ndarray, channels: int) -> np.ndarray:
    """uint8 CxHxW with ``channels`` channels from an HxW or HxWxC image."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[None]
    else:
        image = image[..., :3].transpose(2, 0, 1)  # an alpha channel carries no anatomy
    if image.shape[0] == channels:
        return image
    if channels == 1:
        return image.mean(axis=0, keepdims=True).round().astype(np.uint8)
    if image.shape[0] == 1:
        return np.repeat(image, channels, axis=0)
    raise ExpertError(f"cannot make a {channels}-channel input from an image with {image.shape[0]} channels")


def _resize(array, size, mode: str):
    """MONAI Resize of one channel-first array to ``size`` (H, W), as a plain float tensor."""
    import torch
    from monai.transforms import Resize

    if isinstance(array, torch.Tensor):
        tensor = array.detach().float()
    else:
        tensor = torch.from_numpy(np.array(array, dtype=np.float32))  # a copy: PNG arrays are read-only
    out = Resize(spatial_size=tuple(size), mode=mode)(tensor)
    return out.as_tensor() if hasattr(out, "as_tensor") else out


def prepare_image(image: np.ndarray, in_channels: int, input_size: int):
    """float CxSxS in [0, 1]: the network's input for one image (training and prediction alike)."""
    return _resize(_channels_first(image, in_channels), (input_size, input_size), "area") / 255.0


def _foreground(logits):
    """Foreground probability NxHxW: sigmoid of one output channel, else softmax channel 1."""
    import torch

    if logits.shape[1] == 1:
        return torch.sigmoid(logits[:, 0])
    return torch.softmax(logits, dim=1)[:, 1]


def components(probability: np.ndarray, threshold: float, min_area: int = 1) -> list[Instance]:
    """One Instance per 8-connected region at or above ``threshold``; score = mean probability
    inside. Regions under ``min_area`` px are dropped here (postprocess would drop them anyway,
    and a speckled map would otherwise hold one full-size mask per speck)."""
    labelled, count = ndimage.label(probability >= threshold, structure=EIGHT_CONNECTED)
    if not count:
        return []
    index = np.arange(1, count + 1)
    areas = ndimage.sum_labels(np.ones_like(probability), labelled, index)
    means = ndimage.mean(probability, labelled, index)
    slices = ndimage.find_objects(labelled)
    out = []
    for value, area, mean, (rows, cols) in zip(index, areas, means, slices):
        if area < min_area:
            continue
        out.append(Instance(mask=labelled == value, score=float(mean), box=(cols.start, rows.start, cols.stop, rows.stop)))
    return out


def dice_at(pred, true) -> list[float]:
    """Per-image Dice of two boolean NxHxW tensors; two empty masks agree (1.0)."""
    inter = (pred & true).flatten(1).sum(1).float()
    total = pred.flatten(1).sum(1).float() + true.flatten(1).sum(1).float()
    return [1.0 if t == 0 else float(2 * i / t) for i, t in zip(inter.tolist(), total.tolist())]


# --- loading ---------------------------------------------------------------------------------


def _not_fitting(path: Path, what: str) -> WeightsError:
    return WeightsError(f"weights file {path}: {what}")


def _load_state(net, state: dict, path: Path, what: str) -> None:
    try:
        result = net.load_state_dict(state, strict=True)
    except RuntimeError as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()][:6]
        raise _not_fitting(path, f"does not fit {what}: " + " ".join(lines)[:800]) from None
    del result


def _torch_load(path: Path):
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle, zip and format errors alike: the file is not a torch state
        if "ultralytics" in str(error):
            raise _not_fitting(path, "is an ultralytics checkpoint: bring it to an expert with family: yolo") from None
        raise _not_fitting(path, f"is not a torch weights file torch.load can read safely ({type(error).__name__}: {str(error)[:200]})") from None


def _zip_names(path: Path) -> list[str]:
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return []


def _bundle_config(names) -> str | None:
    for name in sorted(names, key=len):
        if name.replace("\\", "/").rsplit("configs/", 1)[-1] in ("inference.json", "inference.yaml", "inference.yml") and "configs/" in name:
            return name
    return None


def detect_format(path: Path) -> str:
    """own | state_dict | torchscript | monai_bundle from the file's content (extension only as a hint)."""
    if path.is_dir():
        return "monai_bundle"
    names = _zip_names(path)
    if _bundle_config(names):
        return "monai_bundle"
    if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
        return "torchscript"
    return "state_dict"  # our own file is a torch.save'd dict too; _load_torch_file tells them apart


def _unwrap_state(obj) -> dict | None:
    """A state dict from what torch.save wrote: a plain one, or one under a usual key."""
    if isinstance(obj, dict):
        if obj and all(isinstance(k, str) for k in obj) and all(hasattr(v, "shape") for v in obj.values()):
            return obj
        for key in ("state_dict", "model", "net", "network"):
            if isinstance(obj.get(key), dict):
                return _unwrap_state(obj[key])
    return None


def _from_torch_file(spec: ExpertSpec, path: Path) -> MonaiModel:
    obj = _torch_load(path)
    if isinstance(obj, dict) and obj.get("format") == SAVED_FORMAT:
        architecture, args = obj["architecture"], dict(obj["network"])
        if architecture != spec.architecture:
            raise _not_fitting(path, f"holds a MONAI {architecture}, expert {spec.id} names {spec.architecture}")
        net = build_network(architecture, args)
        _load_state(net, obj["state_dict"], path, f"a MONAI {architecture} with {args}")
        return MonaiModel(net, int(obj["in_channels"]), int(obj["input_size"]),
                          {"architecture": architecture, "network": args, "format": "own", "file": str(path)})
    if isinstance(obj, dict) and str(obj.get("format", "")).startswith("medtrinity-"):
        raise _not_fitting(path, f"was saved by another family ({obj['format']}), not MONAI")
    state = _unwrap_state(obj)
    if state is None:
        raise _not_fitting(path, f"holds a {type(obj).__name__}, not a state dict of tensors")
    args = network_args(spec)
    net = build_network(spec.architecture, args)
    _load_state(net, state, path, f"expert {spec.id}'s MONAI {spec.architecture} {args} (set network: in the spec to match)")
    return MonaiModel(net, args["in_channels"], spec.input_size,
                      {"architecture": spec.architecture, "network": args, "format": "state_dict", "file": str(path)})


def _from_torchscript(spec: ExpertSpec, path: Path) -> MonaiModel:
    import torch

    try:
        net = torch.jit.load(str(path), map_location="cpu")
    except Exception as error:
        raise _not_fitting(path, f"is not a TorchScript file torch.jit.load can read ({type(error).__name__}: {str(error)[:200]})") from None
    channels = int(spec.network.get("in_channels", IN_CHANNELS))
    return MonaiModel(net, channels, spec.input_size, {"architecture": "torchscript", "format": "torchscript", "file": str(path)})


def _from_bundle_folder(spec: ExpertSpec, folder: Path, shown: Path) -> MonaiModel:
    import torch
    from monai.bundle import ConfigParser

    config = next((folder / "configs" / n for n in ("inference.json", "inference.yaml", "inference.yml") if (folder / "configs" / n).is_file()), None)
    if config is None:
        raise _not_fitting(shown, "is not a MONAI bundle: no configs/inference.json or .yaml")
    parser = ConfigParser()
    try:
        parser.read_config(str(config))
        parser["bundle_root"] = str(folder)
        if "network_def" not in parser.get():
            raise KeyError("network_def")
        definition = parser.get("network_def")
        net = parser.get_parsed_content("network_def", instantiate=True)
    except KeyError as error:
        raise _not_fitting(shown, f"bundle config {config.name} defines no {error}") from None
    except Exception as error:
        raise _not_fitting(shown, f"bundle config {config.name}: network_def cannot be built ({type(error).__name__}: {str(error)[:300]})") from None
    channels = int(definition.get("in_channels", spec.network.get("in_channels", IN_CHANNELS))) if isinstance(definition, dict) else IN_CHANNELS
    info = {"architecture": str(definition.get("_target_", "bundle")) if isinstance(definition, dict) else "bundle",
            "format": "monai_bundle", "file": str(shown)}
    weights, script = folder / "models" / "model.pt", folder / "models" / "model.ts"
    if weights.is_file():
        state = _unwrap_state(_torch_load(weights))
        if state is None:
            raise _not_fitting(shown, "models/model.pt holds no state dict")
        _load_state(net, state, shown, f"the bundle's network_def ({info['architecture']})")
    elif script.is_file():
        try:
            net = torch.jit.load(str(script), map_location="cpu")
        except Exception as error:
            raise _not_fitting(shown, f"models/model.ts is not TorchScript ({type(error).__name__})") from None
    else:
        raise _not_fitting(shown, "MONAI bundle has neither models/model.pt nor models/model.ts")
    return MonaiModel(net, channels, spec.input_size, info)


def _from_bundle(spec: ExpertSpec, path: Path) -> MonaiModel:
    if path.is_dir():
        return _from_bundle_folder(spec, path, path)
    names = _zip_names(path)
    config = _bundle_config(names)
    if config is None:
        raise _not_fitting(path, "is not a MONAI bundle (a folder or .zip with configs/inference.json)")
    with zipfile.ZipFile(path) as archive:
        if sum(i.file_size for i in archive.infolist()) > MAX_BUNDLE_BYTES:
            raise _not_fitting(path, f"bundle unpacks to more than {MAX_BUNDLE_BYTES >> 30} GiB")
        with tempfile.TemporaryDirectory(prefix="bundle-") as tmp:
            archive.extractall(tmp)  # zipfile strips absolute paths and '..' from member names
            root = Path(tmp) / config.replace("\\", "/").rsplit("configs/", 1)[0]
            return _from_bundle_folder(spec, root, path)


# --- the family ------------------------------------------------------------------------------


class MonaiFamily:
    name = "monai"
    weights_ext = "pt"

    # training -------------------------------------------------------------------------------

    def _tensors(self, samples: list[Sample], size: int):
        import torch

        images = torch.stack([(prepare_image(s.image, IN_CHANNELS, size) * 255).round().to(torch.uint8) for s in samples])
        masks = torch.stack([_resize(s.mask[None].astype(np.float32), (size, size), "nearest") > 0.5 for s in samples])
        return images, masks

    def train(self, spec: ExpertSpec, train: list[Sample], val: list[Sample], device: str, workdir: Path) -> TrainResult:
        import torch
        from monai.losses import DiceCELoss
        from monai.transforms import Compose, RandFlipd, RandRotate90d, RandScaleIntensityd, RandShiftIntensityd
        from monai.utils import set_determinism

        if not train or not val:
            raise ExpertError(f"expert {spec.id}: training needs training and validation samples ({len(train)}, {len(val)})")
        limit_torch_threads()
        set_determinism(seed=spec.seed)
        started = time.perf_counter()
        args = network_args(spec)
        if args["out_channels"] != 1 or args["in_channels"] != IN_CHANNELS:
            raise ExpertError(f"expert {spec.id}: a MONAI expert trained here has in_channels {IN_CHANNELS} and out_channels 1 "
                              f"(one sigmoid foreground); network: sets {args['in_channels']} and {args['out_channels']}")
        info = {"architecture": spec.architecture, "network": args}
        multiple = _strides_product(info)
        if spec.input_size % multiple:
            raise ExpertError(f"expert {spec.id}: input_size {spec.input_size} must be a multiple of {multiple} for this {spec.architecture}")
        net = build_network(spec.architecture, args).to(device)
        size = spec.input_size
        train_x, train_y = self._tensors(train, size)
        val_x, val_y = self._tensors(val, size)
        augment = Compose([
            RandFlipd(["image", "label"], prob=0.5, spatial_axis=0),
            RandFlipd(["image", "label"], prob=0.5, spatial_axis=1),
            RandRotate90d(["image", "label"], prob=0.5, max_k=3),
            RandScaleIntensityd("image", factors=0.1, prob=0.5),
            RandShiftIntensityd("image", offsets=0.05, prob=0.5),
        ]).set_random_state(seed=spec.seed)
        loss_fn = DiceCELoss(sigmoid=True)
        optimizer = torch.optim.AdamW(net.parameters(), lr=spec.learning_rate, weight_decay=1e-4)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=spec.epochs)
        generator = torch.Generator().manual_seed(spec.seed)
        batch = spec.batch_size
        history, best, best_dice = [], None, -1.0
        for epoch in range(1, spec.epochs + 1):
            epoch_started = time.perf_counter()
            net.train()
            order = torch.randperm(len(train_x), generator=generator)
            starts = list(range(0, len(order), batch))
            # A last batch of one image breaks batch norm: fold it into the previous one.
            if len(starts) > 1 and len(order) - starts[-1] == 1:
                starts.pop()
            losses = []
            for i, start in enumerate(starts):
                end = starts[i + 1] if i + 1 < len(starts) else len(order)
                items = []
                for j in order[start:end].tolist():
                    item = {"image": train_x[j].float() / 255.0, "label": train_y[j].float()}
                    if spec.augment:
                        item = augment(item)
                    items.append(item)
                x = torch.stack([torch.as_tensor(it["image"]).as_subclass(torch.Tensor) for it in items]).to(device)
                y = torch.stack([torch.as_tensor(it["label"]).as_subclass(torch.Tensor) for it in items]).to(device)
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(net(x), y)
                loss.backward()
                optimizer.step()
                losses.append(float(loss.detach()))
            lr = optimizer.param_groups[0]["lr"]
            scheduler.step()
            val_dice = self._val_dice(net, val_x, val_y, batch, device, spec.confidence_threshold)
            seconds = time.perf_counter() - epoch_started
            history.append({"epoch": epoch, "train_loss": round(float(np.mean(losses)), 5), "val_dice": round(val_dice, 5),
                            "seconds": round(seconds, 2), "lr": lr})
            if val_dice > best_dice:
                best_dice, best = val_dice, copy.deepcopy({k: v.detach().cpu() for k, v in net.state_dict().items()})
            if spec.max_train_minutes is not None and time.perf_counter() - started >= spec.max_train_minutes * 60:
                break
        net.load_state_dict(best)
        net.eval()
        info.update(best_epoch=max(history, key=lambda h: h["val_dice"])["epoch"], epochs_run=len(history))
        model = MonaiModel(net, IN_CHANNELS, size, info)
        return TrainResult(model=model, history=history, device=device, seconds=time.perf_counter() - started)

    @staticmethod
    def _val_dice(net, val_x, val_y, batch: int, device: str, threshold: float) -> float:
        import torch

        net.eval()
        scores = []
        with torch.inference_mode():
            for start in range(0, len(val_x), batch):
                x = (val_x[start:start + batch].float() / 255.0).to(device)
                pred = (torch.sigmoid(net(x)) >= threshold).cpu()
                scores += dice_at(pred[:, 0], val_y[start:start + batch, 0])
        return float(np.mean(scores))

    # files ----------------------------------------------------------------------------------

    def save(self, model: MonaiModel, spec: ExpertSpec, path: Path) -> None:
        import torch

        if "network" not in model.info:
            raise ExpertError(f"expert {spec.id}: a {model.info.get('format')} model is not saved again; it is loaded from its file")
        state = {k: v.detach().cpu() for k, v in model.net.state_dict().items()}
        buffer = io.BytesIO()
        # Into memory, not to ``path``: torch.save names the archive's folder after the file, and
        # the caller's temporary name would make equal weights hash differently.
        torch.save({"format": SAVED_FORMAT, "architecture": model.info["architecture"], "network": model.info["network"],
                    "in_channels": model.in_channels, "input_size": model.input_size, "state_dict": state}, buffer)
        Path(path).write_bytes(buffer.getvalue())

    def load(self, spec: ExpertSpec, path: Path, device: str) -> MonaiModel:
        path = Path(path)
        if not path.exists():
            raise WeightsError(f"expert {spec.id}: weights file {path} does not exist")
        fmt = spec.weights_format if spec.weights is not None else "auto"
        if fmt == "ultralytics":
            raise _not_fitting(path, f"weights_format ultralytics belongs to the yolo family; expert {spec.id} is MONAI")
        if fmt == "auto":
            fmt = detect_format(path)
        loader = {"state_dict": _from_torch_file, "torchscript": _from_torchscript, "monai_bundle": _from_bundle}[fmt]
        model = loader(spec, path)
        model.net.to(device)
        model.net.eval()
        return model

    # inference ------------------------------------------------------------------------------

    def prepare_batch(self, model: MonaiModel, spec: ExpertSpec, images: list[np.ndarray], device: str):
        """The network's input tensor for ``images`` (what forward_floor is timed on)."""
        import torch

        return torch.stack([prepare_image(im, model.in_channels, model.input_size) for im in images]).to(device)

    def predict(self, model: MonaiModel, spec: ExpertSpec, images: list[np.ndarray], device: str) -> list[Prediction]:
        import torch

        out: list[Prediction] = []
        for start in range(0, len(images), spec.batch_size):
            chunk = images[start:start + spec.batch_size]
            x = self.prepare_batch(model, spec, chunk, device)
            with torch.inference_mode():
                probability = _foreground(model.net(x)).float().cpu()
            for image, prob in zip(chunk, probability):
                height, width = np.asarray(image).shape[:2]
                full = _resize(prob[None], (height, width), "bilinear")[0].clamp(0, 1).numpy().astype(np.float32)
                min_area = max(1, math.ceil(spec.min_area_fraction * height * width))
                out.append(Prediction(instances=tuple(components(full, spec.confidence_threshold, min_area)), probability=full))
        return out

    def forward_floor(self, model: MonaiModel, spec: ExpertSpec, batch, device: str) -> None:
        import torch

        with torch.inference_mode():
            model.net(batch)
