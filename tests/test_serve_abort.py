"""serve when its client leaves or the engine aborts, over real HTTP in front of the
reference engine: the engine's request stops and frees its KV, serve stops counting it in
flight (the balancer's slot and the ``requests_in_flight`` gauge), and an operator's
``/abort_request`` reaches the client as an error in OpenAI's shape."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import pytest
from bank_files import write_bank
from serve_threads import serve_thread

ADMIN = "admin-abort"
USER = [{"role": "user", "content": "Count to a thousand."}]
LONG = {"max_tokens": 3000, "ignore_eos": True, "temperature": 0}  # runs for many seconds
ROUTES = {
    "chat": ("/v1/chat/completions", {"model": "tiny", "messages": USER, **LONG}),
    "text": ("/v1/completions", {"model": "tiny", "prompt": "Count to a thousand:", **LONG}),
}


@pytest.fixture(scope="module")
def serve_url(engine_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    bank = tmp_path_factory.mktemp("serve-abort") / "bank.json"
    write_bank(bank, "Check the units of every quantity before you state the final answer.")
    with serve_thread(bank, engine_url, admin_token=ADMIN) as url:
        yield url


def engine_busy(engine_url: str) -> int:
    """Requests the engine is running or holding in its queue."""
    state = httpx.get(engine_url + "/server_info", timeout=10).json()["internal_states"][0]
    return state["num_running_reqs"] + state["num_waiting_reqs"]


def generated_tokens(engine_url: str) -> int:
    return httpx.get(engine_url + "/server_info", timeout=10).json()["cache"]["generated_tokens"]


def outstanding(serve_url: str) -> int:
    """serve's count of requests in flight on its (one) endpoint."""
    auth = {"Authorization": f"Bearer {ADMIN}"}
    bank = httpx.get(serve_url + "/admin/bank", headers=auth, timeout=10).json()
    return sum(e["outstanding"] for e in bank["endpoints"])


def in_flight(serve_url: str) -> int:
    """serve's ``requests_in_flight`` gauge, less the ``/metrics`` request reading it."""
    text = httpx.get(serve_url + "/metrics", timeout=10).text
    line = next(x for x in text.splitlines() if x.startswith("ted_serve_requests_in_flight "))
    return int(float(line.split()[1])) - 1


def wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def idle(engine_url: str, serve_url: str) -> bool:
    return engine_busy(engine_url) == 0 and outstanding(serve_url) == 0


def leave(base_url: str, route: str, body: dict, stream: bool) -> None:
    """Send ``body``, see it run (a first event, or a second with no answer), then go away."""
    with httpx.Client(base_url=base_url, timeout=60) as leaver:
        if stream:
            with leaver.stream("POST", route, json={**body, "stream": True}) as response:
                assert response.status_code == 200
                next(line for line in response.iter_lines() if line)
        else:
            with pytest.raises(httpx.ReadTimeout):
                leaver.post(route, json=body, timeout=1.0)


def assert_stopped(engine_url: str, before: int) -> None:
    """The engine ran the request (``before``: its generated tokens then) and stopped it."""
    assert wait_until(lambda: engine_busy(engine_url) == 0, 3.0), "the engine kept generating"
    stopped_at = generated_tokens(engine_url)
    assert stopped_at > before  # it ran
    time.sleep(0.3)
    assert generated_tokens(engine_url) == stopped_at


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("kind", ["chat", "text"])
def test_a_client_that_leaves_stops_the_engine_request(
    engine_url: str, serve_url: str, kind: str, stream: bool
) -> None:
    assert wait_until(lambda: idle(engine_url, serve_url), 60)
    route, body = ROUTES[kind]
    before = generated_tokens(engine_url)
    leave(serve_url, route, body, stream)  # closing its connection is all it takes
    assert_stopped(engine_url, before)
    assert wait_until(lambda: outstanding(serve_url) == 0, 3.0), "the balancer leaked a slot"
    assert wait_until(lambda: in_flight(serve_url) == 0, 3.0)
    ok = httpx.post(serve_url + route, json={**body, "max_tokens": 2}, timeout=60)
    assert ok.status_code == 200, ok.text


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_the_engines_own_openai_routes_stop_too(engine_url: str, stream: bool) -> None:
    """The same routes mounted on the engine, in process (no HTTP hop to cancel)."""
    assert wait_until(lambda: engine_busy(engine_url) == 0, 60)
    route, body = ROUTES["chat"]
    before = generated_tokens(engine_url)
    leave(engine_url, route, body, stream)
    assert_stopped(engine_url, before)


