"""SGLang's native HTTP API on the shared tiny engine: shapes, options, errors, streaming."""

from __future__ import annotations

import itertools
import json

import httpx
import pytest
from engine_http import engine_client, generate

GREEDY = {"temperature": 0, "max_new_tokens": 8}


@pytest.fixture(scope="module")
def client(engine_url: str):
    yield from engine_client(engine_url)


def test_model_info_has_sglang_fields_and_extras(client: httpx.Client) -> None:
    for route in ("/get_model_info", "/model_info"):
        info = client.get(route).json()
        assert info["is_generation"] is True and info["has_image_understanding"] is False
        assert info["model_path"] and info["tokenizer_path"]
        assert info["chat_template_name"] == "chatml"
        assert info["context_length"] == 4096 and info["image_token"] is None


def test_generate_shape(client: httpx.Client) -> None:
    out = generate(client, text="The answer is", sampling_params=GREEDY, rid="my-rid")
    meta = out["meta_info"]
    assert meta["id"] == "my-rid"
    assert meta["finish_reason"] in ({"type": "length", "length": 8},) or (
        meta["finish_reason"]["type"] == "stop"
    )
    assert meta["completion_tokens"] == len(out["output_ids"]) <= 8
    assert meta["prompt_tokens"] > 0 and meta["e2e_latency"] > 0
    assert isinstance(out["text"], str) and 0 <= meta["cached_tokens"] < meta["prompt_tokens"]


def test_input_ids_and_batches(client: httpx.Client) -> None:
    single = generate(client, text="Hello world", sampling_params=GREEDY)
    ids = client.post(
        "/generate",
        json={
            "text": "Hello world",
            "sampling_params": {"max_new_tokens": 0},
            "return_logprob": True,
            "logprob_start_len": 0,
        },
    ).json()
    prompt_ids = [t[1] for t in ids["meta_info"]["input_token_logprobs"]]
    by_ids = generate(client, input_ids=prompt_ids, sampling_params=GREEDY)
    assert by_ids["output_ids"] == single["output_ids"]
    batch = generate(client, text=["Hello world", "Another prompt"], sampling_params=GREEDY)
    assert isinstance(batch, list) and len(batch) == 2
    assert batch[0]["output_ids"] == single["output_ids"]
    many = generate(
        client,
        input_ids=[prompt_ids, prompt_ids[:3]],
        sampling_params=[GREEDY, {"max_new_tokens": 2}],
    )
    assert [len(o["output_ids"]) <= n for o, n in zip(many, (8, 2), strict=True)] == [True] * 2
    samples = generate(client, text="Pick:", sampling_params={"n": 3, "max_new_tokens": 4})
    assert isinstance(samples, list) and len(samples) == 3
    assert len({s["meta_info"]["id"] for s in samples}) == 3


def test_prefill_only_caches_the_prompt(client: httpx.Client) -> None:
    text = "A prompt that is cached by a request with max_new_tokens 0, then reused."
    out = generate(client, text=text, sampling_params={"max_new_tokens": 0})
    assert out["text"] == "" and out["output_ids"] == []
    assert out["meta_info"]["finish_reason"] == {"type": "length", "length": 0}
    again = generate(client, text=text + " More.", sampling_params=GREEDY)
    assert again["meta_info"]["cached_tokens"] >= out["meta_info"]["prompt_tokens"] - 1


def test_stop_strings_and_tokens(client: httpx.Client) -> None:
    base = generate(client, text="Count with me:", sampling_params={**GREEDY, "max_new_tokens": 24})
    text = base["text"]
    if len(text) < 4:
        pytest.skip("the random model stopped too early to pick a stop string")
    stop = text[2:4]
    cut = generate(
        client,
        text="Count with me:",
        sampling_params={**GREEDY, "max_new_tokens": 24, "stop": stop},
    )
    assert cut["meta_info"]["finish_reason"] == {"type": "stop", "matched": stop}
    assert cut["text"] == text[: text.find(stop)]
    kept = generate(
        client,
        text="Count with me:",
        sampling_params={**GREEDY, "max_new_tokens": 24, "stop": [stop], "no_stop_trim": True},
    )
    assert kept["text"] == text[: text.find(stop) + len(stop)]
    token = base["output_ids"][1]
    by_token = generate(
        client,
        text="Count with me:",
        sampling_params={**GREEDY, "max_new_tokens": 24, "stop_token_ids": [token]},
    )
    assert by_token["meta_info"]["finish_reason"] == {"type": "stop", "matched": token}
    assert by_token["output_ids"] == base["output_ids"][: base["output_ids"].index(token) + 1]


