"""The TED programs against the reference engine on tiny random models.

A random model writes gibberish, so these tests check what the programs guarantee
whatever the model says: the prompt layout, the shared cached prefix, the token
accounting, and documents that parse and match their schemas.
"""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from distill_checks import validate_document
from PIL import Image

from ted_sglang import programs, prompts
from ted_sglang.bank import (
    CompressionBudget,
    CompressionPolicy,
    ExperienceBank,
    OperationLimits,
    operations_schema,
)
from ted_sglang.loop import calls
from ted_sglang.loop.compress import restrict_to_plan
from ted_sglang.loop.config import GenerationConfig
from ted_sglang.prompts import Attempt, ImageView
from ted_sglang.runtime import connect

LIMITS = OperationLimits(max_operations=3, max_text_chars=80, min_text_chars=8)
GEN = GenerationConfig(student_max_tokens=16, solution_max_tokens=16, critique_max_tokens=16)
BANK_TEXT = "[E1] Count each colour separately.\n[E2] Read values against the axis ticks.\n"


@pytest.fixture(scope="module")
def endpoint(engine_url: str):
    return connect(engine_url)


@pytest.fixture(scope="module")
def vision_endpoint(vision_engine_url: str):
    return connect(vision_engine_url)


def test_student_rollouts_fork_after_a_shared_cached_prefix(endpoint) -> None:
    state = calls.run(
        programs.student_rollouts, endpoint.backend, bank_text=BANK_TEXT,
        question="How many red circles are there?", num_rollouts=4, max_tokens=12,
        rollout_temperature=0.9,
    )  # fmt: skip
    assert len(state["trajectories"]) == 4 and len(state["metas"]) == 4
    text = state.text()
    assert text.startswith("<|im_start|>system\n" + prompts.student_system(BANK_TEXT))
    assert text.endswith("How many red circles are there?<|im_end|>\n<|im_start|>assistant\n")
    for meta in state["metas"]:
        assert meta["completion_tokens"] <= 12
        # The prefix went out once (max_new_tokens 0); every branch read it from the cache.
        assert meta["cached_tokens"] >= meta["prompt_tokens"] - 1


def test_system_part_is_the_same_bytes_for_every_question(endpoint) -> None:
    texts = []
    for question in ("What is 2 + 3?", "Which bar is tallest?"):
        state = calls.run(
            programs.student_rollouts, endpoint.backend, bank_text=BANK_TEXT, question=question,
            num_rollouts=1, max_tokens=2,
        )  # fmt: skip
        texts.append(state.text())
    system_end = texts[0].index("<|im_end|>") + len("<|im_end|>")
    assert texts[0][:system_end] == texts[1][:system_end]
    assert BANK_TEXT.rstrip() in texts[0][:system_end]


def test_rollouts_wrapper_counts_tokens_and_greedy_is_one(endpoint) -> None:
    out = calls.rollouts(endpoint.backend, BANK_TEXT, "What is 7 - 2?", ImageView(), 3, GEN)
    assert len(out.texts) == 3 and out.tokens.requests == 3
    assert 0 < out.tokens.completion <= 3 * GEN.student_max_tokens
    assert out.tokens.cache_hit_rate > 0.9
    greedy = [
        calls.rollouts(endpoint.backend, "", "What is 7 - 2?", ImageView(), 3, GEN, greedy=True)
        for _ in range(2)
    ]
    assert [len(g.texts) for g in greedy] == [1, 1] and greedy[0].texts == greedy[1].texts


def test_description_replaces_the_image_for_a_text_model(endpoint) -> None:
    state = calls.run(
        programs.student_rollouts, endpoint.backend, bank_text="", question="How many squares?",
        image_description="The image shows 2 red squares.", num_rollouts=1, max_tokens=2,
    )  # fmt: skip
    assert "[Image: The image shows 2 red squares.]\n\nHow many squares?" in state.text()
    assert "<image>" not in state.text()


