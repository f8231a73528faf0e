"""Stage runners without Dagster: a killed run leaves no half-written table, a rerun gives the
same rows, and a reader that breaks mid-way still leaves the rows it read."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pyarrow.parquet as pq

from medtrinity_assets import stages
from medtrinity_assets.bench import bench_specs, make_workload
from medtrinity_assets.pipeline import PARTITION_TABLES
from medtrinity_assets.paths import DataRoot


def _rows(path):
    table = pq.read_table(path)
    return sorted(table.to_pylist(), key=lambda row: str(sorted(row.items())))


def test_killed_ingest_leaves_no_half_written_table(tmp_path):
    workload = make_workload(240, cache=tmp_path / "cache")
    data_root = tmp_path / "var"
    script = textwrap.dedent(
        f"""
        from pathlib import Path
        from medtrinity_assets import stages
        from medtrinity_assets.bench import bench_specs
        from medtrinity_assets.paths import DataRoot
        spec = bench_specs(Path({str(workload)!r}))[0]
        print("started", flush=True)
        stages.run_ingest(spec, DataRoot(Path({str(data_root)!r})), "salt")
        """
    )
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "started"
    final = DataRoot(data_root).table("raw_records", "bench_ct")
    # Kill it while it is writing: once the temporary table file exists, before it is renamed.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not list(final.parent.glob(f".{final.name}.*.tmp")):
        time.sleep(0.02)
    assert process.poll() is None, "ingest finished before it could be killed: enlarge the workload"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not final.exists(), "the killed run renamed an unfinished table into place"
    # Its temporary is cleaned up by the next writer; the blob store holds only complete files.
    import numpy as np

    for blob in (data_root / "blobs").rglob("*.npy"):
        np.load(blob)

    # A rerun after the kill gives exactly the rows of a clean run.
    spec = bench_specs(workload)[0]
    rerun = stages.run_ingest(spec, DataRoot(data_root), "salt")
    clean_root = DataRoot(tmp_path / "clean")
    clean = stages.run_ingest(spec, clean_root, "salt")
    assert rerun.rows == clean.rows == 120
    assert not list(final.parent.glob(".*.tmp")), "the killed writer's temporary was not cleaned up"
    assert _rows(final) == _rows(clean_root.table("raw_records", "bench_ct"))


def test_rerun_of_every_stage_gives_the_same_rows(tmp_path, shared_knowledge):
    workload = make_workload(20, cache=tmp_path / "cache")
    root = shared_knowledge.copy_to(DataRoot(tmp_path / "var"))
    spec = bench_specs(workload)[1]

    def run_all():
        stages.run_ingest(spec, root, "salt")
        no_experts = lambda s, r: stages.run_model_rois(s, r, {})  # noqa: E731 (the table every later stage reads beside rois)
        for runner in (stages.run_normalize, stages.run_ground, no_experts, stages.run_facts, stages.run_coarse_captions,
                       stages.run_retrieval, stages.run_descriptions, stages.run_triplets):
            report = runner(spec, root)
            assert report.quarantined == 0, report.kinds
        return {name: _rows(root.table(name, spec.id)) for name in PARTITION_TABLES}

    first = run_all()
    second = run_all()
    assert first["triplets"] and len(first["triplets"]) == 10
    for name in first:
        assert first[name] == second[name], f"{name} changed on rerun"


def test_orphaned_temporaries_of_killed_writers_are_removed(tmp_path):
    from medtrinity_assets.storage import write_bytes_atomic

    final = tmp_path / "table.parquet"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    orphan = tmp_path / f".table.parquet.{dead.stdout.strip()}.abc123.tmp"
    orphan.write_bytes(b"half")
    alive = tmp_path / f".table.parquet.{os.getppid()}.def456.tmp"
    alive.write_bytes(b"someone else's write in progress")
    write_bytes_atomic(final, b"complete")
    assert final.read_bytes() == b"complete"
    assert not orphan.exists()
    assert alive.exists()
