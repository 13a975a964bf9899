"""Request bodies of the OpenAI-compatible routes (pydantic, at the HTTP edge only).

Bounds follow OpenAI's API reference and SGLang's sampling checks; fields SGLang's own
OpenAI server accepts beyond OpenAI's (``top_k``, ``min_p``, ``repetition_penalty``,
``min_tokens``, ``ignore_eos``, ``regex``, ``stop_token_ids``...) are accepted too.
``use_bank: false`` sends a request without the experience bank (e.g. to compare).
Unknown fields are ignored, as OpenAI-compatible servers do.

Every number a client controls is bounded here, so what is forwarded to the engine
always encodes (no integer beyond 64 bits, no token id beyond 32 bits).  Lists and maps
stop at their first bad item (``fail_fast``): a body of many bad items is one error, not
a message per item.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_N = 64
MAX_STOP = 32
MAX_STOP_CHARS = 4096  # per stop string: the engine matches it at every token
MAX_PROMPTS = 256  # prompts of one text completion request
MAX_STOP_TOKEN_IDS = 1024
MAX_LOGIT_BIAS = 1024
MAX_TOP_LOGPROBS = 20  # chat ``top_logprobs``, as OpenAI
MAX_COMPLETION_LOGPROBS = 5  # text completions' ``logprobs``, as OpenAI
INT32_MAX = 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

TokenId = Annotated[int, Field(ge=0, le=INT32_MAX)]
Strings = Annotated[list[str], Field(fail_fast=True)]

# Shared field definitions (one place for each bound).
_max_tokens = Field(None, ge=0, le=INT64_MAX, description="tokens to generate at most")
_temperature = Field(None, ge=0.0, le=2.0)
_top_p = Field(None, gt=0.0, le=1.0)
_n = Field(1, ge=1, le=MAX_N)
_penalty = Field(None, ge=-2.0, le=2.0)
_stop = Field(None, description="a string or up to 32 strings")
_seed = Field(None, ge=INT64_MIN, le=INT64_MAX, description="sampling seed (reproducible)")


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class ImageURL(_Body):
    url: str
    detail: str | None = None


class ContentPart(_Body):
    type: str
    text: str | None = None
    image_url: ImageURL | None = None


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | Annotated[list[ContentPart], Field(fail_fast=True)] | None = None
    name: str | None = None


class JsonSchemaFormat(_Body):
    name: str | None = None
    description: str | None = None
    schema_: dict[str, Any] | bool | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Body):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class StreamOptions(_Body):
    include_usage: bool = False


class _Sampling(_Body):
    """Fields shared by chat and text completions."""

    model: str | None = None
    max_tokens: int | None = _max_tokens
    temperature: float | None = _temperature
    top_p: float | None = _top_p
    n: int = _n
    stop: str | Strings | None = _stop
    seed: int | None = _seed
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float | None = _penalty
    frequency_penalty: float | None = _penalty
    logit_bias: dict[str, float] | None = Field(None, max_length=MAX_LOGIT_BIAS, fail_fast=True)
    user: str | None = None
    # SGLang extensions
    top_k: int | None = Field(None, ge=-1, le=INT32_MAX)
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    repetition_penalty: float | None = Field(None, gt=0.0, le=2.0)
    min_tokens: int | None = Field(None, ge=0, le=INT32_MAX)
    ignore_eos: bool | None = None
    skip_special_tokens: bool | None = None
    stop_token_ids: list[TokenId] | None = Field(None, max_length=MAX_STOP_TOKEN_IDS)
    regex: str | None = None
    use_bank: bool = True


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(..., min_length=1, fail_fast=True)
    max_completion_tokens: int | None = _max_tokens
    response_format: ResponseFormat | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    tools: list[Any] | None = None
    tool_choice: Any = None
    functions: list[Any] | None = None


class CompletionRequest(_Sampling):
    prompt: str | Strings = Field(..., description="a prompt or a list of prompts")
    echo: bool = False
    suffix: str | None = None
    logprobs: int | None = Field(None, ge=0, le=MAX_COMPLETION_LOGPROBS)
    best_of: int | None = Field(None, ge=1, le=MAX_N)


class FeedbackRequest(_Body):
    request_id: str = Field(..., min_length=1)
    correct: bool
