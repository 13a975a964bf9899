"""The engine under hostile and careless clients: bounded pattern work, size limits,
abandoned and aborted requests, the context, local files, and bad values.

Most tests run on an engine of their own (the tiny vision model, which also serves
text), started with the opt-in flags, so that a regression here cannot take the
shared engine down with it; the defaults are checked on the shared engine.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx
import pytest
from engine_http import error_message

from ted_sglang.engine.launcher import launch_engine

MAX_REQUEST_BYTES = 256 * 1024
ENGINE_FLAGS = (
    "--constrained-json-disable-any-whitespace",
    "--allow-auto-truncate",
    "--max-request-bytes",
    str(MAX_REQUEST_BYTES),
)


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("allowed-images")


@pytest.fixture(scope="module")
def guarded(tiny_vision_model_dir: Path, image_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """An engine of this module's own, with the opt-in flags; yields an httpx client."""
    engine = launch_engine(
        tiny_vision_model_dir,
        extra_args=(*ENGINE_FLAGS, "--allow-local-images", str(image_dir)),
        log_path=tmp_path_factory.mktemp("engine-guarded") / "engine.log",
        timeout=180,
    )
    with httpx.Client(base_url=engine.url, timeout=60) as client:
        yield client
    engine.close()


def _health_times(url: str, stop: threading.Event, out: list[float]) -> None:
    """Poll ``/health`` until ``stop``; record each answer's latency (inf: no answer in 1 s)."""
    with httpx.Client(base_url=url, timeout=1.0) as client:
        while not stop.is_set():
            start = time.perf_counter()
            try:
                ok = client.get("/health").status_code == 200
            except httpx.HTTPError:
                ok = False
            out.append(time.perf_counter() - start if ok else float("inf"))
            time.sleep(0.05)


def test_backtracking_stop_regex_finishes_its_request_only(guarded: httpx.Client) -> None:
    # The grammar forces a run of "a"; over it this pattern backtracks exponentially
    # (about 1.6x more work per extra "a") and never matches.
    evil = {
        "text": "Say a lot of a:",
        "sampling_params": {
            "regex": "a{200}",
            "stop_regex": "(a|aa)+![^!]",
            "max_new_tokens": 200,
            "temperature": 0,
        },
    }
    latencies: list[float] = []
    stop = threading.Event()
    poller = threading.Thread(
        target=_health_times, args=(str(guarded.base_url), stop, latencies), daemon=True
    )
    poller.start()
    result: dict = {}

    def send_evil() -> None:
        try:
            result["response"] = guarded.post("/generate", json=evil, timeout=30)
        except httpx.HTTPError as exc:
            result["error"] = exc

    sender = threading.Thread(target=send_evil, daemon=True)
    sender.start()
    time.sleep(0.3)
    normal = guarded.post(
        "/generate",
        json={"text": "Meanwhile:", "sampling_params": {"max_new_tokens": 16}},
        timeout=10,
    )
    sender.join(timeout=30)
    stop.set()
    poller.join(timeout=5)
    assert normal.status_code == 200, normal.text
    assert "response" in result, result.get("error")
    response = result["response"]
    assert response.status_code == 400, response.text
    assert "stop_regex" in response.json()["error"]["message"]
    assert latencies and max(latencies) < 1.0, latencies
    assert guarded.get("/health", timeout=1).status_code == 200


def test_stop_regex_still_stops(engine_url: str) -> None:
    body = {
        "text": "Digits:",
        "sampling_params": {"regex": "ab[0-9]{8}cd", "stop_regex": "[0-9]{3}", "temperature": 0},
    }
    out = httpx.post(engine_url + "/generate", json=body, timeout=60).json()
    assert out["meta_info"]["finish_reason"] == {"type": "stop", "matched": "[0-9]{3}"}
    assert "cd" not in out["text"] and out["text"].startswith("ab")


