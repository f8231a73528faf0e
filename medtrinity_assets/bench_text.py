"""How true and how varied the descriptions are, per source: the figures issue 7 asks for.

    python -m medtrinity_assets.bench_text [--root var] [--materialize busi,ham10000,...]

Reads the stage tables under a data root (``--materialize`` first runs the named sources through
every stage into that root, with the project's knowledge base) and prints, per source:

- rows, and rows per label state (finding / normal / unknown);
- descriptions using patient-side words ("patient's left/right", "midline") and the provenance of
  the patient-side facts behind them (a patient-side word without such a fact is counted apart:
  it must be 0);
- verified rows and rows held back for burned-in text or annotation;
- the distinct 3-gram ratio of the descriptions (distinct word 3-grams / all word 3-grams);
- the share of description words copied from the knowledge corpus: words covered by a run of
  ``COPY_RUN`` consecutive words that also occurs in a knowledge chunk.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from pathlib import Path

from medtrinity_assets.duckdb_sql import connect, read_parquet

COPY_RUN = 5
_WORD = re.compile(r"[a-z0-9]+(?:[-'][a-z0-9]+)*")
_PATIENT_SIDE = re.compile(r"\bpatient's (left|right)\b|\bpatient's midline\b", re.I)


def words(text: str) -> list[str]:
    return _WORD.findall((text or "").lower())


def distinct_ngram_ratio(texts: list[str], n: int = 3) -> float:
    grams: Counter = Counter()
    for text in texts:
        tokens = words(text)
        grams.update(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
    total = sum(grams.values())
    return len(grams) / total if total else 0.0


def knowledge_runs(chunks: list[str], n: int = COPY_RUN) -> set[tuple[str, ...]]:
    runs = set()
    for chunk in chunks:
        tokens = words(chunk)
        runs.update(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
    return runs


def copied_share(texts: list[str], runs: set[tuple[str, ...]], n: int = COPY_RUN) -> float:
    """Share of words lying inside an n-word run that also occurs in the knowledge corpus."""
    copied = total = 0
    for text in texts:
        tokens = words(text)
        covered = [False] * len(tokens)
        for i in range(len(tokens) - n + 1):
            if tuple(tokens[i : i + n]) in runs:
                covered[i : i + n] = [True] * n
        copied += sum(covered)
        total += len(tokens)
    return copied / total if total else 0.0


def source_report(con, root: Path, source_id: str, runs: set) -> dict:
    descriptions = root / "tables" / "descriptions" / f"{source_id}.parquet"
    rows = con.sql(f"SELECT record_id, description, verified, label_state, facts FROM {read_parquet(descriptions)}").fetchall()
    texts = [r[1] for r in rows]
    states = Counter(r[3] or "missing" for r in rows)
    side_rows = Counter()
    for _, text, _, _, facts_json in rows:
        if not _PATIENT_SIDE.search(text or ""):
            continue
        facts = json.loads(facts_json or "[]")
        provenances = sorted({f.get("detail") or f["provenance"] for f in facts if f["attribute"] == "patient_side"})
        side_rows["+".join(provenances) or "NO FACT"] += 1
    triplets = root / "tables" / "triplets" / f"{source_id}.parquet"
    held = 0
    if triplets.exists():
        held = con.sql(
            f"""SELECT count(*) FROM {read_parquet(triplets)}
                WHERE list_has_any(coalesce(flags, []::VARCHAR[]), ['burned_in_annotation', 'burned_in_text'])"""
        ).fetchall()[0][0]
    return {
        "source": source_id,
        "rows": len(rows),
        "label_states": dict(states),
        "patient_side_rows": dict(side_rows),
        "verified": sum(1 for r in rows if r[2]),
        "held_back_burned_in": held,
        "distinct_3gram_ratio": round(distinct_ngram_ratio(texts), 3),
        "copied_from_knowledge": round(copied_share(texts, runs), 3),
    }


def materialize(root: Path, source_ids: list[str]) -> None:
    from medtrinity_assets import stages
    from medtrinity_assets.catalog import load_catalog
    from medtrinity_assets.paths import DataRoot, knowledge_dir

    data_root = DataRoot(root)
    catalog = load_catalog()
    if not data_root.table("knowledge_chunks").exists():
        stages.run_knowledge_base(data_root, knowledge_dir())
    for source_id in source_ids:
        spec = catalog[source_id]
        stages.run_ingest(spec, data_root, "bench-text-salt")
        for run in (stages.run_normalize, stages.run_ground, stages.run_facts, stages.run_coarse_captions,
                    stages.run_retrieval, stages.run_descriptions, stages.run_triplets):
            run(spec, data_root)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default="var", help="data root holding tables/ (MEDTRINITY_HOME)")
    parser.add_argument("--materialize", default="", help="comma-separated source ids to run through every stage first")
    args = parser.parse_args(argv)
    root = Path(args.root)
    if args.materialize:
        materialize(root, [s for s in args.materialize.split(",") if s])
    con = connect()
    chunks = root / "tables" / "knowledge_chunks.parquet"
    runs = knowledge_runs([r[0] for r in con.sql(f"SELECT text FROM {read_parquet(chunks)}").fetchall()]) if chunks.exists() else set()
    sources = sorted(p.stem for p in (root / "tables" / "descriptions").glob("*.parquet"))
    reports = [source_report(con, root, s, runs) for s in sources]
    header = f"{'source':28} {'rows':>5} {'finding':>7} {'normal':>6} {'unknown':>7} {'verified':>8} {'burned-in':>9} {'3-gram':>6} {'copied':>6}  patient-side words (provenance: rows)"
    print(header)
    all_texts: list[str] = []
    for report in reports:
        states = report["label_states"]
        print(
            f"{report['source']:28} {report['rows']:>5} {states.get('finding', 0):>7} {states.get('normal', 0):>6} "
            f"{states.get('unknown', 0):>7} {report['verified']:>8} {report['held_back_burned_in']:>9} "
            f"{report['distinct_3gram_ratio']:>6.3f} {report['copied_from_knowledge']:>6.3f}  {report['patient_side_rows'] or '-'}"
        )
    for source in sources:
        path = root / "tables" / "descriptions" / f"{source}.parquet"
        all_texts += [r[0] for r in con.sql(f"SELECT description FROM {read_parquet(path)}").fetchall()]
    print(
        f"\nall sources: {len(all_texts)} descriptions, distinct 3-gram ratio {distinct_ngram_ratio(all_texts):.3f}, "
        f"share of words copied from knowledge ({COPY_RUN}-word runs) {copied_share(all_texts, runs):.3f}"
    )


if __name__ == "__main__":
    main()
