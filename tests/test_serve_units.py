"""serve's parts without a server: chat formatting, sampling parameters, bank hot swap on
real files, usage log, metrics text, endpoint choice, settings."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
from bank_files import write_bank

from ted_sglang import prompts
from ted_sglang.bank import ExperienceBank
from ted_sglang.serve.backend import Backend
from ted_sglang.serve.bank_state import RETRIES_PER_FILE, BankState
from ted_sglang.serve.chat_format import ChatFormat
from ted_sglang.serve.errors import ServeError, validation_message
from ted_sglang.serve.metrics import Metrics
from ted_sglang.serve.openai_protocol import ChatCompletionRequest, ChatMessage, CompletionRequest
from ted_sglang.serve.sampling import (
    JSON_OBJECT_SCHEMA,
    check_chat,
    check_completion,
    sampling_params,
)
from ted_sglang.serve.settings import ServeSettings
from ted_sglang.serve.usage_log import AlreadyRated, UnknownRequest, UsageLog, apply_usage

IMAGE_URI = "data:image/png;base64,iVBORw0KGgo="


def chat(*messages: dict) -> list[ChatMessage]:
    return [ChatMessage.model_validate(m) for m in messages]


@pytest.fixture(scope="module")
def chatml() -> ChatFormat:
    return ChatFormat("chatml")


# ---- chat formatting -----------------------------------------------------------------


def test_bank_block_is_the_frontend_system_turn(chatml: ChatFormat) -> None:
    system = prompts.student_system("[E1] Check the units.\n")
    expected = chatml.template.get_prompt([{"role": "system", "content": system}])
    assert chatml.system_block(system) == expected
    assert expected == f"<|im_start|>system\n{system}<|im_end|>\n"


def test_client_system_message_follows_the_bank_block(chatml: ChatFormat) -> None:
    system = prompts.student_system("[E1] Check the units.\n")
    block = chatml.system_block(system)
    messages = chat(
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": "3+3?"},
    )
    prompt = chatml.prompt(messages, system, block)
    assert prompt.image_data is None
    assert prompt.text == (
        block
        + "<|im_start|>system\nAnswer in French.<|im_end|>\n"
        + "<|im_start|>user\n2+2?<|im_end|>\n"
        + "<|im_start|>assistant\n4<|im_end|>\n"
        + "<|im_start|>system\nBe brief.<|im_end|>\n"
        + "<|im_start|>user\n3+3?<|im_end|>\n"
        + "<|im_start|>assistant\n"
    )
    no_bank = chatml.prompt(messages[1:2], None, None)
    assert no_bank.text == "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n"


def test_content_parts_text_joined_and_one_inline_image(chatml: ChatFormat) -> None:
    messages = chat(
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": IMAGE_URI}},
                {"type": "text", "text": "What is "},
                {"type": "text", "text": "shown?"},
            ],
        }
    )
    prompt = chatml.prompt(messages, None, None)
    assert (
        prompt.text == "<|im_start|>user\n<image>What is shown?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert prompt.image_data == IMAGE_URI


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ([{"type": "image_url", "image_url": {"url": "https://x/y.png"}}], "data: URI"),
        (
            [
                {"type": "image_url", "image_url": {"url": IMAGE_URI}},
                {"type": "image_url", "image_url": {"url": IMAGE_URI}},
            ],
            "one image",
        ),
        ([{"type": "input_audio"}], "not supported"),
        ([{"type": "text"}], "needs text"),
    ],
)
def test_bad_content_parts_are_refused(chatml: ChatFormat, content: list, fragment: str) -> None:
    with pytest.raises(ServeError, match=fragment) as info:
        chatml.prompt(chat({"role": "user", "content": content}), None, None)
    assert info.value.status == 400 and info.value.param.startswith("messages.0")


def test_tool_messages_are_refused(chatml: ChatFormat) -> None:
    with pytest.raises(ServeError, match="not supported"):
        chatml.prompt(chat({"role": "tool", "content": "x"}), None, None)


# ---- sampling parameters -------------------------------------------------------------


def chat_request(**fields: object) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}
    )


def test_sampling_params_map_openai_fields() -> None:
    req = chat_request(
        max_tokens=10, max_completion_tokens=7, temperature=0.5, top_p=0.9, n=3,
        stop="END", seed=11, presence_penalty=0.5, logit_bias={"5": -100},
    )  # fmt: skip
    params = sampling_params(req, ("<|im_end|>",))
    assert params == {
        "max_new_tokens": 7,
        "temperature": 0.5,
        "top_p": 0.9,
        "n": 3,
        "stop": ["END", "<|im_end|>"],
        "presence_penalty": 0.5,
        "sampling_seed": 11,
        "logit_bias": {"5": -100},
    }
    assert sampling_params(chat_request()) == {"n": 1}


def test_response_formats() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    req = chat_request(response_format={"type": "json_schema", "json_schema": {"schema": schema}})
    assert json.loads(sampling_params(req)["json_schema"]) == schema
    req = chat_request(response_format={"type": "json_object"})
    assert sampling_params(req)["json_schema"] == JSON_OBJECT_SCHEMA
    assert "json_schema" not in sampling_params(chat_request(response_format={"type": "text"}))
    with pytest.raises(ServeError, match=r"needs json_schema\.schema"):
        sampling_params(chat_request(response_format={"type": "json_schema", "json_schema": {}}))


def test_bad_sampling_values_are_refused() -> None:
    with pytest.raises(ServeError, match="token ids"):
        sampling_params(chat_request(logit_bias={"the": 1.0}))
    with pytest.raises(ServeError, match="at most 31 stop"):
        sampling_params(chat_request(stop=[f"s{i}" for i in range(32)]), ("<|im_end|>",))


def test_bad_sampling_values_are_refused_with_their_parameter() -> None:
    for bias in ({"\u00b2": 1.0}, {"-5": 1.0}, {"4294967296": 1.0}):  # '²'.isdigit() is True
        with pytest.raises(ServeError, match="token ids") as info:
            sampling_params(chat_request(logit_bias=bias))
        assert info.value.param == "logit_bias"
    with pytest.raises(ServeError, match="needs logprobs"):
        check_chat(chat_request(top_logprobs=2))
    with pytest.raises(ServeError, match="4096 characters at most"):
        sampling_params(chat_request(stop=["x" * 4097]))
    with pytest.raises(ServeError, match="at most 256 prompts"):
        check_completion(CompletionRequest.model_validate({"prompt": ["x"] * 257}))
    deep: dict = {}
    for _ in range(300):
        deep = {"items": deep}
    with pytest.raises(ServeError, match="schema cannot be used"):
        fmt = {"type": "json_schema", "json_schema": {"schema": deep}}
        sampling_params(chat_request(response_format=fmt))


MANY = 100_000
USER = [{"role": "user", "content": "hi"}]
BAD_BIAS = {str(i): "x" for i in range(MANY)}


@pytest.mark.parametrize(
    ("model", "body"),
    [
        (CompletionRequest, {"prompt": [1] * MANY}),
        (ChatCompletionRequest, {"messages": [{"role": "robot"}] * MANY}),
        (ChatCompletionRequest, {"messages": [{"role": "user", "content": [{"type": 1}] * MANY}]}),
        (ChatCompletionRequest, {"messages": USER, "stop": [1] * MANY}),
        (ChatCompletionRequest, {"messages": USER, "logit_bias": BAD_BIAS}),
    ],
    ids=["prompts", "messages", "content-parts", "stop", "logit-bias"],
)  # fmt: skip
def test_many_bad_items_make_one_short_error(model: type, body: dict) -> None:
    """A small body of many bad items costs one error, not a message per item (a 2 MB body
    once made a 57 MB answer and held the event loop for seconds)."""
    from ted_sglang.serve.http_edge import validate

    with pytest.raises(ServeError) as info:
        validate(model, body)
    assert info.value.status == 400 and len(info.value.message) < 1000


def test_keys_are_compared_as_bytes() -> None:
    from starlette.requests import Request

    from ted_sglang.serve.http_edge import has_key

    def request(value: bytes) -> Request:
        return Request({"type": "http", "headers": [(b"authorization", value)]})

    keys = ("sk-\u00e9t\u00e9", "other")
    assert has_key(request("Bearer sk-\u00e9t\u00e9".encode()), keys)
    assert has_key(request(b"bearer other"), keys)
    for value in ("Bearer \u2603".encode(), b"Bearer \xff\xfe", b"Bearer", b"Basic other", b""):
        assert not has_key(request(value), keys)


def test_logprobs_shapes() -> None:
    from ted_sglang.serve.logprobs import FLOOR, chat_logprobs, completion_logprobs, new_entries

    tokens = [[-0.5, 7, "Hi"], [float("-inf"), 8, " th\u00e9re"], [None, 9, None]]
    tops = [[[-0.5, 7, "Hi"], [-1.5, 3, "Ho"]], None, [[float("nan"), 1, "x"]]]
    chat = chat_logprobs(tokens, tops)
    assert chat["refusal"] is None
    assert [c["logprob"] for c in chat["content"]] == [-0.5, FLOOR, FLOOR]
    assert chat["content"][1]["bytes"] == list(" th\u00e9re".encode())
    assert chat["content"][0]["top_logprobs"] == [
        {"token": "Hi", "bytes": [72, 105], "logprob": -0.5},
        {"token": "Ho", "bytes": [72, 111], "logprob": -1.5},
    ]
    assert chat["content"][1]["top_logprobs"] == []
    text, end = completion_logprobs(tokens, tops, 4, top_k=2)
    assert text["tokens"] == ["Hi", " th\u00e9re", ""] and text["text_offset"] == [4, 6, 12]
    assert text["top_logprobs"][0] == {"Hi": -0.5, "Ho": -1.5} and end == 12
    assert completion_logprobs(tokens, tops, 0, top_k=0)[0]["top_logprobs"] is None
    cumulative = {"output_token_logprobs": tokens, "completion_tokens": 3}
    assert new_entries(cumulative, 2) == ([tokens[2]], None)
    incremental = {"output_token_logprobs": tokens[2:], "completion_tokens": 3}
    assert new_entries(incremental, 2) == ([tokens[2]], None)


def test_event_stream_reads_cumulative_and_incremental_output() -> None:
    import asyncio
    from collections.abc import AsyncIterator

    from ted_sglang.serve.responses import ResponseHead, event_stream

    def events(incremental: bool) -> list[dict]:
        texts = ["He", "llo", " you"] if incremental else ["He", "Hello", "Hello you"]
        ids = [[1], [2], [3]] if incremental else [[1], [1, 2], [1, 2, 3]]
        reasons = [None, None, {"type": "length"}]
        return [
            {"text": t, "output_ids": i, "meta_info": {"completion_tokens": k + 1,
             "finish_reason": r, "prompt_tokens": 5}}
            for k, (t, i, r) in enumerate(zip(texts, ids, reasons, strict=True))
        ]  # fmt: skip

    class Stream:
        def __init__(self, items: list[dict]) -> None:
            self.items, self.closed = items, False

        async def events(self) -> AsyncIterator[dict]:
            for item in self.items:
                yield item

        async def aclose(self) -> None:
            self.closed = True

    async def deltas(items: list[dict]) -> list[str]:
        head = ResponseHead("x", 0, "m", None, "text", 1)
        stream = Stream(items)
        chunks = [c async for c in event_stream(head, stream, 1, False)]
        assert stream.closed and chunks[-1] == b"data: [DONE]\n\n"
        return [json.loads(c[6:])["choices"][0]["text"] for c in chunks[:-1]]

    assert asyncio.run(deltas(events(False))) == ["He", "llo", " you"]
    assert asyncio.run(deltas(events(True))) == ["He", "llo", " you"]


def test_bank_check_refuses_what_cannot_be_sent_or_counted() -> None:
    from ted_sglang.engine.launcher import free_port
    from ted_sglang.serve.bank_check import BankCheck
    from ted_sglang.serve.bank_state import BankRefused, BankVersion

    check = BankCheck([f"http://127.0.0.1:{free_port()}"], 4096, timeout_s=5)
    lone = BankVersion(1, ("E1",), "x\ud800", "<s>x\ud800</s>", None, None, 0.0)
    with pytest.raises(BankRefused, match="cannot be sent"):
        check(lone)
    fine = BankVersion(1, ("E1",), "x", "<s>x</s>", None, None, 0.0)
    with pytest.raises(BankRefused, match="could not be checked"):
        check(fine)  # nothing listens there


def test_validation_message_names_the_parameter() -> None:
    message, param = validation_message(
        [{"loc": ("body", "messages", 0, "role"), "msg": "Input should be 'user'"}]
    )
    assert param == "messages.0.role" and "messages.0.role: Input should be" in message


# ---- bank state (real files) ---------------------------------------------------------


def test_bank_state_warns_of_a_bank_for_another_model(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "bank.json"
    write_bank(path, "Check the units before the final answer.", model="/models/Qwen3-8B")
    caplog.set_level(logging.WARNING, logger="ted_sglang.serve")
    same = BankState(path, str, served_model="/weights/qwen3-8b/")
    same.warn_if_for_another_model(same.load())
    assert not caplog.records  # the same model, named by another path
    state = BankState(path, str, served_model="/weights/SmolLM2-135M-Instruct")
    state.warn_if_for_another_model(state.load())  # as serve does once it has started
    write_bank(path, "Check the units.", "Draw the figure.", model="Other-Model")
    assert state.reload().outcome == "swapped"
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2 and all("SmolLM2-135M-Instruct" in m for m in messages)
    assert "distilled for /models/Qwen3-8B" in messages[0] and "version 1" in messages[0]
    assert "distilled for Other-Model" in messages[1] and "version 2" in messages[1]


def test_bank_state_swaps_refuses_and_ignores_same_rendering(tmp_path: Path) -> None:
    path = tmp_path / "bank.json"
    bank = write_bank(path, "Check the units before the final answer.")
    state = BankState(path, lambda system: f"<s>{system}</s>")
    v1 = state.load()
    assert v1.version == 1 and v1.ids == ("E1",) and "Check the units" in v1.prefix
    assert v1.prefix == f"<s>{prompts.student_system(bank.render())}</s>"
    assert state.poll() is None

    bank.apply({"operations": [{"op": "add", "text": "Draw the figure before solving it."}]})
    bank.save(path)
    result = state.poll()
    assert result is not None and result.outcome == "swapped" and result.version == 2
    assert state.current.ids == ("E1", "E2") and state.swaps == 1
    assert v1.version == 1 and "Draw the figure" not in v1.prefix  # captured: unchanged

    bank.record_shown(["E1"], step=2)  # usage only: same version, same rendering
    bank.save(path)
    result = state.poll()
    assert result is not None and result.outcome == "unchanged" and state.swaps == 1

    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2])  # a torn write
    os.utime(path, ns=(1, 1))
    for _ in range(RETRIES_PER_FILE + 2):
        state.poll()
    assert state.swap_failures == 1 and state.current.version == 2
    assert "not valid JSON" in (state.last_error or "")

    bank.apply({"operations": [{"op": "add", "text": "Read the question twice before answering."}]})
    bank.save(path)
    result = state.poll()
    assert result is not None and result.outcome == "swapped" and state.current.version == 3

    path.unlink()
    result = state.reload()
    assert result.outcome == "failed" and state.current.version == 3 and state.swap_failures == 2


def test_bank_watcher_reports_a_deleted_bank_and_never_blocks_on_a_fifo(tmp_path: Path) -> None:
    import threading

    path = tmp_path / "bank.json"
    write_bank(path, "Check the units before the final answer.")
    state = BankState(path, lambda system: system)
    state.load()
    path.unlink()
    result = state.poll()
    assert result is not None and result.outcome == "failed" and state.swap_failures == 1
    assert "no such file" in (state.last_error or "")

    os.mkfifo(path)  # opening it to read would wait for a writer forever
    results: list = []
    watcher = threading.Thread(target=lambda: results.append(state.poll()), daemon=True)
    watcher.start()
    watcher.join(timeout=10)
    if watcher.is_alive():
        os.close(os.open(path, os.O_WRONLY))  # let the stuck reader go
        pytest.fail("the watcher blocked on a FIFO")
    assert results[0].outcome == "failed" and state.swap_failures == 2
    assert "not a regular file" in (state.last_error or "") and state.current.version == 1


# ---- usage log -----------------------------------------------------------------------


def test_usage_log_counts_feedback_and_persists(tmp_path: Path) -> None:
    bank_path = tmp_path / "bank.json"
    write_bank(bank_path, "Check the units before the final answer.", "Draw the figure first.")
    state = BankState(bank_path, str)
    version = state.load()
    log = UsageLog(tmp_path / "usage.json", max_tracked=2)
    for rid in ("a", "b", "c"):
        log.record_request(rid, version)
    assert "a" not in log and log.num_tracked == 2  # bounded: the oldest is forgotten
    with pytest.raises(UnknownRequest):
        log.record_feedback("a", True)
    assert log.record_feedback("b", True).ids == ("E1", "E2")
    log.record_feedback("c", False)
    with pytest.raises(AlreadyRated):
        log.record_feedback("c", True)
    log.save()

    again = UsageLog(tmp_path / "usage.json")
    again.load()
    assert again.requests_by_version == {2: 3}
    assert again.feedback == {"correct": 1, "wrong": 1}
    assert again.entries["E1"] == {"shown": 3, "correct": 1, "wrong": 1}

    bank = ExperienceBank.load(bank_path)
    data = again.to_dict()
    assert apply_usage(bank, data) == 2 * 5
    assert apply_usage(bank, data) == 0  # applied once only
    usage = bank["E2"].usage
    assert (usage.shown, usage.correct, usage.wrong) == (3, 1, 1)
    bank.save(bank_path)
    assert ExperienceBank.load(bank_path).version == 2


def test_corrupt_usage_file_is_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "usage.json"
    path.write_text('{"format": "ted-sglang-serve-usage", "requests_by')
    log = UsageLog(path)
    log.load()
    assert log.requests_by_version == {} and not path.exists()
    assert (tmp_path / "usage.json.corrupt").exists()


# ---- metrics, endpoints, settings ----------------------------------------------------


def test_metrics_text_exposition() -> None:
    metrics = Metrics()
    for seconds in (0.001, 0.02, 0.02, 3.0):
        metrics.observe_request("/v1/chat/completions", 200, seconds)
    metrics.observe_request("/v1/chat/completions", 400, 0.001)
    metrics.add_tokens(100, 5, 90)
    metrics.gauges = lambda: [("bank_version", "gauge", "v", {"path": 'a"b'}, 7)]
    lines = metrics.render().splitlines()
    assert 'ted_serve_requests_total{route="/v1/chat/completions",status="200"} 4' in lines
    bucket = 'ted_serve_request_duration_seconds_bucket{route="/v1/chat/completions",le='
    assert bucket + '"0.005"} 2' in lines and bucket + '"0.025"} 4' in lines
    assert bucket + '"+Inf"} 5' in lines
    assert "ted_serve_cached_tokens_total 90" in lines
    assert 'ted_serve_bank_version{path="a\\"b"} 7' in lines
    assert "# TYPE ted_serve_request_duration_seconds histogram" in lines


def test_least_outstanding_endpoint_is_picked() -> None:
    backend = Backend(["http://a", "http://b", "http://c"])
    a, b, c = backend.endpoints
    a.outstanding, b.outstanding, c.outstanding = 2, 1, 3
    assert backend.pick() is b
    assert backend.pick({"http://b"}) is a
    b.down_until = float("inf")
    assert backend.pick() is a
    for e in backend.endpoints:
        e.down_until = float("inf")
    assert backend.pick() is b  # all down: still try the least busy
    assert backend.pick({"http://a", "http://b", "http://c"}) is None
    a.outstanding = b.outstanding = c.outstanding = 0
    a.down_until = b.down_until = c.down_until = 0.0
    assert {backend.pick().url for _ in range(3)} == {"http://a", "http://b", "http://c"}


def test_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TED_ADMIN_TOKEN", "adm")
    monkeypatch.setenv("TED_API_KEY", "")
    s = ServeSettings.from_env(bank_path=tmp_path / "b.json", endpoints=["127.0.0.1:1/"])
    assert s.endpoints == ["http://127.0.0.1:1"] and s.admin_token == "adm" and s.api_key is None
    assert s.usage_path == tmp_path / "b.json.usage.json"
    monkeypatch.setenv("TED_API_KEY", " sk-from-a-file\n")  # HTTP trims what a client sends
    s = ServeSettings.from_env(bank_path=tmp_path / "b.json", endpoints=["a:1"], admin_token="")
    assert s.api_key == "sk-from-a-file" and s.admin_token is None
    with pytest.raises(ValueError, match="admin_token is only whitespace"):
        ServeSettings(bank_path=tmp_path / "b.json", endpoints=["a:1"], admin_token=" \n")
    with pytest.raises(ValueError, match="at least one endpoint"):
        ServeSettings(bank_path=tmp_path / "b.json")
    with pytest.raises(ValueError, match="repeat"):
        ServeSettings(bank_path=tmp_path / "b.json", endpoints=["a:1", "http://a:1"])


@pytest.mark.parametrize(
    ("engine_status", "status"),
    [(400, 400), (503, 503), (None, 503), (500, 502), ("x", 502)],
)
def test_engine_abort_keeps_the_engines_status(engine_status: object, status: int) -> None:
    from ted_sglang.serve.responses import finish_reason

    reason = {"type": "abort", "message": "stop_regex took too long", "status_code": engine_status}
    with pytest.raises(ServeError) as err:
        finish_reason({"finish_reason": reason})
    assert err.value.status == status
    assert "stop_regex took too long" in str(err.value)


def test_apply_usage_refuses_a_malformed_record_of_what_it_applied() -> None:
    bank = ExperienceBank(student_model="m")
    bank.apply({"operations": [{"op": "add", "text": "Check the units of every answer."}]})
    usage = {"format": "ted-sglang-serve-usage", "entries": {"E1": {"shown": 2}}}
    for record in ([1], {"E1": 3}, {"E1": {"shown": "2"}}):
        bank.meta.extra["serve_usage_applied"] = record
        with pytest.raises(ValueError, match="serve_usage_applied"):
            apply_usage(bank, usage)
    bank.meta.extra["serve_usage_applied"] = {}
    assert apply_usage(bank, usage) == 2


def test_serve_reads_sglangs_chat_templates_without_importing_torch() -> None:
    import subprocess
    import sys

    script = (
        "import sys\n"
        "from ted_sglang.runtime import pick_chat_template\n"
        "from ted_sglang.serve.app import create_app\n"
        "from ted_sglang.serve.chat_format import ChatFormat\n"
        "name = pick_chat_template({'model_path': 'Qwen/Qwen2.5-7B-Instruct'})\n"
        "print(name, ChatFormat(name).stop)\n"
        "print(sorted(m for m in ('torch', 'transformers', 'sglang') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    ).stdout.splitlines()
    from sglang.lang.chat_template import get_chat_template  # the real frontend module

    assert out[0] == f"qwen {tuple(get_chat_template('qwen').stop_str)}"
    assert out[1] == "[]"  # serve needs ~50 MiB, not SGLang's 750 MiB of imports
