"""The catalog as a Markdown table (docs/CATALOG.md), generated from the specs so it cannot drift."""

from __future__ import annotations

from collections import Counter
from typing import Mapping

from medtrinity_assets.catalog.spec import SourceSpec

HEADER = (
    "# Source catalog\n\n"
    "Generated from `data/sources/*.yaml` by `python -m medtrinity_assets.cli catalog-doc`; do not edit by hand.\n"
    "Each row is one spec; the spec file holds the citation, homepage, layout parameters and how to get the files.\n"
)


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def catalog_markdown(catalog: Mapping[str, SourceSpec]) -> str:
    specs = [spec for _, spec in sorted(catalog.items())]
    public = [spec for spec in specs if spec.access != "package"]
    modalities = Counter(spec.modality for spec in public)
    families = Counter(spec.layout.family for spec in public)
    access = Counter(spec.access for spec in public)
    lines = [
        HEADER,
        f"{len(public)} public datasets (plus {len(specs) - len(public)} demo sources built from package data).\n",
        "By modality: " + ", ".join(f"{m} {n}" for m, n in sorted(modalities.items())) + ".  ",
        "By layout family: " + ", ".join(f"{f} {n}" for f, n in sorted(families.items())) + ".  ",
        "By access: " + ", ".join(f"{a} {n}" for a, n in sorted(access.items())) + ".\n",
        "| id | name | modality | organs | annotations | layout | access | license | size |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for spec in specs:
        lines.append(
            "| "
            + " | ".join(
                _cell(value)
                for value in (
                    f"`{spec.id}`",
                    f"[{spec.name}]({spec.homepage})",
                    spec.modality,
                    ", ".join(spec.organs),
                    ", ".join(spec.annotation_kinds),
                    spec.layout.family,
                    spec.access,
                    spec.license,
                    spec.approx_size,
                )
            )
            + " |"
        )
    return "\n".join(lines) + "\n"