def test_ignore_eos_and_min_new_tokens(client: httpx.Client) -> None:
    out = generate(client, text="x", sampling_params={"max_new_tokens": 12, "ignore_eos": True})
    assert out["meta_info"]["completion_tokens"] == 12
    first = generate(client, text="y", sampling_params=GREEDY)["output_ids"][0]
    out = generate(client, text="y", sampling_params={**GREEDY, "stop_token_ids": [first]})
    assert out["output_ids"] == [first] and out["meta_info"]["finish_reason"]["matched"] == first
    out = generate(
        client, text="y", sampling_params={**GREEDY, "stop_token_ids": [first], "min_new_tokens": 3}
    )
    assert out["output_ids"][0] != first and out["meta_info"]["completion_tokens"] >= 3


def test_logprob_shapes(client: httpx.Client) -> None:
    out = generate(
        client,
        text="one two three four",
        sampling_params=GREEDY,
        return_logprob=True,
        logprob_start_len=1,
        top_logprobs_num=3,
        return_text_in_logprobs=True,
    )
    meta = out["meta_info"]
    n_in = meta["prompt_tokens"] - 1
    assert len(meta["input_token_logprobs"]) == n_in
    assert meta["input_token_logprobs"][0][0] is None  # as SGLang: no logprob for the first
    assert all(lp < 0 for lp, _, _ in meta["input_token_logprobs"][1:])
    assert all(isinstance(t, str) for _, _, t in meta["input_token_logprobs"])
    assert [t for _, t, _ in meta["output_token_logprobs"]] == out["output_ids"]
    assert len(meta["input_top_logprobs"]) == n_in and meta["input_top_logprobs"][0] is None
    assert all(len(row) == 3 for row in meta["output_top_logprobs"])
    for (lp, tid, _), row in zip(
        meta["output_token_logprobs"], meta["output_top_logprobs"], strict=True
    ):
        assert tid == row[0][1] and lp == pytest.approx(row[0][0])  # greedy takes the top one
    plain = generate(client, text="one two", sampling_params=GREEDY, return_logprob=True)
    assert plain["meta_info"]["input_token_logprobs"] == []
    assert plain["meta_info"]["output_token_logprobs"][0][2] is None


def test_prompt_logprobs_do_not_depend_on_the_cache(client: httpx.Client) -> None:
    body = {
        "text": "Logprobs of a prompt, twice.",
        "sampling_params": {"max_new_tokens": 0},
        "return_logprob": True,
        "logprob_start_len": 0,
    }
    first = generate(client, **body)["meta_info"]
    second = generate(client, **body)["meta_info"]
    assert second["cached_tokens"] == 0  # logprob_start_len 0: nothing may come from the cache
    for a, b in zip(first["input_token_logprobs"], second["input_token_logprobs"], strict=True):
        assert a[1] == b[1] and (a[0] is None) == (b[0] is None)
        assert a[0] is None or a[0] == pytest.approx(b[0], abs=1e-4)


