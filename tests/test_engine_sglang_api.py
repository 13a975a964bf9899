"""SGLang request fields, streaming modes and routes on real engines (tiny model, loopback).

``incremental_engine_url`` runs with ``--incremental-streaming-output --stream-interval 16
--enable-return-hidden-states --enable-priority-scheduling``; ``engine_url`` with the
defaults (cumulative streams, no hidden states).
"""

from __future__ import annotations

import gzip
import itertools
import json
from pathlib import Path

import httpx
import pytest
import torch
from engine_http import engine_client, generate

GREEDY = {"temperature": 0, "max_new_tokens": 12, "ignore_eos": True}


@pytest.fixture(scope="module")
def inc(incremental_engine_url: str):
    yield from engine_client(incremental_engine_url)


@pytest.fixture(scope="module")
def plain(engine_url: str):
    yield from engine_client(engine_url)


def stream(client: httpx.Client, **body) -> list[dict]:
    with client.stream("POST", "/generate", json={**body, "stream": True}) as response:
        assert response.status_code == 200
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    return [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]


# -- streaming ---------------------------------------------------------------------------


def test_incremental_chunks_carry_only_what_is_new(inc: httpx.Client) -> None:
    body = {
        "text": "Stream in pieces:",
        "sampling_params": {**GREEDY, "max_new_tokens": 24, "stream_interval": 1},
        "return_logprob": True,
        "top_logprobs_num": 2,
        "token_ids_logprob": [5, 7],
    }
    full = generate(inc, **body)
    chunks = stream(inc, **body)
    assert len(chunks) > 2
    assert "".join(c["text"] for c in chunks) == full["text"]
    assert [t for c in chunks for t in c["output_ids"]] == full["output_ids"]
    previous = 0
    for c in chunks:
        meta = c["meta_info"]
        new = meta["completion_tokens"] - previous
        assert len(c["output_ids"]) == new > 0
        assert meta["output_token_logprobs_length"] == meta["completion_tokens"]  # cumulative
        for key in ("output_token_logprobs", "output_top_logprobs", "output_token_ids_logprobs"):
            assert len(meta[key]) == new, key
        assert [e[1] for e in meta["output_token_logprobs"]] == c["output_ids"]
        assert meta["input_token_logprobs"] == full["meta_info"]["input_token_logprobs"]
        previous = meta["completion_tokens"]
    assert previous == full["meta_info"]["completion_tokens"]
    assert chunks[-1]["meta_info"]["finish_reason"] == full["meta_info"]["finish_reason"]


def test_stream_interval_spaces_chunks(inc: httpx.Client) -> None:
    for interval, sampling in ((16, GREEDY), (6, {**GREEDY, "stream_interval": 6})):
        chunks = stream(inc, text="Count:", sampling_params={**sampling, "max_new_tokens": 40})
        counts = [c["meta_info"]["completion_tokens"] for c in chunks]
        assert counts[-1] == 40 and len(counts) > 2
        # The first token goes out at once, then at least `interval` tokens a chunk.
        assert all(b - a >= interval for a, b in itertools.pairwise(counts[:-1]))


def test_cumulative_stream_is_the_default(plain: httpx.Client) -> None:
    chunks = stream(plain, text="Stream in pieces:", sampling_params=GREEDY, return_logprob=True)
    for c in chunks:
        n = c["meta_info"]["completion_tokens"]
        assert len(c["output_ids"]) == len(c["meta_info"]["output_token_logprobs"]) == n


# -- request fields ----------------------------------------------------------------------


def test_token_ids_logprob_reports_given_ids_at_every_position(plain: httpx.Client) -> None:
    probe = generate(plain, text="Which token next?", sampling_params=GREEDY)
    ids = sorted({*probe["output_ids"][:3], 0})
    out = generate(
        plain,
        text="Which token next?",
        sampling_params=GREEDY,
        return_logprob=True,
        logprob_start_len=0,
        token_ids_logprob=ids,
    )
    meta = out["meta_info"]
    # SGLang's layout: like input_top_logprobs (first position None), one row per output.
    assert len(meta["input_token_ids_logprobs"]) == meta["prompt_tokens"]
    assert meta["input_token_ids_logprobs"][0] is None
    assert len(meta["output_token_ids_logprobs"]) == meta["completion_tokens"]
    for row in meta["input_token_ids_logprobs"][1:] + meta["output_token_ids_logprobs"]:
        assert [e[1] for e in row] == ids and all(e[0] < 0 for e in row)
    # The chosen token's own logprob is the one reported for its id.
    for (lp, tid, _), row in zip(
        meta["output_token_logprobs"], meta["output_token_ids_logprobs"], strict=True
    ):
        if tid in ids:
            assert dict((e[1], e[0]) for e in row)[tid] == pytest.approx(lp, abs=1e-5)
    for (lp, tid, _), row in zip(
        meta["input_token_logprobs"][1:], meta["input_token_ids_logprobs"][1:], strict=True
    ):
        if tid in ids:
            assert dict((e[1], e[0]) for e in row)[tid] == pytest.approx(lp, abs=1e-5)
    bad = plain.post("/generate", json={"text": "x", "token_ids_logprob": [10**7]})
    assert bad.status_code == 400 and "out-of-vocabulary" in bad.text


