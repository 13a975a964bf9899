"""``serve`` over real HTTP on loopback, driven by the official ``openai`` client, in front
of the reference engine on the tiny random model."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import jsonschema
import openai
import pytest
from bank_files import write_bank
from serve_threads import serve_thread

from ted_sglang.bank import ExperienceBank

ADMIN = "admin-secret"
TEXTS = (
    "Check the units of every quantity before you state the final answer.",
    "Draw the figure and label every side before writing any equation.",
)
USER = [{"role": "user", "content": "How many balls are in the box?"}]


@pytest.fixture(scope="module")
def serve_url(engine_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    path = tmp_path_factory.mktemp("serve-http") / "bank.json"
    write_bank(path, *TEXTS)
    with serve_thread(
        path, engine_url, admin_token=ADMIN, echo_prompt=True, usage_flush_interval_s=0.2
    ) as url:
        yield url


@pytest.fixture(scope="module")
def client(serve_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=serve_url + "/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def admin_bank(serve_url: str) -> dict:
    response = httpx.get(serve_url + "/admin/bank", headers={"Authorization": f"Bearer {ADMIN}"})
    assert response.status_code == 200
    return response.json()


def test_chat_completion(client: openai.OpenAI, admin_bank: dict) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="tiny", messages=USER, max_tokens=8, temperature=0
    )
    assert raw.headers["x-ted-bank-version"] == "2"
    out = raw.parse()
    assert out.object == "chat.completion" and out.system_fingerprint == "ted-bank-v2"
    assert raw.headers["x-request-id"] == out.id and out.id.startswith("chatcmpl-")
    assert len(out.choices) == 1 and out.choices[0].message.role == "assistant"
    assert isinstance(out.choices[0].message.content, str)
    assert out.choices[0].finish_reason in ("stop", "length")
    usage = out.usage
    assert usage.completion_tokens <= 8 and usage.prompt_tokens > 40
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.prompt_tokens_details.cached_tokens >= 0
    prompt = out.model_extra["ted"]["prompt"]
    assert prompt.startswith(admin_bank["prefix"]) and all(t in prompt for t in TEXTS)
    assert prompt.endswith("How many balls are in the box?<|im_end|>\n<|im_start|>assistant\n")


def test_prompt_prefix_is_the_student_programs_prefix(
    engine_url: str, client: openai.OpenAI, tiny_model_dir: Path
) -> None:
    """The served prompt equals what the TED student program sends for the same bank."""
    import sglang as sgl

    from ted_sglang.programs import student_rollouts

    bank = ExperienceBank()
    for text in TEXTS:
        bank.apply({"operations": [{"op": "add", "text": text}]})
    backend = sgl.RuntimeEndpoint(engine_url, chat_template_name="chatml")
    state = student_rollouts.run(
        bank_text=bank.render(), question=USER[0]["content"], num_rollouts=1, max_tokens=1,
        backend=backend,
    )  # fmt: skip
    out = client.chat.completions.create(model="tiny", messages=USER, max_tokens=1)
    served = out.model_extra["ted"]["prompt"]
    assert state.text().startswith(served)


def test_cached_tokens_cover_the_bank_prefix(
    client: openai.OpenAI, admin_bank: dict, tiny_model_dir: Path
) -> None:
    from transformers import AutoTokenizer

    prefix_tokens = len(AutoTokenizer.from_pretrained(tiny_model_dir).encode(admin_bank["prefix"]))
    client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "first question"}], max_tokens=1
    )
    out = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "another one entirely"}], max_tokens=1
    )
    assert out.usage.prompt_tokens_details.cached_tokens >= prefix_tokens > 40


def test_streaming_matches_non_streaming(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(
        model="tiny", messages=USER, max_tokens=12, temperature=0
    )
    with client.chat.completions.create(
        model="tiny", messages=USER, max_tokens=12, temperature=0, stream=True,
        stream_options={"include_usage": True},
    ) as stream:  # fmt: skip
        chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.system_fingerprint == "ted-bank-v2" for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finished = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finished == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == (
        whole.usage.completion_tokens
    )


def test_n_choices(client: openai.OpenAI) -> None:
    out = client.chat.completions.create(
        model="tiny", messages=USER, max_tokens=5, n=3, temperature=1.0, seed=7
    )
    assert [c.index for c in out.choices] == [0, 1, 2]
    assert 3 <= out.usage.completion_tokens <= 15
    with client.chat.completions.create(
        model="tiny", messages=USER, max_tokens=5, n=3, temperature=1.0, stream=True
    ) as stream:
        chunks = list(stream)
    finished = {c.choices[0].index for c in chunks if c.choices and c.choices[0].finish_reason}
    assert finished == {0, 1, 2}


def test_json_schema_response_format(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {
            "answer": {"type": "string", "enum": ["yes", "no", "maybe"]},
            "confidence": {"type": "integer", "minimum": 0, "maximum": 9},
        },
        "required": ["answer", "confidence"],
        "additionalProperties": False,
    }
    out = client.chat.completions.create(
        model="tiny", messages=USER, max_tokens=40, temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": schema}},
    )  # fmt: skip
    document = json.loads(out.choices[0].message.content)
    jsonschema.validate(document, schema)
    generic = client.chat.completions.create(
        model="tiny", messages=USER, max_tokens=4, response_format={"type": "json_object"}
    )
    assert generic.choices[0].message.content.startswith("{")


def test_text_completions(client: openai.OpenAI, admin_bank: dict) -> None:
    out = client.completions.create(model="tiny", prompt="The answer is", max_tokens=4)
    assert out.object == "text_completion" and len(out.choices) == 1
    assert out.model_extra["ted"]["prompt"] == admin_bank["prefix"] + "The answer is"
    batch = client.completions.create(model="tiny", prompt=["One", "Two"], max_tokens=3, n=2)
    assert [c.index for c in batch.choices] == [0, 1, 2, 3]
    bare = client.completions.create(
        model="tiny", prompt="The answer is", max_tokens=2, extra_body={"use_bank": False}
    )
    assert bare.system_fingerprint == "ted-no-bank"
    assert bare.model_extra["ted"]["prompt"] == "The answer is"
    assert bare.usage.prompt_tokens < out.usage.prompt_tokens
    with client.completions.create(
        model="tiny", prompt="Hello", max_tokens=3, stream=True
    ) as stream:
        chunks = list(stream)
    assert any(c.choices and c.choices[0].finish_reason for c in chunks)


def test_models(client: openai.OpenAI, tiny_model_dir: Path) -> None:
    models = client.models.list().data
    assert [m.id for m in models] == ["tiny"]
    assert models[0].model_extra["root"] == str(tiny_model_dir)
    assert models[0].model_extra["max_model_len"] == 4096


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"temperature": 5}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"n": 0}, "n"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"extra_body": {"regex": "(unclosed"}}, None),  # refused by the engine: a 400 too
    ],
)
def test_bad_requests_are_400_in_openai_shape(
    client: openai.OpenAI, fields: dict, param: str | None
) -> None:
    body = {"model": "tiny", "messages": USER, "max_tokens": 2, **fields}
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(**{**body, "stream": stream})
        error = info.value.body
        assert set(error) == {"message", "type", "param", "code"}
        assert error["type"] == "invalid_request_error" and error["message"]
        if param is not None:
            assert error["param"] == param


def test_framework_errors_are_in_openai_shape(serve_url: str) -> None:
    bad_json = httpx.post(
        serve_url + "/v1/chat/completions", content=b"{nope", headers={"content-type": "json"}
    )
    assert bad_json.status_code == 400 and set(bad_json.json()["error"]) >= {"message", "type"}
    missing = httpx.get(serve_url + "/v1/nothing")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "invalid_request_error"
    wrong_method = httpx.get(serve_url + "/v1/chat/completions")
    assert wrong_method.status_code == 405 and "error" in wrong_method.json()


def test_feedback_counts_and_persists(
    serve_url: str, client: openai.OpenAI, admin_bank: dict
) -> None:
    out = client.chat.completions.create(model="tiny", messages=USER, max_tokens=1)
    ok = httpx.post(serve_url + "/v1/feedback", json={"request_id": out.id, "correct": True})
    assert ok.status_code == 200 and ok.json() == {
        "request_id": out.id, "bank_version": 2, "entries": 2, "correct": True,
    }  # fmt: skip
    again = httpx.post(serve_url + "/v1/feedback", json={"request_id": out.id, "correct": False})
    assert again.status_code == 409 and again.json()["error"]["param"] == "request_id"
    unknown = httpx.post(serve_url + "/v1/feedback", json={"request_id": "x", "correct": True})
    assert unknown.status_code == 404 and unknown.json()["error"]["type"] == "invalid_request_error"

    usage_path = Path(admin_bank["usage_path"])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if usage_path.exists() and json.loads(usage_path.read_text())["feedback"]["correct"] >= 1:
            break
        time.sleep(0.1)
    usage = json.loads(usage_path.read_text())
    assert usage["entries"]["E1"]["correct"] >= 1 and usage["entries"]["E2"]["shown"] >= 1
    assert usage["requests_by_version"]["2"] >= 1
    metrics = httpx.get(serve_url + "/metrics").text
    assert 'ted_serve_feedback_total{correct="true"} 1' in metrics


def test_metrics_and_health(serve_url: str, client: openai.OpenAI) -> None:
    client.chat.completions.create(model="tiny", messages=USER, max_tokens=1)
    health = httpx.get(serve_url + "/health")
    assert health.status_code == 200 and health.json()["bank_version"] == 2
    response = httpx.get(serve_url + "/metrics")
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = response.text
    for needle in (
        'ted_serve_requests_total{route="/v1/chat/completions",status="200"}',
        'ted_serve_request_duration_seconds_bucket{route="/v1/chat/completions",le="+Inf"}',
        "ted_serve_prompt_tokens_total ",
        "ted_serve_cached_tokens_total ",
        "ted_serve_bank_version 2",
        "ted_serve_bank_entries 2",
        "ted_serve_bank_swaps_total 0",
        "ted_serve_bank_swap_failures_total 0",
        'ted_serve_bank_requests_total{version="2"}',
    ):
        assert needle in text, needle


def test_admin_routes_need_the_token(serve_url: str) -> None:
    assert httpx.get(serve_url + "/admin/bank").status_code == 401
    wrong = httpx.post(serve_url + "/admin/reload", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
    ok = httpx.post(serve_url + "/admin/reload", headers={"Authorization": f"Bearer {ADMIN}"})
    assert ok.status_code == 200 and ok.json() == {
        "outcome": "unchanged",
        "version": 2,
        "previous": 2,
    }


def test_api_key_on_and_admin_off(engine_url: str, tmp_path: Path) -> None:
    path = tmp_path / "bank.json"
    write_bank(path, TEXTS[0])
    with serve_thread(path, engine_url, api_key="sk-test") as url:
        anonymous = openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as info:
            anonymous.chat.completions.create(model="tiny", messages=USER, max_tokens=1)
        assert info.value.body["code"] == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            anonymous.models.list()
        keyed = openai.OpenAI(base_url=url + "/v1", api_key="sk-test", max_retries=0)
        out = keyed.chat.completions.create(model="tiny", messages=USER, max_tokens=1)
        assert out.system_fingerprint == "ted-bank-v1"
        off = httpx.get(url + "/admin/bank", headers={"Authorization": "Bearer x"})
        assert off.status_code == 404 and off.json()["error"]["type"] == "invalid_request_error"
        assert httpx.get(url + "/health").status_code == 200  # no key needed


def _greedy_logprobs(content: list, k: int) -> None:
    for item in content:
        tops = item.top_logprobs
        assert len(tops) == k and all(t.logprob <= 0 for t in tops)
        assert [t.logprob for t in tops] == sorted((t.logprob for t in tops), reverse=True)
        assert item.bytes == list(item.token.encode()) and item.logprob <= 0
        assert item.logprob == pytest.approx(tops[0].logprob, abs=1e-4)  # greedy: the best


def test_chat_logprobs_in_openai_shape(client: openai.OpenAI) -> None:
    body = {"model": "tiny", "messages": USER, "max_tokens": 6, "temperature": 0}
    out = client.chat.completions.create(**body, logprobs=True, top_logprobs=3)
    content = out.choices[0].logprobs.content
    assert len(content) == out.usage.completion_tokens > 0
    _greedy_logprobs(content, 3)
    bare = client.chat.completions.create(**body, logprobs=True)
    assert [c.top_logprobs for c in bare.choices[0].logprobs.content] == [[]] * len(content)
    assert client.chat.completions.create(**body).choices[0].logprobs is None
    with client.chat.completions.create(**body, logprobs=True, top_logprobs=3, stream=True) as s:
        streamed = [e for c in s if c.choices and c.choices[0].logprobs for e in
                    c.choices[0].logprobs.content]  # fmt: skip
    assert [e.token for e in streamed] == [e.token for e in content]
    assert [e.logprob for e in streamed] == pytest.approx([e.logprob for e in content], abs=1e-4)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(**body, top_logprobs=2)  # needs logprobs: true
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(**body, logprobs=True, top_logprobs=21)


def test_completion_logprobs_in_openai_shape(client: openai.OpenAI) -> None:
    body = {"model": "tiny", "prompt": "The answer is", "max_tokens": 5, "temperature": 0}
    out = client.completions.create(**body, logprobs=2)
    lp = out.choices[0].logprobs
    n = out.usage.completion_tokens
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == n > 0
    assert all(len(top) <= 2 and max(top.values()) <= 0 for top in lp.top_logprobs)
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(n)]
    with client.completions.create(**body, logprobs=2, stream=True) as stream:
        chunks = [c.choices[0].logprobs for c in stream if c.choices and c.choices[0].logprobs]
    assert [t for c in chunks for t in c.tokens] == lp.tokens
    assert [o for c in chunks for o in c.text_offset] == lp.text_offset
    with pytest.raises(openai.BadRequestError):
        client.completions.create(**body, logprobs=6)
