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

Not rebuilding is faster still: ``knowledge_fingerprint`` covers everything the store is made
from (the corpus files' bytes, the chunks and metadata the chunker makes of them, the embedding
model, the table schema, ``STORE_FORMAT``); it is written into the collection's metadata last,
after every chunk, so a store that carries the current fingerprint, and still answers, is
complete (``stored_knowledge``).
"""

from __future__ import annotations

import functools
import hashlib
import json
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import chromadb
from chromadb.config import Settings

from medtrinity_assets.knowledge.embedder import MODEL_PACKAGE, LocalMiniLMEmbedding
from medtrinity_assets.vocabulary import (
    normalize_label,
    normalize_organ,
    slug,
)
from medtrinity_assets.storage import make_dirs

COLLECTION = "medical_knowledge"
# Bump when the collection's layout changes in a way the chunks' metadata does not show.
STORE_FORMAT = 1


@functools.cache  # a metadata lookup scans the installed packages
def embedder_id() -> str:
    """The passage embedder, in each chunk's metadata: another model re-embeds every chunk."""
    try:
        return f"{MODEL_PACKAGE}=={version(MODEL_PACKAGE)}"
    except PackageNotFoundError:
        return f"{MODEL_PACKAGE}==missing"


def modality_flag(modality: str) -> str:
    return f"m_{slug(modality)}"


def organ_flag(organ: str) -> str:
    return f"o_{slug(normalize_organ(organ))}"


def finding_flag(finding: str) -> str:
    return f"f_{slug(normalize_label(finding))}"


def _forget_deleted_store(path) -> None:
    """Chroma keeps one open store per folder per process; once the folder is deleted, that
    store's writes fail ("attempt to write a readonly database"). Drop it (Chroma has no public
    call for one folder) so the next client starts a fresh store there."""
    from chromadb.api.shared_system_client import SharedSystemClient

    system = SharedSystemClient._identifier_to_system.pop(str(path), None)
    SharedSystemClient._identifier_to_refcount.pop(str(path), None)
    if system is not None:
        try:
            system.stop()
        except Exception:  # the files under it are gone; nothing left to close cleanly
            pass


def open_client(path) -> chromadb.api.ClientAPI:
    if not (Path(path) / "chroma.sqlite3").is_file():
        _forget_deleted_store(path)
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
        "embedder": embedder_id(),
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


def chunker_version() -> str:
    """sha256 of the code that turns corpus files into chunks and metadata (this module, the
    corpus module, the vocabulary they normalize names with): the chunker's version is its code,
    so no number has to be remembered and bumped."""
    from medtrinity_assets import vocabulary
    from medtrinity_assets.knowledge import corpus

    digest = hashlib.sha256()
    for module_file in (corpus.__file__, __file__, vocabulary.__file__):
        digest.update(Path(module_file).read_bytes())
    return digest.hexdigest()


def source_fingerprint(files_fingerprint: str, schema) -> str:
    """What the store and the chunks table are made from, known without parsing the corpus:
    its files (``corpus.corpus_fingerprint``), the chunker's code, the embedder, the table
    schema and ``STORE_FORMAT``. Equal to the stored one: nothing is read or rebuilt."""
    parts = {
        "format": STORE_FORMAT,
        "files": files_fingerprint,
        "chunker": chunker_version(),
        "embedder": embedder_id(),
        "schema": str(schema),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode("utf-8")).hexdigest()


def content_fingerprint(chunks: list[dict]) -> str:
    """sha256 of what is stored: each chunk's id, text and metadata. A corpus edit that changes
    no chunk (a YAML comment) changes the source fingerprint but not this one."""
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(json.dumps([chunk["chunk_id"], chunk["text"], chunk_metadata(chunk)], sort_keys=True).encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


def mark_built(path, source: str, content: str, entries: int) -> None:
    """Record in the collection that it holds every chunk of these fingerprints: the last write."""
    collection = open_collection(open_client(path), create=False)
    collection.modify(
        metadata={"corpus_fingerprint": source, "content_fingerprint": content, "entries": entries, "chunks": collection.count()}
    )


def stored_knowledge(path) -> dict | None:
    """The fingerprints and counts recorded in an intact store at ``path``; None when there is
    no store, no fingerprint, a count other than the recorded one, or an index that does not
    find its own first vector (the vector files gone under an intact SQLite)."""
    if not (Path(path) / "chroma.sqlite3").is_file():
        return None  # opening a client would create an empty store here
    try:
        collection = open_client(path).get_collection(COLLECTION)
        meta = dict(collection.metadata or {})
        count = collection.count()
        if not meta.get("corpus_fingerprint") or not meta.get("content_fingerprint") or meta.get("chunks") != count or not count:
            return None
        first = collection.get(limit=1, include=["embeddings"])
        found = collection.query(query_embeddings=first["embeddings"], n_results=1, include=["distances"])
        if found["ids"][0][:1] != first["ids"][:1]:
            return None
    except Exception:  # chromadb raises its own errors for a damaged store: rebuild it
        return None
    return {key: meta.get(key) for key in ("corpus_fingerprint", "content_fingerprint", "entries", "chunks")}