def test_stop_regex_window_and_budget() -> None:
    from ted_sglang.engine import stop_match
    from ted_sglang.engine.errors import RequestError
    from ted_sglang.engine.stop_match import StopRegex, StopRegexTimeout

    assert StopRegex.compile(["Answer: [0-9]{1,6}"]).window_tokens == stop_match.MIN_WINDOW_TOKENS
    assert StopRegex.compile(["x{40}"]).window_tokens == 41
    assert StopRegex.compile(["a", "(b|c)+"]).window_tokens == stop_match.MAX_WINDOW_TOKENS
    ok = StopRegex.compile(["nope", "[0-9]+"])
    assert ok.search("abc 42") == "[0-9]+" and ok.search("abc") is None
    evil = StopRegex.compile(["(a|aa)+![^!]"])
    start = time.perf_counter()
    with pytest.raises(StopRegexTimeout, match="one check may take"):
        evil.search("a" * 60)
    assert time.perf_counter() - start < 2.0  # unbounded, this match runs for minutes
    spent = StopRegex.compile(["(a|aa)+![^!]"])
    spent.spent_s = stop_match.REQUEST_BUDGET_S - 0.001
    with pytest.raises(StopRegexTimeout, match="all checks of a request"):
        spent.search("a" * 60)
    with pytest.raises(RequestError, match="invalid stop_regex"):
        StopRegex.compile(["(unclosed"])
    with pytest.raises(RequestError, match="repeats too much"):
        StopRegex.compile(["(a{1000}){1000}"])  # compiled, it would hold a million items


def test_the_samples_of_a_request_share_its_compiled_stop_regex_not_its_budget() -> None:
    from ted_sglang.engine.protocol import parse_generate

    body = {"text": ["a", "b"], "sampling_params": {"n": 8, "stop_regex": ["x+", "y{3}z"]}}
    sp = parse_generate(body).items[0].sampling
    compiled = sp.stop_matcher
    assert compiled is not None and compiled is sp.stop_matcher  # compiled once
    first, second = compiled.fresh(), compiled.fresh()  # one per sequence
    assert first.patterns is second.patterns is compiled.patterns
    first.spent_s = 0.5
    assert second.spent_s == compiled.spent_s == 0.0
    assert first.window_tokens == second.window_tokens == compiled.window_tokens


def test_oversized_bodies_are_refused_before_parsing(guarded: httpx.Client) -> None:
    big = b'{"text": "' + b"a" * (MAX_REQUEST_BYTES + 10) + b'"}'
    headers = {"content-type": "application/json"}
    response = guarded.post("/generate", content=big, headers=headers)
    assert response.status_code == 413, response.text
    assert "--max-request-bytes" in response.json()["error"]["message"]

    def chunks():  # no Content-Length: the engine counts what arrives
        for i in range(0, len(big), 65536):
            yield big[i : i + 65536]

    response = guarded.post("/generate", content=chunks(), headers=headers)
    assert response.status_code == 413, response.text
    small = b'{"text": "' + b"a " * 1000 + b'", "sampling_params": {"max_new_tokens": 1}}'
    assert guarded.post("/generate", content=small, headers=headers).status_code == 200
    assert guarded.get("/health").status_code == 200


def test_health_answers_while_a_large_body_is_decoded(engine_url: str) -> None:
    # 12 MB holding two million strings: decoding and checking it takes seconds of CPU,
    # which must not be spent on the thread that answers /health.
    sampling = {"max_new_tokens": 1, "custom_params": ["ab"] * 2_000_000}
    body = {"text": "a", "sampling_params": sampling}
    raw = json.dumps(body).encode()
    latencies: list[float] = []
    stop = threading.Event()
    poller = threading.Thread(target=_health_times, args=(engine_url, stop, latencies), daemon=True)
    poller.start()
    try:
        time.sleep(0.2)
        headers = {"content-type": "application/json"}
        response = httpx.post(engine_url + "/generate", content=raw, headers=headers, timeout=60)
        time.sleep(0.2)
    finally:
        stop.set()
        poller.join(timeout=5)
    assert response.status_code == 200, response.text
    assert latencies and max(latencies) < 1.0, latencies


