"""The tests share one knowledge base per run (conftest.shared_knowledge) and give each data root a
copy of its Chroma folder: the copy must be a complete store, taken while the building client is
still open in this process, and opened by another process as the Dagster run workers do."""

from __future__ import annotations

import json
import subprocess
import sys

from medtrinity_assets.knowledge.embedder import LocalMiniLMEmbedding
from medtrinity_assets.knowledge.store import COLLECTION, open_client
from medtrinity_assets.paths import DataRoot

QUERIES = ["pneumothorax on chest radiograph", "hypoechoic breast mass", "melanoma dermoscopy"]

# The other process gets the query vectors, so it reads the store without loading the model.
ASK = """
import json, sys
from medtrinity_assets.knowledge.store import COLLECTION, open_client
collection = open_client(sys.argv[1]).get_collection(COLLECTION)
print(json.dumps([collection.count(), collection.query(query_embeddings=json.loads(sys.argv[2]), n_results=5)["ids"]]))
"""


def _ask(path, vectors) -> list:
    collection = open_client(path).get_collection(COLLECTION)
    return [collection.count(), collection.query(query_embeddings=vectors, n_results=5)["ids"]]


def test_copy_of_the_built_store_answers_as_the_store_does(shared_knowledge, tmp_path):
    vectors = [[float(x) for x in vector] for vector in LocalMiniLMEmbedding()(QUERIES)]
    copy = shared_knowledge.copy_to(DataRoot(tmp_path / "var"))
    original = _ask(shared_knowledge.root.chroma, vectors)
    assert original[0] == shared_knowledge.stats["chunks"] > 0
    assert original[1][0][0].startswith("pneumothorax")
    assert _ask(copy.chroma, vectors) == original
    assert copy.table("knowledge_chunks").read_bytes() == shared_knowledge.root.table("knowledge_chunks").read_bytes()

    fresh = subprocess.run(
        [sys.executable, "-c", ASK, str(copy.chroma), json.dumps(vectors)], capture_output=True, text=True, check=True
    )
    assert json.loads(fresh.stdout.strip().splitlines()[-1]) == original
