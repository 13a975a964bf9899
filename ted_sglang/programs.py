"""The TED loop's SGLang programs, and typed calls that run them.

Each ``@sgl.function`` is an ordinary SGLang frontend program: embed it in your own
code and run it against any SGLang-API backend::

    backend = sgl.RuntimeEndpoint(url, chat_template_name="chatml")
    state = student_rollouts.run(
        bank_text=bank.render(), question=q, num_rollouts=5, backend=backend
    )
    state["trajectories"], state["metas"]

The student's prompt is ``[system + bank] [user: image? + question]``; the program
syncs and forks after it, so the shared prefix reaches the server once (a
``max_new_tokens: 0`` request) and every branch reads it from the radix cache.  The
teacher's edit documents are constrained by the bank's own
:func:`~ted_sglang.bank.operations_schema`, so they always parse.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import sglang as sgl

from ted_sglang import prompts
from ted_sglang.bank.operations import OperationLimits, operations_schema
from ted_sglang.config import GenerationConfig
from ted_sglang.prompts import Attempt, ImageView

# Structured chain of one solution (premises -> steps -> conclusion), kept small.
CHAIN_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "premises": {
            "type": "array",
            "items": {"type": "string", "minLength": 1, "maxLength": 120},
            "maxItems": 4,
        },
        "steps": {
            "type": "array",
            "items": {"type": "string", "minLength": 1, "maxLength": 160},
            "maxItems": 6,
        },
        "conclusion": {"type": "string", "minLength": 1, "maxLength": 100},
    },
    "required": ["premises", "steps", "conclusion"],
    "additionalProperties": False,
}
CITATION_MAX_IDS = 8


class RequestFailed(RuntimeError):
    """A server could not serve a program's request (HTTP error, timeout, connection)."""


# ---- the programs ----------------------------------------------------------------------


def _ask(s: Any, text: str, image: str | None, image_description: str | None) -> None:
    """A user turn: the image (or its description) first, then ``text``."""
    if image is not None:
        s += sgl.user(sgl.image(image) + text)
    else:
        s += sgl.user(prompts.with_description(text, image_description))


def _check_branches(branches: Sequence[Any]) -> None:
    for branch in branches:
        error = branch.error()
        if error is not None:
            raise error


@sgl.function
def student_rollouts(
    s, bank_text, question, image=None, image_description=None, num_rollouts=5,
    max_tokens=256, rollout_temperature=0.8, rollout_top_p=0.95,
):  # fmt: skip
    """``num_rollouts`` sampled answers to ``question`` under the bank; sets
    ``trajectories`` and ``metas`` (each branch's meta_info: prompt/cached/completion
    tokens).  (Not ``n``/``temperature``/``top_p``: ``.run()`` takes those names as
    SGLang's default sampling parameters.)"""
    s += sgl.system(prompts.student_system(bank_text))
    _ask(s, question, image, image_description)
    s += sgl.assistant_begin()
    s.text()  # sync before fork: the shared prefix is then sent (and cached) once
    forks = s.fork(num_rollouts)
    for branch in forks:
        branch += sgl.gen(
            "trajectory", max_tokens=max_tokens, temperature=rollout_temperature,
            top_p=rollout_top_p,
        )  # fmt: skip
    _check_branches(forks)
    s["trajectories"] = [branch["trajectory"] for branch in forks]
    s["metas"] = [branch.get_meta_info("trajectory") for branch in forks]


@sgl.function
def teacher_solution(
    s, question, image=None, answer_format="", image_description=None,
    max_tokens=384, teacher_temperature=0.0,
):  # fmt: skip
    """The teacher's own step-by-step solution; sets ``solution``."""
    s += sgl.system(prompts.TEACHER_SYSTEM)
    _ask(s, prompts.teacher_solve(question, answer_format), image, image_description)
    s += sgl.assistant(sgl.gen("solution", max_tokens=max_tokens, temperature=teacher_temperature))


