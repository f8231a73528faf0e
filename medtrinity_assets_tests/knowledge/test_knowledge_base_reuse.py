"""The knowledge_base stage rebuilds only when what it is made from changes: a second run with
the same corpus reuses the chunks table and the Chroma store as they are; an edited corpus
file, a deleted store or a deleted chunks table make it rebuild (only changed chunks are
embedded again). A real corpus file (data/knowledge/breast.yaml) keeps the embedding short."""

from __future__ import annotations

import shutil

import pytest

from medtrinity_assets import stages
from medtrinity_assets.knowledge.retrieval import KnowledgeRetriever
from medtrinity_assets.knowledge.store import stored_knowledge
from medtrinity_assets.paths import DataRoot, knowledge_dir
from spec_factory import build_spec

# A sentence of the benign breast tumour's definition, edited to make one chunk change.
SENTENCE = "Benign lesions do not invade surrounding tissue or spread."


@pytest.fixture
def corpus(tmp_path):
    folder = tmp_path / "knowledge"
    folder.mkdir()
    shutil.copy2(knowledge_dir() / "breast.yaml", folder / "breast.yaml")
    assert SENTENCE in (folder / "breast.yaml").read_text(encoding="utf-8")
    return folder


def _kb(root: DataRoot, corpus) -> dict:
    report = stages.run_knowledge_base(root, corpus)
    return {"rows": report.rows, "inputs": report.inputs, **report.extra}


def _benign_definition(root: DataRoot) -> str:
    spec = build_spec(id="busi", name="busi", modality="ultrasound", organs=["breast"], diseases=[])
    record = {"record_id": "r", "modality": "ultrasound", "organs": ["breast"], "labels": ["benign breast tumor"],
              "label_state": "finding"}
    row = KnowledgeRetriever(root.chroma).retrieve(record, [], spec, k=3)
    assert row["knowledge_ids"], row
    return row["knowledge_sections"]


def test_second_run_reuses_and_an_edited_corpus_rebuilds(tmp_path, corpus):
    root = DataRoot(tmp_path / "var")
    first = _kb(root, corpus)
    assert first["reused"] is False and first["embedded"] == first["rows"] == first["chunks"] > 5
    table = root.table("knowledge_chunks")
    written = (table.stat().st_mtime_ns, table.read_bytes())

    second = _kb(root, corpus)
    assert second["reused"] is True and second["embedded"] == 0
    assert {k: second[k] for k in ("rows", "inputs", "entries", "chunks", "corpus_fingerprint", "content_fingerprint")} == {
        k: first[k] for k in ("rows", "inputs", "entries", "chunks", "corpus_fingerprint", "content_fingerprint")
    }
    assert (table.stat().st_mtime_ns, table.read_bytes()) == written, "a reused table is not rewritten"

    # A comment changes the file but no chunk: parsed again, nothing embedded, same content.
    path = corpus / "breast.yaml"
    path.write_text(path.read_text(encoding="utf-8") + "\n# reviewed\n", encoding="utf-8")
    commented = _kb(root, corpus)
    assert commented["reused"] is False and commented["embedded"] == 0
    assert commented["corpus_fingerprint"] != first["corpus_fingerprint"]
    assert commented["content_fingerprint"] == first["content_fingerprint"]

    # An edited passage: its one chunk is embedded again and retrieval hands out the new text.
    path.write_text(path.read_text(encoding="utf-8").replace(SENTENCE, "Benign lesions stay where they arise."), encoding="utf-8")
    edited = _kb(root, corpus)
    assert edited["reused"] is False and edited["embedded"] == 1 and edited["rows"] == first["rows"]
    assert edited["content_fingerprint"] != first["content_fingerprint"]
    assert "stay where they arise" in _benign_definition(root)
    assert _kb(root, corpus)["reused"] is True


def test_a_damaged_store_or_table_is_rebuilt(tmp_path, corpus):
    root = DataRoot(tmp_path / "var")
    first = _kb(root, corpus)
    assert stored_knowledge(root.chroma)["content_fingerprint"] == first["content_fingerprint"]

    shutil.rmtree(root.chroma)
    assert stored_knowledge(root.chroma) is None
    assert not root.chroma.exists(), "checking a missing store must not create an empty one"
    rebuilt = _kb(root, corpus)
    assert rebuilt["reused"] is False and rebuilt["embedded"] == first["rows"]
    assert rebuilt["content_fingerprint"] == first["content_fingerprint"]
    assert "do not invade" in _benign_definition(root)

    root.table("knowledge_chunks").unlink()
    again = _kb(root, corpus)
    assert again["reused"] is False and again["embedded"] == 0 and root.table("knowledge_chunks").is_file()
    assert _kb(root, corpus)["reused"] is True

    # A table from another run (same rows, no fingerprint in its footer) is not trusted.
    import pyarrow.parquet as pq

    table = pq.read_table(root.table("knowledge_chunks"))
    pq.write_table(table.replace_schema_metadata(None), root.table("knowledge_chunks"))
    assert _kb(root, corpus)["reused"] is False