def test_over_long_text_is_refused_before_tokenizing(engine_url: str, tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    from ted_sglang.engine.limits import max_prompt_chars

    limit = max_prompt_chars(AutoTokenizer.from_pretrained(tiny_model_dir).get_vocab(), 4096)
    start = time.perf_counter()
    response = httpx.post(engine_url + "/generate", json={"text": "ab" * limit}, timeout=60)
    assert response.status_code == 400, response.text
    assert "characters" in response.json()["error"]["message"]
    assert time.perf_counter() - start < 2.0


def _running(client: httpx.Client) -> int:
    state = client.get("/server_info").json()["internal_states"][0]
    return state["num_running_reqs"] + state["num_waiting_reqs"]


def _wait_until(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


LONG = {"max_new_tokens": 4000, "ignore_eos": True, "temperature": 0}
IGNORE = {"ignore_eos": True}


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_that_leaves_has_its_request_aborted(guarded: httpx.Client, stream: bool) -> None:
    assert _wait_until(lambda: _running(guarded) == 0, 30)
    body = {"text": "Go on and on:", "sampling_params": LONG, "stream": stream}
    with httpx.Client(base_url=guarded.base_url, timeout=60) as leaver:
        if stream:
            with leaver.stream("POST", "/generate", json=body) as response:
                next(response.iter_lines())  # it runs; then the client goes away
        else:
            with pytest.raises(httpx.ReadTimeout):
                leaver.post("/generate", json=body, timeout=0.5)
    assert _wait_until(lambda: _running(guarded) == 0, 2.0), "the request kept running"


def test_abort_request_by_rid_prefix_and_all(guarded: httpx.Client) -> None:
    assert _wait_until(lambda: _running(guarded) == 0, 30)
    results: dict[str, httpx.Response] = {}

    def send(rid: str) -> None:
        body = {"text": f"Request {rid}:", "sampling_params": LONG, "rid": rid}
        results[rid] = guarded.post("/generate", json=body)

    threads = [threading.Thread(target=send, args=(rid,)) for rid in ("job-1", "other-1")]
    for thread in threads:
        thread.start()
    assert _wait_until(lambda: _running(guarded) == 2, 10)
    assert guarded.post("/abort_request", json={"rid": "job"}).status_code == 200
    threads[0].join(timeout=10)
    out = results["job-1"]
    assert out.status_code == 200, out.text  # what was generated, with the abort as its reason
    reason = out.json()["meta_info"]["finish_reason"]
    assert reason["type"] == "abort" and reason["message"] == "Aborted"
    assert reason["status_code"] is None
    assert _running(guarded) == 1  # "other-1" is untouched
    assert guarded.post("/abort_request", json={"rid": ""}).status_code == 200  # ignored
    assert _running(guarded) == 1
    assert guarded.post("/abort_request", json={"abort_all": True}).status_code == 200
    threads[1].join(timeout=10)
    assert results["other-1"].json()["meta_info"]["finish_reason"]["type"] == "abort"
    assert guarded.post("/abort_request", json={"rid": 5}).status_code == 400


def test_abort_request_ends_a_stream_with_its_reason(guarded: httpx.Client) -> None:
    body = {"text": "Stream:", "sampling_params": LONG, "rid": "streamed-1", "stream": True}
    with guarded.stream("POST", "/generate", json=body) as response:
        lines = response.iter_lines()
        first = next(line for line in lines if line)
        assert first.startswith("data: {")
        assert guarded.post("/abort_request", json={"rid": "streamed-1"}).status_code == 200
        rest = [line for line in lines if line]
    assert rest[-1] == "data: [DONE]"
    last = json.loads(rest[-2][len("data: ") :])
    assert last["meta_info"]["finish_reason"]["type"] == "abort"


def test_max_new_tokens_past_the_context_is_truncated_when_allowed(guarded: httpx.Client) -> None:
    out = guarded.post(
        "/generate",
        json={"input_ids": [5] * 4090, "sampling_params": {"max_new_tokens": 100, **IGNORE}},
    )
    assert out.status_code == 200, out.text
    assert out.json()["meta_info"]["completion_tokens"] == 6
    out = guarded.post(
        "/generate", json={"input_ids": [5] * 5000, "sampling_params": {"max_new_tokens": 3}}
    )
    assert out.status_code == 200, out.text
    assert out.json()["meta_info"]["prompt_tokens"] == 4095


def test_streamed_request_errors_are_events_as_in_sglang(engine_url: str) -> None:
    body = {"text": "a", "stream": True, "sampling_params": {"max_new_tokens": -1}}
    with httpx.stream("POST", engine_url + "/generate", json=body, timeout=30) as response:
        assert response.status_code == 200
        lines = [line for line in response.iter_lines() if line]
    assert len(lines) == 2 and lines[1] == "data: [DONE]"
    error = json.loads(lines[0][len("data: ") :])["error"]
    assert error["code"] == 400 and error["type"] == "invalid_request_error"
    assert "max_new_tokens" in error["message"] and error["retryable"] is False
    # a body that breaks SGLang's JSON contract is a 400 before any stream, as in SGLang
    contract = httpx.post(engine_url + "/generate", json={"text": 3, "stream": True}, timeout=30)
    assert contract.status_code == 400


def _png(size: tuple[int, int] = (9, 7)) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, (1, 2, 3)).save(buf, format="PNG")
    return buf.getvalue()


def test_image_paths_are_read_only_inside_the_allowed_folder(tmp_path: Path) -> None:
    import os

    from ted_sglang.engine.errors import RequestError
    from ted_sglang.engine.prompt import IMAGE_REFUSED, load_image_bytes

    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    allowed.mkdir()
    outside.mkdir()
    raw = _png()
    (allowed / "cat.png").write_bytes(raw)
    (outside / "secret.png").write_bytes(raw)
    (allowed / "link.png").symlink_to(outside / "secret.png")
    (allowed / "sub").mkdir()
    os.mkfifo(allowed / "pipe.png")
    with open(allowed / "huge.png", "wb") as f:
        f.truncate(16 * 1024 * 1024 + 1)

    assert load_image_bytes("cat.png", str(allowed)) == raw
    assert load_image_bytes(str(allowed / "cat.png"), str(allowed)) == raw
    assert load_image_bytes("sub/../cat.png", str(allowed)) == raw
    refused = [
        (str(allowed / "cat.png"), None),  # no folder allowed: no path at all
        (str(outside / "secret.png"), None),
        ("/no/such/file.png", None),
        ("https://example.com/cat.png", None),
        ("http://127.0.0.1:1/cat.png", str(allowed)),
        ("file:///etc/hostname", str(allowed)),
        (str(outside / "secret.png"), str(allowed)),
        ("../outside/secret.png", str(allowed)),
        ("link.png", str(allowed)),  # resolves outside
        ("missing.png", str(allowed)),
        ("sub", str(allowed)),
        ("pipe.png", str(allowed)),
        ("/etc/hostname", str(allowed)),
    ]
    for image_data, folder in refused:
        with pytest.raises(RequestError) as info:
            load_image_bytes(image_data, folder)
        assert str(info.value) == IMAGE_REFUSED, image_data  # one answer: no existence oracle
    with pytest.raises(RequestError, match="larger than"):
        load_image_bytes("huge.png", str(allowed))


def test_image_paths_over_http(
    vision_engine_url: str, guarded: httpx.Client, image_dir: Path
) -> None:
    from ted_sglang.engine.prompt import IMAGE_REFUSED

    (image_dir / "red.png").write_bytes(_png((32, 32)))
    body = {"text": "Look: <image>", "sampling_params": {"max_new_tokens": 1}}
    for path in (str(image_dir / "red.png"), "/etc/passwd", "/no/such.png"):
        refused = httpx.post(vision_engine_url + "/generate", json={**body, "image_data": path})
        assert refused.status_code == 400
        assert refused.json()["error"]["message"] == IMAGE_REFUSED
    allowed = guarded.post("/generate", json={**body, "image_data": "red.png"})
    assert allowed.status_code == 200, allowed.text
    assert allowed.json()["meta_info"]["image_tokens"] == 16


def _raw(body: str) -> bytes:
    return body.encode("utf-8", "surrogatepass")


SELF_REF = json.dumps({"$defs": {"a": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"})
BAD_BODIES = [
    json.dumps({"text": "a", "sampling_params": {"json_schema": json.dumps({"$ref": "#"})}}),
    json.dumps({"text": "a", "sampling_params": {"json_schema": SELF_REF}}),
    "[" * 100_000 + "]" * 100_000,
    '{"text": "a", "sampling_params": {"custom_params": ' + "[" * 5000 + "]" * 5000 + "}}",
    '{"text": "a", "sampling_params": {"max_new_tokens": ' + "9" * 5000 + "}}",
    '{"text": "a", "sampling_params": {"temperature": ' + "9" * 400 + "}}",
    json.dumps({"text": "a", "sampling_params": {"max_new_tokens": 10**30}}),
    json.dumps({"text": "a", "sampling_params": {"max_new_tokens": 10**30, "min_new_tokens": 9}}),
    '{"text": "a", "sampling_params": {"logit_bias": {"5": NaN}}}',
    '{"text": "a", "sampling_params": {"logit_bias": {"5": Infinity}}}',
    '{"text": "a", "sampling_params": {"logit_bias": {"5": 1e999}}}',
    '{"text": "a", "sampling_params": {"logit_bias": {"5": ' + "9" * 400 + "}}}",
    '{"text": "a", "sampling_params": {"temperature": NaN}}',
    '{"text": "a\\ud800b", "sampling_params": {"max_new_tokens": 1}}',
    '{"text": "a", "rid": "\\udc00", "stream": true, "sampling_params": {"max_new_tokens": 1}}',
    '{"text": "a", "sampling_params": {"max_new_tokens": 1, "stop": ["\\ud800"]}}',
    json.dumps({"text": "a", "sampling_params": {"stop_regex": "a" * 300}}),
    json.dumps({"text": "a", "sampling_params": {"stop_regex": ["a"] * 33}}),
    json.dumps({"text": "a", "sampling_params": {"stop_regex": "(?P<x>a)(?P<x>b)"}}),
    json.dumps({"text": "a", "sampling_params": {"stop_regex": "a{99999999999}"}}),
    json.dumps({"text": "a", "sampling_params": {"stop_regex": "a{4294967294}"}}),  # 4 GB
]


@pytest.mark.parametrize("body", BAD_BODIES, ids=range(len(BAD_BODIES)))
def test_bad_values_are_400_and_the_connection_stays_usable(engine_url: str, body: str) -> None:
    headers = {"content-type": "application/json"}
    with httpx.Client(base_url=engine_url, timeout=30) as client:
        response = client.post("/generate", content=_raw(body), headers=headers)
        assert response.status_code == 400, response.text
        assert error_message(response)
        assert client.get("/health", timeout=1).status_code == 200  # same connection


def _nested_schema(depth: int) -> dict:
    schema: dict = {"type": "integer"}
    for _ in range(depth - 1):
        schema = {"type": "object", "properties": {"a": schema}, "required": ["a"]}
    return schema


def test_grammar_compile_work_is_bounded(engine_url: str) -> None:
    from ted_sglang.bank import OperationLimits, operations_schema

    def post(**sampling) -> httpx.Response:
        body = {"text": "a", "sampling_params": {"max_new_tokens": 1, **sampling}}
        return httpx.post(engine_url + "/generate", json=body, timeout=60)

    deep = post(json_schema=json.dumps(_nested_schema(200)))
    assert deep.status_code == 400 and "nested more than 64" in deep.text, deep.text
    tag = {"type": "structural_tag", "format": {"type": "tag", "begin": "<", "end": ">",
           "content": {"type": "json_schema", "json_schema": _nested_schema(200)}}}  # fmt: skip
    assert post(structural_tag=json.dumps(tag)).status_code == 400
    huge = post(regex="|".join(f"a{i}" for i in range(20_000)))
    assert huge.status_code == 400 and "characters" in huge.text, huge.text
    # What the loop itself sends stays well inside the bounds.
    ids = [f"E{i}" for i in range(1, 301)]
    assert post(json_schema=json.dumps(operations_schema(ids, OperationLimits()))).is_success
    assert post(json_schema=json.dumps(_nested_schema(32))).is_success
