"""Workers of a distillation run: where each sample's phases run.

A worker is a student endpoint with its teacher (its own student, or a shared
teacher endpoint).  :class:`WorkerPool` runs work on the worker with the fewest
samples in flight (the first such on ties), so every endpoint gets its share of
the samples in flight, and a slow endpoint gets fewer.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from ted_sglang.loop.leakage import normalize_model_name
from ted_sglang.runtime import Endpoint

T = TypeVar("T")


@dataclass(frozen=True)
class Worker:
    """A student endpoint and the teacher its samples use."""

    student: Endpoint
    teacher: Endpoint


def make_workers(students: Sequence[Endpoint], teacher: Endpoint | None) -> list[Worker]:
    """One worker per student endpoint (each its own teacher when ``teacher`` is
    ``None``); ``ValueError`` when the students serve different models."""
    if not students:
        raise ValueError("distillation needs at least one student endpoint")
    urls = [s.url for s in students]
    if len(set(urls)) != len(urls):
        raise ValueError(f"a student endpoint is listed twice: {urls}")
    models = {normalize_model_name(s.model_path) for s in students}
    if len(models) > 1:
        paths = ", ".join(f"{s.url}: {s.model_path}" for s in students)
        raise ValueError(f"every student endpoint must serve the same model ({paths})")
    return [Worker(s, teacher or s) for s in students]


class WorkerPool:
    """Runs ``work(worker)`` on the least busy worker, ``max_in_flight`` at a time."""

    def __init__(self, workers: Sequence[Worker], max_in_flight: int) -> None:
        assert workers and max_in_flight >= 1
        self.workers = list(workers)
        self.in_flight = [0] * len(self.workers)
        self.assigned = [0] * len(self.workers)
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_in_flight, thread_name_prefix="ted-sample")

    def submit(self, work: Callable[[Worker], T]) -> Future[T]:
        """Start ``work`` on the worker with the fewest samples in flight."""
        with self._lock:
            index = min(range(len(self.workers)), key=lambda i: (self.in_flight[i], i))
            self.in_flight[index] += 1
            self.assigned[index] += 1
        future = self._executor.submit(work, self.workers[index])
        future.add_done_callback(lambda _: self._finished(index))
        return future

    def _finished(self, index: int) -> None:
        with self._lock:
            self.in_flight[index] -= 1

    def shutdown(self) -> None:
        """Stop taking work; queued work is cancelled, running work is not waited for."""
        self._executor.shutdown(wait=False, cancel_futures=True)