def test_hidden_states_are_the_rows_the_lm_head_reads(
    inc: httpx.Client, plain: httpx.Client, tiny_model_dir: Path
) -> None:
    from ted_sglang.engine.model_loader import load_model

    out = generate(
        inc,
        text="Hidden states of a short prompt",
        sampling_params={**GREEDY, "max_new_tokens": 4},
        return_hidden_states=True,
    )
    meta = out["meta_info"]
    prefill, *decode = meta["hidden_states"]
    assert len(prefill) == meta["prompt_tokens"] - meta["cached_tokens"]
    assert len(decode) == meta["completion_tokens"] - 1
    lm_head = load_model(tiny_model_dir).model.get_output_embeddings()
    rows = torch.tensor([prefill[-1], *decode])
    with torch.inference_mode():
        greedy = lm_head(rows).argmax(dim=-1).tolist()
    assert greedy == out["output_ids"]  # each row is what produced the next token
    refused = plain.post("/generate", json={"text": "x", "return_hidden_states": True})
    assert refused.status_code == 400 and "hidden states" in refused.text


def test_return_prompt_token_ids(inc: httpx.Client) -> None:
    body = {
        "text": "Prompt ids, please",
        "sampling_params": {**GREEDY, "max_new_tokens": 3},
        "return_logprob": True,
        "logprob_start_len": 0,
        "return_prompt_token_ids": True,
    }
    out = generate(inc, **body)
    assert out["prompt_token_ids"] == [e[1] for e in out["meta_info"]["input_token_logprobs"]]
    assert all(c["prompt_token_ids"] == out["prompt_token_ids"] for c in stream(inc, **body))
    assert "prompt_token_ids" not in generate(inc, text="x", sampling_params={"max_new_tokens": 1})


def test_structural_tag_constrains_the_output(plain: httpx.Client) -> None:
    import re

    tag = {
        "type": "structural_tag",
        "format": {
            "type": "tag",
            "begin": "<n>",
            # Bounded, so a random model's digits always fit in max_new_tokens.
            "content": {
                "type": "json_schema",
                "json_schema": {"type": "integer", "minimum": 0, "maximum": 999},
            },
            "end": "</n>",
        },
    }
    for i in range(3):
        out = generate(
            plain,
            text=f"Number {i}:",
            sampling_params={"max_new_tokens": 24, "structural_tag": json.dumps(tag)},
        )
        assert re.fullmatch(r"<n>(0|[1-9][0-9]{0,2})</n>", out["text"]), out["text"]
        assert out["meta_info"]["finish_reason"]["type"] == "stop"
    for bad in ("{not json", json.dumps({"type": "structural_tag"}), json.dumps([1])):
        response = plain.post(
            "/generate", json={"text": "x", "sampling_params": {"structural_tag": bad}}
        )
        assert response.status_code == 400, response.text


def test_legacy_structural_tag_is_triggered_tags(tiny_model_dir: Path) -> None:
    from ted_sglang.engine.grammar import GrammarCache
    from ted_sglang.engine.model_loader import load_model

    loaded = load_model(tiny_model_dir)
    vocab = loaded.model.get_output_embeddings().weight.shape[0]
    grammars = GrammarCache(loaded.tokenizer, vocab, loaded.eos_token_ids)
    legacy = json.dumps(
        {
            "structures": [{"begin": "<b>", "schema": {"type": "boolean"}, "end": "</b>"}],
            "triggers": ["<b>"],
        }
    )
    compiled = grammars.get("structural_tag", legacy)
    for text, ok in (("hi <b>true</b> bye", True), ("plain text", True), ("<b>maybe", False)):
        assert grammars.matcher(compiled).accept_string(text) is ok, text


def test_custom_params_and_priority_are_accepted(inc: httpx.Client) -> None:
    out = generate(
        inc,
        text="x",
        sampling_params={"max_new_tokens": 2, "custom_params": {"k": [1, 2]}},
        priority=10,
    )
    assert out["meta_info"]["completion_tokens"] <= 2
    assert inc.post("/generate", json={"text": "x", "priority": 2**63}).status_code == 400


