"""The ``llm`` and ``vlm`` writers: a language model writes the five parts, the verifier gates them.

One row goes like this:

1. The prompt (``PROMPT_VERSION``, hashed into ``PROMPT_HASH``) gives the record's facts with
   provenance and confidence, the publisher's notes, the coarse caption and the retrieved
   knowledge passages by id; a ``vlm`` prompt also carries the image with the ROIs outlined
   (``roi_overlay.overlay_data_url``) as a data URL. The model answers one JSON object: the five
   ``PART_NAMES`` and ``knowledge_ids`` (``OUTPUT_SCHEMA``).
2. The answer is read tolerantly (``read_answer``: key spellings, a part given as a list of
   sentences). A truncated, malformed or incomplete answer is asked for again with
   ``attempt=n``, so the response cache keeps every answer under its own key.
3. The parts, joined as the grounded writer joins them, are checked by the verifier against the
   record's facts plus the knowledge entries the model cited and retrieval actually returned.
   Each sentence is ``verified`` (it has claims and all are supported), ``unsupported`` (a claim
   contradicts or is not in the facts) or ``unchecked`` (the verifier reads no claim in it: it
   is not verified, so it is never kept); a supported "sentence" of under ``MIN_SENTENCE_WORDS``
   words or opening in lower case is a ``fragment``, one that repeats ``COPIED_WORDS`` words of a passage is ``copied``;
   neither is kept. Unsupported sentences, or a part with no verified
   sentence, send the findings back to the model in a follow-up turn, at most
   ``WriterConfig.max_retries`` times.
4. After the last attempt only verified sentences are kept; under ``on_unverified="fallback"``
   an unsupported sentence sends the row to the grounded writer, under ``"drop"`` it is removed.
   A part left without a sentence, an endpoint fault, or no usable answer also falls back to the
   grounded writer, with ``fallback_reason`` and ``faults`` saying why. The final text is
   verified again: ``Written.flags`` are the verifier's flags on the text that is returned.

A model or endpoint fault never raises from ``write``; a missing API key raises
``LLMConfigError`` when the writer is made. ``ModelWriter`` keeps no per-row state, so the stage
may call ``write`` from several threads (``ChatEndpoint`` is thread-safe).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass, replace
from typing import Any, Mapping, Sequence

import openai

from medtrinity_assets.generation.claims import split_sentences
from medtrinity_assets.generation.facts import Fact, FactSet
from medtrinity_assets.generation.grounded_writer import knowledge_passages
from medtrinity_assets.generation.llm_client import (
    ChatEndpoint,
    CircuitOpenError,
    EndpointConfig,
    EndpointError,
    FaultCounts,
    LLMError,
    MalformedOutputError,
    Price,
    TruncatedOutputError,
    canonical_json,
    parse_json_object,
)
from medtrinity_assets.generation.roi_overlay import overlay_data_url, vlm_user_content
from medtrinity_assets.generation.verifier import Verdict, verify, verify_claims
from medtrinity_assets.generation.writers import PART_NAMES, DescribeJob, GroundedWriter, Written, WriterConfig

PROMPT_VERSION = "five-part-json-v2"  # v2: expert-model facts worded as the model's possible findings
# A small local model has a short context (4096 tokens on the demo's server): the prompt names
# the largest ROIs only (the grounded writer, too, names the primary ROI and five others) and
# shortens the passages.
MAX_PROMPT_ROIS = 6
MAX_PASSAGES = 3
MAX_PASSAGE_CHARS = 400
# A kept sentence is a sentence: four words or more, opening with a capital (or a digit or a
# quote). A small model answers "CT." or "liver." for a part, or lower-case runs such as
# "lobe 102.5, lobed rib lobe 3." whose one readable claim is true while the rest is invented.
MIN_SENTENCE_WORDS = 4
_SENTENCE_START = re.compile(r"[A-Z0-9\"'“(]")
# A sentence sharing this many consecutive words with a retrieved passage copies it.
COPIED_WORDS = 6

SYSTEM_PROMPT = """You describe one medical image for a training dataset, using only the facts you are given.
Answer with one JSON object with exactly these keys:
"part_modality": the imaging modality, and the view, sequence, plane, slice or frame when a fact gives them.
"part_organ_tissue": the organs, and what the source's label says. If label_state is "unknown", say the source gives no diagnosis; call the image normal only if label_state is "normal".
"part_roi_analysis": where the main region of interest lies in the image, its size, and how many regions are annotated. Say "the patient's left" or "right" only when a patient_side fact gives it; otherwise use image words such as "the upper left part of the image".
"part_texture_colour": only the measured intensity, texture, margin, shape and colour of the main region.
"part_relations": the given relations between regions, and the main region against the whole image.
"knowledge_ids": the ids of the background passages you used, for example ["kb_entry"]; [] if none.
A fact with provenance "model" comes from an expert model, not from the source: write its region as the model's possible finding, e.g. "An expert model (kvasir_polyp) marks a possible polyp region in the lower left part of the image, confidence 0.87" (the expert id is in the origin value after "model:"), and never state its label as a finding of the image.
Rules: each part is one to three short, plain sentences. Every sentence states facts from the list and nothing else. Never contradict a fact. Cite passages by id in knowledge_ids, never copy them. If no region facts are given, no region was annotated: describe no lesion."""

VLM_NOTE = """The image is attached with the annotated regions outlined and numbered; the user message says which number is which roi. Use the image only to phrase what the facts say; state nothing you see that the facts do not give."""
OUTLINE_LINE = "Outlined on the image: {numbers}"

USER_TEMPLATE = """Source: {source}
Coarse caption: {coarse}

