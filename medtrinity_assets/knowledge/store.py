"""The knowledge store: a Chroma persistent collection of the corpus chunks.

Filtering by modality and organ must happen inside Chroma (``where``), so each chunk carries
one boolean flag per modality (``m_ct``), organ (``o_breast``) and finding name or alias
(``f_melanoma``): equality on flags works in every Chroma version, where substring matching
on metadata does not. The readable ``|ct|mri|`` strings are kept beside them for people.

Each chunk also carries its entry's ``kind`` (finding | normal | anatomy), its ``section``
(definition, appearance, typical_location, differential) and the plain section ``body``: the
retriever filters on kind and section, and hands the bodies to the writer as sections.

Rebuilding is idempotent: chunks are upserted by their stable id, unchanged texts are not
re-embedded, and ids no longer in the corpus are deleted.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import chromadb
from chromadb.config import Settings

from medtrinity_assets.knowledge.embedder import LocalMiniLMEmbedding
from medtrinity_assets.vocabulary import (
    normalize_label,
    normalize_organ,
    slug,
)
from medtrinity_assets.storage import make_dirs

COLLECTION = "medical_knowledge"


def modality_flag(modality: str) -> str:
    return f"m_{slug(modality)}"


def organ_flag(organ: str) -> str:
    return f"o_{slug(normalize_organ(organ))}"


def finding_flag(finding: str) -> str:
    return f"f_{slug(normalize_label(finding))}"


def open_client(path) -> chromadb.api.ClientAPI:
    make_dirs(Path(path))
    return chromadb.PersistentClient(path=str(path), settings=Settings(anonymized_telemetry=False))


def open_collection(client, create: bool = True):
    embedder = LocalMiniLMEmbedding()
    if create:
        return client.get_or_create_collection(
            COLLECTION, embedding_function=embedder, configuration={"hnsw": {"space": "cosine"}}
        )
    return client.get_collection(COLLECTION, embedding_function=embedder)


def _text_sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def chunk_metadata(chunk: dict) -> dict:
    modalities = list(chunk["modalities"])
    organs = [normalize_organ(o) for o in chunk["organs"]]
    metadata: dict = {
        "entry_id": chunk["entry_id"],
        "finding": chunk["finding"],
        "kind": chunk["kind"],
        "section": chunk["section"],
        "body": chunk["body"],
        "modalities": "|" + "|".join(modalities) + "|",
        "organs": "|" + "|".join(organs) + "|",
        "origin": chunk.get("origin") or "",
        "text_sha": _text_sha(chunk["text"]),
    }
    for modality in modalities:
        metadata[modality_flag(modality)] = True
    for organ in organs:
        metadata[organ_flag(organ)] = True
    for name in [chunk["finding"], *chunk.get("aliases", [])]:
        metadata[finding_flag(name)] = True
    return metadata


def build_knowledge_base(chunks: list[dict], path, batch: int = 128) -> dict:
    """Make the store hold exactly ``chunks``; returns counts of what changed."""
    ids = [c["chunk_id"] for c in chunks]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ValueError(f"duplicate chunk ids: {duplicates[:5]}")
    client = open_client(path)
    collection = open_collection(client)
    existing = collection.get(include=["metadatas"])
    existing_meta = dict(zip(existing["ids"], existing["metadatas"]))

    changed = [c for c in chunks if existing_meta.get(c["chunk_id"]) != chunk_metadata(c)]
    for start in range(0, len(changed), batch):
        part = changed[start : start + batch]
        collection.upsert(
            ids=[c["chunk_id"] for c in part],
            documents=[c["text"] for c in part],
            metadatas=[chunk_metadata(c) for c in part],
        )
    stale = sorted(set(existing_meta) - set(ids))
    if stale:
        collection.delete(ids=stale)
    return {
        "chunks": collection.count(),
        "embedded": len(changed),
        "unchanged": len(chunks) - len(changed),
        "deleted": len(stale),
    }
