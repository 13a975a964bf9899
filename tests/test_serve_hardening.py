"""serve under hostile and careless use, over real HTTP in front of the reference engine:
authentication before validation, odd values, ``max_tokens`` beyond the context,
protected ``/metrics`` and ``/openapi.json``, model names, and banks it cannot serve."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from bank_files import add, write_bank

from ted_sglang.bank import ExperienceBank
from ted_sglang.engine.launcher import free_port
from ted_sglang.serve.settings import ServeSettings
from ted_sglang.serve.thread import ServeThread

KEY = "sk-hardening"
ADMIN = "admin-hardening"
CONTEXT = 4096  # the tiny model's context length
USER = [{"role": "user", "content": "How many balls are in the box?"}]
GOOD = {"model": "tiny", "messages": USER, "max_tokens": 1}


def settings(bank_path: Path, engine_url: str, **kwargs: object) -> ServeSettings:
    kwargs = {"api_key": KEY, "admin_token": ADMIN, "served_model_name": "tiny", **kwargs}
    return ServeSettings(bank_path=bank_path, endpoints=[engine_url], port=free_port(), **kwargs)


@pytest.fixture(scope="module")
def bank_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("serve-hardening") / "bank.json"
    write_bank(path, "Check the units of every quantity before you state the final answer.")
    return path


@pytest.fixture(scope="module")
def serve_url(engine_url: str, bank_file: Path) -> Iterator[str]:
    with ServeThread(settings(bank_file, engine_url)) as url:
        yield url


def auth(token: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_openai_error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return error


# ---- authentication first ---------------------------------------------------------------


def test_unauthenticated_callers_get_401_before_any_validation(serve_url: str) -> None:
    chat = serve_url + "/v1/chat/completions"
    bodies = [
        {"model": "tiny", "messages": [], "temperature": 9},  # schema errors
        {"model": "tiny", "messages": USER, "seed": 2**70},
    ]
    for body in bodies:
        error = assert_openai_error(httpx.post(chat, json=body), 401)
        assert (error["type"], error["code"]) == ("invalid_request_error", "invalid_api_key")
        assert "messages" not in error["message"]
    not_json = httpx.post(chat, content=b"{nope", headers={"content-type": "application/json"})
    assert_openai_error(not_json, 401)
    for token in ("sk-h\u00e9rdening", "\u2603", "x" * 10_000):
        raw = {"Authorization": b"Bearer " + token.encode()}
        assert_openai_error(httpx.post(chat, json=GOOD, headers=raw), 401)
    assert_openai_error(httpx.post(chat, json=GOOD, headers={"Authorization": KEY}), 401)
    ok = httpx.post(chat, json=GOOD, headers=auth())
    assert ok.status_code == 200, ok.text


# ---- odd values ---------------------------------------------------------------------------

ODD_BODIES = [
    {**GOOD, "seed": 2**64},
    {**GOOD, "seed": -(2**70)},
    {**GOOD, "max_tokens": 2**70},
    {**GOOD, "max_tokens": 10**400},
    {**GOOD, "max_completion_tokens": 2**63},
    {**GOOD, "n": 2**64},
    {**GOOD, "stop_token_ids": [2**64]},
    {**GOOD, "stop_token_ids": [-1]},
    {**GOOD, "top_k": 2**64},
    {**GOOD, "min_tokens": 2**64},
    {**GOOD, "logit_bias": {"1" * 30: 1}},
    {**GOOD, "logit_bias": {"5": 1e300}},
    {**GOOD, "logit_bias": {"5": 2**70}},
    {**GOOD, "top_logprobs": 2**64, "logprobs": True},
    {**GOOD, "temperature": 10**30},
    {
        **GOOD,
        "response_format": {"type": "json_schema", "json_schema": {"schema": {"type": 2**70}}},
    },
]
ODD_RAW = [
    b'{"model": "tiny", "max_tokens": 1, "messages": [{"role": "user", "content": "\\ud800"}]}',
    b'{"model": "tiny", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}], '
    b'"stop": ["\\udfff"]}',
    b'{"model": "\\ud83d", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}]}',
    b'{"model": "tiny", "max_tokens": 1e999, "messages": [{"role": "user", "content": "x"}]}',
    b'{"model": "tiny", "messages": [{"role": "user", "content": "x"}], "seed": NaN}',
    b"[" * 5000 + b"]" * 5000,
    b'{"model": "tiny", "messages": "\xff\xfe"}',
]


def _client_port(response: httpx.Response) -> int:
    return response.extensions["network_stream"].get_extra_info("client_addr")[1]


def test_odd_values_are_4xx_and_the_connection_stays_usable(serve_url: str) -> None:
    bodies = [json.dumps(b).encode() for b in ODD_BODIES] + ODD_RAW
    with httpx.Client(base_url=serve_url, headers=auth(), timeout=30) as client:
        first = client.post("/v1/chat/completions", json=GOOD)
        assert first.status_code == 200
        port = _client_port(first)
        for body in bodies:
            bad = client.post(
                "/v1/chat/completions", content=body, headers={"content-type": "application/json"}
            )
            assert 400 <= bad.status_code < 500, (body[:120], bad.status_code, bad.text[:300])
            assert_openai_error(bad, bad.status_code)
            good = client.post("/v1/chat/completions", json=GOOD)
            assert good.status_code == 200, good.text
            assert _client_port(good) == port, f"the connection was closed after {body[:120]!r}"
        for body in bodies[:4]:  # the same values on the text route
            text = json.loads(body)
            text.pop("messages")
            text["prompt"] = "The answer is"
            bad = client.post("/v1/completions", json=text)
            assert 400 <= bad.status_code < 500, (text, bad.text)


# ---- max_tokens against the context -------------------------------------------------------


def long_message(tiny_model_dir: Path, tokens: int) -> str:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    words = " ".join(f"w{i % 97}" for i in range(tokens))
    ids = tokenizer.encode(words)[:tokens]
    return tokenizer.decode(ids)


def test_max_tokens_beyond_the_context_is_400(serve_url: str, tiny_model_dir: Path) -> None:
    content = long_message(tiny_model_dir, 3900)
    body = {"model": "tiny", "messages": [{"role": "user", "content": content}]}
    for max_tokens in (CONTEXT, CONTEXT - 50, 10**9):
        response = httpx.post(
            serve_url + "/v1/chat/completions",
            json={**body, "max_tokens": max_tokens},
            headers=auth(),
            timeout=60,
        )
        error = assert_openai_error(response, 400)
        assert "context" in error["message"], error
    text = httpx.post(
        serve_url + "/v1/completions",
        json={"model": "tiny", "prompt": "x", "max_tokens": CONTEXT},
        headers=auth(),
    )
    assert "context" in assert_openai_error(text, 400)["message"]


def test_allow_auto_truncate_fits_max_tokens_to_the_context(
    engine_url: str, bank_file: Path, tiny_model_dir: Path
) -> None:
    content = long_message(tiny_model_dir, 3900)
    messages = [{"role": "user", "content": content}]
    with ServeThread(settings(bank_file, engine_url, allow_auto_truncate=True)) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
        probe = client.chat.completions.create(model="tiny", messages=messages, max_tokens=1)
        prompt_tokens = probe.usage.prompt_tokens
        assert CONTEXT - 200 < prompt_tokens < CONTEXT
        chat = client.chat.completions.create(model="tiny", messages=messages, max_tokens=CONTEXT)
        assert chat.usage.completion_tokens <= CONTEXT - prompt_tokens
        # Chat adds the template's stop strings, which a random model may write; a plain
        # completion with ignore_eos has no stop at all, so it runs to the fitted length.
        probe = client.completions.create(model="tiny", prompt=content, max_tokens=1)
        prompt_tokens = probe.usage.prompt_tokens
        out = client.completions.create(
            model="tiny", prompt=content, max_tokens=CONTEXT, extra_body={"ignore_eos": True}
        )
        assert out.usage.completion_tokens == CONTEXT - prompt_tokens
        assert out.choices[0].finish_reason == "length"


# ---- /metrics and /openapi.json -------------------------------------------------------------


def test_metrics_and_openapi_need_a_key_when_one_is_set(serve_url: str) -> None:
    for route in ("/metrics", "/openapi.json"):
        assert_openai_error(httpx.get(serve_url + route), 401)
        assert_openai_error(httpx.get(serve_url + route, headers=auth("nope")), 401)
        assert httpx.get(serve_url + route, headers=auth()).status_code == 200
        assert httpx.get(serve_url + route, headers=auth(ADMIN)).status_code == 200
    assert httpx.get(serve_url + "/docs").status_code == 404
    assert httpx.get(serve_url + "/health").status_code == 200  # probes need no key


def test_public_metrics_flag_opens_them(engine_url: str, bank_file: Path) -> None:
    with ServeThread(settings(bank_file, engine_url, public_metrics=True)) as url:
        assert httpx.get(url + "/metrics").status_code == 200
        assert "/v1/chat/completions" in httpx.get(url + "/openapi.json").json()["paths"]
        assert_openai_error(httpx.post(url + "/v1/chat/completions", json=GOOD), 401)


# ---- model names ------------------------------------------------------------------------------


def test_unknown_model_is_404_model_not_found(serve_url: str, tiny_model_dir: Path) -> None:
    client = openai.OpenAI(base_url=serve_url + "/v1", api_key=KEY, max_retries=0)
    model = client.models.retrieve("tiny")
    assert model.id == "tiny" and model.object == "model" and model.owned_by
    for name in ("gpt-4o", str(tiny_model_dir), "tiny/extra"):
        with pytest.raises(openai.NotFoundError) as info:
            client.models.retrieve(name)
        assert info.value.body["code"] == "model_not_found"
        with pytest.raises(openai.NotFoundError) as info:
            client.chat.completions.create(model=name, messages=USER, max_tokens=1)
        assert info.value.body["code"] == "model_not_found" and info.value.body["param"] == "model"
        with pytest.raises(openai.NotFoundError):
            client.completions.create(model=name, prompt="x", max_tokens=1)


def test_accept_any_model_flag_and_body_limit(engine_url: str, bank_file: Path) -> None:
    kwargs = {"accept_any_model": True, "max_body_bytes": 4096}
    with ServeThread(settings(bank_file, engine_url, **kwargs)) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
        out = client.chat.completions.create(model="gpt-4o", messages=USER, max_tokens=1)
        assert out.model == "tiny"
        big = {**GOOD, "messages": [{"role": "user", "content": "x" * 5000}]}
        chat = url + "/v1/chat/completions"
        assert_openai_error(httpx.post(chat, json=big, headers=auth()), 413)
        assert_openai_error(httpx.post(chat, json=big), 401)  # who asks comes first


# ---- banks it cannot serve ----------------------------------------------------------------------


def test_startup_refuses_a_bank_without_room_for_the_conversation(
    engine_url: str, bank_file: Path
) -> None:
    thread = ServeThread(settings(bank_file, engine_url, bank_reserve_tokens=CONTEXT - 10))
    with pytest.raises(RuntimeError, match="reserve"):
        thread.start()


def wait_poll(url: str, field: str, value: int, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status = httpx.get(url + "/admin/bank", headers=auth(ADMIN)).json()
        if status[field] >= value or time.monotonic() > deadline:
            return status
        time.sleep(0.05)


def test_hot_swap_refuses_banks_it_cannot_serve(
    engine_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "bank.json"
    bank = write_bank(path, "Check the units before you state the final answer.")
    kwargs = {"poll_interval_s": 0.1, "bank_reserve_tokens": CONTEXT - 200}
    caplog.set_level(logging.WARNING, logger="ted_sglang.serve")
    with ServeThread(settings(path, engine_url, **kwargs)) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
        for i in range(4):  # about 4 x 100 tokens: past the 200 the reserve leaves
            add(bank, f"Experience {i}: " + "label every side of the figure and " * 10)
        bank.save(path)
        status = wait_poll(url, "swap_failures", 1)
        assert status["version"] == 1 and status["swap_failures"] == 1
        assert "reserve" in status["last_error"]
        assert any("still serving version 1" in r.getMessage() for r in caplog.records)
        assert client.chat.completions.create(model="tiny", messages=USER, max_tokens=1)

        good = write_bank(path, "Draw the figure first.", "Count twice.", "Then answer.")
        status = wait_poll(url, "swaps", 1)
        assert status["version"] == good.version == 3 and status["swaps"] == 1

        data = json.loads(path.read_text())
        data["version"] = 4
        data["entries"][0]["text"] = "Draw the figure \ud800 first."
        (tmp_path / "next.json").write_text(json.dumps(data))
        (tmp_path / "next.json").replace(path)  # atomic: the watcher sees it once
        status = wait_poll(url, "swap_failures", 2)
        assert status["version"] == 3 and status["swap_failures"] == 2
        out = client.chat.completions.with_raw_response.create(
            model="tiny", messages=USER, max_tokens=1
        )
        assert out.headers["x-ted-bank-version"] == "3"


def test_cli_exits_non_zero_on_a_bank_it_cannot_serve(
    engine_url: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from ted_sglang.cli import main

    path = tmp_path / "bank.json"
    ExperienceBank(student_model="tiny").save(path)
    code = main(
        [
            "serve", "--bank", str(path), "--endpoint", engine_url, "--port", str(free_port()),
            "--bank-reserve-tokens", str(CONTEXT),
        ]
    )  # fmt: skip
    assert code != 0
    err = capsys.readouterr().err
    assert "reserve" in err and str(path) in err
