"""Parsing /generate bodies: SGLang's defaults, the frontend's nulls, batches, refusals."""

from __future__ import annotations

import pytest

from ted_sglang.engine.errors import RequestError
from ted_sglang.engine.protocol import parse_generate
from ted_sglang.engine.sampling_params import TOP_K_ALL

# Exactly what SGLang 0.5.23's RuntimeEndpoint.generate sends for a bare sgl.gen().
FRONTEND_SAMPLING = {
    "skip_special_tokens": True,
    "spaces_between_special_tokens": True,
    "max_new_tokens": 128,
    "min_new_tokens": 0,
    "n": 1,
    "stop": [],
    "stop_token_ids": [],
    "stop_regex": [],
    "temperature": 1.0,
    "top_p": 1.0,
    "top_k": -1,
    "min_p": 0.0,
    "frequency_penalty": 0.0,
    "presence_penalty": 0.0,
    "ignore_eos": False,
    "regex": None,
    "json_schema": None,
}
NULLS = {k: None for k in FRONTEND_SAMPLING}


def test_defaults_mirror_sglang() -> None:
    req = parse_generate({"text": "hi"})
    assert req.is_single and not req.stream and len(req.items) == 1
    sp = req.items[0].sampling
    assert (sp.max_new_tokens, sp.temperature, sp.top_p, sp.top_k, sp.min_p) == (
        128,
        1.0,
        1.0,
        TOP_K_ALL,
        0.0,
    )
    assert sp.skip_special_tokens and not sp.ignore_eos and sp.grammar_key is None
    assert req.items[0].logprob_start_len == -1 and not req.items[0].return_logprob


@pytest.mark.parametrize("sampling", [FRONTEND_SAMPLING, NULLS, {}])
def test_frontend_fields_and_nulls_are_accepted(sampling) -> None:
    sp = parse_generate({"text": "hi", "sampling_params": sampling}).items[0].sampling
    assert sp.max_new_tokens == 128 and sp.top_k == TOP_K_ALL and sp.stop == []


def test_temperature_zero_is_greedy() -> None:
    sp = parse_generate({"text": "x", "sampling_params": {"temperature": 0}}).items[0].sampling
    assert sp.is_greedy and sp.temperature == 1.0


def test_batches_and_n() -> None:
    req = parse_generate(
        {"text": ["a", "b"], "sampling_params": [{"n": 2}, {"n": 2}], "rid": ["r1", "r2"]}
    )
    assert not req.is_single
    assert [i.text for i in req.items] == ["a", "a", "b", "b"]
    # As GenerateReqInput: one rid per prompt; each sample gets a fresh id of its own.
    rids = [i.rid for i in req.items]
    assert len(set(rids)) == 4 and not {"r1", "r2"} & set(rids)
    with pytest.raises(RequestError, match="batch_size"):  # prompts x n rids: SGLang refuses
        parse_generate(
            {"text": ["a", "b"], "sampling_params": {"n": 2}, "rid": ["1", "2", "3", "4"]}
        )
    assert [i.rid for i in parse_generate({"text": ["a", "b"], "rid": "g"}).items] == [
        "g_0",
        "g_1",
    ]
    assert [i.rid for i in parse_generate({"text": "a", "rid": "solo"}).items] == ["solo"]
    req = parse_generate({"text": "a", "sampling_params": {"n": 3}})
    assert not req.is_single and len(req.items) == 3 and len({i.rid for i in req.items}) == 3
    req = parse_generate(
        {"input_ids": [[1, 2], [3]], "return_logprob": [True, False], "logprob_start_len": [0, -1]}
    )
    assert [i.input_ids for i in req.items] == [[1, 2], [3]]
    assert [i.return_logprob for i in req.items] == [True, False]
    assert [i.logprob_start_len for i in req.items] == [0, -1]
    assert parse_generate({"input_ids": [5, 6]}).is_single


def test_stop_and_grammar_fields() -> None:
    sp = (
        parse_generate(
            {
                "text": "x",
                "sampling_params": {"stop": "\n", "stop_token_ids": [7], "regex": "[a-z]+"},
            }
        )
        .items[0]
        .sampling
    )
    assert sp.stop == ["\n"] and sp.stop_token_ids == {7}
    assert sp.grammar_key == ("regex", "[a-z]+")


def test_images_one_per_prompt() -> None:
    assert parse_generate({"text": "x", "image_data": "abc"}).items[0].image_data == "abc"
    assert parse_generate({"text": "x", "image_data": ["abc"]}).items[0].image_data == "abc"
    req = parse_generate({"text": ["x", "y"], "image_data": ["a", None]})
    assert [i.image_data for i in req.items] == ["a", None]


