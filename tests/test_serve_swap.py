"""Hot swap of the bank while serving: a new file is served on the next request, a torn
file never interrupts serving, a request in flight keeps the version it started with."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from bank_files import add, write_bank
from serve_threads import serve_thread

from ted_sglang.bank import ExperienceBank

ADMIN = "admin-secret"
AUTH = {"Authorization": f"Bearer {ADMIN}"}
USER = [{"role": "user", "content": "What is the area of the rectangle?"}]


def ask(client: openai.OpenAI) -> tuple[int, int, str]:
    """(bank version, prompt tokens, prompt text) of one short request."""
    raw = client.chat.completions.with_raw_response.create(
        model="tiny", messages=USER, max_tokens=1
    )
    out = raw.parse()
    version = int(raw.headers["x-ted-bank-version"])
    assert out.system_fingerprint == f"ted-bank-v{version}"
    return version, out.usage.prompt_tokens, out.model_extra["ted"]["prompt"]


def wait_for_version(client: openai.OpenAI, version: int, timeout: float = 15.0) -> tuple:
    deadline = time.monotonic() + timeout
    while True:
        got = ask(client)
        if got[0] == version or time.monotonic() > deadline:
            return got
        time.sleep(0.05)


def metric(url: str, name: str) -> float:
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


@pytest.fixture()
def bank_path(tmp_path: Path) -> Path:
    return tmp_path / "bank.json"


@pytest.fixture()
def served(engine_url: str, bank_path: Path) -> Iterator[tuple[str, openai.OpenAI]]:
    write_bank(bank_path, "Check the units before you state the final answer.")
    with serve_thread(
        bank_path, engine_url, admin_token=ADMIN, echo_prompt=True, poll_interval_s=0.1
    ) as url:
        yield url, openai.OpenAI(base_url=url + "/v1", api_key="-", max_retries=0)


def test_new_file_is_served_and_torn_file_is_refused(
    served: tuple[str, openai.OpenAI], bank_path: Path
) -> None:
    url, client = served
    version, tokens, prompt = ask(client)
    assert version == 1
    bank = ExperienceBank.load(bank_path)
    new_text = "Draw the figure and label every side before writing the equation."
    add(bank, new_text)
    bank.save(bank_path)
    version2, tokens2, prompt2 = wait_for_version(client, 2)
    assert version2 == 2 and new_text in prompt2 and new_text not in prompt
    assert tokens2 > tokens  # the engine saw the longer prompt
    assert metric(url, "ted_serve_bank_swaps_total") == 1

    good = bank_path.read_bytes()
    with open(bank_path, "r+b") as handle:  # a writer that is not atomic, caught mid-write
        handle.write(good[: len(good) // 3])  # the same bytes: the file changes once, here:
        handle.truncate()
    window_end = time.monotonic() + 1.5  # 15 polls of the watcher
    served_versions = set()
    while time.monotonic() < window_end:
        served_versions.add(ask(client)[0])
    assert served_versions == {2}
    assert metric(url, "ted_serve_bank_swap_failures_total") == 1  # counted once
    status = httpx.get(url + "/admin/bank", headers=AUTH).json()
    assert status["version"] == 2 and "not valid JSON" in status["last_error"]

    add(bank, "Read the question again before you answer it.")
    bank.save(bank_path)
    assert wait_for_version(client, 3)[0] == 3
    assert metric(url, "ted_serve_bank_swaps_total") == 2
    requests = httpx.get(url + "/admin/bank", headers=AUTH).json()["requests_by_version"]
    assert set(requests) == {"1", "2", "3"}
    assert (
        f'ted_serve_bank_requests_total{{version="2"}} {requests["2"]}'
        in httpx.get(url + "/metrics").text
    )


def test_request_in_flight_keeps_its_version(
    served: tuple[str, openai.OpenAI], bank_path: Path
) -> None:
    _, client = served
    with client.chat.completions.create(
        model="tiny", messages=USER, max_tokens=200, temperature=0, stream=True,
        extra_body={"ignore_eos": True},
    ) as stream:  # fmt: skip
        chunks = iter(stream)
        first = next(chunks)
        assert first.system_fingerprint == "ted-bank-v1"
        bank = ExperienceBank.load(bank_path)
        add(bank, "Count the items twice before you answer.")
        bank.save(bank_path)
        assert wait_for_version(client, 2)[0] == 2  # swapped while the stream runs
        rest = list(chunks)
    finished = [c for c in rest if c.choices and c.choices[0].finish_reason]
    assert finished and finished[0].choices[0].finish_reason == "length"
    assert {c.system_fingerprint for c in rest} == {"ted-bank-v1"}


def test_admin_reload(engine_url: str, bank_path: Path) -> None:
    bank = write_bank(bank_path, "Check the units before you state the final answer.")
    with serve_thread(
        bank_path, engine_url, admin_token=ADMIN, echo_prompt=True, poll_interval_s=3600
    ) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="-", max_retries=0)
        add(bank, "Draw the figure and label every side first.")
        bank.save(bank_path)
        assert ask(client)[0] == 1  # not polled: still the old version
        ok = httpx.post(url + "/admin/reload", headers=AUTH)
        assert ok.json() == {"outcome": "swapped", "version": 2, "previous": 1}
        assert ask(client)[0] == 2

        bank_path.write_text('{"format": "ted-sglang-bank", "format_')
        refused = httpx.post(url + "/admin/reload", headers=AUTH)
        assert refused.status_code == 409
        error = refused.json()["error"]
        assert error["code"] == "bank_refused" and "still serving version 2" in error["message"]
        assert ask(client)[0] == 2
