"""The three label states of an image, and the one rule every stage reads them by.

- ``finding``: the source names a finding for this image (a positive label column, a class
  folder of a disease, an annotated lesion mask or box, a grade above the normal grade);
- ``normal``: the source positively says the image is normal (ChestX-ray14 "No Finding", the
  BUSI ``normal`` folder, a DR grade 0 "No DR", an all-negative rule the publisher defines);
- ``unknown``: anything else: a blank or uncertain cell, a melanoma = 0 row whose other
  diagnosis is not read, a context slice of a tumour volume, an unlabelled X-ray.

Unknown is never normal: the absence of a label says nothing about the image. Which values
mean which state is declared in the source spec (``labels.normal``, the label-CSV columns);
readers call ``decide_label_state`` with what they read, and later stages call
``label_state_of`` on a RAW_RECORDS row.
"""

from __future__ import annotations

FINDING = "finding"
NORMAL = "normal"
UNKNOWN = "unknown"
LABEL_STATES = (FINDING, NORMAL, UNKNOWN)

# slice_role of a volume slice or frame: it cuts the annotated region, or it was kept beside it.
ANNOTATED = "annotated"
CONTEXT = "context"
SLICE_ROLES = (ANNOTATED, CONTEXT)


def decide_label_state(has_finding: bool, says_normal: bool) -> str:
    """A finding wins over a normal statement (a row flagged both "No Finding" and a disease is
    about the disease); without either the state is unknown, never normal."""
    if has_finding:
        return FINDING
    return NORMAL if says_normal else UNKNOWN


def label_state_of(record: dict) -> str:
    """The label state of a RAW_RECORDS (or TRIPLETS) row.

    Rows written before the column existed have no ``label_state``: for them a non-empty
    ``labels`` list is a finding and anything else is unknown. The fallback can never say
    normal, since those tables could not tell "no label" from "normal".
    """
    state = record.get("label_state")
    if state in LABEL_STATES:
        return state
    if record.get("slice_role") == CONTEXT:
        return UNKNOWN
    labels = record.get("labels")
    return FINDING if labels is not None and len(labels) > 0 else UNKNOWN