def test_rid_per_prompt_with_n(plain: httpx.Client) -> None:
    outs = generate(
        plain,
        text=["a", "b"],
        sampling_params={"n": 3, "max_new_tokens": 2},
        rid=["first", "second"],
    )
    ids = [o["meta_info"]["id"] for o in outs]
    assert len(outs) == 6 and len(set(ids)) == 6 and not {"first", "second"} & set(ids)
    single = generate(plain, text="a", sampling_params={"n": 2, "max_new_tokens": 2}, rid="g")
    assert len(single) == 2 and len({o["meta_info"]["id"] for o in single}) == 2
    too_many = plain.post(
        "/generate",
        json={"text": ["a", "b"], "sampling_params": {"n": 2}, "rid": ["1", "2", "3", "4"]},
    )
    assert too_many.status_code == 400 and "batch_size" in too_many.text


def test_priority_orders_the_waiting_queue(tiny_model_dir: Path) -> None:
    from ted_sglang.engine.model_loader import load_model
    from ted_sglang.engine.model_runner import ModelRunner
    from ted_sglang.engine.output import OutputBuilder
    from ted_sglang.engine.radix_cache import RadixCache
    from ted_sglang.engine.sampling_params import SamplingParams
    from ted_sglang.engine.scheduler import Scheduler
    from ted_sglang.engine.sequence import Sequence

    loaded = load_model(tiny_model_dir)
    runner = ModelRunner(loaded)

    def order(sign: int) -> list[str]:
        sched = Scheduler(runner, RadixCache(0), OutputBuilder(loaded.tokenizer), 1, 64, sign)
        for rid, priority in (("none", None), ("low", 1), ("high", 5), ("high-later", 5)):
            ids = [3, 4, 5, len(rid)]
            seq = Sequence(rid, ids, ids, SamplingParams(), 4, frozenset(), priority=priority)
            sched.add(seq)
        sched.schedule()  # one slot: the first in order is admitted, the rest wait
        return [s.rid for s in (*sched.prefilling, *sched.waiting)]

    assert order(0) == ["none", "low", "high", "high-later"]  # arrival order
    assert order(-1) == ["high", "high-later", "low", "none"]  # SGLang's default
    assert order(1) == ["low", "high", "high-later", "none"]  # low values first


# -- routes ------------------------------------------------------------------------------


def test_ready(inc: httpx.Client) -> None:
    assert inc.get("/ready").status_code == 200


def test_profile_writes_a_chrome_trace(inc: httpx.Client, profile_dir: Path) -> None:
    before = set(profile_dir.rglob("*.trace.json.gz"))
    body = {"num_steps": 3, "profile_id": "three-steps", "output_dir": "sub", "with_stack": False}
    started = inc.post("/start_profile", json=body)
    assert started.status_code == 200 and started.text == "Start profiling.\n"
    again = inc.post("/start_profile")
    assert again.status_code == 400 and "already in progress" in again.text
    generate(inc, text="Profile these steps", sampling_params=GREEDY)  # > 3 steps: it ends
    (trace,) = set(profile_dir.rglob("*.trace.json.gz")) - before
    assert trace == profile_dir / "sub" / "three-steps-TP-0.trace.json.gz"
    events = json.loads(gzip.decompress(trace.read_bytes()))["traceEvents"]
    assert any(str(e.get("name", "")).startswith("aten::") for e in events)
    stopped = inc.post("/stop_profile")  # ended by itself already
    assert stopped.status_code == 400 and "not in progress" in stopped.text


@pytest.mark.parametrize(
    "body",
    [
        {"output_dir": "/etc"},
        {"output_dir": "../outside"},
        {"profile_id": "../../x"},
        {"num_steps": 0},
        {"num_steps": "3"},
        {"profile_by_stage": True},
        {"activities": ["MEM"]},
        [1],
    ],
)
def test_bad_profile_requests_are_400(inc: httpx.Client, body) -> None:
    response = inc.post("/start_profile", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["message"]
    assert inc.post("/stop_profile").status_code == 400  # nothing was left running


@pytest.mark.parametrize(
    "raw",
    [
        b"[" * 100_000 + b"]" * 100_000,
        b'{"output_dir": "\\ud800"}',
        b'{"output_dir": "a\\u0000b"}',
    ],
    ids=["nested", "lone-surrogate", "nul"],
)
def test_odd_profile_bodies_are_400(inc: httpx.Client, raw: bytes) -> None:
    response = inc.post("/start_profile", content=raw)
    assert response.status_code == 400, response.text
    assert inc.post("/stop_profile").status_code == 400  # nothing was left running


def test_stream_interval_setting_is_checked() -> None:
    from ted_sglang.engine.config import EngineConfig

    with pytest.raises(ValueError, match="stream_interval"):
        EngineConfig(model="m", stream_interval=0)