@sgl.function
def teacher_extract(
    s, question, ground_truth, solution, attempts, bank_entries, limits,
    image=None, image_description=None, critique_max_tokens=192, ops_max_tokens=1024,
    citation_max_tokens=64, teacher_temperature=0.3, max_chars=2000,
):  # fmt: skip
    """Critique, then an operations document (``operations``, constrained by the
    bank's schema), then which entries helped or hurt (``citations``, skipped for an
    empty bank).  ``attempts``: :class:`~ted_sglang.prompts.Attempt` list;
    ``bank_entries``: (id, text) pairs."""
    ids = [i for i, _ in bank_entries]
    request = prompts.extraction_request(
        question, ground_truth, solution, attempts, bank_entries, max_chars
    )
    s += sgl.system(prompts.TEACHER_SYSTEM)
    _ask(s, request, image, image_description)
    s += sgl.assistant(
        sgl.gen("critique", max_tokens=critique_max_tokens, temperature=teacher_temperature)
    )
    s += sgl.user(prompts.operations_request(len(ids), limits))
    schema = json.dumps(operations_schema(ids, limits))
    s += sgl.assistant(
        sgl.gen("operations", max_tokens=ops_max_tokens, temperature=teacher_temperature,
                json_schema=schema)
    )  # fmt: skip
    if ids:
        s += sgl.user(prompts.CITATION_REQUEST)
        s += sgl.assistant(
            sgl.gen("citations", max_tokens=citation_max_tokens, temperature=teacher_temperature,
                    json_schema=json.dumps(citation_schema(ids)))
        )  # fmt: skip


@sgl.function
def teacher_compress(s, merges, rewrites, limits, max_tokens=1024, teacher_temperature=0.3):
    """Merged and shortened texts for a compression plan's candidates, as an
    operations document (``operations``) limited to merge/update on those ids.
    ``merges``: groups of (id, text); ``rewrites``: (id, text) pairs."""
    s += sgl.system(prompts.TEACHER_SYSTEM)
    s += sgl.user(prompts.compression_request(merges, rewrites, limits))
    schema = json.dumps(compression_schema(merges, rewrites, limits))
    s += sgl.assistant(
        sgl.gen(
            "operations", max_tokens=max_tokens, temperature=teacher_temperature, json_schema=schema
        )
    )


@sgl.function
def teacher_merge(s, request, schema, max_tokens=512, teacher_temperature=0.3):
    """One operation that merges texts (``operations``): ``request`` says which, and
    ``schema`` (see :func:`single_operation_schema`) allows exactly that operation."""
    s += sgl.system(prompts.TEACHER_SYSTEM)
    s += sgl.user(request)
    s += sgl.assistant(
        sgl.gen("operations", max_tokens=max_tokens, temperature=teacher_temperature,
                json_schema=schema)
    )  # fmt: skip


@sgl.function
def summarize_chain(s, question, text, max_tokens=256, max_chars=2000):
    """One solution condensed to ``{"premises", "steps", "conclusion"}`` (``chain``)."""
    s += sgl.user(prompts.chain_request(question, text, max_chars))
    s += sgl.assistant(
        sgl.gen("chain", max_tokens=max_tokens, temperature=0.0,
                json_schema=json.dumps(CHAIN_SCHEMA))
    )  # fmt: skip


# ---- schemas -----------------------------------------------------------------------


def citation_schema(ids: Sequence[str]) -> dict[str, Any]:
    """``{"helpful": [ids], "harmful": [ids]}`` with ids from the bank (lists may be empty)."""
    assert ids, "an empty bank has nothing to cite"
    listed = {
        "type": "array",
        "items": {"type": "string", "enum": list(ids)},
        "maxItems": min(len(ids), CITATION_MAX_IDS),
    }
    return {
        "type": "object",
        "properties": {"helpful": listed, "harmful": listed},
        "required": ["helpful", "harmful"],
        "additionalProperties": False,
    }


def compression_schema(
    merges: Sequence[Sequence[tuple[str, str]]],
    rewrites: Sequence[tuple[str, str]],
    limits: OperationLimits,
) -> dict[str, Any]:
    """The bank's operations schema over the candidates' ids, keeping only the
    ``merge`` / ``update`` variants the plan asks for."""
    ids = sorted({i for group in merges for i, _ in group} | {i for i, _ in rewrites})
    wanted = {"merge"} if merges else set()
    wanted |= {"update"} if rewrites else set()
    schema = operations_schema(ids, limits)
    items = schema["properties"]["operations"]["items"]
    items["anyOf"] = [v for v in items["anyOf"] if v["properties"]["op"]["const"] in wanted]
    assert items["anyOf"], "a compression request needs merge or rewrite candidates"
    return schema


def single_operation_schema(op: str, ids: Sequence[str], limits: OperationLimits) -> dict:
    """The bank's operations schema narrowed to exactly one ``op`` (``update``: of
    ``ids[0]``; ``merge``: naming all ``ids``), so the teacher writes one text for it
    under the same grammar as every other edit."""
    assert op in ("update", "merge") and ids, (op, ids)
    schema = operations_schema(ids, replace(limits, max_merge_ids=max(len(ids), 2)))
    array = schema["properties"]["operations"]
    array["items"]["anyOf"] = [
        v for v in array["items"]["anyOf"] if v["properties"]["op"]["const"] == op
    ]
    assert array["items"]["anyOf"], f"{op} needs {'2 ids' if op == 'merge' else 'an id'}"
    if op == "merge":
        array["items"]["anyOf"][0]["properties"]["ids"]["minItems"] = len(ids)
    array["minItems"] = array["maxItems"] = 1
    return schema


