"""Key sets of ``/generate`` answers against the shapes SGLang 0.5.23's server code builds.

The expected keys are read from the installed wheel (not from this engine's output):

- ``srt/managers/tokenizer_manager.py``, ``TokenizerManager._handle_batch_output``:
  ``meta_info`` starts as ``id, finish_reason, prompt_tokens, weight_version,
  num_retractions``; generation adds ``reasoning_tokens, completion_tokens,
  cached_tokens``; ``cached_tokens_details`` (the output streamer always sends one entry
  per request, None without cache hits) and ``dp_rank`` (always sent) follow; a finished
  request adds ``weight_versions`` (``add_weight_versions_to_meta_info``) and
  ``e2e_latency``. The text branch builds ``{"text", "output_ids", "meta_info"}``.
- ``TokenizerManager._wait_one_response`` stamps ``response_sent_to_client_ts`` on the
  first answer a client gets: the finished one, or a stream's first chunk.
- ``TokenizerManager.add_logprob_to_meta_info``: ``input_token_logprobs,
  output_token_logprobs, output_token_logprobs_length``; with ``top_logprobs_num > 0``
  ``input_top_logprobs, output_top_logprobs``; with ``token_ids_logprob``
  ``input_token_ids_logprobs, output_token_ids_logprobs``.
- ``TokenizerManager._stream_batch_responses`` adds ``index`` to a batch's stream chunks;
  a batch (or ``n > 1``) answers a list of such objects (``_handle_batch_request``).
- ``srt/entrypoints/http_server.py``, ``_create_error_response``: ``{"error":
  {"message"}}``. This engine's one error shape adds ``type, param, code`` to it.
  ``generate_request`` answers a body that breaks the JSON contract with
  ``{"error": str}`` (``api_contract.generate_contract_error``), streaming or not.

Every answer also decodes with SGLang's response contract
(``sglang.api.v1.api_types.GenerateResponse``).
"""

from __future__ import annotations

import json

import httpx
import pytest
from engine_http import engine_client, generate
from sglang.api.v1.api_types import GenerateResponse

BASE_META = {
    "id",
    "finish_reason",
    "prompt_tokens",
    "weight_version",
    "num_retractions",
    "reasoning_tokens",
    "completion_tokens",
    "cached_tokens",
    "cached_tokens_details",
    "dp_rank",
}
FINISHED_META = BASE_META | {"weight_versions", "e2e_latency", "response_sent_to_client_ts"}
LOGPROB_META = {"input_token_logprobs", "output_token_logprobs", "output_token_logprobs_length"}
TOP_LOGPROB_META = {"input_top_logprobs", "output_top_logprobs"}
TOKEN_IDS_LOGPROB_META = {"input_token_ids_logprobs", "output_token_ids_logprobs"}
TEXT_RESPONSE = {"text", "output_ids", "meta_info"}
ENGINE_ERROR_EXTRAS = {"type", "param", "code"}
SAMPLING = {"max_new_tokens": 6, "temperature": 0, "ignore_eos": True}


@pytest.fixture(scope="module")
def client(engine_url: str):
    yield from engine_client(engine_url)


def check(answer: dict, keys: set[str], meta_keys: set[str]) -> None:
    assert set(answer) == keys
    assert set(answer["meta_info"]) == meta_keys
    GenerateResponse.from_json_value(answer)  # SGLang's own response contract


def test_plain(client: httpx.Client) -> None:
    check(generate(client, text="Shapes:", sampling_params=SAMPLING), TEXT_RESPONSE, FINISHED_META)


def test_batch_and_n(client: httpx.Client) -> None:
    batch = generate(client, text=["Shapes:", "More shapes:"], sampling_params=SAMPLING)
    samples = generate(client, text="Shapes:", sampling_params={**SAMPLING, "n": 2})
    assert isinstance(batch, list) and isinstance(samples, list)
    assert len(batch) == len(samples) == 2
    for answer in batch + samples:
        check(answer, TEXT_RESPONSE, FINISHED_META)


