"""Retrieval embeds each distinct query once and asks Chroma once per (filter, text); the rows
must be exactly those of retrieving every record by itself, the way it was done before: the
query text sent alone through the collection's own embedding function.

Real store (the session's knowledge base, built from data/knowledge), real records: the
labelled retrieval set (data/knowledge/eval/retrieval_set.yaml, every label state, ROIs with
measured intensity) and the demo sources run from ingest to facts.
"""

from __future__ import annotations

import random
from collections import defaultdict
from types import SimpleNamespace

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from medtrinity_assets import stages
from medtrinity_assets.bench_retrieval import RETRIEVAL_SET, load_queries
from medtrinity_assets.catalog import load_catalog
from medtrinity_assets.catalog.acquire import fetch_demo_sources
from medtrinity_assets.duckdb_sql import stream_rows
from medtrinity_assets.knowledge.corpus import load_corpus
from medtrinity_assets.knowledge.embedder import QueryVectors, embed_queries
from medtrinity_assets.knowledge.retrieval import KnowledgeRetriever
from medtrinity_assets.paths import DataRoot, env_overrides, knowledge_dir


class OneAtATime(KnowledgeRetriever):
    """The reference: each record's text sent to Chroma by itself as text, embedded by the
    collection's embedding function (the path before query vectors), nothing kept between
    records. One torch thread, as query vectors are made: thread count moves the last bits."""

    def _answers_for(self, keys):
        answers = {}
        for allowed, modality, text in keys:
            before = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                result = self.collection.query(
                    query_texts=[text], n_results=3 * len(allowed), where=self.where(list(allowed), modality),
                    include=["documents", "distances", "metadatas"],
                )
            finally:
                torch.set_num_threads(before)
            answers[(allowed, modality, text)] = [
                (i, d, float(x), m)
                for i, d, x, m in zip(result["ids"][0], result["documents"][0], result["distances"][0], result["metadatas"][0])
            ]
        return answers


def _labelled_records() -> dict[tuple, list[tuple[dict, list[dict]]]]:
    """The labelled set's records grouped by the (modality, organs) a partition would share."""
    kinds = {e["id"]: e["kind"] for e in load_corpus(knowledge_dir())}
    groups = defaultdict(list)
    for query in load_queries(RETRIEVAL_SET, kinds):
        groups[(query.modality, tuple(query.organs))].append(query.record_and_rois())
    return groups


def test_batched_rows_equal_one_record_at_a_time_on_the_labelled_set(shared_knowledge):
    store = shared_knowledge.root.chroma
    batched = KnowledgeRetriever(store)
    reference = OneAtATime(store)
    rng = random.Random(11)
    compared = repeated = 0
    for (modality, organs), items in sorted(_labelled_records().items()):
        spec = SimpleNamespace(id="labelled", modality=modality, organs=list(organs))
        # Each record three times, shuffled, in batches of 7: repeats inside a batch and across.
        work = [(dict(record, record_id=f"{record['record_id']}#{n}"), rois) for n in range(3) for record, rois in items]
        rng.shuffle(work)
        got = []
        for start in range(0, len(work), 7):
            got += batched.retrieve_many(work[start : start + 7], spec, k=3)
        for (record, rois), row in zip(work, got):
            assert row == reference.retrieve(record, rois, spec, k=3), record["record_id"]
            compared += 1
        repeated += len(work) - len(items)
    assert compared >= 3 * 60
    counts = batched.counts
    # Repeats were answered from what was asked before: Chroma saw each distinct query once
    # (at most once per distinct record), several texts of one filter in one call.
    assert counts["records"] == compared
    assert 0 < counts["distinct_queries"] == len(batched.answers) <= compared - repeated
    assert counts["answers_reused"] > 0
    assert counts["chroma_queries"] <= counts["distinct_queries"]
    assert batched.vectors.counts["embedded"] == len(batched.vectors.memo) <= counts["distinct_queries"]


def test_query_vectors_do_not_depend_on_their_batch():
    texts = [
        "CT of the brain, skull",
        "ultrasound of the breast; finding: malignant breast tumor; region: irregular, hypoechoic, heterogeneous, ill-defined",
        "normal retina on fundus photograph",
        "MRI of the brain; finding: grey matter",
        "dermoscopy of the skin; structures: lesion",
        "X-ray of the chest, lung; finding: pneumothorax",
    ]
    together = embed_queries(texts)
    for text in texts:
        alone = embed_queries([text])[text]
        assert alone.dtype == np.float32 and together[text].tobytes() == alone.tobytes(), text


def test_query_vectors_on_disk_are_reused_and_damage_is_a_miss(tmp_path):
    texts = ["CT of the brain, skull", "normal retina on fundus photograph"]
    first = QueryVectors(tmp_path)
    vectors = first.get(texts + texts)
    assert first.counts == {"embedded": 2, "from_disk": 0, "from_memo": 0}
    second = QueryVectors(tmp_path)
    again = second.get(texts)
    assert second.counts == {"embedded": 0, "from_disk": 2, "from_memo": 0}
    assert all(again[t].tobytes() == vectors[t].tobytes() for t in texts)
    files = sorted(tmp_path.rglob("*.json"))
    assert len(files) == 2
    files[0].write_text("{not json")
    third = QueryVectors(tmp_path)
    assert {t: v.tobytes() for t, v in third.get(texts).items()} == {t: v.tobytes() for t, v in vectors.items()}
    assert third.counts == {"embedded": 1, "from_disk": 1, "from_memo": 0}
    assert QueryVectors(tmp_path).get(texts) and "{not json" not in files[0].read_text()


@pytest.fixture(scope="module")
def demo_facts(tmp_path_factory, shared_knowledge):
    """Every demo source run from ingest to facts (no expert models) in one data root."""
    tmp = tmp_path_factory.mktemp("demo_facts")
    catalog = load_catalog()
    fetched = fetch_demo_sources(catalog, tmp / "raw")
    root = shared_knowledge.copy_to(DataRoot(tmp / "var"))
    specs = [catalog[source_id] for source_id in sorted(fetched)]
    with env_overrides(MEDTRINITY_RAW=str(tmp / "raw")):
        for spec in specs:
            stages.run_ingest(spec, root, "salt")
            for run in (stages.run_normalize, stages.run_ground, lambda s, r: stages.run_model_rois(s, r, {}), stages.run_facts):
                run(spec, root)
    return root, specs


def test_retrieval_stage_on_the_demo_sources_equals_one_record_at_a_time(demo_facts):
    root, specs = demo_facts
    reference = OneAtATime(root.chroma)
    records = 0
    for spec in specs:
        report = stages.run_retrieval(spec, root)
        table = root.table("retrieved_knowledge", spec.id)
        rows = pq.read_table(table).to_pylist()
        expected = [
            reference.retrieve(record, record["rois"], spec, k=3)
            for record in stream_rows(stages._records_with_rois(root, spec.id))
        ]
        assert rows == expected, spec.id
        assert report.extra["chroma_queries"] <= report.extra["distinct_queries"] <= len(rows)
        records += len(rows)
        # A rerun reads every query vector from disk and writes the same bytes.
        before = table.read_bytes()
        again = stages.run_retrieval(spec, root)
        assert again.extra["query_vectors_embedded"] == 0
        assert again.extra["query_vectors_from_disk"] == report.extra["query_vectors_embedded"]
        assert table.read_bytes() == before, spec.id
    assert records >= 40
    assert any(r["knowledge_ids"] for spec in specs for r in pq.read_table(root.table("retrieved_knowledge", spec.id)).to_pylist())
