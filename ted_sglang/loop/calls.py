"""Typed calls of the TED loop's SGLang programs: each runs one program against a
backend and returns its texts with the tokens the server reported; a request the
server could not serve raises :class:`RequestFailed`."""

from __future__ import annotations

import http.client
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ted_sglang import prompts
from ted_sglang.bank.operations import OperationLimits
from ted_sglang.loop.config import GenerationConfig
from ted_sglang.programs import (
    student_rollouts,
    summarize_chain,
    teacher_compress,
    teacher_extract,
    teacher_merge,
    teacher_solution,
)
from ted_sglang.prompts import Attempt, ImageView


class RequestFailed(RuntimeError):
    """A server could not serve a program's request (HTTP error, timeout, connection)."""


def parse_json(text: str) -> Any:
    """JSON from a constrained generation (raw control characters inside strings are
    accepted, as grammar-constrained decoders can emit them); ``ValueError`` if bad."""
    try:
        return json.loads(text, strict=False)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc}); the output may have hit max_tokens") from None


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