def test_logprobs(client: httpx.Client) -> None:
    check(
        generate(client, text="Shapes:", sampling_params=SAMPLING, return_logprob=True),
        TEXT_RESPONSE,
        FINISHED_META | LOGPROB_META,
    )
    check(
        generate(
            client,
            text="Shapes:",
            sampling_params=SAMPLING,
            return_logprob=True,
            logprob_start_len=0,
            top_logprobs_num=2,
            token_ids_logprob=[1, 2],
        ),
        TEXT_RESPONSE,
        FINISHED_META | LOGPROB_META | TOP_LOGPROB_META | TOKEN_IDS_LOGPROB_META,
    )


@pytest.mark.parametrize("batched", [False, True])
def test_stream_chunks(client: httpx.Client, batched: bool) -> None:
    body = {
        "text": ["Shapes:", "Streams:"] if batched else "Shapes:",
        "sampling_params": {**SAMPLING, "max_new_tokens": 24},
        "return_logprob": True,
        "stream": True,
    }
    with client.stream("POST", "/generate", json=body) as response:
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    keys = TEXT_RESPONSE | ({"index"} if batched else set())
    seen: set[int] = set()
    for chunk in chunks:
        index = chunk.get("index", 0)
        meta = BASE_META | LOGPROB_META
        if index not in seen:  # a stream's first chunk carries the send time
            meta = meta | {"response_sent_to_client_ts"}
            seen.add(index)
        if chunk["meta_info"]["finish_reason"] is not None:
            meta = meta | {"weight_versions", "e2e_latency"}
        check(chunk, keys, meta)
    assert len(seen) == (2 if batched else 1)


def test_error(client: httpx.Client) -> None:
    # top_p = 0 passes SGLang's JSON contract; SamplingParams.verify raises a ValueError.
    response = client.post("/generate", json={"text": "x", "sampling_params": {"top_p": 0}})
    assert response.status_code == 400
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message"} | ENGINE_ERROR_EXTRAS


@pytest.mark.parametrize("stream", [False, True])
def test_contract_error(client: httpx.Client, stream: bool) -> None:
    from sglang.srt.entrypoints.api_contract import generate_contract_error

    body = {"text": "x", "sampling_params": {"max_new_tokens": "6"}, "stream": stream}
    response = client.post("/generate", json=body)
    assert response.status_code == 400
    assert response.json() == {"error": generate_contract_error(body)}


# http_server.model_info in SGLang 0.5.23 (no embedding spec for a generation model).
SGLANG_MODEL_INFO = {
    "model_path",
    "served_model_name",
    "tokenizer_path",
    "is_generation",
    "preferred_sampling_params",
    "weight_version",
    "load_format",
    "reasoning_parser",
    "tool_call_parser",
    "disaggregation_mode",
    "has_image_understanding",
    "has_audio_understanding",
    "model_type",
    "architectures",
}
# http_server.server_info: build_server_info (every ServerArgs field, launch_command, the
# scheduler's get_init_info, kv_events), then startup_time, internal_states, version, frontend.
SGLANG_SERVER_INFO_EXTRAS = {
    "launch_command",
    "status",
    "max_total_num_tokens",
    "max_req_input_len",
    "hicache_object_layout",
    "kv_events",
    "startup_time",
    "internal_states",
    "version",
    "frontend",
}
# scheduler_components.internal_state: _add_topology and _add_memory_usage.
SGLANG_INTERNAL_STATE = {
    "world_size",
    "startup_time",
    "effective_max_running_requests_per_dp",
    "last_gen_throughput",
    "memory_usage",
}


def test_model_info_and_server_info(client: httpx.Client, incremental_engine_url: str) -> None:
    from sglang.srt.server_args import ServerArgs, record_fields

    info = client.get("/model_info").json()
    assert set(info) >= SGLANG_MODEL_INFO and info["chat_template_name"] == "chatml"
    server_args = {f.name for f in record_fields(ServerArgs)}
    for url in (str(client.base_url), incremental_engine_url):
        server = httpx.get(url + "/server_info", timeout=30).json()
        assert server_args | SGLANG_SERVER_INFO_EXTRAS <= set(server)
        (state,) = server["internal_states"]
        assert server_args | SGLANG_INTERNAL_STATE <= set(state)
        assert {"cache", "grammar_cache", "engine"} <= set(server)  # the engine's own
        assert server["max_running_requests"] == 32 and server["version"] == "0.5.23"
    assert server["incremental_streaming_output"] is True and server["stream_interval"] == 16
