"""Which failures are worth retrying: a dropped connection, a timeout, a busy network file
system, a locked warehouse. Retrying anything else (a bug, a bad spec, a missing file, a full
disk) fails again the same way and only delays the error a person has to read, so those are
never retried. Plain Python: the Dagster layer (defs/retries.py) turns the answer into a retry.
"""

from __future__ import annotations

import errno
import re

# OSError numbers that a later attempt can clear: networks and network file systems (NFS, SMB,
# FUSE mounts of object stores) report a dropped link as EIO or ESTALE, a busy resource as
# EAGAIN/EBUSY. ENOENT, EACCES, ENOSPC and the like need a person and are not here.
TRANSIENT_ERRNOS = frozenset(
    getattr(errno, name)
    for name in (
        "EAGAIN", "EBUSY", "EINTR", "EIO", "ESTALE", "ETIMEDOUT", "ENOBUFS",
        "ENETDOWN", "ENETUNREACH", "ENETRESET", "EHOSTDOWN", "EHOSTUNREACH",
        "ECONNABORTED", "ECONNRESET", "ECONNREFUSED", "EPIPE",
    )
    if hasattr(errno, name)
)
# Errors of client libraries that are no OSError, by "<top package>.<class>" anywhere in the
# class's bases: HTTP transport failures, and an OpenAI-compatible endpoint that is unreachable,
# rate limited or failing on its side (the writer's own retries come first).
TRANSIENT_CLASSES = frozenset(
    {
        "httpx.TransportError",
        "openai.APIConnectionError",
        "openai.RateLimitError",
        "openai.InternalServerError",
    }
)
_MAX_CHAIN = 8


def _class_names(error: BaseException) -> set[str]:
    # Compiled modules carry an underscore (duckdb's classes live in _duckdb).
    return {f"{cls.__module__.split('.')[0].lstrip('_')}.{cls.__name__}" for cls in type(error).__mro__}


def _transient_itself(error: BaseException) -> bool:
    if isinstance(error, (ConnectionError, TimeoutError)):
        return True
    if isinstance(error, OSError):
        return error.errno in TRANSIENT_ERRNOS
    names = _class_names(error)
    if names & TRANSIENT_CLASSES:
        return True
    # DuckDB allows one writer per file: another process holding the warehouse is a wait, not a fault.
    return "duckdb.IOException" in names and re.search(r"\block\b", str(error), re.IGNORECASE) is not None


def is_transient(error: BaseException) -> bool:
    """Whether ``error``, or an error it was raised from (a stage may wrap the OSError that
    stopped it), is one a later attempt can clear."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen and len(seen) < _MAX_CHAIN:
        if _transient_itself(current):
            return True
        seen.add(id(current))
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    return False
