"""``/model_info`` and ``/server_info`` with the fields SGLang 0.5.23 returns.

SGLang builds ``/server_info`` from its ``ServerArgs`` (every field, resolved), the
scheduler's start-up info and one internal state per data-parallel rank
(``http_server.server_info``, ``utils.common.build_server_info``,
``scheduler_components.internal_state``). Here the same key set comes from SGLang's
own ``ServerArgs`` class with this engine's settings filled in where an SGLang
argument means the same thing; the engine's own figures (``cache``,
``grammar_cache``, ``engine``, ...) are added beside them.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ted_sglang.engine.config import EngineConfig
    from ted_sglang.engine.engine import Engine

SGLANG_API_VERSION = "0.5.23"
_BYTES_PER_GB = 1 << 30


def sglang_server_args(config: EngineConfig, eng: Engine) -> dict[str, Any]:
    """SGLang's resolved server arguments as this engine would set them."""
    from sglang.srt.server_args import ServerArgs
    from sglang.srt.utils.common import msgspec_to_builtins

    loaded = eng.loaded
    settings: dict[str, Any] = {
        "model_path": loaded.model_path,
        "tokenizer_path": loaded.model_path,
        "served_model_name": loaded.model_path,
        "host": config.host,
        "port": config.port,
        "device": loaded.device,
        "dtype": str(eng.runner.dtype).removeprefix("torch."),
        "context_length": loaded.context_length,
        "random_seed": config.random_seed,
        "max_running_requests": config.max_batch_size,
        "chunked_prefill_size": config.max_prefill_tokens,
        "max_prefill_tokens": config.max_prefill_tokens,
        "max_total_tokens": config.cache_tokens,
        "disable_radix_cache": config.cache_tokens == 0,
        "page_size": 1,
        "attention_backend": config.attention_backend,
        "grammar_backend": "xgrammar",
        "sampling_backend": "pytorch",
        "constrained_json_disable_any_whitespace": not config.json_any_whitespace,
        "constrained_json_max_whitespace_cnt": config.json_max_whitespace_cnt,
        "log_level": config.log_level,
        "stream_interval": config.stream_interval,
        "incremental_streaming_output": config.incremental_streaming_output,
        "enable_priority_scheduling": config.enable_priority_scheduling,
        "schedule_low_priority_values_first": config.schedule_low_priority_values_first,
        "enable_return_hidden_states": config.enable_return_hidden_states,
    }
    args = ServerArgs(**settings)
    return msgspec_to_builtins(args.resolved_dict())


def model_info(eng: Engine, server_args: dict[str, Any]) -> dict[str, Any]:
    """SGLang's ``/model_info`` fields, then the engine's own."""
    loaded = eng.loaded
    hf_config = loaded.model.config
    return {
        "model_path": loaded.model_path,
        "served_model_name": server_args["served_model_name"],
        "tokenizer_path": loaded.model_path,
        "is_generation": True,
        "preferred_sampling_params": None,
        "weight_version": "default",
        "load_format": server_args["load_format"],
        "reasoning_parser": server_args["reasoning_parser"],
        "tool_call_parser": server_args["tool_call_parser"],
        "disaggregation_mode": server_args["disaggregation_mode"],
        "has_image_understanding": loaded.is_vision,
        "has_audio_understanding": False,
        "model_type": getattr(hf_config, "model_type", None),
        "architectures": getattr(hf_config, "architectures", None),
        # the engine's own
        "chat_template_name": loaded.chat_template_name,
        "context_length": loaded.context_length,
        "image_token": loaded.image_token,
        "vocab_size": eng.runner.vocab_size,
        "eos_token_ids": loaded.eos_token_ids,
    }


class ServerInfo:
    """Builds ``/server_info``; remembers the last call for ``last_gen_throughput``."""

    def __init__(self, config: EngineConfig, eng: Engine) -> None:
        from sglang.srt.mem_cache.hicache_storage import disabled_l3_layout

        self.config = config
        self.eng = eng
        self.server_args = sglang_server_args(config, eng)
        self.launch_command = " ".join(sys.argv)
        self._l3_layout = disabled_l3_layout("Hierarchical cache is disabled", page_size=1)
        params = eng.runner.model.parameters()
        self._weight_bytes = sum(p.numel() * p.element_size() for p in params)
        self._lock = threading.Lock()
        self._last = (eng.start_time, 0)  # (time, generated tokens) at the previous call

    def build(self) -> dict[str, Any]:
        from ted_sglang import __version__

        eng, config = self.eng, self.config
        sched = eng.scheduler
        context = eng.loaded.context_length
        return {
            **self.server_args,
            "launch_command": self.launch_command,
            # the scheduler's start-up info (Scheduler.get_init_info)
            "status": "ready",
            "max_total_num_tokens": config.cache_tokens,
            "max_req_input_len": context - 1,
            "hicache_object_layout": self._l3_layout,
            "kv_events": None,  # no KV-event publisher
            "startup_time": eng.start_time,
            "internal_states": [
                {
                    **self.server_args,
                    **self._internal_state(),
                    # the engine's own
                    "num_running_reqs": sched.num_active,
                    "num_waiting_reqs": len(sched.waiting),
                    "num_steps": eng.num_steps,
                    "num_failed_steps": eng.num_failed_steps,
                }
            ],
            "version": SGLANG_API_VERSION,
            "frontend": "python",
            # the engine's own
            "cache": eng.cache_info(),
            "grammar_cache": eng.grammars.info(),
            "engine": "ted-sglang reference engine",
            "engine_version": __version__,
            "sglang_api_version": SGLANG_API_VERSION,
        }

    def _internal_state(self) -> dict[str, Any]:
        """What ``InternalState.get_internal_state`` adds for one rank without extras."""
        from sglang.srt.managers.scheduler_components.memory_usage import build_memory_usage

        eng, config = self.eng, self.config
        kv_bytes = config.cache_tokens * eng.runner.kv_bytes_per_token()
        return {
            "world_size": 1,
            "startup_time": eng.start_time,
            "effective_max_running_requests_per_dp": config.max_batch_size,
            "last_gen_throughput": self._gen_throughput(),
            "memory_usage": build_memory_usage(
                weight_gb=self._weight_bytes / _BYTES_PER_GB,
                kv_cache_gb=kv_bytes / _BYTES_PER_GB,
                startup_available_gb=_available_memory() / _BYTES_PER_GB,
                token_capacity=config.cache_tokens,
                token_capacity_swa=None,
                target_graph_memory_usage=None,
                draft_graph_memory_usage=None,
            ),
        }

    def _gen_throughput(self) -> float:
        """Generated tokens per second since the previous ``/server_info``."""
        now, tokens = time.time(), self.eng.scheduler.stats.generated_tokens
        with self._lock:
            then, before = self._last
            self._last = (now, tokens)
        return (tokens - before) / (now - then) if now > then else 0.0


def _available_memory() -> int:
    import psutil

    return int(psutil.virtual_memory().available)
