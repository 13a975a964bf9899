"""Generated ``/generate`` bodies against the shared engine: never a 500, and the engine
answers ``/health`` within a second afterwards.

Bodies are random JSON, or objects with SGLang's field names holding values of any
type: huge integers, NaN and infinities, lone surrogates, control characters,
deep nesting. Generation is kept to a few tokens so that the examples run quickly.
"""

from __future__ import annotations

import json
import time

import httpx
from engine_http import error_message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

MAX_TOKENS = 2  # every generated body that would generate asks for at most this many

odd_chars = st.text(
    alphabet=st.one_of(
        st.characters(codec=None, exclude_categories=()),  # surrogates included
        st.sampled_from(["\x00", "\n", "\u2028", "\ufeff", "\\", '"', "\ud800", "\udfff"]),
    ),
    max_size=24,
)
markers = st.sampled_from(["<image>", "<|im_start|>", "<|im_end|>", "(a|aa)+"])
special = st.sampled_from(
    ["", "\ud800", "a\udfffb", "\x00", "a" * 5000, "/etc/passwd", "data:image/png;base64,AA=="]
)
odd_text = st.one_of(
    odd_chars, st.lists(st.one_of(odd_chars, markers), max_size=4).map("".join), special
)
numbers = st.one_of(
    st.integers(-5, 40),
    st.integers(),
    st.integers(min_value=2**63 - 2, max_value=2**64 + 2),
    st.just(10**400),
    st.just(-(10**4000)),
    st.floats(allow_nan=True, allow_infinity=True),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, odd_text)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(odd_text, inner, max_size=3),
    max_leaves=12,
)
token_ids = st.lists(st.one_of(st.integers(-2, 1100), numbers), max_size=6)
sampling_values = {
    "max_new_tokens": numbers,
    "min_new_tokens": numbers,
    "n": numbers,
    "temperature": numbers,
    "top_p": numbers,
    "top_k": numbers,
    "min_p": numbers,
    "frequency_penalty": numbers,
    "presence_penalty": numbers,
    "repetition_penalty": numbers,
    "stop": st.one_of(odd_text, st.lists(odd_text, max_size=3)),
    "stop_token_ids": token_ids,
    "stop_regex": st.one_of(odd_text, st.lists(odd_text, max_size=3), st.just("(a|aa)+![^!]")),
    "regex": st.one_of(odd_text, st.just("[0-9]{1,3}")),
    "json_schema": st.one_of(odd_text, json_values.map(json.dumps)),
    "ebnf": odd_text,
    "logit_bias": st.dictionaries(st.one_of(odd_text, numbers.map(str)), numbers, max_size=3),
    "sampling_seed": numbers,
    "ignore_eos": st.booleans(),
    "skip_special_tokens": st.booleans(),
    "no_stop_trim": st.booleans(),
}
sampling_params = st.fixed_dictionaries(
    {}, optional={k: st.one_of(v, json_values) for k, v in sampling_values.items()}
)
prompt = st.one_of(odd_text, st.lists(odd_text, max_size=3))
top_level = {
    "text": st.one_of(prompt, json_values),
    "input_ids": st.one_of(token_ids, st.lists(token_ids, max_size=2), json_values),
    "sampling_params": st.one_of(sampling_params, st.lists(sampling_params, max_size=3)),
    "stream": st.one_of(st.booleans(), json_values),
    "return_logprob": st.one_of(st.booleans(), json_values),
    "logprob_start_len": st.one_of(numbers, json_values),
    "top_logprobs_num": st.one_of(numbers, json_values),
    "return_text_in_logprobs": st.booleans(),
    "image_data": st.one_of(odd_text, st.just("/etc/passwd"), st.just("aGVsbG8="), json_values),
    "rid": st.one_of(odd_text, st.lists(odd_text, max_size=3), json_values),
}
# A plain prompt with one or two odd sampling values: these get as far as generation.
near_valid = st.fixed_dictionaries(
    {
        "text": st.text(st.characters(codec="ascii", min_codepoint=32), min_size=1, max_size=20),
        "sampling_params": st.dictionaries(
            st.sampled_from(sorted(sampling_values)),
            st.one_of(*sampling_values.values()),
            max_size=2,
        ),
    },
    optional={
        "stream": st.booleans(),
        "return_logprob": st.booleans(),
        "top_logprobs_num": st.integers(0, 3),
        "return_text_in_logprobs": st.booleans(),
        "rid": odd_text,
    },
)
# A valid body with one odd field: each example tries one value where it matters.
BASE = {"text": "Hi there", "sampling_params": {"max_new_tokens": MAX_TOKENS}}
one_odd_field = st.one_of(
    st.one_of(
        *(st.builds(lambda k, v: {**BASE, k: v}, st.just(k), v) for k, v in top_level.items())
    ),
    st.one_of(
        st.builds(
            lambda k, v: {**BASE, "sampling_params": {"max_new_tokens": 1, k: v}}, st.just(k), v
        )
        for k, v in sampling_values.items()
    ),
)
bodies = st.one_of(
    json_values, st.fixed_dictionaries({}, optional=top_level), near_valid, one_odd_field
)


def _few_tokens(body: object) -> object:
    """Bound the tokens a body could generate (length is not what this test is about)."""
    if not isinstance(body, dict):
        return body
    params = body.setdefault("sampling_params", {})
    for entry in params if isinstance(params, list) else [params]:
        if isinstance(entry, dict):
            value = entry.get("max_new_tokens")
            if value is None or (isinstance(value, int) and MAX_TOKENS < value < 10**6):
                entry["max_new_tokens"] = MAX_TOKENS
    return body


def test_generated_bodies_never_get_a_500(engine_url: str) -> None:
    statuses: dict[int, int] = {}

    @settings(
        max_examples=200,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(body=bodies)
    def check(body: object) -> None:
        raw = json.dumps(_few_tokens(body)).encode()  # lone surrogates become \ud8xx escapes
        with httpx.Client(base_url=engine_url, timeout=60) as client:
            response = client.post(
                "/generate", content=raw, headers={"content-type": "application/json"}
            )
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        assert response.status_code < 500, (raw[:300], response.text[:300])
        if response.status_code >= 400 and not response.text.startswith("data:"):
            assert error_message(response)

    check()
    assert statuses.get(200, 0) >= 5, statuses  # some bodies got through to generation
    start = time.perf_counter()
    assert httpx.get(engine_url + "/health", timeout=1).status_code == 200
    assert time.perf_counter() - start < 1.0
    out = httpx.post(
        engine_url + "/generate",
        json={"text": "Still fine?", "sampling_params": {"max_new_tokens": 2}},
        timeout=30,
    )
    assert out.status_code == 200, out.text
