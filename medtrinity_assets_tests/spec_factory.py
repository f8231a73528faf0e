"""One builder for the source specs tests make: valid placeholder metadata, overridden by the
fields a test cares about (modality, organs, layout, root...)."""

from __future__ import annotations

from medtrinity_assets.catalog.spec import SourceSpec

PLACEHOLDER_METADATA = {
    "id": "test_source",
    "name": "test source",
    "description": "written by a test",
    "homepage": "https://example.org/",
    "license": "CC0",
    "citation": "none",
    "access": "open",
    "modality": "ct",
    "organs": ["brain"],
    "annotation_kinds": ["mask"],
    "approx_size": "small",
    "layout": {"family": "image_folder", "image_glob": "*.png"},
}


def build_spec(**fields) -> SourceSpec:
    return SourceSpec.model_validate({**PLACEHOLDER_METADATA, **fields})
