"""The source catalog in the UI: which specs are in use, and which were left out and why."""


import dagster as dg

from medtrinity_assets.catalog import SpecProblem, load_catalog_report
from medtrinity_assets.defs.assets import PIPELINE_GROUP
from medtrinity_assets.defs.partitions import CATALOG, CATALOG_LOAD
from medtrinity_assets.defs.resources import PipelineSettings


def problems_markdown(problems: list[SpecProblem]) -> str:
    if not problems:
        return "Every spec loaded."
    lines = ["| spec file | fields | problem |", "|---|---|---|"]
    for problem in problems:
        message = problem.message.replace("|", "/").replace("\n", "<br>")
        lines.append(f"| {problem.file.name} | {', '.join(problem.fields) or '-'} | {message} |")
    return "\n".join(lines)


# Metadata fixed when the code location loads: the asset page lists broken specs with no run.
source_catalog = dg.AssetSpec(
    "source_catalog",
    group_name=PIPELINE_GROUP,
    description="The YAML source specs (data/sources/): one partition per spec that loads. A spec that "
    "does not load is left out and listed here and by the every_spec_loads check.",
    metadata={
        "sources": len(CATALOG),
        "broken_specs": len(CATALOG_LOAD.problems),
        "problems": dg.MetadataValue.md(problems_markdown(CATALOG_LOAD.problems)),
    },
    kinds={"yaml"},
)


@dg.asset_check(asset=source_catalog.key, description="Every YAML file in the catalog folder is a valid source spec.")
def every_spec_loads(settings: PipelineSettings) -> dg.AssetCheckResult:
    # Read again: the check reports the catalog as it is now, not as it was at load time.
    loaded = load_catalog_report(settings.catalog or None)
    return dg.AssetCheckResult(
        passed=not loaded.problems,
        metadata={
            "sources": len(loaded.specs),
            "broken_specs": [str(problem.file) for problem in loaded.problems],
            "problems": dg.MetadataValue.md(problems_markdown(loaded.problems)),
        },
    )
