"""Retrieval benchmark: the labelled set in ``data/knowledge/eval/retrieval_set.yaml``.

    python -m medtrinity_assets.bench_retrieval [--store PATH] [--k 3] [--show]
    python -m medtrinity_assets.bench_retrieval --store PATH --distances   (where the cut falls)
    python -m medtrinity_assets.bench_retrieval --throughput [--images 1000] [--data-root DIR]

``--throughput``: seconds of the knowledge_base stage on a fresh data root and on a rerun (the
store reused), then images/s of the retrieval stage over the benchmark workload of bench.py
(its upstream stages run first, or reused from ``--data-root``) with no query vectors on disk
(the model loaded in the stage) and with them there (a rerun, another partition of the same
queries). Every figure comes from a fresh process, as in bench.py.

Builds a Chroma store from the corpus with the packaged embedding model (or uses ``--store``),
runs every query through ``KnowledgeRetriever.retrieve_many`` and prints, over entries (the
passages a record gets, mapped to the entry they come from, first ``k`` distinct entries):

- recall@k: returned expected entries / min(k, expected entries), averaged over the queries
  that expect some;
- precision: share of returned passages whose entry is expected or acceptable;
- forbidden: share of returned passages whose entry is forbidden, named in the query or by kind
  (a normal entry on a finding or unknown record, a finding entry on a normal or unknown one);
  and the number of queries with at least one;
- zero-passage accuracy: share of the queries that expect nothing that get nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import yaml

from medtrinity_assets.paths import REPO_ROOT
from medtrinity_assets.sources.label_state import LABEL_STATES

RETRIEVAL_SET = REPO_ROOT / "data" / "knowledge" / "eval" / "retrieval_set.yaml"
# Kinds of entry a record in each label state must never be handed.
FORBIDDEN_KINDS = {"finding": {"normal"}, "normal": {"finding"}, "unknown": {"normal", "finding"}}


@dataclass
class Query:
    id: str
    modality: str
    organs: list[str]
    labels: list[str]
    label_state: str
    rois: list[dict] = field(default_factory=list)
    expected: list[str] = field(default_factory=list)
    acceptable: list[str] = field(default_factory=list)
    forbidden: list[str] = field(default_factory=list)

    @property
    def expects_none(self) -> bool:
        return not self.expected and not self.acceptable

    def record_and_rois(self) -> tuple[dict, list[dict]]:
        record = {
            "record_id": self.id,
            "source_id": "bench",
            "modality": self.modality,
            "organs": list(self.organs),
            "labels": list(self.labels),
            "label_state": self.label_state,
        }
        rois = []
        for index, roi in enumerate(self.rois):
            rois.append(
                {
                    "roi_id": f"{self.id}-{index}",
                    "origin": "annotation:mask",
                    # Listed first = largest, so the first ROI is the one a caption talks about.
                    "area_px": 1000 - index,
                    **roi,
                }
            )
        return record, rois


def load_queries(path: Path, entry_kinds: dict[str, str]) -> list[Query]:
    """The labelled set; every entry id it names must exist in the corpus."""
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    queries, problems, seen = [], [], set()
    for raw in data["queries"]:
        query = Query(**raw)
        if query.id in seen:
            problems.append(f"{query.id}: duplicate query id")
        seen.add(query.id)
        if query.label_state not in LABEL_STATES:
            problems.append(f"{query.id}: label_state {query.label_state!r} not in {LABEL_STATES}")
        for name in ("expected", "acceptable", "forbidden"):
            unknown = [i for i in getattr(query, name) if i not in entry_kinds]
            if unknown:
                problems.append(f"{query.id}: {name} names entries not in the corpus: {unknown}")
        queries.append(query)
    if problems:
        raise ValueError(f"{path}: " + "; ".join(problems))
    return queries


def returned_entries(row: dict, k: int) -> list[str]:
    """Entries of the returned passages, in rank order, first k distinct."""
    entries: list[str] = []
    for chunk_id in row["knowledge_ids"]:
        entry = chunk_id.split(".")[0]
        if entry not in entries:
            entries.append(entry)
    return entries[:k]


def score(queries: list[Query], rows: list[dict], entry_kinds: dict[str, str], k: int) -> dict:
    per_query = []
    for query, row in zip(queries, rows):
        got = returned_entries(row, k)
        bad_kinds = FORBIDDEN_KINDS[query.label_state]
        forbidden = [e for e in got if e in query.forbidden or entry_kinds[e] in bad_kinds]
        fitting = [e for e in got if e in query.expected or e in query.acceptable]
        per_query.append(
            {
                "id": query.id,
                "label_state": query.label_state,
                "returned": got,
                "distances": [round(d, 3) for d in row["distances"]],
                # A query may expect more than k entries; any k of them make full recall.
                "recall": (len(set(query.expected) & set(got)) / min(k, len(query.expected))) if query.expected else None,
                "fitting": len(fitting),
                "forbidden": forbidden,
                "expects_none": query.expects_none,
            }
        )
    return {"queries": per_query, "overall": _summary(per_query), **{s: _summary([q for q in per_query if q["label_state"] == s]) for s in LABEL_STATES}}


def _summary(per_query: list[dict]) -> dict:
    recalls = [q["recall"] for q in per_query if q["recall"] is not None]
    passages = sum(len(q["returned"]) for q in per_query)
    none_queries = [q for q in per_query if q["expects_none"]]
    return {
        "queries": len(per_query),
        "recall_at_k": sum(recalls) / len(recalls) if recalls else None,
        "passages": passages,
        "precision": sum(q["fitting"] for q in per_query) / passages if passages else None,
        "forbidden_rate": sum(len(q["forbidden"]) for q in per_query) / passages if passages else None,
        "queries_with_forbidden": sum(1 for q in per_query if q["forbidden"]),
        "zero_passage_queries": len(none_queries),
        "zero_passage_accuracy": (
            sum(1 for q in none_queries if not q["returned"]) / len(none_queries) if none_queries else None
        ),
    }


def run_benchmark(store_path=None, k: int = 3, set_path: Path = RETRIEVAL_SET, max_distance="default") -> dict:
    """``max_distance``: the retriever's relevance cut; "default" keeps its own, None turns it off."""
    from medtrinity_assets.knowledge.corpus import chunk_corpus, load_corpus
    from medtrinity_assets.knowledge.retrieval import KnowledgeRetriever
    from medtrinity_assets.knowledge.store import build_knowledge_base
    from medtrinity_assets.paths import knowledge_dir

    entries = load_corpus(knowledge_dir())
    entry_kinds = {e["id"]: e.get("kind", "finding") for e in entries}
    queries = load_queries(set_path, entry_kinds)
    with tempfile.TemporaryDirectory(prefix="bench-retrieval-") as scratch:
        if store_path is None:
            store_path = Path(scratch) / "chroma"
            build_knowledge_base(chunk_corpus(entries), store_path)
        retriever = KnowledgeRetriever(store_path) if max_distance == "default" else KnowledgeRetriever(store_path, max_distance)
        items = []
        for query in queries:
            record, rois = query.record_and_rois()
            spec = SimpleNamespace(id="bench", modality=query.modality, organs=list(query.organs))
            items.append((record, rois, spec))
        # One spec per query (the modality and organs differ), so one call per query.
        rows = [retriever.retrieve_many([(record, rois)], spec, k=k)[0] for record, rois, spec in items]
    return score(queries, rows, entry_kinds, k)


