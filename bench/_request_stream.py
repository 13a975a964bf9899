"""The requests a benchmark sends, as the server saw them, and the ideal prefix cache.

* :func:`recording_endpoint` is an ``sgl.RuntimeEndpoint`` that logs every
  ``/generate`` it sends (prompt text, sampling parameters and the response's
  ``meta_info``), including the ``max_new_tokens: 0`` request with which ``fork``
  sends the shared prefix first.
* :func:`independent_requests` sends one prompt as N separate, concurrent
  ``/generate`` requests (no precache), logged the same way.
* :class:`IdealPrefixCache` replays token-id sequences through an unbounded radix
  tree and counts cached tokens per request by the engine's rule: the longest
  prefix seen before, but never the whole prompt (the last prompt token is always
  computed, as in SGLang), so ``cached_tokens <= ideal`` request by request.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Request:
    """One ``/generate`` request: its prompt, sampling parameters and ``meta_info``."""

    text: str
    sampling_params: dict[str, Any]
    meta: dict[str, Any]

    @property
    def is_precache(self) -> bool:
        return self.sampling_params.get("max_new_tokens") == 0


@dataclass
class RequestLog:
    """Requests in the order they were sent (thread-safe appends)."""

    requests: list[Request] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, request: Request) -> None:
        with self.lock:
            self.requests.append(request)

    def take(self) -> list[Request]:
        """The requests logged so far; the log starts again empty."""
        with self.lock:
            out, self.requests = self.requests, []
        return out


def recording_endpoint(url: str, chat_template: str, log: RequestLog) -> Any:
    """An ``sgl.RuntimeEndpoint`` for ``url`` that logs every request into ``log``."""
    import sglang as sgl
    from sglang.lang.global_config import global_config

    class RecordingEndpoint(sgl.RuntimeEndpoint):
        def commit_lazy_operations(self, s: Any) -> None:
            # The request the parent class sends, with its answer kept.
            params = {"max_new_tokens": 0}
            text = s.text_
            obj = self._generate_http_request(s, {"text": text, "sampling_params": params})
            log.add(Request(text, params, obj["meta_info"]))

        def generate(self, s: Any, sampling_params: Any) -> tuple[str, dict]:
            text = s.text_
            completion, meta = super().generate(s, sampling_params)
            params = {
                "skip_special_tokens": global_config.skip_special_tokens_in_output,
                "spaces_between_special_tokens": (
                    global_config.spaces_between_special_tokens_in_out
                ),
                **sampling_params.to_srt_kwargs(),
            }
            log.add(Request(text, params, meta))
            return completion, meta

    return RecordingEndpoint(url, chat_template_name=chat_template)


def independent_requests(
    url: str, text: str, sampling_params: dict[str, Any], n: int, log: RequestLog, timeout: float
) -> None:
    """Send ``text`` as ``n`` separate ``/generate`` requests at once (no precache)."""
    import httpx

    def one(client: httpx.Client) -> None:
        body = {"text": text, "sampling_params": sampling_params}
        response = client.post(url + "/generate", json=body, timeout=timeout)
        if response.status_code != 200:
            raise RuntimeError(f"{url}/generate answered {response.status_code}: {response.text}")
        log.add(Request(text, sampling_params, response.json()["meta_info"]))

    with httpx.Client() as client, ThreadPoolExecutor(n) as pool:
        for future in [pool.submit(one, client) for _ in range(n)]:
            future.result()


class IdealPrefixCache:
    """The engine's radix tree (:class:`~ted_sglang.engine.radix_cache.RadixCache`)
    over token ids alone, with no budget: nothing is ever evicted."""

    def __init__(self) -> None:
        from ted_sglang.engine.radix_cache import RadixCache

        self.tree = RadixCache(sys.maxsize, split_value=lambda value, at: (None, None))

    def request(self, ids: Sequence[int]) -> int:
        """Serve one prompt: returns its cached tokens (all but the last at most) and
        caches it."""
        key = list(ids)  # the tree compares list slices
        cached = self.tree.match_prefix(key, max(len(key) - 1, 0)).length
        self.tree.insert(key, lambda start, end: None)
        return cached

    def clear(self) -> None:
        self.tree.reset()
