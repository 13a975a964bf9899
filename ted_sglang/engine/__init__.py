"""Reference engine: SGLang's native HTTP API on the CPU (torch + transformers), with a
radix prefix cache over real KV tensors, batched decoding and xgrammar constraints.

Start one with ``ted-sglang engine --model ...`` or :func:`launch_engine`.
"""

from ted_sglang.engine.launcher import LaunchedEngine, launch_engine

__all__ = ["LaunchedEngine", "launch_engine"]
