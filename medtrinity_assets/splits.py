"""Patient-level train / val / test split, decided by the patient hash alone.

The dataset's splits and the expert models' validation patients share this rule, so it sits
below both layers.

The split is a pure function of the (salted) patient hash, so every image of one patient lands
in the same split, on every rerun and in every source partition, without any shared state. The
same rule is written once more in SQL (``split_sql``) so DuckDB can assign splits while it
streams the triplets; a test holds the two to the same answers.
"""

from __future__ import annotations

import hashlib

# Changing the rule (or the fractions) reshuffles patients between splits; bump the version so
# provenance says which rule a row was split with.
SPLIT_VERSION = "patient-sha256-v1"
SPLIT_NAMES = ("train", "val", "test")
DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)
# Buckets per patient hash: fine enough that fractions like 0.85 / 0.075 are represented exactly.
BUCKETS = 10_000
_HEX_DIGITS = 8  # 32 bits of the digest: uniform enough, and fits a DuckDB BIGINT


def _thresholds(fractions: tuple[float, float, float]) -> tuple[int, int]:
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-9:
        raise ValueError(f"split fractions must be three non-negative numbers summing to 1, got {fractions!r}")
    train_end = round(fractions[0] * BUCKETS)
    val_end = round((fractions[0] + fractions[1]) * BUCKETS)
    return train_end, val_end


def split_bucket(patient_hash: str) -> int:
    """Bucket in [0, BUCKETS) of one patient; re-hashed with the version so a new rule reshuffles."""
    digest = hashlib.sha256(f"{SPLIT_VERSION}:{patient_hash}".encode("utf-8")).hexdigest()
    return int(digest[:_HEX_DIGITS], 16) % BUCKETS


def patient_split(patient_hash: str, fractions: tuple[float, float, float] = DEFAULT_FRACTIONS) -> str:
    """'train', 'val' or 'test' for a patient; the same hash always gives the same split."""
    if not patient_hash:
        raise ValueError("patient_split needs a non-empty patient hash")
    train_end, val_end = _thresholds(fractions)
    bucket = split_bucket(patient_hash)
    if bucket < train_end:
        return "train"
    if bucket < val_end:
        return "val"
    return "test"


def split_sql(patient_key_expr: str, fractions: tuple[float, float, float] = DEFAULT_FRACTIONS) -> str:
    """DuckDB expression computing ``patient_split`` of the SQL expression ``patient_key_expr``.

    Same rule as ``split_bucket``: sha256 of "<version>:<key>", first 32 bits, modulo BUCKETS.
    """
    train_end, val_end = _thresholds(fractions)
    version = SPLIT_VERSION.replace("'", "''")
    bucket = (
        f"(CAST(('0x' || substr(sha256('{version}:' || ({patient_key_expr})), 1, {_HEX_DIGITS})) AS BIGINT)"
        f" % {BUCKETS})"
    )
    return f"(CASE WHEN {bucket} < {train_end} THEN 'train' WHEN {bucket} < {val_end} THEN 'val' ELSE 'test' END)"
