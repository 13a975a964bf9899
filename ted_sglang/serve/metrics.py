"""Serving metrics in Prometheus' text exposition format (version 0.0.4).

Counters and a latency histogram live in plain dicts updated on the event loop (no
locks needed); :meth:`Metrics.render` writes them out together with gauges read at
scrape time (bank version and entries, swaps, requests per bank version, endpoints).
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
PREFIX = "ted_serve_"


class Gauge(NamedTuple):
    """A value read at scrape time (``kind``: ``gauge`` or ``counter``)."""

    name: str
    kind: str
    help: str
    labels: dict[str, str]
    value: float


class Histogram:
    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.bounds = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1


class Metrics:
    """What the server counts; ``gauges`` supplies values read at scrape time."""

    def __init__(self) -> None:
        self.started_at = time.time()
        self.requests: dict[tuple[str, int], int] = {}
        self.latency: dict[str, Histogram] = {}
        self.in_flight = 0
        self.tokens = {"prompt": 0, "completion": 0, "cached": 0}
        self.feedback = {"true": 0, "false": 0}
        self.gauges: Callable[[], Iterable[Gauge]] = tuple

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        key = (route, status)
        self.requests[key] = self.requests.get(key, 0) + 1
        hist = self.latency.get(route)
        if hist is None:
            hist = self.latency[route] = Histogram()
        hist.observe(seconds)

    def add_tokens(self, prompt: int, completion: int, cached: int) -> None:
        self.tokens["prompt"] += prompt
        self.tokens["completion"] += completion
        self.tokens["cached"] += cached

    def render(self) -> str:
        out: list[str] = []
        _family(out, "requests_total", "counter", "HTTP requests by route and status")
        for (route, status), n in sorted(self.requests.items()):
            _sample(out, "requests_total", {"route": route, "status": str(status)}, n)
        _family(out, "request_duration_seconds", "histogram", "Request latency (to last byte)")
        for route, hist in sorted(self.latency.items()):
            cumulative = 0
            for bound, n in zip((*hist.bounds, float("inf")), hist.counts, strict=True):
                cumulative += n
                le = "+Inf" if bound == float("inf") else _num(bound)
                labels = {"route": route, "le": le}
                _sample(out, "request_duration_seconds_bucket", labels, cumulative)
            _sample(out, "request_duration_seconds_sum", {"route": route}, hist.total)
            _sample(out, "request_duration_seconds_count", {"route": route}, hist.count)
        _family(out, "requests_in_flight", "gauge", "Requests being served")
        _sample(out, "requests_in_flight", {}, self.in_flight)
        for kind, n in self.tokens.items():
            name = f"{kind}_tokens_total"
            _family(out, name, "counter", f"{kind.capitalize()} tokens reported by the engine")
            _sample(out, name, {}, n)
        _family(out, "feedback_total", "counter", "Feedback received, by correctness")
        for correct, n in self.feedback.items():
            _sample(out, "feedback_total", {"correct": correct}, n)
        seen: set[str] = set()
        for name, kind, help_text, labels, value in self.gauges():
            if name not in seen:
                seen.add(name)
                _family(out, name, kind, help_text)
            _sample(out, name, labels, value)
        _family(out, "start_time_seconds", "gauge", "Unix time the server started")
        _sample(out, "start_time_seconds", {}, self.started_at)
        return "\n".join(out) + "\n"


class MetricsMiddleware:
    """Counts requests by route and status and times them to their last byte (pure ASGI,
    so streaming responses pass through untouched)."""

    def __init__(self, app: Any, metrics: Metrics, routes: Iterable[str]) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = set(routes)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        route = path if path in self.routes else "other"
        status = 500
        start = time.perf_counter()

        async def send_status(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.metrics.in_flight += 1
        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.in_flight -= 1
            self.metrics.observe_request(route, status, time.perf_counter() - start)


def _family(out: list[str], name: str, kind: str, help_text: str) -> None:
    out.append(f"# HELP {PREFIX}{name} {help_text}")
    out.append(f"# TYPE {PREFIX}{name} {kind}")


def _sample(out: list[str], name: str, labels: dict[str, str], value: float) -> None:
    if labels:
        inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
        out.append(f"{PREFIX}{name}{{{inner}}} {_num(value)}")
    else:
        out.append(f"{PREFIX}{name} {_num(value)}")


def _num(value: float) -> str:
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    return repr(float(value))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
