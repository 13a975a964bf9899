"""The reference engine's settings: one small dataclass, checked on creation."""

from __future__ import annotations

import os
from dataclasses import dataclass

from ted_sglang.engine.limits import DEFAULT_MAX_REQUEST_BYTES

DEFAULT_PORT = 30000
DEFAULT_CACHE_TOKENS = 65536
DEFAULT_MAX_BATCH_SIZE = 32
DEFAULT_MAX_PREFILL_TOKENS = 2048
ATTENTION_BACKENDS = ("shared-prefix", "per-request")


@dataclass
class EngineConfig:
    """What to serve and how.

    ``cache_tokens`` is the radix cache's budget in tokens (0 disables caching);
    ``max_batch_size`` bounds the requests in flight in one step;
    ``max_prefill_tokens`` bounds the prompt tokens computed in one step (longer
    prompts are prefilled in chunks, so running requests keep decoding);
    ``attention_backend`` is how requests store and read KV: ``shared-prefix`` keeps
    one copy of a cached prefix (the radix cache's) and reads it once per step for
    all requests decoding over it, ``per-request`` gives each its own copy.
    The rest mirror SGLang's server arguments of the same names; ``profile_dir`` is
    where ``/start_profile`` writes traces (SGLang: ``$SGLANG_TORCH_PROFILER_DIR`` or /tmp).
    """

    model: str
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    cache_tokens: int = DEFAULT_CACHE_TOKENS
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    max_prefill_tokens: int = DEFAULT_MAX_PREFILL_TOKENS
    attention_backend: str = "shared-prefix"
    device: str = "cpu"
    dtype: str | None = None
    num_threads: int | None = None
    random_seed: int = 0
    grammar_cache_size: int = 64
    json_any_whitespace: bool = True
    json_max_whitespace_cnt: int | None = None
    log_level: str = "info"
    incremental_streaming_output: bool = False
    stream_interval: int = 1
    enable_priority_scheduling: bool = False
    schedule_low_priority_values_first: bool = False
    enable_return_hidden_states: bool = False
    profile_dir: str | None = None
    # Client bounds (see ted_sglang.engine.limits): request body bytes; whether an input or
    # max_new_tokens beyond the context is cut down (SGLang's --allow-auto-truncate)
    # instead of refused; the folder whose files image_data may name (None: no paths).
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    allow_auto_truncate: bool = False
    allow_local_images: str | None = None

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("model must name a model directory, a .gguf file or a known model")
        if not 0 <= self.port < 65536:
            raise ValueError(f"port must be in [0, 65535], got {self.port}")
        if self.cache_tokens < 0:
            raise ValueError(f"cache_tokens must be >= 0, got {self.cache_tokens}")
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        if self.max_prefill_tokens < 1:
            raise ValueError(f"max_prefill_tokens must be >= 1, got {self.max_prefill_tokens}")
        if self.attention_backend not in ATTENTION_BACKENDS:
            raise ValueError(
                f"attention_backend must be one of {', '.join(ATTENTION_BACKENDS)}, "
                f"got {self.attention_backend!r}"
            )
        if self.num_threads is not None and self.num_threads < 1:
            raise ValueError(f"num_threads must be >= 1, got {self.num_threads}")
        if self.grammar_cache_size < 1:
            raise ValueError(f"grammar_cache_size must be >= 1, got {self.grammar_cache_size}")
        if self.json_max_whitespace_cnt is not None and self.json_max_whitespace_cnt < 1:
            raise ValueError(
                f"json_max_whitespace_cnt must be >= 1, got {self.json_max_whitespace_cnt}"
            )
        if self.stream_interval < 1:
            raise ValueError(f"stream_interval must be >= 1, got {self.stream_interval}")
        if self.max_request_bytes < 1:
            raise ValueError(f"max_request_bytes must be >= 1, got {self.max_request_bytes}")
        if self.allow_local_images is not None and not os.path.isdir(self.allow_local_images):
            raise ValueError(
                f"allow_local_images must name a folder, got {self.allow_local_images!r}"
            )
        if self.log_level.lower() not in ("debug", "info", "warning", "error", "critical"):
            raise ValueError(f"unknown log level {self.log_level!r}")