def test_a_client_that_leaves_while_its_request_waits_is_dropped(
    engine_url: str, serve_url: str
) -> None:
    """A stream whose client leaves before the engine sent its first event."""
    assert wait_until(lambda: idle(engine_url, serve_url), 60)
    route, body = ROUTES["chat"]
    # as many prompts as the engine batches (32) fill it: the stream behind them waits
    blocker = {"model": "tiny", "prompt": ["Count:"] * 32, **LONG}
    with httpx.Client(base_url=serve_url, timeout=60) as client:
        busy = threading.Thread(target=lambda: client.post("/v1/completions", json=blocker))
        busy.start()
        try:
            assert wait_until(lambda: engine_busy(engine_url) == 32, 10)
            with (
                pytest.raises(httpx.ReadTimeout),
                httpx.stream(
                    "POST", serve_url + route, json={**body, "stream": True}, timeout=1.0
                ) as response,
            ):
                response.read()
            assert wait_until(
                lambda: engine_busy(engine_url) == 32 and outstanding(serve_url) == 1, 3.0
            ), "the waiting request stayed"
        finally:
            httpx.post(engine_url + "/abort_request", json={"abort_all": True}, timeout=10)
            busy.join(timeout=30)
    assert wait_until(lambda: idle(engine_url, serve_url), 3.0)


def _abort_soon(engine_url: str, body: dict) -> threading.Thread:
    """Abort every engine request (with ``body``) once the engine runs one."""

    def abort() -> None:
        if wait_until(lambda: engine_busy(engine_url) > 0, 30):
            time.sleep(0.2)
            httpx.post(engine_url + "/abort_request", json=body, timeout=10)

    thread = threading.Thread(target=abort)
    thread.start()
    return thread


OPERATOR_ABORTS = {
    "plain": ({"abort_all": True}, 503, "Aborted"),
    "message": ({"abort_all": True, "abort_message": "draining for an upgrade"}, 503,
                "draining for an upgrade"),
}  # fmt: skip


def assert_operator_error(error: dict, message: str) -> None:
    """``error``: an operator's abort in OpenAI's error shape, its message passed on."""
    assert set(error) == {"message", "type", "param", "code"}
    assert message in error["message"] and error["type"] == "server_error"


@pytest.mark.parametrize("why", list(OPERATOR_ABORTS))
@pytest.mark.parametrize("kind", ["chat", "text"])
def test_an_operator_abort_is_an_openai_error(
    engine_url: str, serve_url: str, kind: str, why: str
) -> None:
    assert wait_until(lambda: idle(engine_url, serve_url), 60)
    route, body = ROUTES[kind]
    abort, status, message = OPERATOR_ABORTS[why]
    aborter = _abort_soon(engine_url, abort)
    response = httpx.post(serve_url + route, json=body, timeout=60)
    aborter.join()
    assert response.status_code == status, response.text
    assert_operator_error(response.json()["error"], message)
    assert wait_until(lambda: idle(engine_url, serve_url), 3.0)


@pytest.mark.parametrize("why", list(OPERATOR_ABORTS))
@pytest.mark.parametrize("kind", ["chat", "text"])
def test_an_operator_abort_ends_a_stream_with_an_error_event(
    engine_url: str, serve_url: str, kind: str, why: str
) -> None:
    assert wait_until(lambda: idle(engine_url, serve_url), 60)
    route, body = ROUTES[kind]
    abort, _, message = OPERATOR_ABORTS[why]
    with httpx.stream("POST", serve_url + route, json={**body, "stream": True}, timeout=60) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        first = next(line for line in lines if line)
        assert first.startswith("data: {") and "error" not in json.loads(first[6:])
        httpx.post(engine_url + "/abort_request", json=abort, timeout=10)
        rest = [line for line in lines if line]
    assert rest[-1] == "data: [DONE]"
    assert_operator_error(json.loads(rest[-2][len("data: ") :])["error"], message)
    assert all("error" not in line for line in rest[:-2])
    assert wait_until(lambda: idle(engine_url, serve_url), 3.0)