def parse_json(text: str) -> Any:
    """JSON from a constrained generation (raw control characters inside strings are
    accepted, as grammar-constrained decoders can emit them); ``ValueError`` if bad."""
    try:
        return json.loads(text, strict=False)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc}); the output may have hit max_tokens") from None


# ---- running them ------------------------------------------------------------------


@dataclass
class Tokens:
    """Tokens a server reported for some requests."""

    prompt: int = 0
    cached: int = 0
    completion: int = 0
    requests: int = 0

    def add(self, meta: dict[str, Any] | None) -> Tokens:
        if meta:
            self.prompt += int(meta.get("prompt_tokens") or 0)
            self.cached += int(meta.get("cached_tokens") or 0)
            self.completion += int(meta.get("completion_tokens") or 0)
            self.requests += 1
        return self

    def __iadd__(self, other: Tokens) -> Tokens:
        self.prompt += other.prompt
        self.cached += other.cached
        self.completion += other.completion
        self.requests += other.requests
        return self

    @property
    def cache_hit_rate(self) -> float:
        return self.cached / self.prompt if self.prompt else 0.0

    def to_dict(self) -> dict[str, int]:
        return {
            "prompt": self.prompt,
            "cached": self.cached,
            "completion": self.completion,
            "requests": self.requests,
        }


_SERVER_ERRORS = (RuntimeError, OSError, http.client.HTTPException, json.JSONDecodeError)


def run(program: Any, backend: Any, **kwargs: Any) -> Any:
    """Run ``program`` to completion; a request the server failed raises
    :class:`RequestFailed`, any other error propagates as it is."""
    try:
        state = program.run(backend=backend, **kwargs)
        error = state.error()
    except RequestFailed:
        raise
    except _SERVER_ERRORS as exc:
        raise RequestFailed(f"{type(exc).__name__}: {exc}") from exc
    if error is not None:
        if isinstance(error, _SERVER_ERRORS):
            raise RequestFailed(f"{type(error).__name__}: {error}") from error
        raise error
    return state


@dataclass
class Rollouts:
    texts: list[str]
    tokens: Tokens = field(default_factory=Tokens)


def rollouts(
    backend: Any,
    bank_text: str,
    question: str,
    view: ImageView,
    n: int,
    gen: GenerationConfig,
    *,
    greedy: bool = False,
) -> Rollouts:
    """``n`` student trajectories (one greedy one if ``greedy``)."""
    state = run(
        student_rollouts, backend, bank_text=bank_text, question=question,
        image=view.image, image_description=view.description,
        num_rollouts=1 if greedy else n, max_tokens=gen.student_max_tokens,
        rollout_temperature=0.0 if greedy else gen.student_temperature,
        rollout_top_p=gen.student_top_p,
    )  # fmt: skip
    tokens = Tokens()
    for meta in state["metas"]:
        tokens.add(meta)
    return Rollouts(list(state["trajectories"]), tokens)


def solve(
    backend: Any, question: str, answer_format: str, view: ImageView, gen: GenerationConfig
) -> tuple[str, Tokens]:
    """The teacher's own solution."""
    state = run(
        teacher_solution, backend, question=question, image=view.image,
        answer_format=answer_format, image_description=view.description,
        max_tokens=gen.solution_max_tokens, teacher_temperature=0.0,
    )  # fmt: skip
    return state["solution"], Tokens().add(state.get_meta_info("solution"))


@dataclass
class Extraction:
    """What the teacher wrote about one sample (raw texts, not yet validated)."""

    critique: str
    operations: str
    citations: str | None
    tokens: Tokens = field(default_factory=Tokens)