def test_image_goes_to_a_vision_model(vision_endpoint, tmp_path: Path) -> None:
    path = tmp_path / "red.png"
    Image.new("RGB", (48, 32), (220, 30, 30)).save(path)
    common = {"bank_text": BANK_TEXT, "question": "What colour?", "num_rollouts": 2}
    with_image = calls.run(
        programs.student_rollouts, vision_endpoint.backend, image=str(path), max_tokens=4, **common
    )
    without = calls.run(programs.student_rollouts, vision_endpoint.backend, max_tokens=4, **common)
    assert vision_endpoint.chat_template.startswith("chatml")
    assert "<image>" in with_image.text()
    image_meta, text_meta = with_image["metas"][0], without["metas"][0]
    # The tiny vision model expands the image into 16 tokens.
    assert image_meta["prompt_tokens"] >= text_meta["prompt_tokens"] + 15
    assert all(m["cached_tokens"] >= m["prompt_tokens"] - 1 for m in with_image["metas"])


def test_teacher_solution(endpoint) -> None:
    solution, tokens = calls.solve(
        endpoint.backend, "What is 2 + 3?", "End with Answer: \\boxed{N}.", ImageView(), GEN
    )
    assert isinstance(solution, str) and 0 < tokens.completion <= GEN.solution_max_tokens


def _extract(endpoint, bank: ExperienceBank):
    return calls.extract(
        endpoint.backend, question="What is 2 + 3?", ground_truth="5",
        solution="2 + 3 = 5.\nAnswer: \\boxed{5}",
        attempts=[Attempt("2 + 3 = 6", False, "6"), Attempt("It is 5.", True, "5")],
        bank_entries=bank.render_entries(), limits=bank.limits, view=ImageView(), gen=GEN,
    )  # fmt: skip


@pytest.mark.parametrize("ids", [["E1"], ["E1", "E2", "E3"], [f"E{i}" for i in range(1, 130)]])
def test_citation_token_bound_holds_the_longest_document(ids: list[str]) -> None:
    cited = sorted(ids, key=len, reverse=True)[: programs.CITATION_MAX_IDS]
    longest = {"helpful": cited, "harmful": cited}
    jsonschema.validate(longest, programs.citation_schema(ids))
    text = json.dumps(longest, separators=(",", ":"))
    assert len(text) < programs.citation_token_bound(ids) <= len(text) + 8


@pytest.mark.parametrize("num_entries", [0, 1, 3])
def test_extraction_documents_always_match_their_schemas(endpoint, num_entries: int) -> None:
    bank = ExperienceBank(limits=LIMITS)
    if num_entries:
        texts = [f"Experience number {i} says check twice." for i in range(num_entries)]
        bank.apply({"operations": [{"op": "add", "text": t} for t in texts]})
    for _ in range(2):
        extraction = _extract(endpoint, bank)
        document = calls.parse_json(extraction.operations)
        validate_document(document, operations_schema(bank.ids, LIMITS))
        assert isinstance(extraction.critique, str)
        if num_entries:
            citations = calls.parse_json(extraction.citations)
            jsonschema.validate(citations, programs.citation_schema(bank.ids))
            helpful, harmful = calls.parse_citations(extraction.citations, bank.ids)
            assert set(helpful) | set(harmful) <= set(bank.ids)
            assert extraction.tokens.requests == 3
        else:
            assert extraction.citations is None and extraction.tokens.requests == 2
        report = bank.at_version(bank.version).apply(extraction.operations)
        assert report.error is None  # it parses; single ops may still be rejected


def test_parse_citations_rejects_what_the_bank_does_not_hold() -> None:
    assert calls.parse_citations(None, ["E1"]) == ([], [])
    assert calls.parse_citations('{"helpful": ["E1", "E1"], "harmful": []}', ["E1"]) == (
        ["E1"],
        [],
    )
    for bad in ('{"helpful": ["E9"], "harmful": []}', '{"helpful": []}', "[1, 2"):
        with pytest.raises(ValueError):
            calls.parse_citations(bad, ["E1"])


