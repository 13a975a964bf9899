"""What the routes share: settings, endpoints, chat format, bank state, usage, metrics,
the OpenAI layer's service; started and stopped with the app."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

from ted_sglang.serve.backend import Backend
from ted_sglang.serve.bank_check import BankCheck
from ted_sglang.serve.bank_state import BankState, BankVersion
from ted_sglang.serve.chat_format import ChatFormat
from ted_sglang.serve.metrics import Gauge, Metrics
from ted_sglang.serve.openai_routes import OpenAIOptions, OpenAIService, ServedModel
from ted_sglang.serve.responses import usage as token_usage
from ted_sglang.serve.settings import ServeSettings
from ted_sglang.serve.usage_log import UsageLog, write_atomic

logger = logging.getLogger("ted_sglang.serve")

STARTUP_WAIT_S = 120.0  # for the endpoints to answer /get_model_info


class ServeContext:
    """Filled in by :meth:`start` (endpoint model, chat template, first bank version)."""

    def __init__(self, settings: ServeSettings) -> None:
        assert settings.usage_path is not None
        self.settings = settings
        self.metrics = Metrics()
        self.metrics.gauges = self.gauges
        self.usage = UsageLog(settings.usage_path, settings.max_tracked_requests)
        self.backend: Backend | None = None
        self.bank: BankState | None = None
        self.chat: ChatFormat | None = None
        self.model_info: dict[str, Any] = {}
        self.model_name = settings.served_model_name or ""
        self.context_length: int | None = None
        self.startup_error: str | None = None
        options = OpenAIOptions(
            api_keys=(settings.api_key,) if settings.api_key else (),
            accept_any_model=settings.accept_any_model,
            allow_auto_truncate=settings.allow_auto_truncate,
            echo_prompt=settings.echo_prompt,
            max_body_bytes=settings.max_body_bytes,
        )
        self.openai = OpenAIService(options, bank=self.current_bank, on_served=self.record)

    def current_bank(self) -> BankVersion:
        assert self.bank is not None
        return self.bank.current

    async def start(self) -> None:
        """Ask the endpoints for their model, pick the chat template the TED programs
        use for it, load and check the bank (a bank that cannot be served stops the
        start: ``startup_error`` says why) and the usage file."""
        try:
            version = await self.connect()
        except ValueError as exc:  # BankFileError, BankRefused, no endpoint
            self.startup_error = str(exc)
            logger.error("cannot serve: %s", exc)
            await self.stop()
            raise
        s = self.settings
        self.usage.load()
        assert self.chat is not None and self.backend is not None and self.bank is not None
        self.openai.model = ServedModel(
            self.backend,
            self.chat,
            self.model_name,
            self.model_info.get("model_path"),
            self.context_length,
            int(self.metrics.started_at),
        )
        template = self.chat.name
        logger.info(
            "serving bank %s version %d (%d entries, distilled for %s) on %s with chat "
            "template %s via %s",
            s.bank_path, version.version, version.num_entries, version.student_model,
            self.model_name, template, ", ".join(s.endpoints),
        )  # fmt: skip
        self.bank.warn_if_for_another_model(version)

    async def connect(self) -> BankVersion:
        """The endpoints' model, chat template and context length, and the first bank
        version, loaded and checked against them."""
        from ted_sglang.runtime import pick_chat_template

        s = self.settings
        self.backend = Backend(s.endpoints, s.request_timeout_s, s.max_connections)
        self.model_info = await self.backend.model_info(wait_s=STARTUP_WAIT_S)
        self.model_name = s.served_model_name or self.model_info["model_path"]
        self.context_length = await self.backend.context_length(self.model_info)
        template = await asyncio.to_thread(pick_chat_template, self.model_info, s.chat_template)
        self.chat = ChatFormat(template)
        check = BankCheck(
            s.endpoints, self.context_length, s.bank_reserve_tokens, s.request_timeout_s
        )
        self.bank = BankState(
            s.bank_path, self.chat.system_block, check, self.model_info.get("model_path")
        )
        return await asyncio.to_thread(self.bank.load)

    def record(
        self, rid: str, bank: BankVersion | None, metas: list[dict[str, Any]], n: int
    ) -> None:
        """Count a served request's tokens, and the experiences it was shown."""
        tokens = token_usage(metas, n)
        self.metrics.add_tokens(
            tokens["prompt_tokens"],
            tokens["completion_tokens"],
            tokens["prompt_tokens_details"]["cached_tokens"],
        )
        if bank is not None:
            self.usage.record_request(rid, bank)

    async def stop(self) -> None:
        if self.usage.dirty:
            await asyncio.to_thread(self.usage.save)
        if self.backend is not None:
            await self.backend.aclose()

    async def flush_usage(self) -> None:
        """Write the usage file every ``usage_flush_interval_s`` while it has news."""
        while True:
            await asyncio.sleep(self.settings.usage_flush_interval_s)
            if self.usage.dirty:
                try:
                    await asyncio.to_thread(write_atomic, self.usage.path, self.usage.snapshot())
                except OSError as exc:
                    self.usage.dirty = True
                    logger.warning("cannot write the usage file %s: %s", self.usage.path, exc)

    def gauges(self) -> Iterator[Gauge]:
        """Values read at scrape time for ``/metrics`` (each name's samples together)."""
        assert self.bank is not None and self.backend is not None
        bank = self.bank.current
        yield Gauge("bank_version", "gauge", "Bank version being served", {}, bank.version)
        yield Gauge("bank_entries", "gauge", "Entries of the served bank", {}, bank.num_entries)
        yield Gauge("bank_prefix_chars", "gauge", "Characters of its system turn", {},
                    len(bank.prefix))  # fmt: skip
        yield Gauge("bank_swaps_total", "counter", "Bank versions swapped in", {},
                    self.bank.swaps)  # fmt: skip
        yield Gauge("bank_swap_failures_total", "counter", "Bank files refused", {},
                    self.bank.swap_failures)  # fmt: skip
        for version, n in sorted(self.usage.requests_by_version.items()):
            yield Gauge("bank_requests_total", "counter", "Requests served per bank version",
                        {"version": str(version)}, n)  # fmt: skip
        endpoints = self.backend.endpoints
        for e in endpoints:
            yield Gauge("endpoint_outstanding", "gauge", "Requests in flight per endpoint",
                        {"endpoint": e.url}, e.outstanding)  # fmt: skip
        for e in endpoints:
            yield Gauge("endpoint_requests_total", "counter", "Requests sent per endpoint",
                        {"endpoint": e.url}, e.requests)  # fmt: skip
        for e in endpoints:
            yield Gauge("endpoint_failures_total", "counter", "Failed requests per endpoint",
                        {"endpoint": e.url}, e.failures)  # fmt: skip
