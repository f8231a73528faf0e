"""Stage 6's writers behind one interface: ``grounded`` (the embedded default), ``llm`` and ``vlm``.

A writer takes one record's ``DescribeJob`` (its facts with provenance, the retrieved knowledge,
the coarse caption and, for a vision model, the image and its ROIs) and returns a ``Written``:
the five MedTrinity parts, the joined description, the facts the text rests on, and what the
verifier found in the final text. Every writer's output is verified here or by the writer
itself; a row is ``verified`` only when the final text has no flag, and only verified rows reach
the training exports (dataset/exports.py filters on it).

The model writers (``generation/model_writer.py``) fall back to the grounded writer when a model
cannot produce verified text; ``Written.writer`` then names the grounded writer and
``fallback_reason`` says why, so the writer mix and the fallback rate can be counted per
partition.

Nothing here depends on Dagster: the stage (stages.run_descriptions) builds the jobs and the
Dagster resource (defs/resources.py ``WriterSettings``) builds the ``WriterConfig``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Protocol

from medtrinity_assets.generation.facts import FactSet

PART_NAMES = ("part_modality", "part_organ_tissue", "part_roi_analysis", "part_texture_colour", "part_relations")
WRITER_KINDS = ("grounded", "llm", "vlm")


@dataclass(frozen=True)
class DescribeJob:
    """Everything a writer may use for one record (nothing else: no file is read by the prompt
    except the normalized image of a ``vlm`` job)."""

    record_id: str
    source_id: str
    facts: FactSet
    knowledge: Mapping  # knowledge_ids, knowledge_texts, distances, knowledge_sections (retrieval's row)
    coarse_caption: str
    spec: object  # catalog.SourceSpec
    # For a vision model: the normalized image and its ROIs (dicts with roi_id, label, x0, y0,
    # x1, y1 in that image's pixels and mask_path, relative to the data root, or None).
    image_path: Path | None = None
    rois: tuple[Mapping, ...] = ()
    data_root: Path | None = None
    # Burned-in text or markers were found in the pixels (normalize stage): names, dates and ids
    # may be written there, so the image is never sent to a model endpoint, whatever the
    # source's burned_in_text policy for training; a vision writer writes from the text alone.
    image_withheld: bool = False


@dataclass
class Written:
    """One record's description and how it was made (one row of the descriptions table)."""

    parts: dict[str, str]  # the five PART_NAMES
    description: str
    facts: FactSet  # the record's facts plus the knowledge entries the text used
    knowledge_ids: list[str]
    flags: list[str]  # the verifier's flags on the final text (empty: verified)
    writer: str  # the writer that wrote the final text, e.g. "grounded-v2", "llm", "vlm"
    prompt_version: str
    model: str | None = None
    prompt_hash: str | None = None  # sha256 of the prompt template (model writers)
    attempts: int = 0  # model calls made for this row (0 for the grounded writer; cache hits count)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    cached: bool = False  # every model answer of this row came from the response cache
    fallback_reason: str | None = None  # why a model writer's text was replaced by the grounded writer's
    sentences_written: int = 0  # sentences the model wrote (last attempt)
    sentences_dropped: int = 0  # of those, removed because unverified or unchecked
    faults: dict[str, int] = field(default_factory=dict)  # malformed, truncated, endpoint_error, ...

    @property
    def verified(self) -> bool:
        return not self.flags


class Writer(Protocol):
    """Turns one record into a verified (or flagged) description. Must not raise for a model
    fault: a model writer falls back to the grounded writer and says so in ``Written``."""

    kind: str

    def write(self, job: DescribeJob) -> Written: ...

    def close(self) -> None: ...


class GroundedWriter:
    """The embedded default: the template writer over the facts, then the verifier."""

    kind = "grounded"

    def write(self, job: DescribeJob) -> Written:
        from medtrinity_assets.generation.grounded_writer import write_description
        from medtrinity_assets.generation.verifier import verify

        out = write_description(job.facts, dict(job.knowledge), job.spec)
        facts = out["facts"]
        return Written(
            parts={name: out[name] for name in PART_NAMES},
            description=out["description"],
            facts=facts,
            knowledge_ids=list(out["knowledge_ids"]),
            flags=verify(out["description"], facts),
            writer=out["writer"],
            prompt_version=out["prompt_version"],
        )

    def close(self) -> None:
        pass


@dataclass(frozen=True)
class WriterConfig:
    """How to write one source's descriptions (built by the Dagster resource or the CLI).

    ``kind`` grounded needs nothing else. For ``llm``/``vlm``: the endpoint (base_url, model,
    api_key_env: the environment variable with the key, None for a local server), sampling
    (temperature, max_tokens), ``concurrency`` (requests in flight from one partition),
    ``max_retries`` (verifier-feedback retries after the first answer, 0-2),
    ``on_unverified`` ("drop": remove unverified sentences and keep the row if every part keeps
    a sentence, else fall back; "fallback": any unverified sentence sends the row to the
    grounded writer), ``response_format`` ("json_schema" for OpenAI/vLLM, "json_object" for
    llama.cpp/Ollama, "none" for endpoints with neither), ``prices`` per model in USD per
    million input/output tokens, ``timeout_s`` per request, and ``cache_dir`` for responses.
    """

    kind: str = "grounded"
    base_url: str = ""
    model: str = ""
    api_key_env: str | None = "OPENAI_API_KEY"
    temperature: float = 0.2
    max_tokens: int = 700
    concurrency: int = 1
    max_retries: int = 2
    on_unverified: str = "drop"
    response_format: str = "json_object"
    prices: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    timeout_s: float = 120.0
    cache_dir: Path | None = None

    def __post_init__(self):
        if self.kind not in WRITER_KINDS:
            raise ValueError(f"writer kind must be one of {WRITER_KINDS}, not {self.kind!r}")
        if self.kind != "grounded" and not (self.base_url and self.model):
            raise ValueError(f"the {self.kind} writer needs base_url and model")
        if self.on_unverified not in ("drop", "fallback"):
            raise ValueError(f"on_unverified must be 'drop' or 'fallback', not {self.on_unverified!r}")
        if self.response_format not in ("json_schema", "json_object", "none"):
            raise ValueError(f"response_format must be json_schema, json_object or none, not {self.response_format!r}")
        if not 0 <= self.max_retries <= 2:
            raise ValueError("max_retries must be 0, 1 or 2 (bounded retries)")
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")


def make_writer(config: WriterConfig) -> Writer:
    """The writer a config asks for (model writers open their endpoint here)."""
    if config.kind == "grounded":
        return GroundedWriter()
    from medtrinity_assets.generation.model_writer import ModelWriter

    return ModelWriter(config)