@pytest.mark.parametrize(
    "body, message",
    [
        ({}, "Either text or input_ids"),
        ({"text": "a", "input_ids": [1]}, "Only one of"),
        ({"text": 5}, "invalid type"),
        ({"text": []}, "empty"),
        ({"input_ids": []}, "cannot be empty"),
        ({"input_ids": [[1], []]}, "cannot be empty"),
        ({"input_ids": [-1]}, "non-negative"),
        ({"text": "a", "sampling_params": {"max_new_tokens": -1}}, "max_new_tokens"),
        ({"text": "a", "sampling_params": {"max_new_tokens": "9"}}, "invalid type"),
        ({"text": "a", "sampling_params": {"top_p": 0}}, "top_p"),
        ({"text": "a", "sampling_params": {"top_p": 1.5}}, "top_p"),
        ({"text": "a", "sampling_params": {"temperature": -1}}, "temperature"),
        ({"text": "a", "sampling_params": {"top_k": 0}}, "top_k"),
        ({"text": "a", "sampling_params": {"min_p": 2}}, "min_p"),
        (
            {"text": "a", "sampling_params": {"min_new_tokens": 5, "max_new_tokens": 2}},
            "min_new_tokens",
        ),
        ({"text": "a", "sampling_params": {"regex": "a", "json_schema": "{}"}}, "Only one of"),
        ({"text": "a", "sampling_params": {"bogus": 1}}, "unknown field"),
        ({"text": "a", "sampling_params": {"n": 0}}, "n must be"),
        ({"text": ["a", "b"], "sampling_params": [{}]}, "2 prompts"),
        ({"text": ["a", "b"], "sampling_params": [{"n": 1}, {"n": 2}]}, "same"),
        ({"text": "a", "image_data": ["x", "y"]}, "one image"),
        ({"text": ["a", "b"], "image_data": ["x"]}, "one per prompt"),
        ({"text": "a", "lora_path": "adapter"}, "not supported"),
        ({"text": "a", "stream": "yes"}, "invalid type"),
        ({"text": "a", "logprob_start_len": -5}, "logprob_start_len"),
        ({"text": "a", "top_logprobs_num": -1}, "top_logprobs_num"),
        ({"text": "a", "rid": ["x", "y"]}, "rid"),
        ({"text": "a", "sampling_params": {"stop_regex": "("}}, "stop_regex"),
        ([1, 2], "JSON object"),
    ],
)
def test_bad_requests_are_refused_with_a_message(body, message) -> None:
    with pytest.raises(RequestError, match=message) as info:
        parse_generate(body)
    assert info.value.status_code == 400


def test_unknown_top_level_fields_are_ignored_as_in_sglang() -> None:
    req = parse_generate(
        {
            "text": "a",
            "priority": 3,
            "custom_labels": {"a": "b"},
            "future_field": [1, 2],
            "log_metrics": False,
        }
    )
    assert len(req.items) == 1


def test_sglang_request_fields_are_parsed() -> None:
    tag = '{"format": {"type": "const_string", "value": "ok"}}'
    req = parse_generate(
        {
            "text": ["a", "b"],
            "sampling_params": {
                "structural_tag": tag,
                "custom_params": {"any": ["thing"]},
                "stream_interval": 4,
            },
            "token_ids_logprob": [3, 9],
            "return_hidden_states": [True, False],
            "return_prompt_token_ids": True,
            "priority": -7,
        }
    )
    a, b = req.items
    assert a.sampling.grammar_key == ("structural_tag", tag)
    assert a.sampling.stream_interval == 4 and a.sampling.custom_params == {"any": ["thing"]}
    assert a.token_ids_logprob == b.token_ids_logprob == [3, 9]
    assert (a.return_hidden_states, b.return_hidden_states) == (True, False)
    assert a.return_prompt_token_ids and a.priority == b.priority == -7
    per_prompt = parse_generate({"text": ["a", "b"], "token_ids_logprob": [[1], [2, 3]]})
    assert [i.token_ids_logprob for i in per_prompt.items] == [[1], [2, 3]]


def test_the_prompts_of_a_batch_share_one_parse_of_their_sampling_params() -> None:
    req = parse_generate({"text": ["a", "b"], "sampling_params": {"n": 2, "stop_regex": "x+"}})
    assert len({id(item.sampling) for item in req.items}) == 1
    per_prompt = parse_generate({"text": ["a", "b"], "sampling_params": [{"n": 2}, {"n": 2}]})
    assert len({id(item.sampling) for item in per_prompt.items}) == 2


@pytest.mark.parametrize(
    "body, message",
    [
        ({"text": "a", "sampling_params": {"n": 2}, "token_ids_logprob": [[1]]}, "parallel"),
        ({"text": ["a"], "sampling_params": {"n": 2}, "return_logprob": [True]}, "parallel"),
        ({"text": "a", "token_ids_logprob": list(range(257))}, "at most 256"),
        ({"text": "a", "token_ids_logprob": [-1]}, "non-negative"),
        ({"text": "a", "return_logprob": True, "top_logprobs_num": 257}, "at most 256"),
        ({"text": ["a"] * 65, "sampling_params": {"n": 64}}, "at most 4096 samples"),
        ({"input_ids": [[1]] * 4097}, "at most 4096 samples"),
        ({"text": "a", "priority": 1 << 63}, "64-bit"),
        ({"text": ["a", "b"], "rid": ["x", "x"]}, "Duplicate"),
        (
            {"text": "a", "sampling_params": {"regex": "a", "structural_tag": "{}"}},
            "Only one of",
        ),
    ],
)
def test_sglang_field_refusals(body, message) -> None:
    with pytest.raises(RequestError, match=message):
        parse_generate(body)