def _crowded_bank() -> tuple[ExperienceBank, object]:
    bank = ExperienceBank(limits=OperationLimits(max_operations=4, max_text_chars=400))
    bank.apply(
        {
            "operations": [
                {"op": "add", "text": "Count the red shapes one by one before answering."},
                {"op": "add", "text": "Count the red shapes one by one before you answer."},
                {"op": "add", "text": "Long advice: " + "read every label and value; " * 12},
                {"op": "add", "text": "Read the axis ticks to get bar values right."},
            ]
        }
    )
    bank.record_cited(helpful=["E1", "E2", "E3"], step=1)  # so that E4 is the one removed
    policy = CompressionPolicy(
        budget=CompressionBudget(max_entries=3, max_tokens=None, target_ratio=1.0),
        long_entry_tokens=40,
    )
    return bank, policy.plan(bank)


def test_teacher_compress_is_held_to_the_plan(endpoint) -> None:
    bank, plan = _crowded_bank()
    assert plan.merges and plan.rewrites
    merges = [[(i, bank[i].text) for i in m.ids] for m in plan.merges]
    rewrites = [(r.id, bank[r.id].text) for r in plan.rewrites]
    schema = programs.compression_schema(merges, rewrites, bank.limits)
    ops = {
        v["properties"]["op"]["const"] for v in schema["properties"]["operations"]["items"]["anyOf"]
    }
    assert ops == {"merge", "update"}
    text, tokens = calls.compress(endpoint.backend, merges, rewrites, bank.limits, GEN)
    validate_document(calls.parse_json(text), schema)
    assert tokens.requests == 1
    document, outside = restrict_to_plan(text, plan)
    assert document is not None
    written = calls.parse_json(text)["operations"]
    assert len(document["operations"]) + len(outside) == len(written)
    for op in document["operations"]:
        assert op["op"] in ("merge", "update")


def test_restrict_to_plan_reports_what_it_drops() -> None:
    bank, plan = _crowded_bank()
    group = list(plan.merges[0].ids)
    other = next(i for i in bank.ids if i not in group and i != plan.rewrites[0].id)
    text = json.dumps(
        {
            "operations": [
                {"op": "merge", "ids": group, "text": "Count red shapes one by one."},
                {"op": "update", "id": plan.rewrites[0].id, "text": "Read labels and values."},
                {"op": "update", "id": other, "text": "Not planned."},
                {"op": "merge", "ids": [group[0], other], "text": "Not a planned group."},
                {"op": "add", "text": "New entries are no compression."},
            ]
        }
    )
    document, outside = restrict_to_plan(text, plan)
    assert [op["op"] for op in document["operations"]] == ["merge", "update"]
    assert [o["index"] for o in outside] == [2, 3, 4]
    assert restrict_to_plan('{"operations": [', plan)[0] is None


def test_summarize_chain_gives_a_structured_chain(endpoint) -> None:
    gen = GenerationConfig(chain_max_tokens=1500)
    texts = ["2 + 3: two plus three is five.\nAnswer: \\boxed{5}", "I guess 6."]
    rendered, tokens = calls.chains(endpoint.backend, "What is 2 + 3?", texts, gen, 2)
    assert len(rendered) == 2 and tokens.requests == 2
    for chain_text in rendered:
        assert chain_text.startswith("Premises: ") and "\nConclusion: " in chain_text
    state = calls.run(
        programs.summarize_chain, endpoint.backend, question="Q?", text="A.", max_tokens=1500
    )
    validate_document(calls.parse_json(state["chain"]), programs.CHAIN_SCHEMA)


def test_a_failing_server_raises_request_failed(failing_url: str) -> None:
    endpoint = connect(failing_url)
    with pytest.raises(calls.RequestFailed, match="out of memory"):
        calls.rollouts(endpoint.backend, BANK_TEXT, "What is 1 + 1?", ImageView(), 2, GEN)
    with pytest.raises(calls.RequestFailed):
        calls.solve(endpoint.backend, "What is 1 + 1?", "", ImageView(), GEN)
