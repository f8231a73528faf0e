"""The medical knowledge corpus: the project's own entries, validated, chunked, fingerprinted.

Each ``*.yaml`` file under the knowledge folder holds ``entries:``, one per disease or finding
(or one "normal <organ> on <modality>" entry). The retriever hands these passages to the
description writer as background knowledge, so a typo must fail loudly: unknown keys are
errors and every error names the file and the field.

Chunks are one per section (and one per modality for ``appearance``) so retrieval can filter an
appearance passage by the modality it describes.

Every entry declares its ``kind``, which decides the records it may be handed to:

- ``finding``: a disease or lesion; only for records whose source names that finding;
- ``normal``: what a normal organ looks like; only for records the source says are normal;
- ``anatomy``: a structure (an organ, a cell type, a landmark) described without saying whether
  it is normal or not; the only kind a record with an unknown label state may get.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import yaml
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from medtrinity_assets.bounded_yaml import YamlLimitError, load_yaml_file
from medtrinity_assets.catalog.spec import Modality
from medtrinity_assets.validation import validation_problems
from medtrinity_assets.vocabulary import (
    MODALITY_NAME,
    normalize_label,
    normalize_organ,
)

ENTRY_ID = re.compile(r"^[a-z][a-z0-9_]{1,80}$")
SECTION_ORDER = ("definition", "appearance", "typical_location", "differential")


class CorpusError(ValueError):
    """A knowledge file that cannot be used; the message names the file and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Sections(_Strict):
    definition: str = Field(min_length=20)
    # Modality code -> how the finding looks on it; only modalities where it is imaged.
    appearance: dict[Modality, str] = Field(min_length=1)
    typical_location: str = Field(min_length=10)
    differential: str = Field(min_length=10)


class KnowledgeEntry(_Strict):
    id: str
    finding: str
    kind: Literal["finding", "normal", "anatomy"]
    aliases: list[str] = Field(default_factory=list)
    organs: list[str] = Field(min_length=1)
    modalities: list[Modality] = Field(min_length=1)
    sections: Sections

    @field_validator("id")
    @classmethod
    def _id_is_slug(cls, value: str) -> str:
        if not ENTRY_ID.match(value):
            raise ValueError("must be lower-case letters, digits and '_', starting with a letter")
        return value

    @field_validator("organs")
    @classmethod
    def _fold_organs(cls, values: list[str]) -> list[str]:
        return [normalize_organ(v) for v in values]

    @model_validator(mode="after")
    def _appearance_only_for_listed_modalities(self) -> "KnowledgeEntry":
        extra = sorted(set(self.sections.appearance) - set(self.modalities))
        if extra:
            raise ValueError(f"sections.appearance names modalities not in 'modalities': {extra}")
        return self

    @model_validator(mode="after")
    def _normal_in_name_exactly_for_normal_kind(self) -> "KnowledgeEntry":
        # The name is the first word of every chunk: a "normal ..." passage that is not of kind
        # normal would reach finding and unknown records, which is what kinds exist to prevent.
        says_normal = "normal" in normalize_label(self.finding).split()
        if says_normal != (self.kind == "normal"):
            raise ValueError(
                f"kind is {self.kind!r} but the finding name {self.finding!r} "
                + ("says 'normal'" if says_normal else "does not say 'normal'")
            )
        return self


def load_corpus_file(path: Path) -> list[dict]:
    path = Path(path)
    try:
        data = load_yaml_file(path)
    except (yaml.YAMLError, UnicodeDecodeError, YamlLimitError) as error:
        raise CorpusError(f"{path}: not valid YAML: {error}") from error
    if not isinstance(data, dict) or set(data) != {"entries"} or not isinstance(data["entries"], list):
        raise CorpusError(f"{path}: field 'entries': expected a mapping with only the key 'entries' holding a list")
    entries = []
    for index, raw in enumerate(data["entries"]):
        label = raw.get("id", f"#{index}") if isinstance(raw, dict) else f"#{index}"
        try:
            entry = KnowledgeEntry.model_validate(raw)
        except ValidationError as error:
            detail = "\n  ".join(f"entries[{index}] ({label}) {p}" for p in validation_problems(error))
            raise CorpusError(f"{path}: invalid knowledge entry:\n  {detail}") from None
        entries.append({**entry.model_dump(), "origin": path.name})
    return entries


def load_corpus(folder) -> list[dict]:
    folder = Path(folder)
    files = sorted(folder.glob("*.yaml"))
    if not files:
        raise CorpusError(f"{folder}: no knowledge files (*.yaml) found")
    entries: list[dict] = []
    seen: dict[str, str] = {}
    for path in files:
        for entry in load_corpus_file(path):
            if entry["id"] in seen:
                raise CorpusError(
                    f"{path}: field 'id': '{entry['id']}' is already defined in {seen[entry['id']]}"
                )
            seen[entry["id"]] = path.name
            entries.append(entry)
    return entries


def _section_text(entry: dict, heading: str, body: str) -> str:
    # The finding leads every chunk so its embedding says what the passage is about.
    return f"{entry['finding'].capitalize()} — {heading}: {' '.join(body.split())}"


def chunk_corpus(entries: list[dict]) -> list[dict]:
    """Rows of ``schemas.KNOWLEDGE_CHUNKS`` (plus ``aliases`` and the plain section ``body``,
    which the store keeps in each chunk's metadata for filtering and for the writer)."""
    chunks = []
    for entry in entries:
        sections = entry["sections"]
        common = {
            "entry_id": entry["id"],
            "finding": entry["finding"],
            "kind": entry["kind"],
            "organs": list(entry["organs"]),
            "origin": entry["origin"],
            "aliases": [normalize_label(a) for a in entry.get("aliases", [])],
        }
        for name in SECTION_ORDER:
            if name == "appearance":
                for modality in sorted(sections["appearance"]):
                    heading = f"appearance on {MODALITY_NAME.get(modality, modality)}"
                    chunks.append(
                        {
                            **common,
                            "chunk_id": f"{entry['id']}.appearance.{modality}",
                            "modalities": [modality],
                            "section": "appearance",
                            "body": " ".join(sections["appearance"][modality].split()),
                            "text": _section_text(entry, heading, sections["appearance"][modality]),
                        }
                    )
            else:
                chunks.append(
                    {
                        **common,
                        "chunk_id": f"{entry['id']}.{name}",
                        "modalities": list(entry["modalities"]),
                        "section": name,
                        "body": " ".join(sections[name].split()),
                        "text": _section_text(entry, name.replace("_", " "), sections[name]),
                    }
                )
    return chunks


def corpus_fingerprint(folder) -> str:
    """sha256 over file names and bytes: changes exactly when the corpus changes."""
    digest = hashlib.sha256()
    for path in sorted(Path(folder).glob("*.yaml")):
        digest.update(path.name.encode("utf-8") + b"\0")
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()
