"""Sequence (or patient) groups from frame-number ranges: ``patient.source: ranges``.

Video datasets released as numbered frames (CVC-ClinicDB "1.tif" ... "612.tif") say which
frames come from one sequence in a table of ranges ("frames 1-25: sequence 1"). Frames of one
sequence are near-duplicates, so they must share one patient hash and so one split. The
ranges come inline from the spec or from the publisher's own text file, read with the spec's
``range_regex``; every family's records get their group in ``make_record``.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

from medtrinity_assets.catalog.spec import PatientRule

Range = tuple[int, int, str]  # first frame, last frame (inclusive), group


def _checked(ranges: list[Range], where: str) -> tuple[Range, ...]:
    """Ranges sorted by first frame; two groups claiming one frame is a spec or file error."""
    ordered = sorted(ranges)
    for (first, last, group), (next_first, next_last, next_group) in zip(ordered, ordered[1:]):
        if next_first <= last and group != next_group:
            raise ValueError(
                f"{where}: frame ranges {first}-{last} (group {group}) and {next_first}-{next_last} "
                f"(group {next_group}) overlap"
            )
    return tuple(ordered)


@lru_cache(maxsize=32)
def _ranges_from_file(path: str, range_regex: str, _mtime_ns: int, _size: int) -> tuple[Range, ...]:
    # The stat values are part of the cache key only: an edited file is read again.
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as error:
        raise ValueError(f"patient.ranges_file {Path(path).name} cannot be read: {type(error).__name__}") from None
    pattern = re.compile(range_regex)
    ranges = []
    for line in text.splitlines():
        match = pattern.search(line)
        if match:
            ranges.append((int(match["first"]), int(match["last"]), match["group"].strip()))
    if not ranges:
        raise ValueError(f"no line of patient.ranges_file {Path(path).name} matches patient.range_regex")
    return _checked(ranges, f"patient.ranges_file {Path(path).name}")


def frame_ranges(root: Path, rule: PatientRule) -> tuple[Range, ...]:
    """The rule's ranges; a ranges file that is absent, unreadable or yields no range raises
    ValueError, which stops the read: frames must not be split silently by file."""
    if rule.ranges:
        return _checked([(r.first, r.last, r.group) for r in rule.ranges], "patient.ranges")
    path = Path(root) / (rule.ranges_file or "")
    try:
        stat = path.stat()
    except OSError:
        raise ValueError(f"patient.ranges_file {rule.ranges_file} is absent from the source folder") from None
    return _ranges_from_file(str(path), rule.range_regex or "", stat.st_mtime_ns, stat.st_size)


def frame_group(root: Path, rule: PatientRule, relative_path: str) -> str:
    """The raw patient id of a frame: its range's group; a path without a frame number, or a
    frame no range holds, is its own patient (as the other rules fall back)."""
    match = re.search(rule.pattern or "", relative_path)
    if match and match.group(1) is not None and match.group(1).isdigit():
        frame = int(match.group(1))
        for first, last, group in frame_ranges(root, rule):
            if first <= frame <= last:
                return f"group:{group}"
    return f"file:{relative_path}"
