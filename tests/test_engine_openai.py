"""SGLang's OpenAI routes on the reference engine's own port (serve's OpenAI layer, no
bank), driven by the official ``openai`` client."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest

USER = [{"role": "user", "content": "How many balls are in the box?"}]


@pytest.fixture(scope="module")
def client(engine_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=engine_url + "/v1", api_key="-", max_retries=0)


def test_models_list_and_retrieve(client: openai.OpenAI, tiny_model_dir: Path) -> None:
    models = client.models.list().data
    assert [m.id for m in models] == [str(tiny_model_dir)]
    assert models[0].model_extra["max_model_len"] == 4096
    assert client.models.retrieve(str(tiny_model_dir)).id == str(tiny_model_dir)
    with pytest.raises(openai.NotFoundError) as info:
        client.models.retrieve("gpt-4o")
    assert info.value.body["code"] == "model_not_found"


def test_chat_without_a_bank(client: openai.OpenAI, engine_url: str) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="any-name", messages=USER, max_tokens=4, temperature=0
    )  # any model name, as SGLang's server
    out = raw.parse()
    assert out.object == "chat.completion" and out.id.startswith("chatcmpl-")
    assert "x-ted-bank-version" not in raw.headers and out.system_fingerprint is None
    assert out.choices[0].message.role == "assistant" and out.choices[0].finish_reason
    assert out.usage.prompt_tokens < 30  # the chat turn only, no bank
    with client.chat.completions.create(
        model="m", messages=USER, max_tokens=4, temperature=0, stream=True,
        stream_options={"include_usage": True},
    ) as stream:  # fmt: skip
        chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == out.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == out.usage.completion_tokens


def test_text_completions_and_logprobs(client: openai.OpenAI) -> None:
    out = client.completions.create(
        model="m", prompt=["One", "Two"], max_tokens=3, n=2, temperature=0, logprobs=2
    )
    assert [c.index for c in out.choices] == [0, 1, 2, 3]
    assert all(len(c.logprobs.tokens) == len(c.logprobs.top_logprobs) for c in out.choices)
    chat = client.chat.completions.create(
        model="m", messages=USER, max_tokens=3, logprobs=True, top_logprobs=2
    )
    assert all(len(e.top_logprobs) == 2 for e in chat.choices[0].logprobs.content)


def test_errors_in_openai_shape(client: openai.OpenAI, engine_url: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="m", messages=USER, max_tokens=10**6)
    assert "context" in info.value.body["message"]
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="m", messages=USER, temperature=7)
    assert info.value.body["param"] == "temperature"
    raw = httpx.post(engine_url + "/v1/chat/completions", content=b"{nope")
    assert raw.status_code == 400 and raw.json()["error"]["type"] == "invalid_request_error"
    body = {"text": "x", "sampling_params": {"max_new_tokens": 2}}
    assert httpx.post(engine_url + "/generate", json=body, timeout=60).status_code == 200