def distance_table(store_path, set_path: Path = RETRIEVAL_SET, cuts=(0.45, 0.5, 0.55, 0.6, 0.65, 0.7)) -> list[dict]:
    """Where a relevance cut falls: for every query, each entry's best passage distance over all
    passages of the query's modality (no name, kind or organ filter); per cut, the share of
    fitting (expected or acceptable) entries kept and of the other entries cut."""
    from medtrinity_assets.knowledge.corpus import load_corpus
    from medtrinity_assets.knowledge.retrieval import PASSAGE_SECTIONS, KnowledgeRetriever, query_text
    from medtrinity_assets.knowledge.store import modality_flag
    from medtrinity_assets.paths import knowledge_dir

    kinds = {e["id"]: e.get("kind", "finding") for e in load_corpus(knowledge_dir())}
    retriever = KnowledgeRetriever(store_path, max_distance=None)
    fitting, other = [], []
    for query in load_queries(set_path, kinds):
        record, rois = query.record_and_rois()
        spec = SimpleNamespace(id="bench", modality=query.modality, organs=list(query.organs))
        where = {"$and": [{"section": {"$in": list(PASSAGE_SECTIONS)}}, {modality_flag(query.modality): True}]}
        result = retriever.collection.query(
            query_texts=[query_text(record, rois, spec)], n_results=len(kinds) * 3, where=where,
            include=["distances", "metadatas"],
        )
        best: dict[str, float] = {}
        for distance, meta in zip(result["distances"][0], result["metadatas"][0]):
            best.setdefault(meta["entry_id"], float(distance))
        good = set(query.expected) | set(query.acceptable)
        fitting += [d for e, d in best.items() if e in good]
        other += [d for e, d in best.items() if e not in good]
    return [
        {
            "cut": cut,
            "fitting_kept": sum(d <= cut for d in fitting) / len(fitting),
            "others_cut": sum(d > cut for d in other) / len(other),
        }
        for cut in cuts
    ]


