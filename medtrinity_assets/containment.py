"""Keeping a source inside its folder: the one walker and the path checks every reader, the
sensor's fingerprint and ``check-source`` use.

A source spec is contributed text. Nothing it names, and nothing a link inside its folder
points at, may make the pipeline read (or write, for downloads) a file outside that folder:
``is_inside`` is the test (links followed, on both sides), ``walk_files`` the walk (links that
stay inside are followed once, links that leave are reported and never followed, so a folder
linking to itself cannot loop), ``climbs_out`` the check of a path a spec writes down.
Standard library only, so every layer may import it.
"""

from __future__ import annotations

import os
import posixpath
import re
from pathlib import Path
from typing import Iterator


def _real(path) -> str:
    return os.path.realpath(os.fspath(path))


def _within(real_root: str, real_path: str) -> bool:
    return real_path == real_root or real_path.startswith(real_root.rstrip(os.sep) + os.sep)


def is_inside(root, path) -> bool:
    """Whether ``path``, every link on the way followed, lies in ``root`` (itself resolved)."""
    return _within(_real(root), _real(path))


def climbs_out(relative: str) -> bool:
    """Whether a path a spec writes down (a file, a glob, a template, a folder) is absolute or
    climbs above the folder it is relative to ("../x", "a/../../x", "/etc/passwd", "C:\\x")."""
    text = relative.replace("\\", "/")
    if text.startswith(("/", "~")) or re.match(r"^[A-Za-z]:", text):
        return True
    normal = posixpath.normpath(text)
    return normal == ".." or normal.startswith("../")


def inside_file(root: Path, relative: str) -> Path | None:
    """``root / relative`` when that path stays inside ``root`` (links followed); else None."""
    if climbs_out(relative):
        return None
    path = Path(root) / relative
    return path if is_inside(root, path) else None


def contained_glob(root: Path, pattern: str) -> list[Path]:
    """``root.glob(pattern)`` without the matches that resolve outside ``root`` (a link to a
    file or folder elsewhere, a pattern climbing with ".."); those are never read."""
    root = Path(root)
    if climbs_out(pattern):
        return []
    real_root = _real(root)
    return [path for path in root.glob(pattern) if _within(real_root, _real(path))]


def walk_files(root: Path, outside: list[str] | None = None) -> Iterator[str]:
    """Every non-hidden file under ``root``, as a POSIX path relative to it, in a stable order.

    Folders and files reached through links are walked when the link stays inside ``root``, each
    real folder once (a link to a parent or to itself is not walked again, so a loop ends). A link
    that leaves ``root`` is not followed; its relative path is added to ``outside`` when given.
    Hidden names (.acquisition.json, partial downloads, .DS_Store) are not data.
    """
    root = Path(root)
    real_root = _real(root)
    seen: set[str] = set()
    # Depth first, each folder's entries sorted: the same tree gives the same order.
    stack: list[tuple[str, str]] = [(os.fspath(root), "")]
    while stack:
        folder, prefix = stack.pop()
        real = _real(folder)
        if real in seen:
            continue
        seen.add(real)
        try:
            entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
        except OSError:
            continue
        folders = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            relative = prefix + entry.name
            try:
                if entry.is_symlink() and not _within(real_root, _real(entry.path)):
                    if outside is not None:
                        outside.append(relative)
                    continue
                if entry.is_dir():
                    folders.append((entry.path, relative + "/"))
                elif entry.is_file():
                    yield relative
            except OSError:
                continue  # vanished or unreadable while walking: not data now
        stack.extend(reversed(folders))
