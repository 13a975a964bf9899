"""Noticing that a server has gone away: consecutive requests that could not connect.

A request that reached the server and failed (an HTTP error, bad output) says nothing
about the server being gone; one refused, reset or unreachable at the socket does.
After ``limit`` such failures in a row, with no request succeeding in between, a long
run stops instead of running every remaining sample into the same error.
"""

from __future__ import annotations

import threading
import urllib.error

# Failures in a row that stop a run (``ted-sglang distill --max-connection-failures``).
DEFAULT_MAX_CONNECTION_FAILURES = 3


def is_connection_failure(exc: BaseException) -> bool:
    """Whether ``exc`` (or an error it was raised from) is a failure to reach a server."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ConnectionError):  # refused, reset, aborted, broken pipe
            return True
        if isinstance(current, urllib.error.URLError) and not isinstance(
            current, urllib.error.HTTPError
        ):
            reason = current.reason
            if isinstance(reason, OSError) and not isinstance(reason, TimeoutError):
                return True
        if type(current).__name__ == "ConnectionError" and "requests" in type(current).__module__:
            return True  # the frontend streams with requests
        current = current.__cause__ or current.__context__
    return False


class ConnectionWatch:
    """Counts connection failures in a row (thread-safe); :attr:`tripped` once they
    reach ``limit``.  ``limit=0`` never trips."""

    def __init__(self, limit: int = DEFAULT_MAX_CONNECTION_FAILURES) -> None:
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
            raise ValueError(f"the connection failure limit must be >= 0, got {limit!r}")
        self.limit = limit
        self.in_a_row = 0
        self.last_error: str | None = None
        self._lock = threading.Lock()
        self._gone = threading.Event()

    @property
    def tripped(self) -> bool:
        return self.limit > 0 and self.in_a_row >= self.limit

    def failed(self, exc: BaseException) -> None:
        """Record a failed request: a failure to connect counts, any other failure
        (the server answered) ends the run of failures."""
        with self._lock:
            if not is_connection_failure(exc):
                self.in_a_row = 0
                return
            self.in_a_row += 1
            self.last_error = str(exc)
            if self.tripped:
                self._gone.set()

    def pause(self, seconds: float) -> None:
        """Sleep ``seconds`` (e.g. before a retry), or less once the watch trips."""
        self._gone.wait(seconds)

    def succeeded(self) -> None:
        """Record a request that the server answered."""
        with self._lock:
            self.in_a_row = 0
