"""Expert weights under the data root, content-addressed like the blobs.

``models/<expert_id>/<sha256>.<ext>`` is a trained file named by the sha256 of its bytes, with
its manifest ``<sha256>.json`` beside it; ``models/<expert_id>/current.json`` is the manifest in
use. Every file is written to a temporary name and renamed into place, and current.json last,
so a killed run leaves the previous expert in use, never a half-written one.

Brought weights (``spec.weights``) are not copied: the manifest records the file's absolute path
and its sha256, and loading always reads the spec's file, so a missing file is an error naming
the path the user wrote, and a replaced file changes the fingerprint (re-evaluated).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path

from medtrinity_assets.grounding.experts.base import ExpertError, WeightsError
from medtrinity_assets.grounding.experts.spec import ExpertSpec
from medtrinity_assets.paths import DataRoot
from medtrinity_assets.storage import file_mode, make_dirs, sha256_file, write_bytes_atomic

CURRENT = "current.json"


@dataclass
class Manifest:
    expert_id: str
    sha256: str
    path: str  # relative to the data root (trained); absolute path of the spec's file (brought)
    family: str
    architecture: str
    task: str
    training_hash: str
    data_fingerprint: str
    train_sources: list[str] = field(default_factory=list)
    train_records: int = 0
    val_records: int = 0
    metrics: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    device: str = "cpu"
    seconds: float = 0.0
    created_at: str = ""
    split: dict | str = field(default_factory=dict)
    provenance: str = "trained"  # trained | brought

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True, default=str)

    @classmethod
    def from_json(cls, text: str, where: Path | str = "manifest") -> "Manifest":
        try:
            data = json.loads(text)
            known = {f.name for f in fields(cls)}
            return cls(**{k: v for k, v in data.items() if k in known})
        except (json.JSONDecodeError, TypeError) as error:
            raise ExpertError(f"{where} is not an expert manifest ({error}): delete it and materialize the expert again") from None

    def weights_file(self, data_root) -> Path:
        path = Path(self.path)
        return path if path.is_absolute() else _root(data_root).local / path  # weights are local files (paths.DataRoot.models)


def _root(data_root) -> DataRoot:
    return data_root if isinstance(data_root, DataRoot) else DataRoot(Path(data_root))


def expert_folder(data_root, expert_id: str) -> Path:
    return _root(data_root).models / expert_id


def sha256_tree(path: Path) -> str:
    """sha256 of a file, or of a folder's relative names and contents (a MONAI bundle folder)."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    for item in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(item.relative_to(path).as_posix().encode() + b"\0" + sha256_file(item).encode())
    return digest.hexdigest()


def current_manifest(data_root, expert_id: str) -> Manifest | None:
    path = expert_folder(data_root, expert_id) / CURRENT
    if not path.is_file():
        return None
    return Manifest.from_json(path.read_text(encoding="utf-8"), path)


def data_fingerprint(spec: ExpertSpec, data_root, source_ids: list[str], weights_sha256: str | None = None) -> str:
    """What a trained expert depends on, cheaply: the spec's training hash and the bytes of each
    source partition's rois, normalized_images and raw_records (patient hash, label state)
    tables; a brought expert adds its file's sha256. Any change retrains (or re-evaluates)."""
    root = _root(data_root)
    digest = hashlib.sha256(spec.training_hash().encode())
    from medtrinity_assets.catalog.shards import partitions_on_disk

    for source_id in sorted(source_ids):
        for table in ("rois", "normalized_images", "raw_records"):
            # Every shard of a sharded source; an unsharded one hashes as it always did.
            keys = partitions_on_disk(root.table(table, source_id).parent, source_id) or [source_id]
            for key in keys:
                path = root.table(table, key)
                value = sha256_file(path) if path.exists() else "missing"
                digest.update(f"{key}\0{table}\0{value}\n".encode())
    if weights_sha256:
        digest.update(f"weights\0{weights_sha256}".encode())
    return digest.hexdigest()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_current(data_root, manifest: Manifest) -> None:
    """Make ``manifest`` the one in use (written atomically, always last)."""
    folder = expert_folder(data_root, manifest.expert_id)
    write_bytes_atomic(folder / CURRENT, manifest.to_json().encode("utf-8"))


def save_weights(data_root, spec: ExpertSpec, family, model, **manifest_fields) -> Manifest:
    """Write the model (``family.save`` to a temporary file), name it by its sha256, write its
    manifest beside it and then current.json. ``manifest_fields``: the Manifest fields other than
    expert_id, sha256, path, family, task, training_hash, created_at and provenance."""
    root = _root(data_root)
    folder = expert_folder(root, spec.id)
    make_dirs(folder)
    ext = getattr(family, "weights_ext", "pt")
    # The name is known only once the bytes are: write a temporary beside the final place.
    fd, name = tempfile.mkstemp(prefix=".incoming.", suffix=f".{ext}.tmp", dir=folder)
    os.close(fd)
    tmp = Path(name)
    try:
        family.save(model, spec, tmp)
        digest = sha256_file(tmp)
        final = folder / f"{digest}.{ext}"
        if not final.exists():  # the same bytes already in place: a retrain that changed nothing
            os.chmod(tmp, file_mode())
            os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    manifest_fields.setdefault("architecture", spec.architecture)
    manifest = Manifest(
        expert_id=spec.id, sha256=digest, path=final.relative_to(root.local).as_posix(), family=spec.family,
        task=spec.task, training_hash=spec.training_hash(), created_at=_now(), provenance="trained", **manifest_fields,
    )
    write_bytes_atomic(folder / f"{digest}.json", manifest.to_json().encode("utf-8"))
    write_current(root, manifest)
    return manifest


def record_brought(data_root, spec: ExpertSpec, path: Path, **manifest_fields) -> Manifest:
    """The manifest of a brought file (not copied): its absolute path and sha256."""
    root = _root(data_root)
    digest = sha256_tree(path)
    manifest_fields.setdefault("architecture", spec.architecture)
    manifest = Manifest(
        expert_id=spec.id, sha256=digest, path=str(Path(path).resolve()), family=spec.family, task=spec.task,
        training_hash=spec.training_hash(), created_at=_now(), provenance="brought", **manifest_fields,
    )
    folder = expert_folder(root, spec.id)
    make_dirs(folder)
    write_bytes_atomic(folder / f"{digest}.json", manifest.to_json().encode("utf-8"))
    write_current(root, manifest)
    return manifest


def brought_weights(spec: ExpertSpec, spec_folder: Path) -> Path:
    """The file or bundle folder ``spec.weights`` names; WeightsError naming it when missing."""
    path = spec.weights_path(Path(spec_folder))
    if path is None:
        raise ExpertError(f"expert {spec.id} brings no weights (no weights: in its spec)")
    if not path.exists():
        raise WeightsError(f"expert {spec.id}: weights file {path} does not exist (weights: {spec.weights!r} in its spec); "
                           "nothing is downloaded: put the file there or remove weights: to train the expert here")
    return path
