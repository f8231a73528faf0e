"""Stage 5b: pick knowledge passages for each record.

The query text is built from what is known of the image (modality, organs, findings, measured
ROI words). Passages are filtered inside Chroma, strictest first:

1. the record's modality AND one of its organs;
2. the modality alone;
3. the finding names (or aliases) alone.

A level is used only when the stricter one found nothing (and, at the relaxed levels, only
passages within ``RELAXED_MAX_DISTANCE`` of the query count); when none finds anything the row
holds empty lists, so the writer states no background knowledge rather than inventing some.
The level used is written into the ``query`` column (``filter=...; text=...``) as provenance.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable

from medtrinity_assets.generation.vocabulary import (
    MODALITY_NAME,
    join_words,
    normalize_label,
    primary_roi,
    record_labels,
    record_organs,
)
from medtrinity_assets.knowledge.store import (
    finding_flag,
    modality_flag,
    open_client,
    open_collection,
    organ_flag,
)

# Ask Chroma for a few more than k so ties at the cut are broken by id, not by index order.
_OVERFETCH = 4
# At the relaxed levels a passage must still be this close (cosine distance) to the query: a
# PET lung record must not be handed sarcoma passages just because they share the modality.
# With ~200 entries, fitting fall-backs sit at 0.26-0.45 (endoscopy stomach -> polyp, PET lung
# -> tuberculosis) and the nearest unrelated passage of a modality at 0.57 (mammography "gout").
RELAXED_MAX_DISTANCE = 0.55


def _any_of(flags: list[str]) -> dict | None:
    clauses = [{flag: True} for flag in dict.fromkeys(flags)]
    if not clauses:
        return None
    return clauses[0] if len(clauses) == 1 else {"$or": clauses}


def filter_levels(modality: str, organs: list[str], labels: list[str]) -> list[tuple[str, dict]]:
    levels = []
    organ_filter = _any_of([organ_flag(o) for o in organs])
    if organ_filter:
        levels.append(("modality+organ", {"$and": [{modality_flag(modality): True}, organ_filter]}))
    levels.append(("modality", {modality_flag(modality): True}))
    finding_filter = _any_of([finding_flag(l) for l in labels])
    if finding_filter:
        levels.append(("finding", finding_filter))
    return levels


def query_text(record: dict, rois: list[dict], spec) -> str:
    modality = record.get("modality") or spec.modality
    organs = record_organs(record, spec)
    labels = record_labels(record, rois)
    words = [f"{MODALITY_NAME.get(modality, modality)} of the {join_words(organs) or 'body'}"]
    words.append(f"finding: {join_words(labels)}" if labels else "no annotated finding, normal appearance")
    roi = primary_roi(rois)
    if roi is not None:
        described = [roi.get(k) for k in ("shape", "intensity_word", "texture", "margin", "colour")]
        described = [w for w in described if w]
        if described:
            words.append("region: " + ", ".join(described))
    return "; ".join(words)


class KnowledgeRetriever:
    """One Chroma client and collection for a whole partition; queries are batched."""

    def __init__(self, store_path):
        self.client = open_client(store_path)
        self.collection = open_collection(self.client, create=False)

    def _query(
        self, texts: list[str], where: dict, k: int, max_distance: float | None = None
    ) -> list[list[tuple[str, str, float]]]:
        result = self.collection.query(
            query_texts=texts,
            n_results=k + _OVERFETCH,
            where=where,
            include=["documents", "distances"],
        )
        hits = []
        for ids, documents, distances in zip(result["ids"], result["documents"], result["distances"]):
            ranked = sorted(zip(ids, documents, distances), key=lambda hit: (round(float(hit[2]), 6), hit[0]))
            if max_distance is not None:
                ranked = [hit for hit in ranked if float(hit[2]) <= max_distance]
            hits.append([(i, d, float(s)) for i, d, s in ranked[:k]])
        return hits

    def retrieve_many(
        self,
        records_with_rois: Iterable[tuple[dict, list[dict]]],
        spec,
        k: int = 4,
        relaxed_max_distance: float | None = RELAXED_MAX_DISTANCE,
    ) -> list[dict]:
        items = list(records_with_rois)
        prepared = []
        for record, rois in items:
            rois = list(rois or [])
            modality = record.get("modality") or spec.modality
            labels = [normalize_label(l) for l in record_labels(record, rois)]
            prepared.append(
                {
                    "text": query_text(record, rois, spec),
                    "levels": filter_levels(modality, record_organs(record, spec), labels),
                    "hits": [],
                    "level": "none",
                }
            )
        # Level by level, batch every still-unanswered record that shares the same filter.
        depth = 0
        while True:
            groups: dict[str, list[int]] = defaultdict(list)
            wheres: dict[str, tuple[str, dict]] = {}
            for index, item in enumerate(prepared):
                if not item["hits"] and depth < len(item["levels"]):
                    name, where = item["levels"][depth]
                    key = repr(where)
                    groups[key].append(index)
                    wheres[key] = (name, where)
            if not groups:
                break
            for key, indexes in groups.items():
                name, where = wheres[key]
                limit = None if name == "modality+organ" else relaxed_max_distance
                answers = self._query([prepared[i]["text"] for i in indexes], where, k, limit)
                for index, hits in zip(indexes, answers):
                    if hits:
                        prepared[index]["hits"] = hits
                        prepared[index]["level"] = name
            depth += 1

        rows = []
        for (record, _), item in zip(items, prepared):
            rows.append(
                {
                    "record_id": record.get("record_id"),
                    "source_id": record.get("source_id") or spec.id,
                    "query": f"filter={item['level']}; text={item['text']}",
                    "knowledge_ids": [h[0] for h in item["hits"]],
                    "knowledge_texts": [h[1] for h in item["hits"]],
                    "distances": [h[2] for h in item["hits"]],
                }
            )
        return rows

    def retrieve(self, record: dict, rois: list[dict], spec, k: int = 4) -> dict:
        return self.retrieve_many([(record, rois)], spec, k=k)[0]


def retrieve(store_path, record: dict, rois: list[dict], spec, k: int = 4) -> dict:
    """One record's passages (row of ``schemas.RETRIEVED_KNOWLEDGE``); use the class for many."""
    return KnowledgeRetriever(store_path).retrieve(record, rois, spec, k=k)
