"""Checks a bank version the way it will be served, before it is served.

Its system turn must encode as UTF-8 (a lone surrogate cannot be sent), and, sent to the
engine as every request will send it (``/generate`` with ``max_new_tokens: 0``, which
the engine tokenizes exactly and keeps in its prefix cache), it must leave
``reserve_tokens`` of the model's context for the conversation: a question and an answer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx
import orjson

from ted_sglang.serve.bank_state import BankRefused
from ted_sglang.serve.settings import DEFAULT_RESERVE_TOKENS

if TYPE_CHECKING:
    from ted_sglang.serve.bank_state import BankVersion


class BankCheck:
    """``check(version)`` → the version's prefix length in tokens, or :class:`BankRefused`.

    Blocking (it runs in :class:`~ted_sglang.serve.bank_state.BankState`'s thread);
    ``context_length`` None (the endpoint does not say) checks the encoding and the
    engine's own limits only.
    """

    def __init__(
        self,
        urls: list[str],
        context_length: int | None,
        reserve_tokens: int = DEFAULT_RESERVE_TOKENS,
        timeout_s: float = 120.0,
    ) -> None:
        assert urls and reserve_tokens >= 0
        self.urls = urls
        self.context_length = context_length
        self.reserve_tokens = reserve_tokens
        self.timeout_s = timeout_s

    def __call__(self, version: BankVersion) -> int:
        try:
            body = orjson.dumps({"text": version.prefix, "sampling_params": {"max_new_tokens": 0}})
        except orjson.JSONEncodeError as exc:
            raise BankRefused(f"its rendered text cannot be sent to the engine: {exc}") from None
        tokens = self._count(body)
        context = self.context_length
        if context is not None and tokens + self.reserve_tokens > context:
            raise BankRefused(
                f"it renders to {tokens} tokens, and with {self.reserve_tokens} tokens reserved "
                f"for the conversation (the bank reserve) that is more than the model's "
                f"context length of {context} tokens"
            )
        return tokens

    def _count(self, body: bytes) -> int:
        """The prompt tokens the first endpoint that answers reports for ``body``."""
        problems = []
        for url in self.urls:
            try:
                response = httpx.post(
                    url + "/generate",
                    content=body,
                    headers={"content-type": "application/json"},
                    timeout=self.timeout_s,
                )
            except httpx.HTTPError as exc:
                problems.append(f"{url}: {exc!r}")
                continue
            if response.status_code == 200:
                try:
                    return int(response.json()["meta_info"]["prompt_tokens"])
                except (ValueError, KeyError, TypeError) as exc:
                    problems.append(f"{url}: no prompt_tokens in its answer ({exc!r})")
                    continue
            if 400 <= response.status_code < 500:
                raise BankRefused(f"the engine refused its system turn: {_message(response)}")
            problems.append(f"{url}: HTTP {response.status_code}: {_message(response)}")
        raise BankRefused("it could not be checked, no endpoint counted it: " + "; ".join(problems))


def _message(response: httpx.Response) -> str:
    try:
        error = response.json().get("error")
        message = error.get("message") if isinstance(error, dict) else error
    except (ValueError, AttributeError):
        message = None
    return str(message or response.text)[:500]