def _fmt(value) -> str:
    return "-" if value is None else (f"{value:.3f}" if isinstance(value, float) else str(value))


def print_report(result: dict, k: int, show: bool = False, out=sys.stdout) -> None:
    if show:
        for q in result["queries"]:
            marks = " FORBIDDEN=" + ",".join(q["forbidden"]) if q["forbidden"] else ""
            print(f"{q['id']:32s} {q['label_state']:8s} recall={_fmt(q['recall'])} {q['returned']} {q['distances']}{marks}", file=out)
        print(file=out)
    columns = ("queries", "recall_at_k", "passages", "precision", "forbidden_rate", "queries_with_forbidden", "zero_passage_accuracy")
    print(f"{'set':10s} " + " ".join(f"{c.replace('_at_k', f'@{k}'):>22s}" for c in columns), file=out)
    for name in ("overall", *LABEL_STATES):
        row = result[name]
        print(f"{name:10s} " + " ".join(f"{_fmt(row[c]):>22s}" for c in columns), file=out)
    none = result["overall"]
    print(f"zero-passage queries: {none['zero_passage_queries']}", file=out)


THROUGHPUT_UPSTREAM = ("raw_records", "normalized_images", "rois", "model_rois", "facts")


def throughput(n_images: int, data_root: Path | None = None) -> list[dict]:
    import shutil

    from medtrinity_assets import bench

    workload = bench.make_workload(n_images)
    data_root = Path(data_root) if data_root else bench.CACHE / f"retrieval_{n_images}"
    child = lambda stage: bench._child(["--child", stage, "--workload", str(workload), "--data-root", str(data_root)])  # noqa: E731
    results = []
    if not (data_root / "tables" / "facts").is_dir():
        shutil.rmtree(data_root, ignore_errors=True)
        for stage in THROUGHPUT_UPSTREAM:
            child(stage)
    shutil.rmtree(data_root / "chroma", ignore_errors=True)
    (data_root / "tables" / "knowledge_chunks.parquet").unlink(missing_ok=True)
    results.append({"run": "knowledge_base, fresh", **child("knowledge_base")})
    results.append({"run": "knowledge_base, rerun", **child("knowledge_base")})
    shutil.rmtree(data_root / "query_embeddings", ignore_errors=True)
    results.append({"run": "retrieval, no vectors on disk", **child("retrieved_knowledge")})
    results.append({"run": "retrieval, vectors on disk", **child("retrieved_knowledge")})
    return results


def print_throughput(results: list[dict], n_images: int, out=sys.stdout) -> None:
    print(f"Benchmark workload of bench.py: {n_images} images; each line a fresh process", file=out)
    print(f"{'run':32s}{'items':>8s}{'seconds':>10s}{'items/s':>10s}{'peak RSS MiB':>14s}", file=out)
    for r in results:
        rate = r["images"] / r["seconds"] if r["seconds"] else float("inf")
        print(f"{r['run']:32s}{r['images']:>8d}{r['seconds']:>10.2f}{rate:>10.1f}{r['peak_rss_mib']:>14.0f}", file=out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, default=None, help="an existing Chroma store (default: build one)")
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--set", type=Path, default=RETRIEVAL_SET, dest="set_path")
    parser.add_argument("--show", action="store_true", help="print every query's answer")
    parser.add_argument(
        "--max-distance", default="default", help="relevance cut to use instead of the retriever's ('none': no cut)"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the full result here")
    parser.add_argument(
        "--distances", action="store_true", help="print where each relevance cut falls (needs --store)"
    )
    parser.add_argument("--throughput", action="store_true", help="knowledge_base and retrieval stage speed (fresh processes)")
    parser.add_argument("--images", type=int, default=1000, help="--throughput: size of the benchmark workload")
    parser.add_argument("--data-root", type=Path, default=None, help="--throughput: data root with the upstream tables")
    args = parser.parse_args(argv)
    if args.throughput:
        print_throughput(throughput(args.images, args.data_root), args.images)
        return 0
    if args.distances:
        if args.store is None:
            parser.error("--distances needs --store (a store built from the corpus)")
        for row in distance_table(args.store, args.set_path):
            print(f"cut {row['cut']:.2f}: fitting entries kept {row['fitting_kept']:.3f}, other entries cut {row['others_cut']:.3f}")
        return 0
    cut = args.max_distance
    cut = None if cut == "none" else cut if cut == "default" else float(cut)
    result = run_benchmark(args.store, k=args.k, set_path=args.set_path, max_distance=cut)
    print_report(result, args.k, show=args.show)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
