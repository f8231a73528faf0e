"""Applying experts: which experts fit a source, loading one for inference, ROIs for images.

Nothing is cached globally: a LoadedExpert is made by the caller (one per partition run) and
dropped with it, so memory does not grow with the number of partitions or experts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medtrinity_assets.grounding.experts.base import ExpertError, Instance
from medtrinity_assets.grounding.experts.device import pick_device
from medtrinity_assets.grounding.experts.families import family as family_named
from medtrinity_assets.grounding.experts.postprocess import to_rois
from medtrinity_assets.grounding.experts.samples import source_modalities
from medtrinity_assets.grounding.experts.spec import ExpertSpec
from medtrinity_assets.grounding.experts.weights import Manifest, brought_weights, current_manifest
from medtrinity_assets.paths import DataRoot


@dataclass
class LoadedExpert:
    spec: ExpertSpec
    family: object
    model: object
    device: str
    manifest: Manifest | None  # None for brought weights not yet recorded by train_expert


def applicable_experts(experts: dict[str, ExpertSpec], source) -> list[ExpertSpec]:
    """Experts for a source: same modality (one of the source's, when it mixes them: apply only to
    the records of the expert's modality), and the source in ``apply_to`` when the expert names
    sources, else an organ in common when the expert names organs. Sorted by id."""
    out = []
    for spec in experts.values():
        if spec.modality not in source_modalities(source):
            continue
        if spec.apply_to:
            if source.id not in spec.apply_to:
                continue
        elif spec.organs and not set(spec.organs) & set(source.organs or []):
            continue
        out.append(spec)
    return sorted(out, key=lambda s: s.id)


def load_for_inference(spec: ExpertSpec, data_root, spec_folder: Path) -> LoadedExpert:
    root = data_root if isinstance(data_root, DataRoot) else DataRoot(Path(data_root))
    impl = family_named(spec.family)
    device = pick_device(spec)
    manifest = current_manifest(root, spec.id)
    if spec.brings_weights:
        path = brought_weights(spec, Path(spec_folder))  # WeightsError naming the file
        return LoadedExpert(spec, impl, impl.load(spec, path, device), device, manifest)
    if manifest is None or manifest.provenance != "trained":
        raise ExpertError(f"expert {spec.id} has no trained weights yet: materialize the asset expert_{spec.id}")
    if manifest.training_hash != spec.training_hash():
        raise ExpertError(f"expert {spec.id}'s weights were trained for an earlier version of its spec: "
                          f"materialize the asset expert_{spec.id}")
    path = manifest.weights_file(root)
    if not path.exists():
        raise ExpertError(f"expert {spec.id}: its weights file {path} is missing: materialize the asset expert_{spec.id}")
    return LoadedExpert(spec, impl, impl.load(spec, path, device), device, manifest)


def find_rois(expert: LoadedExpert, images: list[np.ndarray]) -> list[list[Instance]]:
    """ROI candidates per image (at the image's size), after the spec's threshold, min area and max count."""
    out: list[list[Instance]] = []
    step = max(1, expert.spec.batch_size)
    # A batch at a time: predictions hold a full-size probability map per image, ROIs do not.
    for start in range(0, len(images), step):
        chunk = images[start:start + step]
        predictions = expert.family.predict(expert.model, expert.spec, chunk, expert.device)
        out += [to_rois(p, expert.spec, np.asarray(im).shape[:2]) for p, im in zip(predictions, chunk)]
    return out
