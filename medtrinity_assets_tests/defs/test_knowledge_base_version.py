"""The knowledge_base asset's data version is the fingerprint of what its store holds, so the UI
marks what reads the knowledge base stale only when the corpus changes, not on every run.

Real Dagster (materialize on an ephemeral instance, the stale-status resolver the UI uses) and
the real knowledge_base asset over a copy of one project corpus file."""

from __future__ import annotations

import shutil

import dagster as dg
from dagster._core.definitions.data_version import StaleStatus
from dagster._utils.test.data_versions import get_stale_status_resolver  # pinned dagster (requirements.lock)

from medtrinity_assets.defs.assets import knowledge_base
from medtrinity_assets.defs.resources import PipelineSettings
from medtrinity_assets.paths import knowledge_dir
from conftest import no_defs_state_storage


@dg.asset(deps=[knowledge_base])
def reads_knowledge() -> None:
    """Stands in for retrieved_knowledge: an unpartitioned reader of the knowledge base."""


def _materialize(selection, instance, settings) -> dict:
    with no_defs_state_storage():
        result = dg.materialize([knowledge_base, reads_knowledge], selection=selection, instance=instance,
                                resources={"settings": settings})
    assert result.success
    event = next(e for e in result.get_asset_materialization_events() if e.asset_key == knowledge_base.key)
    materialization = event.event_specific_data.materialization
    return {"data_version": materialization.tags.get("dagster/data_version"),
            "reused": materialization.metadata["reused"].value}


def test_downstream_goes_stale_only_when_the_corpus_changes(tmp_path):
    corpus = tmp_path / "knowledge"
    corpus.mkdir()
    shutil.copy2(knowledge_dir() / "breast.yaml", corpus / "breast.yaml")
    settings = PipelineSettings(data_root=str(tmp_path / "var"), knowledge=str(corpus))
    # Entered, so Dagster's current defs-state storage is this instance's, not one a
    # test before left behind.
    with dg.DagsterInstance.ephemeral() as instance:

        def status():
            return get_stale_status_resolver(instance, [knowledge_base, reads_knowledge]).get_status(reads_knowledge.key)

        first = _materialize([knowledge_base, reads_knowledge], instance, settings)
        assert first["reused"] is False and first["data_version"]
        assert status() == StaleStatus.FRESH

        again = _materialize([knowledge_base], instance, settings)
        assert again == {"data_version": first["data_version"], "reused": True}
        assert status() == StaleStatus.FRESH

        path = corpus / "breast.yaml"
        path.write_text(path.read_text(encoding="utf-8").replace("Fibroadenoma is the", "A fibroadenoma is the"), encoding="utf-8")
        edited = _materialize([knowledge_base], instance, settings)
        assert edited["reused"] is False and edited["data_version"] != first["data_version"]
        assert status() == StaleStatus.STALE
