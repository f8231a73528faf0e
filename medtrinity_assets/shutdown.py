"""Leave the interpreter without its final teardown once all output is written.

duckdb 2.0's nanobind bindings report dozens of "leaked instance/type/function" lines at
interpreter shutdown after some query paths (seen here with no connection left alive: the
objects are internal to the binding). They bury the real output of the CLI and of pytest, and
nothing is lost by skipping teardown: every file the pipeline writes is closed and renamed before
this point. Remove this once duckdb's bindings stop reporting at exit.
"""

from __future__ import annotations

import logging
import os
import sys


def exit_quietly(code: int) -> None:
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