def test_streaming_is_cumulative_and_ends_with_done(client: httpx.Client) -> None:
    body = {"text": "Stream this:", "sampling_params": GREEDY, "stream": True}
    full = generate(client, text="Stream this:", sampling_params=GREEDY)
    chunks = []
    with client.stream("POST", "/generate", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    for line in lines[:-1]:
        assert line.startswith("data: ")
        chunks.append(json.loads(line[6:]))
    texts = [c["text"] for c in chunks]
    assert all(b.startswith(a) for a, b in itertools.pairwise(texts))
    assert texts[-1] == full["text"] and chunks[-1]["output_ids"] == full["output_ids"]
    assert chunks[-1]["meta_info"]["finish_reason"] is not None
    assert all(c["meta_info"]["finish_reason"] is None for c in chunks[:-1])


def test_batch_streaming_has_indices(client: httpx.Client) -> None:
    body = {"text": ["a", "b"], "sampling_params": {"max_new_tokens": 3}, "stream": True}
    with client.stream("POST", "/generate", json=body) as response:
        lines = [line for line in response.iter_lines() if line]
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    assert {c["index"] for c in chunks} == {0, 1}
    assert sum(c["meta_info"]["finish_reason"] is not None for c in chunks) == 2


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b'"a string"',
        json.dumps({}).encode(),
        json.dumps({"text": "a", "input_ids": [1, 2]}).encode(),
        json.dumps({"text": "a", "sampling_params": {"max_new_tokens": -1}}).encode(),
        json.dumps({"text": "a", "sampling_params": {"top_p": 0}}).encode(),
        json.dumps({"text": 3}).encode(),
        json.dumps({"text": "a", "sampling_params": {"temperature": "hot"}}).encode(),
        json.dumps({"text": "a", "return_logprob": "yes"}).encode(),
        json.dumps({"input_ids": [1, 99999]}).encode(),
        json.dumps({"text": "a", "image_data": "aGVsbG8="}).encode(),
        json.dumps({"text": "a", "sampling_params": {"regex": "(unclosed"}}).encode(),
        json.dumps({"text": "a", "sampling_params": {"json_schema": "{not json"}}).encode(),
        json.dumps(
            {"text": "a", "sampling_params": {"json_schema": '{"type": "nonsense"}'}}
        ).encode(),
        json.dumps({"text": "a", "return_logprob": True, "logprob_start_len": 50}).encode(),
        json.dumps({"text": "a " * 5000}).encode(),
    ],
)
def test_bad_requests_are_400_with_a_message(client: httpx.Client, body: bytes) -> None:
    response = client.post("/generate", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    if isinstance(error, str):  # SGLang's answer to a body that breaks its JSON contract
        from sglang.srt.entrypoints.api_contract import generate_contract_error

        assert error == generate_contract_error(json.loads(body))
    else:
        assert error["code"] == 400 and error["message"] and error["type"]
    assert client.get("/health").status_code == 200


def test_prompt_longer_than_the_context_is_refused(client: httpx.Client) -> None:
    response = client.post("/generate", json={"input_ids": [5] * 4096})
    assert response.status_code == 400 and "context length" in response.text
    response = client.post(
        "/generate",
        json={"input_ids": [5] * 4090, "sampling_params": {"max_new_tokens": 100}},
    )
    assert response.status_code == 400, response.text  # as SGLang without --allow-auto-truncate
    assert "maximum context length of 4096 tokens" in response.json()["error"]["message"]
    out = generate(client, input_ids=[5] * 4090, sampling_params={"ignore_eos": True})
    assert out["meta_info"]["completion_tokens"] == 6  # the default 128 shrinks to fit


def test_health_and_server_info(client: httpx.Client) -> None:
    assert client.get("/health").status_code == 200
    assert client.get("/health_generate").status_code == 200
    info = client.get("/server_info").json()
    assert client.get("/get_server_info").status_code == 200
    cache = info["cache"]
    for key in (
        "budget_tokens",
        "size_tokens",
        "num_requests",
        "prompt_tokens",
        "cached_tokens",
        "hit_rate",
        "evicted_tokens",
    ):
        assert key in cache
    assert 0.0 <= cache["hit_rate"] <= 1.0 and cache["budget_tokens"] == 65536
    assert info["internal_states"][0]["num_running_reqs"] >= 0


def test_flush_cache_get_and_post(client: httpx.Client) -> None:
    generate(client, text="Something to flush.", sampling_params={"max_new_tokens": 1})
    assert client.get("/server_info").json()["cache"]["size_tokens"] > 0
    assert client.post("/flush_cache").status_code == 200
    assert client.get("/server_info").json()["cache"]["size_tokens"] == 0
    assert client.get("/flush_cache").status_code == 200
    out = generate(client, text="Something to flush.", sampling_params={"max_new_tokens": 1})
    assert out["meta_info"]["cached_tokens"] == 0


def test_grammars_compile_once_and_constrain(client: httpx.Client) -> None:
    regex = "(yes|no)-[0-9]{2}"
    before = client.get("/server_info").json()["grammar_cache"]
    outs = [
        generate(
            client, text=f"Answer {i}:", sampling_params={"regex": regex, "max_new_tokens": 16}
        )
        for i in range(3)
    ]
    after = client.get("/server_info").json()["grammar_cache"]
    assert after["misses"] - before["misses"] <= 1 and after["hits"] - before["hits"] >= 2
    import re

    for out in outs:
        assert re.fullmatch(regex, out["text"]), out["text"]
        assert out["meta_info"]["finish_reason"]["type"] == "stop"
