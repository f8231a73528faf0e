"""All the cores of a worker for the CPU stages: a bounded, ordered map over a process pool.

A stage hands a stream of items (source files, upstream rows) and a module-level function to
``Workers.map``; results come back in input order, so a stage writes the same rows in the same
order whatever the number of processes, and the Parquet files and blobs are byte-identical to a
one-process run. At most ``workers x IN_FLIGHT_PER_WORKER`` items are in flight, so memory stays
flat however large the partition.

Workers: ``MEDTRINITY_WORKERS`` (1 = everything in this process, no pool), default the CPUs this
process may run on, at most ``DEFAULT_MAX_WORKERS``. Processes start by 'forkserver', never by a
plain fork: a Dagster run worker and the CLI hold threads (gRPC, log managers) whose locks a
forked child would inherit held. Each worker gets the parent's environment and working folder
when the pool starts (the fork server itself may be older than a test's environment).
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

WORKERS_ENV = "MEDTRINITY_WORKERS"
# Past this a single partition's stage is limited by its one writer process (Parquet rows,
# the DuckDB read of the upstream table); more cores are better spent on more partitions.
DEFAULT_MAX_WORKERS = 16
# Items submitted ahead of the one yielded next, per worker: a slow item at the head does not
# leave the others idle, and at most this many decoded images per worker wait in memory.
IN_FLIGHT_PER_WORKER = 4
# A stream shorter than this is worked in this process: starting processes would cost more
# than they save on a handful of images (a demo source, a test's folder).
MIN_ITEMS_FOR_POOL = 16
# Imported once in the fork server, so each worker starts with them loaded (milliseconds, not
# the second each would spend importing pydicom, Pillow and numpy on its own).
PRELOAD = (
    "numpy",
    "PIL.Image",
    "pydicom",
    "pyarrow",
    "medtrinity_assets.stage_work",
    "medtrinity_assets.sources.dicom",
    "medtrinity_assets.sources.image_common",
)


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def worker_count(requested: int | None = None) -> int:
    """Processes a stage uses: ``requested``, else ``MEDTRINITY_WORKERS``, else the CPUs this
    process may use (at most ``DEFAULT_MAX_WORKERS``)."""
    if requested is None:
        raw = os.environ.get(WORKERS_ENV, "").strip()
        if raw:
            try:
                requested = int(raw)
            except ValueError:
                raise ValueError(f"{WORKERS_ENV}={raw!r} is not a whole number of worker processes (1 = no pool)") from None
            if requested < 1:
                raise ValueError(f"{WORKERS_ENV}={raw!r}: at least 1 worker process (1 = no pool)")
        else:
            requested = min(available_cpus(), DEFAULT_MAX_WORKERS)
    if multiprocessing.current_process().daemon:
        return 1  # a daemonic process may not start children: run in this one
    return max(1, int(requested))


def count_for(root: Any) -> int | None:
    """1 for a data root no other process can see (fsspec's memory://, which lives inside this
    process: a worker would write its blobs into a store of its own), else None: the default."""
    return 1 if getattr(root, "protocol", None) in ("memory", ("memory",)) else None


@dataclass(frozen=True)
class Failed:
    """An item whose function raised: its error as a quarantine reason ("Type: message")."""

    error: str


class WorkerDied(RuntimeError):
    """A worker process ended while working (killed for memory, or a crash in a native decoder)."""


_END = object()
# Pools this process has started (benchmarks report it; tests check a pool really ran).
pools_started = 0

# In a worker: the value the pool was started with (IngestContext, a stage's job settings),
# handed to every call so it is pickled once per worker, not once per item.
_shared: Any = None


def _start_worker(shared: Any, environ: dict, cwd: str) -> None:
    global _shared
    os.environ.clear()
    os.environ.update(environ)
    os.chdir(cwd)
    _shared = shared


def _call(fn: Callable, item: Any) -> Any:
    return guarded(fn, _shared, item)


def guarded(fn: Callable, shared: Any, item: Any) -> Any:
    """fn(shared, item), or ``Failed`` with the error it raised (the same in a worker and here)."""
    try:
        return fn(shared, item)
    except Exception as error:
        return Failed(f"{type(error).__name__}: {error}")


def _preloaded_context():
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(PRELOAD))  # no effect once the server runs
    return context


class Workers:
    """The processes of one stage run over one partition (or this process alone)."""

    def __init__(self, shared: Any, workers: int):
        self.shared = shared
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None  # started by the first long enough stream

    def _started(self) -> ProcessPoolExecutor:
        global pools_started
        if self._pool is None:
            pools_started += 1
            self._pool = ProcessPoolExecutor(
                max_workers=self.workers,
                mp_context=_preloaded_context(),
                initializer=_start_worker,
                initargs=(self.shared, dict(os.environ), os.getcwd()),
            )
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def map(self, fn: Callable, items: Iterable, passthrough: Callable[[Any], bool] | None = None,
            describe: Callable[[Any], str] = repr, min_items: int | None = None) -> Iterator[tuple[Any, Any]]:
        """(item, fn(shared, item) or ``Failed``) in input order. ``passthrough(item)`` True:
        the item is yielded as (item, item) in its place without calling ``fn``. An exception
        raised by ``items`` itself is raised after the items before it are yielded, as a serial
        loop would. ``describe(item)`` names the item in a ``WorkerDied`` error. ``min_items``:
        the stream length that starts the processes (default ``MIN_ITEMS_FOR_POOL``; fewer
        for items that are batches already)."""
        min_items = MIN_ITEMS_FOR_POOL if min_items is None else min(min_items, MIN_ITEMS_FOR_POOL)
        def here(item):
            return (item, item) if passthrough is not None and passthrough(item) else (item, guarded(fn, self.shared, item))

        iterator = iter(items)
        if self.workers <= 1:
            for item in iterator:
                yield here(item)
            return
        head: list = []
        source_error: BaseException | None = None
        if self._pool is None:
            try:
                while len(head) < min_items:
                    head.append(next(iterator))
            except StopIteration:
                yield from (here(item) for item in head)
                return
            except Exception:
                yield from (here(item) for item in head)
                raise
        pool = self._started()
        pending: deque[tuple[Any, Future | None]] = deque()
        limit = self.workers * IN_FLIGHT_PER_WORKER
        queued = iter(head)
        while True:
            try:
                item = next(queued, _END)
                if item is _END:
                    item = next(iterator)
            except StopIteration:
                break
            except Exception as error:  # the reader stopped: what it gave before still counts
                source_error = error
                break
            if passthrough is not None and passthrough(item):
                pending.append((item, None))
            else:
                pending.append((item, pool.submit(_call, fn, item)))
            while len(pending) > limit or (pending and (pending[0][1] is None or pending[0][1].done())):
                yield self._settle(*pending.popleft(), describe)
        while pending:
            yield self._settle(*pending.popleft(), describe)
        if source_error is not None:
            raise source_error

    def _settle(self, item: Any, future: Future | None, describe: Callable[[Any], str]) -> tuple[Any, Any]:
        if future is None:
            return item, item
        try:
            return item, future.result()
        except BrokenProcessPool as error:
            raise WorkerDied(
                f"a worker process died while working on {describe(item)} (killed for memory, or a crash in a "
                f"native decoder); rerun with {WORKERS_ENV}=1 to see which file"
            ) from error


# The pool of the stage running in this process, for code deep in a reader (the DICOM header
# pass) that has no handle on it. Only used when the caller's shared value is the pool's.
_current: Workers | None = None


@contextmanager
def workers(shared: Any, count: int | None = None) -> Iterator[Workers]:
    """The worker processes of one stage run, closed (and waited for) on exit."""
    global _current
    pool = Workers(shared, worker_count(count))
    previous, _current = _current, pool
    try:
        yield pool
    finally:
        _current = previous
        pool.close()


def map_with(shared: Any, fn: Callable, items: Iterable, describe: Callable[[Any], str] = repr,
             min_items: int | None = None) -> Iterator[tuple[Any, Any]]:
    """``Workers.map`` on the current stage's pool when it was started with ``shared``; in this
    process otherwise (a spec check, a test calling a reader directly)."""
    pool = _current if _current is not None and _current.shared is shared else Workers(shared, 1)
    return pool.map(fn, items, describe=describe, min_items=min_items)
