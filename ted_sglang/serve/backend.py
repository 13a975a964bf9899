"""Client of SGLang-API endpoints (``/generate``, ``/get_model_info``): one pooled
``httpx.AsyncClient`` with keep-alive, and least-outstanding-requests balancing.

An endpoint may be an SGLang server, the reference engine, or an SGLang router in front
of many workers.  With several endpoints, each request goes to the one with the fewest
requests in flight (ties in turn).  An endpoint that refuses connections is skipped for
``cooldown_s`` and the request goes to another one.  A request that got no answer
because its kept-alive connection was closed under it is sent once more; nothing else
is retried.  A request that is cancelled (its client went away) closes its connection,
which makes the engine abort it, and stops counting as in flight.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from ted_sglang.serve.errors import ServeError

logger = logging.getLogger("ted_sglang.serve")

_JSON = {"content-type": "application/json"}
# No answer at all on a kept-alive connection (the server closed it as we sent): retried.
_DROPPED = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)
# Idle connections are dropped before servers drop them (uvicorn: after 5 s, as SGLang).
KEEPALIVE_EXPIRY_S = 2.0


@dataclass
class Endpoint:
    url: str
    outstanding: int = 0
    requests: int = 0
    failures: int = 0
    down_until: float = 0.0

    def __post_init__(self) -> None:
        self.generate_url = httpx.URL(self.url + "/generate")  # parsed once


class Backend:
    """Sends native-API requests to the least busy of ``urls``."""

    def __init__(
        self,
        urls: list[str],
        timeout_s: float = 600.0,
        max_connections: int = 512,
        cooldown_s: float = 5.0,
    ) -> None:
        assert urls
        self.endpoints = [Endpoint(u) for u in urls]
        self.cooldown_s = cooldown_s
        self._turn = 0
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s, connect=10.0),
            limits=httpx.Limits(
                max_connections=max_connections,
                max_keepalive_connections=max_connections,
                keepalive_expiry=KEEPALIVE_EXPIRY_S,
            ),
        )

    async def aclose(self) -> None:
        await self.client.aclose()

    def pick(self, exclude: set[str] = frozenset()) -> Endpoint | None:  # type: ignore[assignment]
        """The endpoint with the fewest requests in flight among those up (any, if all are
        down); None when every endpoint is excluded."""
        now = time.monotonic()
        count = len(self.endpoints)
        self._turn = (self._turn + 1) % count
        candidates = [self.endpoints[(self._turn + k) % count] for k in range(count)]
        candidates = [e for e in candidates if e.url not in exclude]
        if not candidates:
            return None
        up = [e for e in candidates if e.down_until <= now] or candidates
        return min(up, key=lambda e: e.outstanding)

    # ---- requests -----------------------------------------------------------------

    async def generate(self, body: dict[str, Any], client: Any = None) -> Any:
        """POST ``/generate`` (not streaming) and return its decoded JSON (``client``, the
        caller's request, is not used: a remote engine sees this connection only)."""
        endpoint, response = await self._send(orjson.dumps(body), stream=False)
        endpoint.outstanding -= 1
        return orjson.loads(response.content)

    async def stream(self, body: dict[str, Any], client: Any = None) -> EngineStream:
        """POST ``/generate`` with ``stream: true``; returns once the endpoint answered
        200 (an error status raises :class:`ServeError` before any event is read)."""
        endpoint, response = await self._send(orjson.dumps({**body, "stream": True}), stream=True)
        return EngineStream(endpoint, response)

    async def _send(self, payload: bytes, stream: bool) -> tuple[Endpoint, httpx.Response]:
        """Send to the least busy endpoint; on return the chosen endpoint counts the
        request as outstanding and the response is a 200."""
        tried: set[str] = set()
        dropped = False
        while True:
            endpoint = self._next(tried)
            request = self.client.build_request(
                "POST", endpoint.generate_url, content=payload, headers=_JSON
            )
            endpoint.outstanding += 1
            try:
                response = await self.client.send(request, stream=stream)
            except BaseException as exc:  # cancelled too: httpx closed the connection
                endpoint.outstanding -= 1
                if isinstance(exc, httpx.ConnectError):  # nothing was sent: another endpoint
                    self._down(endpoint, exc)
                    tried.add(endpoint.url)
                    continue
                if isinstance(exc, _DROPPED) and not dropped:  # a pooled connection closed
                    dropped = True  # under us: once more
                    continue
                if isinstance(exc, httpx.HTTPError):
                    raise _failure(endpoint, exc) from None
                raise
            endpoint.requests += 1
            if response.status_code == 200:
                return endpoint, response
            try:
                content = await response.aread()
            finally:
                await response.aclose()
                endpoint.outstanding -= 1
            raise _http_error(endpoint, response.status_code, content)

    async def model_info(self, wait_s: float = 0.0) -> dict[str, Any]:
        """``/get_model_info`` of the first endpoint that answers, waiting up to ``wait_s``
        seconds for one to come up."""
        deadline = time.monotonic() + wait_s
        while True:
            errors = []
            for endpoint in self.endpoints:
                try:
                    return await self._model_info(endpoint.url)
                except (httpx.HTTPError, ValueError) as exc:
                    errors.append(f"{endpoint.url}: {exc}")
            if time.monotonic() >= deadline:
                problems = "; ".join(errors)
                raise ValueError(f"no SGLang endpoint answered /get_model_info: {problems}")
            await asyncio.sleep(0.5)

    async def context_length(self, info: dict[str, Any]) -> int | None:
        """The model's context length: ``context_length`` of ``/model_info`` (the
        reference engine), else ``max_model_len`` of ``/v1/models`` (SGLang), else
        ``context_length`` of ``/server_info``; None when no endpoint says."""
        if _positive_int(info.get("context_length")):
            return int(info["context_length"])
        for endpoint in self.endpoints:
            for route, read in (
                ("/v1/models", lambda d: (d.get("data") or [{}])[0].get("max_model_len")),
                ("/server_info", lambda d: d.get("context_length")),
            ):
                try:
                    response = await self.client.get(endpoint.url + route, timeout=10.0)
                    value = read(response.json()) if response.status_code == 200 else None
                except (httpx.HTTPError, ValueError, AttributeError, IndexError):
                    continue
                if _positive_int(value):
                    return int(value)
        return None

    async def health(self) -> dict[str, bool]:
        """Each endpoint's ``/health`` (True when it answers 200)."""

        async def one(url: str) -> bool:
            try:
                response = await self.client.get(url + "/health", timeout=5.0)
            except httpx.HTTPError:
                return False
            return response.status_code == 200

        results = await asyncio.gather(*(one(e.url) for e in self.endpoints))
        return {e.url: ok for e, ok in zip(self.endpoints, results, strict=True)}

    async def _model_info(self, url: str) -> dict[str, Any]:
        for route in ("/get_model_info", "/model_info"):
            response = await self.client.get(url + route, timeout=10.0)
            if response.status_code == 404:
                continue
            response.raise_for_status()
            info = response.json()
            if not isinstance(info, dict) or not isinstance(info.get("model_path"), str):
                raise ValueError(f"{url}{route} did not return a model_path")
            return info
        raise ValueError(f"{url} has neither /get_model_info nor /model_info")

    def _next(self, tried: set[str]) -> Endpoint:
        endpoint = self.pick(tried)
        if endpoint is None:
            raise ServeError(
                "no SGLang endpoint accepts connections: "
                + ", ".join(e.url for e in self.endpoints),
                503,
                code="backend_unavailable",
            )
        return endpoint

    def _down(self, endpoint: Endpoint, exc: Exception) -> None:
        endpoint.failures += 1
        endpoint.down_until = time.monotonic() + self.cooldown_s
        logger.warning("endpoint %s refused the connection (%s)", endpoint.url, exc)


class EngineStream:
    """An open ``/generate`` event stream: iterate :meth:`events`, then :meth:`aclose`."""

    def __init__(self, endpoint: Endpoint, response: httpx.Response) -> None:
        self.endpoint = endpoint
        self.response = response
        self._closed = False

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """Decoded ``data:`` events up to ``[DONE]``; an error event raises ServeError."""
        try:
            async for line in self.response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                event = parse_event(line[5:], self.endpoint)
                if event is None:
                    return
                yield event
        except httpx.HTTPError as exc:
            raise _failure(self.endpoint, exc) from None

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self.endpoint.outstanding -= 1
            await self.response.aclose()


def parse_event(data: str | bytes, endpoint: Endpoint | None = None) -> dict[str, Any] | None:
    """One ``data:`` payload of an engine stream (None for ``[DONE]``); an error event
    raises :class:`ServeError`."""
    data = data.strip()
    if data in ("[DONE]", b"[DONE]"):
        return None
    try:
        event = orjson.loads(data)
    except orjson.JSONDecodeError:
        problem = f"the engine sent an event that is not JSON: {data[:200]!r}"
        raise ServeError(problem, 502) from None
    if isinstance(event, dict) and "error" in event:
        code = event["error"].get("code") if isinstance(event["error"], dict) else None
        status = code if isinstance(code, int) and code >= 400 else 500
        raise error_from_body(endpoint, status, event)
    if not isinstance(event, dict):
        raise ServeError(f"the engine sent an event that is not an object: {data[:200]!r}", 502)
    return event


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _failure(endpoint: Endpoint, exc: Exception) -> ServeError:
    endpoint.failures += 1
    if isinstance(exc, httpx.TimeoutException):
        return ServeError(f"the SGLang endpoint {endpoint.url} timed out", 504, code="timeout")
    return ServeError(f"the SGLang endpoint {endpoint.url} failed: {exc!r}", 502)


def _http_error(endpoint: Endpoint, status: int, content: bytes) -> ServeError:
    try:
        body = orjson.loads(content)
    except orjson.JSONDecodeError:
        body = content.decode("utf-8", "replace")[:500]
    return error_from_body(endpoint, status, body)


def error_from_body(endpoint: Endpoint | None, status: int, body: Any) -> ServeError:
    """A client error of the engine stays a 4xx with its message, and a 503 (the engine
    turned the request away, e.g. an operator's abort with a message) a 503; anything else
    is a 502 from a remote ``endpoint`` (a 500 from the engine in this process: ``None``)."""
    message = body
    if isinstance(body, dict):
        err = body.get("error")
        message = err.get("message", err) if isinstance(err, dict) else err or body.get("message")
    message = str(message or body)
    if 400 <= status < 500 and status not in (404, 405):
        return ServeError(message, 400 if status == 422 else status)
    if status == 503:
        where = "the engine" if endpoint is None else f"the SGLang endpoint {endpoint.url}"
        return ServeError(f"{where} is unavailable: {message}", 503)
    if endpoint is None:
        return ServeError(f"the engine failed ({status}): {message}", 500)
    endpoint.failures += 1
    return ServeError(f"the SGLang endpoint {endpoint.url} failed ({status}): {message}", 502)