Facts (JSON, one per line; confidence 1 unless given):
{facts}

Publisher's notes (de-identified):
{publisher}

Background passages (cite them by id in knowledge_ids, never copy them):
{passages}

Write the JSON object."""

FEEDBACK_TEMPLATE = """A checker compared your sentences with the facts:
{findings}
Write the corrected JSON object with the same keys. Keep the confirmed sentences, fix or remove the others, and state only what the facts say."""

OUTPUT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        **{name: {"type": "string"} for name in PART_NAMES},
        "knowledge_ids": {"type": "array", "items": {"type": "string"}},
    },
    "required": [*PART_NAMES, "knowledge_ids"],
    "additionalProperties": False,
}

# For a server that turns the schema into a decoding grammar (llama.cpp, Ollama: the
# "json_object" format) the schema also bounds the lengths: a part is at least a short sentence,
# and a small model cannot loop inside one string or list until the token limit cuts it off.
# Strict "json_schema" endpoints get OUTPUT_SCHEMA as it is (length keywords are not in every
# provider's strict subset).
BOUNDED_SCHEMA: dict[str, Any] = {
    **OUTPUT_SCHEMA,
    "properties": {
        **{name: {"type": "string", "minLength": 20, "maxLength": 320} for name in PART_NAMES},
        "knowledge_ids": {"type": "array", "items": {"type": "string", "maxLength": 64}, "maxItems": MAX_PASSAGES},
    },
}

PROMPT_HASH = hashlib.sha256(
    "\x1e".join([SYSTEM_PROMPT, VLM_NOTE, OUTLINE_LINE, USER_TEMPLATE, FEEDBACK_TEMPLATE, canonical_json(OUTPUT_SCHEMA),
                 canonical_json(BOUNDED_SCHEMA)]).encode("utf-8")
).hexdigest()


def response_format(kind: str) -> dict[str, Any] | None:
    """The ``response_format`` request parameter: llama.cpp honours a schema inside
    ``json_object`` (and answers 500 to ``json_schema``); OpenAI and vLLM take ``json_schema``."""
    if kind == "json_object":
        return {"type": "json_object", "schema": BOUNDED_SCHEMA}
    if kind == "json_schema":
        return {"type": "json_schema", "json_schema": {"name": "five_part_description", "schema": OUTPUT_SCHEMA, "strict": True}}
    return None


# --- the prompt --------------------------------------------------------------------------------


def _fact_line(fact: Fact) -> str:
    # A model origin's detail (expert id, weights sha256) is provenance, not something to write:
    # the origin value "model:<expert_id>" already names the expert, in fewer tokens.
    detail = None if fact.provenance == "model" and fact.attribute == "origin" else fact.detail
    row = {"roi": fact.roi_id, "attribute": fact.attribute, "value": fact.value, "provenance": fact.provenance,
           "confidence": fact.confidence if fact.confidence < 1.0 else None, "detail": detail}
    return json.dumps({k: v for k, v in row.items() if v is not None}, default=str)


def prompt_facts(facts: FactSet) -> list[str]:
    """The fact lines: the record's, then those of the ``MAX_PROMPT_ROIS`` largest ROIs (their
    relations to ROIs left out are left out too). Publisher text and knowledge have their own
    sections."""
    listed = facts.roi_ids()[:MAX_PROMPT_ROIS]
    shown = set(listed)
    lines = [_fact_line(f) for f in facts if f.roi_id is None and f.attribute not in ("publisher_text", "knowledge")]
    for roi_id in listed:
        lines += [_fact_line(f) for f in facts.roi_facts(roi_id) if f.attribute != "relation" or f.detail in shown]
    left_out = len(facts.roi_ids()) - len(listed)
    if left_out:
        lines.append(f"({left_out} smaller annotated regions are not listed)")
    return lines


def prompt_passages(knowledge: Mapping | None) -> list[dict]:
    """The retrieved passages the prompt shows, one per knowledge entry."""
    seen: dict[str, dict] = {}
    for passage in knowledge_passages(dict(knowledge or {})):
        seen.setdefault(passage["entry_id"], passage)
    return list(seen.values())[:MAX_PASSAGES]


def user_prompt(facts: FactSet, knowledge: Mapping | None, coarse: str, spec) -> str:
    passages = prompt_passages(knowledge)
    publisher = [f.value for f in facts.record("publisher_text")]
    return USER_TEMPLATE.format(
        source=getattr(spec, "name", spec),
        coarse=coarse or "(none)",
        facts="\n".join(prompt_facts(facts)),
        publisher="\n".join(f"- {text}" for text in publisher) or "(none)",
        passages="\n".join(
            f"[{p['entry_id']}] " + " ".join(p["appearance"].split())[:MAX_PASSAGE_CHARS] for p in passages
        ) or "(none retrieved)",
    )


def outline_numbers(rois: Sequence[Mapping]) -> str:
    """Which number the overlay draws beside which ROI: ``roi_overlay`` numbers the ROIs 1, 2, ...
    in the order given, and a whole-image entry keeps its number but has no outline."""
    return ", ".join(f"{number} = roi {roi.get('roi_id')}" for number, roi in enumerate(rois, start=1)
                     if roi.get("origin") != "whole_image") or "none"


def build_messages(facts: FactSet, knowledge: Mapping | None, coarse: str, spec, image_url: str | None = None,
                   rois: Sequence[Mapping] = ()) -> list[dict]:
    """The first request's chat messages; with ``image_url`` (a data URL of the overlay drawn
    from ``rois``) the user message carries the image as a content part, for a vision model."""
    text = user_prompt(facts, knowledge, coarse, spec)
    if image_url is None:
        return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": text}]
    text += "\n" + OUTLINE_LINE.format(numbers=outline_numbers(rois))
    return [
        {"role": "system", "content": SYSTEM_PROMPT + "\n" + VLM_NOTE},
        {"role": "user", "content": vlm_user_content(text, image_url)},
    ]


# --- reading the answer ------------------------------------------------------------------------

# Normalized key spellings a model uses for each part (after lower-casing, "part"/digits dropped).
_KEY_ALIASES = {
    "part_modality": ("modality", "imaging_modality"),
    "part_organ_tissue": ("organ_tissue", "organ_and_tissue", "organs_tissue", "organ", "organs", "tissue",
                          "organ_tissue_detection", "organ_and_tissue_detection"),
    "part_roi_analysis": ("roi_analysis", "roi", "roi_location", "roi_location_and_analysis", "location_and_analysis",
                          "region_analysis", "roi_location_analysis", "location"),
    "part_texture_colour": ("texture_colour", "texture_color", "texture_and_colour", "texture_and_color", "texture",
                            "colour", "color", "lesion_texture", "texture_colour_analysis"),
    "part_relations": ("relations", "region_relations", "relation", "region_wise_relations", "relationships",
                       "roi_relations", "local_global_relations"),
    "knowledge_ids": ("knowledge_ids", "knowledge", "knowledge_id", "passage_ids", "passages", "citations", "cited_ids"),
}
_ALIAS_TO_KEY = {alias: key for key, aliases in _KEY_ALIASES.items() for alias in aliases}


def _normal_key(key: str) -> str:
    words = re.sub(r"[^a-z0-9]+", "_", key.lower()).strip("_")
    words = re.sub(r"^(?:\d+_)?(?:part_)?(?:\d+_)?", "", words)
    return words


def _part_text(value: Any) -> str | None:
    """A part as text: a string, or a list of sentences; each piece ends with a full stop so the
    parts split into the same sentences alone as joined. None: not text."""
    pieces = value if isinstance(value, list) else [value]
    if not all(isinstance(p, str) for p in pieces):
        return None
    cleaned = [" ".join(p.split()) for p in pieces]
    return " ".join(p if p[-1] in ".!?" else p + "." for p in cleaned if p)


@dataclass(frozen=True)
class Answer:
    parts: dict[str, str]  # every PART_NAME; "" where the model gave none
    knowledge_ids: list[str]  # cited ids that retrieval returned, in the order cited

    @property
    def missing(self) -> list[str]:
        return [name for name in PART_NAMES if not self.parts[name]]


def read_answer(text: str, retrieved: Sequence[str]) -> Answer:
    """The model's JSON answer, read tolerantly. Raises ``TruncatedOutputError`` or
    ``MalformedOutputError`` (from ``parse_json_object``) when no object can be read."""
    data = parse_json_object(text)
    if not any(_ALIAS_TO_KEY.get(_normal_key(k)) in PART_NAMES for k in data):
        # {"description": {...the parts...}}: one wrapping object is looked into.
        nested = [v for v in data.values() if isinstance(v, dict)]
        if len(nested) == 1:
            data = nested[0]
    parts = {name: "" for name in PART_NAMES}
    cited: list[str] = []
    for key, value in data.items():
        target = key if key in parts or key == "knowledge_ids" else _ALIAS_TO_KEY.get(_normal_key(key))
        if target == "knowledge_ids":
            items = value if isinstance(value, list) else re.split(r"[,\s]+", value) if isinstance(value, str) else []
            cited += [str(item).strip().strip("[]") for item in items if str(item).strip()]
        elif target is not None and not parts[target]:
            parts[target] = _part_text(value) or ""
    known = set(retrieved)
    return Answer(parts, list(dict.fromkeys(i for i in cited if i in known)))


# --- judging the sentences ---------------------------------------------------------------------


@dataclass(frozen=True)
class Judged:
    """An answer's sentences with the verifier's verdict on each."""

    sentences: dict[str, list[str]]  # part -> its sentences
    status: dict[str, list[str]]  # part -> verified | unsupported | unchecked | fragment | copied, per sentence
    problems: dict[str, list[Verdict]]  # part -> unsupported verdicts, per sentence (empty if none)

    def count(self, status: str) -> int:
        return sum(s == status for statuses in self.status.values() for s in statuses)

    @property
    def written(self) -> int:
        return sum(len(s) for s in self.sentences.values())

    @property
    def empty_parts(self) -> list[str]:
        """Parts left with no verified sentence."""
        return [name for name in PART_NAMES if "verified" not in self.status[name]]

    def kept(self) -> dict[str, list[str]]:
        return {name: [s for s, st in zip(self.sentences[name], self.status[name]) if st == "verified"]
                for name in PART_NAMES}


class SentenceMismatch(ValueError):
    """The parts do not split into the same sentences alone as joined (an abbreviation at a
    part's end): sentence verdicts cannot be mapped back to parts."""


def join_parts(parts: Mapping[str, str]) -> str:
    """The description: the parts joined by blank lines, as the grounded writer joins them."""
    return "\n\n".join(parts[name] for name in PART_NAMES)


def is_sentence(text: str) -> bool:
    return len(text.split()) >= MIN_SENTENCE_WORDS and bool(_SENTENCE_START.match(text))


def word_runs(text: str, size: int = COPIED_WORDS) -> set[tuple[str, ...]]:
    words = re.findall(r"\w+", text.lower())
    return {tuple(words[i : i + size]) for i in range(len(words) - size + 1)}


def judge(sentences: Mapping[str, list[str]], facts: FactSet, passage_runs: set[tuple[str, ...]] = frozenset()) -> Judged:
    """Each sentence's verdict from ``verify_claims`` on the joined text (``Claim.sentence``
    indexes ``split_sentences`` of that text, which is each part's sentences in order). A
    sentence sharing a run of words with a passage (``passage_runs``) is ``copied``."""
    order = [(name, i) for name in PART_NAMES for i in range(len(sentences[name]))]
    description = join_parts({name: " ".join(sentences[name]) for name in PART_NAMES})
    if split_sentences(description) != [sentences[name][i] for name, i in order]:
        raise SentenceMismatch("the parts' sentences differ from the joined text's")
    by_sentence: dict[int, list[Verdict]] = {}
    for verdict in verify_claims(description, facts):
        by_sentence.setdefault(verdict.claim.sentence, []).append(verdict)
    status = {name: [] for name in PART_NAMES}
    problems = {name: [] for name in PART_NAMES}
    for index, (name, position) in enumerate(order):
        verdicts = by_sentence.get(index, [])
        bad = [v for v in verdicts if not v.supported]
        if word_runs(sentences[name][position]) & passage_runs:
            status[name].append("copied")
        elif bad:
            status[name].append("unsupported")
        elif not verdicts:
            status[name].append("unchecked")
        elif not is_sentence(sentences[name][position]):
            status[name].append("fragment")
        else:
            status[name].append("verified")
        problems[name].append(bad)
    return Judged({name: list(sentences[name]) for name in PART_NAMES}, status, problems)


def keep_verified(judged: Judged, facts: FactSet, passage_runs: set[tuple[str, ...]] = frozenset()) -> Judged:
    """Only verified sentences, judged again until nothing more is dropped (removing a sentence
    can change which ROI a following "It ..." speaks of)."""
    while True:
        kept = judged.kept()
        if kept == judged.sentences:
            return judged
        judged = judge(kept, facts, passage_runs)


def feedback(judged: Judged) -> str:
    """The verifier's findings for the follow-up turn: each unsupported sentence with what the
    facts say, and each part that kept no checkable statement."""
    lines = []
    for name in PART_NAMES:
        for sentence, bad in zip(judged.sentences[name], judged.problems[name]):
            for verdict in bad:
                lines.append(f'- {name}: "{sentence}" is wrong ({verdict.flag_type}: says '
                             f'"{verdict.claim.phrase.strip()}"; the facts say {verdict.facts_say}).')
        for sentence, status in zip(judged.sentences[name], judged.status[name]):
            if status == "copied":
                lines.append(f'- {name}: "{sentence}" copies a background passage; cite its id in knowledge_ids instead.')
    for name in judged.empty_parts:
        if "unsupported" in judged.status[name]:
            continue  # already told above what is wrong there
        lines.append(f"- {name}: no full sentence states a fact from the list; write one to three sentences "
                     "stating the facts for this part.")
    return FEEDBACK_TEMPLATE.format(findings="\n".join(lines))


# --- the writer --------------------------------------------------------------------------------


class ModelWriter:
    """The ``llm`` / ``vlm`` writer over one OpenAI-compatible endpoint (see the module doc).

    ``endpoint_settings`` override ``EndpointConfig`` fields the ``WriterConfig`` does not set
    (``max_attempts``, ``backoff_base_s``, ``breaker_threshold``, ``breaker_cooldown_s``, ...).
    """

    def __init__(self, config: WriterConfig, **endpoint_settings: Any):
        if config.kind not in ("llm", "vlm"):
            raise ValueError(f"ModelWriter writes llm or vlm, not {config.kind!r}")
        self.config = config
        self.kind = config.kind
        prices = {model: Price(*price) for model, price in config.prices.items()}
        endpoint_config = EndpointConfig(
            base_url=config.base_url,
            model=config.model,
            api_key_env=config.api_key_env,
            timeout_s=config.timeout_s,
            cache_dir=config.cache_dir,
            prices=prices,
            temperature=config.temperature,
            max_tokens=config.max_tokens,
        )
        self.endpoint = ChatEndpoint(replace(endpoint_config, **endpoint_settings))  # LLMConfigError: no API key
        self.price = prices.get(config.model)
        self.response_format = response_format(config.response_format)
        self._grounded = GroundedWriter()

    def endpoint_counts(self) -> FaultCounts:
        return self.endpoint.counts

    def close(self) -> None:
        self.endpoint.close()

    def _image_url(self, job: DescribeJob) -> str | None:
        """The overlay as a data URL, or None when it cannot be drawn (the row is then written
        from the text alone)."""
        if job.image_path is None or job.data_root is None:
            return None
        try:
            return overlay_data_url(job.image_path, job.rois, job.data_root)
        except (OSError, ValueError):  # OverlayError is a ValueError naming the file
            return None

    def write(self, job: DescribeJob) -> Written:
        faults: Counter[str] = Counter()
        image_url = self._image_url(job) if self.kind == "vlm" and not job.image_withheld else None
        if self.kind == "vlm" and image_url is None:
            faults["image_withheld" if job.image_withheld else "image_unavailable"] += 1
        first = build_messages(job.facts, job.knowledge, job.coarse_caption, job.spec, image_url, job.rois)
        messages = first
        passages = knowledge_passages(dict(job.knowledge or {}))
        retrieved = [p["entry_id"] for p in passages]
        passage_runs = set().union(*(word_runs(p["appearance"]) for p in passages))
        params = {"response_format": self.response_format} if self.response_format else {}

        calls = prompt_tokens = completion_tokens = 0
        all_cached = True
        best: tuple[Judged, FactSet, list[str]] | None = None  # the last answer that could be judged
        endpoint_reason = None
        for attempt in range(1 + self.config.max_retries):
            try:
                # A retry asks for a fresh sample: a server that samples with a fixed seed
                # (llama.cpp) would otherwise repeat the same answer to the same messages.
                seed = {"seed": attempt} if attempt else {}
                result = self.endpoint.complete(messages, attempt=attempt, **params, **seed)
            except CircuitOpenError:
                faults["circuit_open"] += 1
                endpoint_reason = "endpoint: circuit open"
                break
            except EndpointError as exc:
                faults["endpoint_error"] += 1
                endpoint_reason = f"endpoint: {exc.kind} after {_counted(exc.attempts, 'request')}"
                break
            except (LLMError, openai.OpenAIError) as exc:
                faults["endpoint_error"] += 1
                endpoint_reason = f"endpoint: {type(exc).__name__}"
                break
            calls += 1
            prompt_tokens += result.prompt_tokens
            completion_tokens += result.completion_tokens
            all_cached = all_cached and result.cached
            if result.truncated:
                faults["truncated"] += 1
                continue
            try:
                answer = read_answer(result.text, retrieved)
            except TruncatedOutputError:
                faults["truncated"] += 1
                continue
            except MalformedOutputError:
                faults["malformed"] += 1
                continue
            if answer.missing:
                faults["incomplete"] += 1
                continue
            facts = _with_knowledge(job.facts, answer.knowledge_ids, job.knowledge)
            try:
                judged = judge({name: split_sentences(answer.parts[name]) for name in PART_NAMES}, facts, passage_runs)
            except SentenceMismatch:
                faults["malformed"] += 1
                continue
            best = (judged, facts, answer.knowledge_ids)
            if judged.count("unsupported"):
                faults["unverified"] += 1
            if not judged.count("unsupported") and not judged.empty_parts:
                break
            if attempt < self.config.max_retries:
                # Only the latest answer and its findings follow the first prompt: the request
                # stays within a small model's context however many retries there are.
                messages = [*first, {"role": "assistant", "content": result.text},
                            {"role": "user", "content": feedback(judged)}]

        usage = dict(
            attempts=calls,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            cost_usd=self.price.cost(prompt_tokens, completion_tokens) if self.price else 0.0,
            cached=calls > 0 and all_cached,
            faults=dict(sorted(faults.items())),
        )
        if best is None:
            return self._fall_back(job, endpoint_reason or _no_answer_reason(faults, calls), usage)
        judged, facts, cited = best
        written_count, unverified = judged.written, judged.written - judged.count("verified")
        counted = dict(sentences_written=written_count, sentences_dropped=unverified)
        unsupported = judged.count("unsupported")
        after = f"unverified after {_counted(calls, 'attempt')}" + (f" ({endpoint_reason})" if endpoint_reason else "")
        if unsupported and self.config.on_unverified == "fallback":
            return self._fall_back(job, f"{after}: {_counted(unsupported, 'sentence')} not supported by the facts",
                                   usage, **counted)
        try:
            final = keep_verified(judged, facts, passage_runs)
        except SentenceMismatch:
            return self._fall_back(job, f"{after}: sentences could not be mapped to parts", usage, **counted)
        if final.empty_parts:
            return self._fall_back(job, f"{after}: no verified sentence left in " + ", ".join(final.empty_parts),
                                   usage, **counted)
        parts = {name: " ".join(final.sentences[name]) for name in PART_NAMES}
        description = join_parts(parts)
        counted["sentences_dropped"] = written_count - final.written
        return Written(
            parts=parts,
            description=description,
            facts=facts,
            knowledge_ids=cited,
            flags=verify(description, facts),
            writer="vlm" if image_url is not None else "llm",  # a vlm row without its image was written from text
            prompt_version=PROMPT_VERSION,
            model=self.config.model,
            prompt_hash=PROMPT_HASH,
            **usage,
            **counted,
        )

    def _fall_back(self, job: DescribeJob, reason: str, usage: Mapping[str, Any], **counted: int) -> Written:
        """The grounded writer's text (with its own verifier flags) and why the model's was not kept."""
        written = self._grounded.write(job)
        return replace(written, model=self.config.model, prompt_hash=PROMPT_HASH, fallback_reason=reason,
                       **usage, **counted)


def _with_knowledge(facts: FactSet, cited: Sequence[str], knowledge: Mapping | None) -> FactSet:
    """The record's facts plus one ``knowledge`` fact per cited (and retrieved) entry."""
    if not cited:
        return facts
    findings = {p["entry_id"]: p.get("finding") for p in knowledge_passages(dict(knowledge or {}))}
    rid = next((f.record_id for f in facts), "")
    return FactSet(list(facts) + [Fact(rid, None, "knowledge", entry_id, "knowledge", detail=findings.get(entry_id))
                                  for entry_id in cited])


def _counted(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def _no_answer_reason(faults: Mapping[str, int], calls: int) -> str:
    """'malformed output after 3 attempts', or the mix when the attempts failed differently."""
    kinds = {k: faults[k] for k in ("truncated", "malformed", "incomplete") if faults.get(k)}
    if len(kinds) == 1:
        return f"{next(iter(kinds))} output after {_counted(calls, 'attempt')}"
    return f"no usable answer after {_counted(calls, 'attempt')}: " + ", ".join(f"{n} {k}" for k, n in kinds.items())
