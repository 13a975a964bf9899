"""Request bodies of the OpenAI-compatible routes (pydantic, at the HTTP edge only).

Bounds follow OpenAI's API reference and SGLang's sampling checks; fields SGLang's own
OpenAI server accepts beyond OpenAI's (``top_k``, ``min_p``, ``repetition_penalty``,
``min_tokens``, ``ignore_eos``, ``regex``, ``stop_token_ids``...) are accepted too.
``use_bank: false`` sends a request without the experience bank (e.g. to compare).
Unknown fields are ignored, as OpenAI-compatible servers do.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_N = 64
MAX_STOP = 32

# Shared field definitions (one place for each bound).
_max_tokens = Field(None, ge=0, description="tokens to generate at most")
_temperature = Field(None, ge=0.0, le=2.0)
_top_p = Field(None, gt=0.0, le=1.0)
_n = Field(1, ge=1, le=MAX_N)
_penalty = Field(None, ge=-2.0, le=2.0)
_stop = Field(None, description="a string or up to 32 strings")
_seed = Field(None, description="sampling seed (reproducible sampling)")


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
    content: str | list[ContentPart] | None = None
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
    stop: str | list[str] | None = _stop
    seed: int | None = _seed
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float | None = _penalty
    frequency_penalty: float | None = _penalty
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    # SGLang extensions
    top_k: int | None = None
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    repetition_penalty: float | None = Field(None, gt=0.0, le=2.0)
    min_tokens: int | None = Field(None, ge=0)
    ignore_eos: bool | None = None
    skip_special_tokens: bool | None = None
    stop_token_ids: list[int] | None = None
    regex: str | None = None
    use_bank: bool = True


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(..., min_length=1)
    max_completion_tokens: int | None = _max_tokens
    response_format: ResponseFormat | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    functions: list[Any] | None = None


class CompletionRequest(_Sampling):
    prompt: str | list[str] = Field(..., description="a prompt or a list of prompts")
    echo: bool = False
    suffix: str | None = None
    logprobs: int | None = None
    best_of: int | None = None


class FeedbackRequest(_Body):
    request_id: str = Field(..., min_length=1)
    correct: bool
