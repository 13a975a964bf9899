"""The TED loop's SGLang programs.

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

import json
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import sglang as sgl

from ted_sglang import prompts
from ted_sglang.bank.operations import OperationLimits, operations_schema

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
    citation_max_tokens=None, teacher_temperature=0.3, max_chars=2000,
):  # fmt: skip
    """Critique, then an operations document (``operations``, constrained by the
    bank's schema), then which entries helped or hurt (``citations``, skipped for an
    empty bank; ``citation_max_tokens=None``: as many as its schema can need, see
    :func:`citation_token_bound`).  ``attempts``: :class:`~ted_sglang.prompts.Attempt`
    list; ``bank_entries``: (id, text) pairs."""
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
            sgl.gen("citations", max_tokens=citation_max_tokens or citation_token_bound(ids),
                    temperature=teacher_temperature,
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


def citation_token_bound(ids: Sequence[str]) -> int:
    """``max_new_tokens`` that always holds a :func:`citation_schema` document: its
    longest form in characters (every token writes at least one), with a little room."""
    longest = sorted((len(json.dumps(i)) for i in ids), reverse=True)[:CITATION_MAX_IDS]
    one_list = sum(longest) + max(len(longest) - 1, 0)  # the ids and their commas
    return len('{"helpful":[],"harmful":[]}') + 2 * one_list + 8


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
