"""Generated bodies (random JSON, wrong types, huge numbers, lone surrogates, control
characters) sent to serve's ``/v1/chat/completions`` in front of the reference engine,
over one kept-alive connection: never a 5xx, and both servers answer ``/health`` within
a second afterwards."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from bank_files import write_bank
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from serve_threads import serve_thread

KEY = "sk-fuzz"
SPECIAL_STRINGS = [
    "", "\x00", "\ud800", "x\udfff", "\u2028", "\x1b[31m", "<|im_end|>", "<|im_start|>system\n",
    "tiny", "(a+)+$", "data:image/png;base64,AAAA", "é漢🙂", "x" * 5000,
]  # fmt: skip
SPECIAL_INTS = [-1, 0, 1, 2, 64, 65, 2**31, 2**63 - 1, 2**63, 2**64, -(2**63) - 1, 10**30]

strings = st.one_of(
    st.sampled_from(SPECIAL_STRINGS),
    st.text(st.characters(exclude_categories=()), max_size=12),  # surrogates included
)
integers = st.one_of(st.sampled_from(SPECIAL_INTS), st.integers(-3, 8))
numbers = st.one_of(integers, st.floats(allow_nan=True, allow_infinity=True))
scalars = st.one_of(st.none(), st.booleans(), numbers, strings)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(strings, inner, max_size=3)
    ),
    max_leaves=8,
)
messages = st.lists(
    st.fixed_dictionaries(
        {
            "role": st.sampled_from(["user", "system", "assistant", "tool", "x"]),
            "content": st.one_of(strings, strings, json_values),
        }
    ),
    min_size=1,
    max_size=3,
)
# Values of the right type but hostile, per field, so that many bodies pass validation.
TYPED = {
    **dict.fromkeys(
        ["max_tokens", "max_completion_tokens", "n", "seed", "top_k", "min_tokens", "top_logprobs"],
        integers,
    ),
    **dict.fromkeys(
        [
            "temperature",
            "top_p",
            "min_p",
            "presence_penalty",
            "frequency_penalty",
            "repetition_penalty",
        ],
        numbers,
    ),
    **dict.fromkeys(["model", "regex", "user"], strings),
    **dict.fromkeys(
        ["logprobs", "stream", "use_bank", "ignore_eos", "skip_special_tokens"], st.booleans()
    ),
    "stop": st.one_of(strings, st.lists(strings, max_size=3)),
    "stop_token_ids": st.lists(integers, max_size=3),
    "logit_bias": st.dictionaries(st.one_of(integers.map(str), strings), numbers, max_size=2),
    "messages": messages,
    "response_format": st.fixed_dictionaries(
        {
            "type": st.sampled_from(["json_schema", "json_object", "text"]),
            "json_schema": st.fixed_dictionaries({"schema": json_values}),
        }
    ),
    "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
    "tools": json_values,
}
fields = st.sampled_from(sorted(TYPED)).flatmap(
    lambda name: st.tuples(st.just(name), st.one_of(TYPED[name], TYPED[name], json_values))
)
BASE = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
mutated = st.lists(fields, min_size=1, max_size=3).map(lambda items: {**BASE, **dict(items)})
bodies = st.one_of(mutated, mutated, mutated, json_values)


def encode(body: Any) -> bytes:
    """JSON as a careless client writes it: lone surrogates as escapes, NaN as NaN."""
    return json.dumps(body).encode()


@pytest.fixture(scope="module")
def serve_url(engine_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    path = tmp_path_factory.mktemp("serve-fuzz") / "bank.json"
    write_bank(path, "Check the units of every quantity before you state the final answer.")
    with serve_thread(path, engine_url, api_key=KEY) as url:
        yield url


def test_generated_bodies_never_get_a_server_error(serve_url: str, engine_url: str) -> None:
    with httpx.Client(
        base_url=serve_url, headers={"Authorization": f"Bearer {KEY}"}, timeout=120
    ) as client:

        @settings(
            max_examples=150,
            deadline=None,
            derandomize=True,  # the same bodies every run: a failure can be replayed
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(body=bodies)
        @example(body={**BASE, "seed": 2**64, "stop_token_ids": [2**70]})
        @example(body={**BASE, "messages": [{"role": "user", "content": "\ud800"}]})
        @example(body={**BASE, "logit_bias": {"1" * 40: 1e308}, "n": 2**64})
        @example(body={**BASE, "max_tokens": 10**30, "stream": True})
        @example(body={**BASE, "regex": "(a+)+$", "stream": True, "max_tokens": 3})
        def one(body: Any) -> None:
            response = client.post(
                "/v1/chat/completions",
                content=encode(body),
                headers={"content-type": "application/json"},
            )
            assert response.status_code < 500, (body, response.text[:500])
            if response.status_code >= 400:
                assert set(response.json()["error"]) == {"message", "type", "param", "code"}
            assert '"type":"server_error"' not in response.text, (body, response.text[:500])

        one()

    for url in (serve_url, engine_url):
        start = time.monotonic()
        assert httpx.get(url + "/health", timeout=1.0).status_code == 200
        assert time.monotonic() - start < 1.0
