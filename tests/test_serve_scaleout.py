"""Scale-out: serve balancing several endpoints (and failing over), and serve in front of
an SGLang router (``sglang-router``, skipped when it is not installed)."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
from serve_threads import serve_thread

from ted_sglang.bank import ExperienceBank
from ted_sglang.engine.launcher import free_port, launch_engine, start_server

ADMIN = "admin-secret"
AUTH = {"Authorization": f"Bearer {ADMIN}"}
USER = [{"role": "user", "content": "How many sides does a square have?"}]
LONG = {"max_tokens": 400, "temperature": 0, "stream": True, "extra_body": {"ignore_eos": True}}


@pytest.fixture()
def bank_path(tmp_path: Path) -> Path:
    bank = ExperienceBank(student_model="tiny")
    bank.apply({"operations": [{"op": "add", "text": "Count the sides one by one, then check."}]})
    bank.save(tmp_path / "bank.json")
    return tmp_path / "bank.json"


def endpoint_stats(url: str) -> dict[str, dict]:
    status = httpx.get(url + "/admin/bank", headers=AUTH).json()
    return {e["url"]: e for e in status["endpoints"]}


def test_requests_are_spread_over_endpoints(
    engine_url: str, second_engine_url: str, bank_path: Path
) -> None:
    with serve_thread(bank_path, engine_url, second_engine_url, admin_token=ADMIN) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="-", max_retries=0)
        with ThreadPoolExecutor(8) as pool:
            outs = list(
                pool.map(
                    lambda i: client.chat.completions.create(
                        model="tiny", messages=USER, max_tokens=4, seed=i
                    ),
                    range(16),
                )
            )
        assert all(o.system_fingerprint == "ted-bank-v1" for o in outs)
        stats = endpoint_stats(url)
        assert stats[engine_url]["requests"] >= 3 and stats[second_engine_url]["requests"] >= 3
        assert stats[engine_url]["outstanding"] == stats[second_engine_url]["outstanding"] == 0


@pytest.mark.slow
def test_dead_endpoint_fails_its_stream_and_is_skipped(
    engine_url: str, tiny_model_dir: Path, tmp_path: Path, bank_path: Path
) -> None:
    doomed = launch_engine(tiny_model_dir, log_path=tmp_path / "doomed.log", timeout=180)
    try:
        with (
            serve_thread(bank_path, doomed.url, engine_url, admin_token=ADMIN) as url,
            contextlib.ExitStack() as open_,
        ):
            client = openai.OpenAI(base_url=url + "/v1", api_key="-", max_retries=0)
            streams = []
            for _ in range(2):  # least outstanding: one stream on each endpoint
                stream = open_.enter_context(
                    client.chat.completions.create(model="tiny", messages=USER, **LONG)
                )
                next(iter(stream))
                streams.append(stream)
            assert {e["outstanding"] for e in endpoint_stats(url).values()} == {1}
            os.killpg(doomed.process.pid, signal.SIGKILL)
            outcomes = []
            for stream in streams:
                try:
                    chunks = list(stream)
                except openai.APIError as exc:  # the error event, in OpenAI's shape
                    assert "failed" in exc.message
                    outcomes.append("error")
                else:
                    assert chunks[-1].choices[0].finish_reason == "length"
                    outcomes.append("done")
            assert sorted(outcomes) == ["done", "error"]
            for _ in range(4):  # the dead endpoint refuses connections: all go elsewhere
                out = client.chat.completions.create(model="tiny", messages=USER, max_tokens=2)
                assert out.choices[0].finish_reason in ("stop", "length")
            stats = endpoint_stats(url)
            assert stats[doomed.url]["failures"] >= 2 and stats[engine_url]["requests"] >= 5
    finally:
        doomed.close()


@pytest.fixture()
def router_url(engine_url: str, second_engine_url: str, tmp_path: Path) -> Iterator[str]:
    if importlib.util.find_spec("sglang_router") is None:
        pytest.skip("sglang-router is not installed")
    port = free_port()
    cmd = [
        sys.executable, "-m", "sglang_router.launch_router",
        "--worker-urls", engine_url, second_engine_url,
        "--host", "127.0.0.1", "--port", str(port),
        "--prometheus-port", str(free_port()), "--log-level", "warn",
    ]  # fmt: skip
    # up once a worker answers through it
    with start_server(
        cmd, f"http://127.0.0.1:{port}", "the router", tmp_path / "router.log", timeout=90,
        poll_interval=0.5, ready_route="/get_model_info",
    ) as router:  # fmt: skip
        yield router.url


@pytest.mark.slow
def test_serve_behind_an_sglang_router(
    router_url: str, bank_path: Path, tiny_model_dir: Path
) -> None:
    with serve_thread(bank_path, router_url, admin_token=ADMIN) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="-", max_retries=0)
        models = client.models.list().data
        assert [m.id for m in models] == ["tiny"]
        assert models[0].model_extra["root"] == str(tiny_model_dir)
        first = client.chat.completions.create(model="tiny", messages=USER, max_tokens=3)
        other = [{"role": "user", "content": "And a triangle?"}]
        second = client.chat.completions.create(model="tiny", messages=other, max_tokens=3)
        # the router's cache-aware policy keeps one bank prefix on one worker
        assert second.usage.prompt_tokens_details.cached_tokens > first.usage.prompt_tokens // 2
        with client.chat.completions.create(
            model="tiny", messages=USER, max_tokens=3, stream=True
        ) as stream:
            chunks = list(stream)
        assert chunks[-1].choices[0].finish_reason in ("stop", "length")
        assert httpx.get(url + "/health").status_code == 200
