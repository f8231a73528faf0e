"""Stage 5b: pick the knowledge entries that fit each record.

Which entries a record may get depends first on its label state (``finding`` | ``normal`` |
``unknown``), then on names, modality and organ; only among those does the embedding rank:

- finding: entries (of kind finding or anatomy) whose name or alias is one of the record's
  labels or annotated ROI labels. Per label, the entries imaged with the record's modality and
  about one of its organs are kept; failing that, those about one of its organs (a PET of the
  lung labelled tuberculosis gets the tuberculosis entry, without its X-ray appearance);
  failing that, none: a "mass" on a thyroid ultrasound does not get the breast-mass entry just
  because both are ultrasound. Never a normal entry. A record of the whole body matches every
  organ.
- normal: normal entries of the record's modality and organ, and anatomy entries named by its
  ROI labels. Never a finding entry.
- unknown: anatomy entries only (named by its ROI labels, or of its modality and organ); never
  a finding or a normal entry, so an unlabelled image is described neither as diseased nor as
  normal.

Passages are the sections a writer may use (definition, the appearance on the record's
modality, typical location); the differential is left out because it names other diseases.
An entry's distance is its best passage's cosine distance to the query; entries farther than
``MAX_DISTANCE`` are dropped, so a record may get no passage at all. One passage per entry, at
most ``k`` entries.

Measured ROI intensity is checked against the appearance passage of the entry that ROI's label
names (the largest such ROI; a lung box says nothing about the pneumonia entry): an appearance
that states only the opposite direction (says "hypoechoic" while the ROI measured hyperechoic,
"dark" while it measured brighter) is dropped, and its entry is ranked after the entries that
do not contradict the image. The reason is kept in ``knowledge_sections``.

The query column records what was done: ``state=...; filter=...; text=...``.
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict, defaultdict
from dataclasses import dataclass, field
from typing import Iterable

from medtrinity_assets.knowledge.embedder import QueryVectors
from medtrinity_assets.knowledge.store import (
    finding_flag,
    modality_flag,
    open_client,
    open_collection,
    organ_flag,
)
from medtrinity_assets.sources.label_state import LABEL_STATES
from medtrinity_assets.vocabulary import (
    INTENSITY_DIRECTION,
    MODALITY_NAME,
    WHOLE_BODY_ORGANS,
    annotated_rois,
    as_list,
    join_words,
    normalize_label,
    primary_roi,
    record_labels,
    record_organs,
)

# Labels that mean "the source says this image is normal", not a finding.
NORMAL_LABELS = {"normal", "no finding", "no findings", "no lesion", "healthy", "normal tissue"}
# Sections handed out as passages; the differential names other diseases and is never a passage.
PASSAGE_SECTIONS = ("definition", "appearance", "typical_location")
# Cosine distance above which an entry does not fit the record. Measured on the labelled set
# (data/knowledge/eval/retrieval_set.yaml, `make bench-retrieval`): every expected or
# acceptable entry the filters admit has its best passage within 0.53 of the query. Over all
# passages of each query's modality, unfiltered (`python -m medtrinity_assets.bench_retrieval
# --distances`), 0.55 keeps 98% of fitting entries and cuts 45% of the others; what it cuts
# after the filters are anatomy passages only loosely tied to
# the query (the adrenal gland for an unlabelled abdominal MRI at 0.61, white matter for a head
# CT at 0.61). The filters, not the distance, keep wrong entries out: benign and malignant
# breast passages sit 0.17 apart.
MAX_DISTANCE = 0.55

# Words of an appearance passage that state a direction. Colour words (white, black) are left
# out: they describe pigment and stains, not brightness against the surroundings.
_TEXT_DIRECTION = {
    "higher": re.compile(
        r"\b(hyperechoic|echogenic|hyperdense|hyperintense|bright|brighter|brightly|opaque|radiopaque|"
        r"denser|high[- ]density|higher[- ]density|increased uptake|high uptake|hot spots?)\b",
        re.IGNORECASE,
    ),
    "lower": re.compile(
        r"\b(hypoechoic|anechoic|echo-free|hypodense|hypointense|dark|darker|lucent|radiolucent|"
        r"low[- ]density|lower[- ]density|lower in density|decreased uptake|photopenic)\b",
        re.IGNORECASE,
    ),
}
_WHOLE_BODY_FLAGS = {organ_flag(o) for o in WHOLE_BODY_ORGANS}
_LEVEL_ORDER = ["modality+organ", "organ", "none"]
_NEGATION = re.compile(r"\b(not|no|without|non)[\s-]+(\w+[\s-]+)?$", re.IGNORECASE)


def _label_state(record: dict) -> str:
    """The record's label state: the ``label_state`` column when ingest wrote one; otherwise,
    from the record's own labels, "normal" when every label is a normal word, "finding" when it
    has labels, else "unknown". ROI labels do not count: a mask named "lesion" says where
    something is, not what it is."""
    state = record.get("label_state")
    if state in LABEL_STATES:
        return state
    labels = [normalize_label(l) for l in as_list(record.get("labels")) if l]
    if labels and all(l in NORMAL_LABELS for l in labels):
        return "normal"
    return "finding" if labels else "unknown"


def stated_directions(text: str) -> set[str]:
    """Directions ("higher", "lower") an appearance passage states, negated mentions left out."""
    found = set()
    for direction, pattern in _TEXT_DIRECTION.items():
        for match in pattern.finditer(text or ""):
            if not _NEGATION.search(text[max(0, match.start() - 20) : match.start()]):
                found.add(direction)
    return found


def measured_direction(roi: dict) -> str | None:
    """Direction ("higher" | "lower") an ROI measured against its surroundings, if any."""
    if roi.get("intensity") in ("higher", "lower"):  # a fact-shaped ROI carries the direction itself
        return roi["intensity"]
    # A "similar" word states no direction, so it can contradict no passage.
    direction = INTENSITY_DIRECTION.get(str(roi.get("intensity_word") or "").lower())
    return direction if direction in ("higher", "lower") else None


@dataclass
class _Entry:
    entry_id: str
    finding: str
    kind: str
    names: set[str] = field(default_factory=set)  # finding flags (f_<slug>)
    modalities: set[str] = field(default_factory=set)  # modality flags
    organs: set[str] = field(default_factory=set)  # organ flags
    sections: dict[str, str] = field(default_factory=dict)  # "definition" / "appearance.<m>" -> body


def _index_entries(metadatas: list[dict]) -> dict[str, _Entry]:
    entries: dict[str, _Entry] = {}
    for meta in metadatas:
        entry = entries.setdefault(
            meta["entry_id"], _Entry(meta["entry_id"], meta["finding"], meta.get("kind") or "finding")
        )
        for key, value in meta.items():
            if value is True and key[:2] in ("f_", "m_", "o_"):
                {"f_": entry.names, "m_": entry.modalities, "o_": entry.organs}[key[:2]].add(key)
        section = meta.get("section")
        if section == "appearance":
            for modality in meta["modalities"].strip("|").split("|"):
                entry.sections[f"appearance.{modality}"] = meta.get("body") or ""
        elif section:
            entry.sections[section] = meta.get("body") or ""
    return entries


def query_text(record: dict, rois: list[dict], spec, state: str | None = None) -> str:
    state = state or _label_state(record)
    modality = record.get("modality") or spec.modality
    organs = join_words(record_organs(record, spec)) or "body"
    modality_name = MODALITY_NAME.get(modality, modality)
    if state == "normal":
        return f"normal {organs} on {modality_name}"
    words = [f"{modality_name} of the {organs}"]
    labels = [l for l in record_labels(record, rois) if normalize_label(l) not in NORMAL_LABELS]
    if labels:
        words.append(("finding: " if state == "finding" else "structures: ") + join_words(labels))
    roi = primary_roi(rois)
    if roi is not None and state == "finding":
        described = [roi.get(k) for k in ("shape", "intensity_word", "texture", "margin", "colour")]
        described = [w for w in described if w]
        if described:
            words.append("region: " + ", ".join(described))
    return "; ".join(words)


class KnowledgeRetriever:
    """One Chroma client and collection for a whole partition.

    Records of a source repeat a few query texts (same modality, organ, finding), so across
    all calls of one retriever each distinct text is embedded once (``QueryVectors``; with
    ``cache_dir`` also across processes) and each distinct (allowed entries, modality, text)
    is asked of Chroma once, the texts of one filter in one query; the answers are kept
    (``answer_memo`` of them, least recently used dropped) and fanned out to the records.
    A record's row depends on the record alone: the same as retrieving it by itself."""

    def __init__(
        self, store_path, max_distance: float | None = MAX_DISTANCE, cache_dir=None, answer_memo: int = 512
    ):
        self.client = open_client(store_path)
        self.collection = open_collection(self.client, create=False)
        self.max_distance = max_distance
        self.entries = _index_entries(self.collection.get(include=["metadatas"])["metadatas"])
        self.vectors = QueryVectors(cache_dir)
        self.answers: OrderedDict[tuple, list] = OrderedDict()
        self.answer_memo = answer_memo
        self.counts = {"records": 0, "distinct_queries": 0, "chroma_queries": 0, "answers_reused": 0}

    # --- which entries a record may get ---------------------------------------------------

    def _named(self, label: str, kinds: set[str]) -> list[_Entry]:
        flag = finding_flag(label)
        return [e for e in self.entries.values() if flag in e.names and e.kind in kinds]

    @staticmethod
    def _narrow(entries: list[_Entry], modality: str, organs: set[str]) -> tuple[str, list[_Entry]]:
        def same_organ(entry: _Entry) -> bool:
            return bool(entry.organs & organs) or bool(organs & _WHOLE_BODY_FLAGS)

        levels = (  # in _LEVEL_ORDER
            ("modality+organ", lambda e: modality in e.modalities and same_organ(e)),
            ("organ", same_organ),
        )
        for name, keep in levels:
            kept = [e for e in entries if keep(e)]
            if kept:
                return name, kept
        return "none", []

    def candidates(self, record: dict, rois: list[dict], spec) -> tuple[str, str, list[str]]:
        """(label state, filter used, allowed entry ids) for one record."""
        state = _label_state(record)
        modality = modality_flag(record.get("modality") or spec.modality)
        organs = {organ_flag(o) for o in record_organs(record, spec)}
        roi_labels = [r.get("label") for r in annotated_rois(rois) if r.get("label")]
        labels = [l for l in record_labels(record, rois) if normalize_label(l) not in NORMAL_LABELS]
        allowed: dict[str, None] = {}
        levels: list[str] = []
        if state == "finding":
            for label in labels:
                level, kept = self._narrow(self._named(label, {"finding", "anatomy"}), modality, organs)
                levels.append(level)
                allowed.update((e.entry_id, None) for e in kept)
            # The loosest level any label needed, so a fallback is visible in the provenance.
            filter_used = "name+" + (max(levels, key=_LEVEL_ORDER.index) if levels else "none")
        else:
            for label in roi_labels:
                level, kept = self._narrow(self._named(label, {"anatomy"}), modality, organs)
                allowed.update((e.entry_id, None) for e in kept)
            kind = "normal" if state == "normal" else "anatomy"
            allowed.update(
                (e.entry_id, None)
                for e in self.entries.values()
                if e.kind == kind and modality in e.modalities and (e.organs & organs or organs & _WHOLE_BODY_FLAGS)
            )
            filter_used = f"{kind}+modality+organ"
        return state, filter_used, sorted(allowed)

    # --- ranking ----------------------------------------------------------------------------

    @staticmethod
    def where(entry_ids: list[str], modality: str) -> dict:
        """Chroma's filter for the passages of ``entry_ids`` a record of ``modality`` may get."""
        return {
            "$and": [
                {"entry_id": {"$in": entry_ids}},
                {"section": {"$in": list(PASSAGE_SECTIONS)}},
                # Appearance passages only for the record's own modality.
                {"$or": [{"section": {"$ne": "appearance"}}, {modality_flag(modality): True}]},
            ]
        }

    def _query(self, vectors: list, entry_ids: list[str], modality: str) -> list[list[tuple[str, str, float, dict]]]:
        result = self.collection.query(
            query_embeddings=vectors,
            n_results=len(PASSAGE_SECTIONS) * len(entry_ids),
            where=self.where(entry_ids, modality),
            include=["documents", "distances", "metadatas"],
        )
        self.counts["chroma_queries"] += 1
        # Only what ranking reads is kept of each passage's metadata: answers are memoized.
        return [
            [
                (chunk_id, document, float(distance), {k: meta.get(k) for k in ("entry_id", "section", "body")})
                for chunk_id, document, distance, meta in zip(ids, documents, distances, metadatas)
            ]
            for ids, documents, distances, metadatas in zip(
                result["ids"], result["documents"], result["distances"], result["metadatas"]
            )
        ]

    def _answers_for(self, keys: list[tuple]) -> dict[tuple, list]:
        """Chroma's answer per (allowed entry ids, modality, text): memoized ones reused, the
        rest asked once per filter with all its texts' vectors in one query."""
        answers: dict[tuple, list] = {}
        missing: dict[tuple, list[str]] = defaultdict(list)
        for key in dict.fromkeys(keys):
            if key in self.answers:
                self.answers.move_to_end(key)
                answers[key] = self.answers[key]
                self.counts["answers_reused"] += 1
            else:
                missing[key[:2]].append(key[2])
        if missing:
            vectors = self.vectors.get([text for texts in missing.values() for text in texts])
            for (allowed, modality), texts in missing.items():
                for text, hits in zip(texts, self._query([vectors[t] for t in texts], list(allowed), modality)):
                    answers[(allowed, modality, text)] = hits
                    self.answers[(allowed, modality, text)] = hits
                    self.counts["distinct_queries"] += 1
            while len(self.answers) > self.answer_memo:
                self.answers.popitem(last=False)
        return answers

    def _directions(self, rois: list[dict], allowed: list[str]) -> dict[str, str]:
        """Entry id -> measured direction of the largest annotated ROI whose label names it."""
        directions: dict[str, str] = {}
        for roi in sorted(annotated_rois(rois), key=lambda r: (-(r.get("area_px") or 0), str(r.get("roi_id")))):
            direction = measured_direction(roi)
            if not direction or not roi.get("label"):
                continue
            flag = finding_flag(roi["label"])
            for entry_id in allowed:
                if flag in self.entries[entry_id].names:
                    directions.setdefault(entry_id, direction)
        return directions

    def _rank(self, hits, directions: dict[str, str], k: int) -> list[dict]:
        best: dict[str, dict] = {}
        for chunk_id, text, distance, meta in sorted(hits, key=lambda h: (round(h[2], 6), h[0])):
            entry_id = meta["entry_id"]
            direction = directions.get(entry_id)
            conflict = None
            if meta.get("section") == "appearance" and direction:
                stated = stated_directions(meta.get("body") or text)
                if stated and direction not in stated:
                    conflict = f"appearance says {'/'.join(sorted(stated))} intensity; the ROI measured {direction}"
            chosen = best.setdefault(entry_id, {"entry_id": entry_id, "chunk_id": None, "conflict": None})
            if conflict:
                chosen["conflict"] = conflict
                continue
            if chosen["chunk_id"] is None:
                chosen.update(chunk_id=chunk_id, text=text, distance=distance)
        ranked = [b for b in best.values() if b["chunk_id"] is not None]
        if self.max_distance is not None:
            ranked = [b for b in ranked if b["distance"] <= self.max_distance]
        # Entries whose appearance contradicts the measured ROI go after those that do not.
        ranked.sort(key=lambda b: (b["conflict"] is not None, round(b["distance"], 6), b["entry_id"]))
        return ranked[:k]

    def _sections(self, entry_id: str, modality: str, conflict: str | None) -> dict:
        entry = self.entries[entry_id]
        return {
            "entry_id": entry_id,
            "kind": entry.kind,
            "finding": entry.finding,
            "definition": entry.sections.get("definition"),
            "appearance": None if conflict else entry.sections.get(f"appearance.{modality}"),
            "typical_location": entry.sections.get("typical_location"),
            "appearance_conflict": conflict,
        }

    def retrieve_many(self, records_with_rois: Iterable[tuple[dict, list[dict]]], spec, k: int = 3) -> list[dict]:
        items = [(record, list(rois or [])) for record, rois in records_with_rois]
        prepared = []
        for record, rois in items:
            state, filter_used, allowed = self.candidates(record, rois, spec)
            modality = record.get("modality") or spec.modality
            text = query_text(record, rois, spec, state)
            prepared.append(
                {
                    "state": state,
                    "filter": filter_used,
                    "modality": modality,
                    "text": text,
                    "directions": self._directions(rois, allowed),
                    # No allowed entry: nothing to ask Chroma.
                    "key": (tuple(allowed), modality, text) if allowed else None,
                    "ranked": [],
                }
            )
        self.counts["records"] += len(items)
        answers = self._answers_for([item["key"] for item in prepared if item["key"] is not None])
        for item in prepared:
            if item["key"] is not None:
                item["ranked"] = self._rank(answers[item["key"]], item["directions"], k)

        rows = []
        for (record, _), item in zip(items, prepared):
            ranked = item["ranked"]
            rows.append(
                {
                    "record_id": record.get("record_id"),
                    "source_id": record.get("source_id") or spec.id,
                    "query": f"state={item['state']}; filter={item['filter']}; text={item['text']}",
                    "knowledge_ids": [b["chunk_id"] for b in ranked],
                    "knowledge_texts": [b["text"] for b in ranked],
                    "distances": [b["distance"] for b in ranked],
                    "knowledge_sections": json.dumps(
                        [self._sections(b["entry_id"], item["modality"], b["conflict"]) for b in ranked],
                        sort_keys=True,
                    ),
                }
            )
        return rows

    def retrieve(self, record: dict, rois: list[dict], spec, k: int = 3) -> dict:
        return self.retrieve_many([(record, rois)], spec, k=k)[0]


def retrieve(store_path, record: dict, rois: list[dict], spec, k: int = 3) -> dict:
    """One record's passages (row of ``schemas.RETRIEVED_KNOWLEDGE``); use the class for many."""
    return KnowledgeRetriever(store_path).retrieve(record, rois, spec, k=k)


def parse_sections(value) -> list[dict]:
    """The ``knowledge_sections`` column as a list of dicts (empty for null or empty)."""
    if not value:
        return []
    parsed = json.loads(value) if isinstance(value, str) else value
    return [s for s in parsed if isinstance(s, dict)]