def extract(
    backend: Any,
    *,
    question: str,
    ground_truth: str,
    solution: str,
    attempts: Sequence[Attempt],
    bank_entries: Sequence[tuple[str, str]],
    limits: OperationLimits,
    view: ImageView,
    gen: GenerationConfig,
) -> Extraction:
    """Critique, edit document and citations from the teacher."""
    state = run(
        teacher_extract, backend, question=question, ground_truth=ground_truth,
        solution=solution, attempts=list(attempts), bank_entries=list(bank_entries),
        limits=limits, image=view.image, image_description=view.description,
        critique_max_tokens=gen.critique_max_tokens,
        ops_max_tokens=gen.ops_token_bound(limits),
        citation_max_tokens=gen.citation_max_tokens,
        teacher_temperature=gen.teacher_temperature, max_chars=gen.max_trajectory_chars,
    )  # fmt: skip
    tokens = Tokens()
    for name in ("critique", "operations", "citations"):
        tokens.add(state.get_meta_info(name) if name in state else None)
    citations = state["citations"] if bank_entries else None
    return Extraction(state["critique"], state["operations"], citations, tokens)


def parse_citations(text: str | None, ids: Sequence[str]) -> tuple[list[str], list[str]]:
    """(helpful, harmful) ids from a citations document; ``ValueError`` if it is bad."""
    if text is None:
        return [], []
    data = parse_json(text)
    if not isinstance(data, dict) or set(data) != {"helpful", "harmful"}:
        raise ValueError('citations must be {"helpful": [...], "harmful": [...]}')
    known = set(ids)
    out = []
    for name in ("helpful", "harmful"):
        values = data[name]
        if not isinstance(values, list) or not all(v in known for v in values):
            raise ValueError(f"citations.{name} must list ids of the bank")
        out.append(list(dict.fromkeys(values)))
    return out[0], out[1]


def chains(
    backend: Any, question: str, texts: Sequence[str], gen: GenerationConfig, num_threads: int
) -> tuple[list[str], Tokens]:
    """Each text condensed to a structured chain, rendered for the teacher (a text
    whose chain does not parse is kept as it was, cut to ``max_trajectory_chars``)."""
    states = sgl_run_batch(
        summarize_chain,
        backend,
        [
            {
                "question": question,
                "text": t,
                "max_tokens": gen.chain_max_tokens,
                "max_chars": gen.max_trajectory_chars,
            }
            for t in texts
        ],
        num_threads,
    )
    out, tokens = [], Tokens()
    for state, text in zip(states, texts, strict=True):
        tokens.add(state.get_meta_info("chain"))
        try:
            chain = parse_json(state["chain"])
        except ValueError:
            out.append(prompts.clip(text, gen.max_trajectory_chars))
            continue
        out.append(prompts.render_chain(chain))
    return out, tokens


def sgl_run_batch(program: Any, backend: Any, batch: list[dict], num_threads: int) -> list[Any]:
    """``program.run_batch`` with server failures raised as :class:`RequestFailed`."""
    try:
        states = program.run_batch(batch, backend=backend, num_threads=max(num_threads, 1))
        errors = [s.error() for s in states]
    except _SERVER_ERRORS as exc:
        raise RequestFailed(f"{type(exc).__name__}: {exc}") from exc
    for error in errors:
        if error is not None:
            if isinstance(error, _SERVER_ERRORS):
                raise RequestFailed(f"{type(error).__name__}: {error}") from error
            raise error
    return states


def compress(
    backend: Any,
    merges: Sequence[Sequence[tuple[str, str]]],
    rewrites: Sequence[tuple[str, str]],
    limits: OperationLimits,
    gen: GenerationConfig,
) -> tuple[str, Tokens]:
    """The teacher's operations document for a compression plan's candidates."""
    state = run(
        teacher_compress, backend, merges=[list(g) for g in merges], rewrites=list(rewrites),
        limits=limits, max_tokens=gen.ops_token_bound(limits, len(merges) + len(rewrites)),
        teacher_temperature=gen.teacher_temperature,
    )  # fmt: skip
    return state["operations"], Tokens().add(state.get_meta_info("operations"))


def merged_text(
    backend: Any, request: str, schema: dict, limits: OperationLimits, gen: GenerationConfig
) -> tuple[str, Tokens]:
    """Run :func:`teacher_merge`; returns the text of its one operation (``ValueError``
    if the output is not such a document, e.g. it hit ``max_tokens``)."""
    state = run(
        teacher_merge, backend, request=request, schema=json.dumps(schema),
        max_tokens=gen.ops_token_bound(limits, 1), teacher_temperature=gen.teacher_temperature,
    )  # fmt: skip
    tokens = Tokens().add(state.get_meta_info("operations"))
    data = parse_json(state["operations"])
    ops = data.get("operations") if isinstance(data, dict) else None
    if not isinstance(ops, list) or len(ops) != 1 or not isinstance(ops[0], dict):
        raise ValueError("the merge output is not one operation")
    text = ops[0].get("text")
    if not isinstance(text, str) or not text.strip():
        raise ValueError("the merge output has no text")
    return text, tokens
