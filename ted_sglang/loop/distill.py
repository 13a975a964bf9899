"""The TED loop over a dataset: batches in flight on workers, one bank, checkpoints.

The samples go, in the run's training order, into batches of ``batch_size``.  Up to
``concurrency`` samples per worker are in flight; each runs its student and teacher
phases on a worker (a student endpoint, with its own teacher or the shared one; a
new sample goes to the worker with the fewest samples in flight).  All samples of a
batch run against the same bank version: the bank as it was when the batch's first
sample started.  Batches are committed one at a time, in order: the teachers'
proposals are reconciled into one document and applied as one new version
(:mod:`ted_sglang.loop.batch`).  Samples start as soon as there is room, so a batch may
start against a bank that an earlier batch is about to change (an operation naming
an entry that has vanished since is rejected by the bank, and logged).  After each
committed batch the log lines are made durable, then the bank file, which carries the
checkpoint, is replaced atomically: a batch is committed by one bank write.
``resume=True`` continues where the file left off: nothing is lost and nothing is
applied twice.

The run stops early (:class:`DistillStopped`, every committed batch saved) when its
servers stop answering (``max_connection_failures`` requests in a row could not connect)
or when another writer changed the bank file since the run last saved it (the save is
refused, see :class:`~ted_sglang.bank.BankConflict`); ``resume=True`` then continues.
One run per bank file at a time: a run holds the bank's ``distill`` run lock
(:func:`~ted_sglang.bank.locking.run_lock`) throughout, so a second one is refused at once.
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ted_sglang.bank import (
    BankConflict,
    BankLockTimeout,
    CompressionBudget,
    CompressionPolicy,
    ExperienceBank,
)
from ted_sglang.bank.embedding import load_similarity
from ted_sglang.bank.locking import run_lock
from ted_sglang.data import Sample
from ted_sglang.loop.batch import BatchContext, commit_batch
from ted_sglang.loop.calls import RequestFailed
from ted_sglang.loop.checkpoint import Checkpoint
from ted_sglang.loop.config import DistillConfig
from ted_sglang.loop.connection_watch import DEFAULT_MAX_CONNECTION_FAILURES, ConnectionWatch
from ted_sglang.loop.leakage import question_hash
from ted_sglang.loop.step import (
    BankView,
    PhaseResult,
    run_phases,
    tokens_total,
)
from ted_sglang.loop.steplog import FAILED, STEP, StepLog, default_log_path
from ted_sglang.loop.summary import DistillSummary
from ted_sglang.loop.workers import Worker, WorkerPool, make_workers
from ted_sglang.prompts import ImageFallback
from ted_sglang.runtime import Endpoint

T = TypeVar("T")


class DistillStopped(RuntimeError):
    """The run stopped before its end; every committed batch is in the bank file, and
    ``resume=True`` continues from there."""


def prepare_bank(
    bank_path: Path,
    samples: Sequence[Sample],
    dataset: dict[str, Any],
    config: DistillConfig,
    student_model: str,
    *,
    resume: bool,
    force: bool,
) -> tuple[ExperienceBank, Checkpoint]:
    """The bank to train and its checkpoint: a new one, or the one in ``bank_path``
    when resuming (checked against this run's dataset and settings)."""
    if resume and force:
        raise ValueError("--resume and --force contradict each other: pick one")
    if resume:
        if not bank_path.exists():
            raise ValueError(f"--resume: {bank_path} does not exist (drop --resume to start)")
        bank = ExperienceBank.load(bank_path)
        checkpoint = Checkpoint.from_bank(bank)
        checkpoint.check_matches(samples, dataset, config.fingerprint())
        if bank.meta.student_model != student_model:
            raise ValueError(
                f"--resume: the bank was distilled for {bank.meta.student_model!r}, but the "
                f"student now serves {student_model!r}"
            )
        return bank, checkpoint
    if bank_path.exists() and not force:
        raise ValueError(
            f"{bank_path} already exists: pass --resume to continue its run, or --force to "
            "overwrite it"
        )
    bank = ExperienceBank(limits=config.limits, student_model=student_model)
    checkpoint = Checkpoint.start(samples, dataset, config.fingerprint(), config.seed)
    checkpoint.store(bank)
    return bank, checkpoint


@dataclass
class _InFlight:
    """A batch whose samples are being started (all against ``view``)."""

    samples: list[Sample]
    view: BankView
    futures: list[Future[PhaseResult]] = field(default_factory=list)
    rng_after: tuple = ()

    @property
    def is_started(self) -> bool:
        return len(self.futures) == len(self.samples)

    @property
    def is_finished(self) -> bool:
        return self.is_started and all(f.done() for f in self.futures)


def distill(
    samples: Sequence[Sample],
    bank_path: str | os.PathLike[str],
    student: Endpoint | Sequence[Endpoint],
    teacher: Endpoint | None,
    config: DistillConfig,
    *,
    dataset: dict[str, Any] | None = None,
    log_path: str | os.PathLike[str] | None = None,
    resume: bool = False,
    force: bool = False,
    progress: bool = True,
    max_connection_failures: int = DEFAULT_MAX_CONNECTION_FAILURES,
) -> DistillSummary:
    """Distill a bank from ``samples`` into ``bank_path`` (see the module docstring).

    ``student``: one endpoint or several (one worker each, same model); ``teacher``:
    the teacher of every worker, or ``None`` for each worker's own student.
    ``dataset`` describes the samples' source (``path``, ``split``, ``limit``) for
    the checkpoint; ``log_path`` defaults to ``<bank>.log.jsonl``.  A sample whose
    requests keep failing is logged as failed and left undone (a later ``resume``
    retries it); bad teacher output is logged and skipped.  Raises
    :class:`DistillStopped` when ``max_connection_failures`` requests in a row cannot
    connect (0: never) or the bank file was changed by another writer, and
    :class:`~ted_sglang.bank.BankFileError` at once when another run is distilling into
    ``bank_path``.
    """
    if not samples:
        raise ValueError("there are no samples to distill from")
    watch = ConnectionWatch(max_connection_failures)
    workers = make_workers([student] if isinstance(student, Endpoint) else student, teacher)
    bank_path = Path(bank_path)
    if not resume:
        bank_path.parent.mkdir(parents=True, exist_ok=True)
    with run_lock(bank_path, "distill"), warnings.catch_warnings():  # one run per bank
        # SGLang's frontend warns with a traceback for every failed request; the failure
        # itself reaches us as RequestFailed (logged per sample), or as the error it is.
        warnings.filterwarnings("ignore", message="Error in stream_executor")
        return _distill(
            samples, bank_path, workers, teacher, config, watch, dataset=dataset,
            log_path=log_path, resume=resume, force=force, progress=progress,
        )  # fmt: skip


def _distill(
    samples: Sequence[Sample],
    bank_path: Path,
    workers: list[Worker],
    teacher: Endpoint | None,
    config: DistillConfig,
    watch: ConnectionWatch,
    *,
    dataset: dict[str, Any] | None,
    log_path: str | os.PathLike[str] | None,
    resume: bool,
    force: bool,
    progress: bool,
) -> DistillSummary:
    """:func:`distill`, the bank's run lock held."""
    log = StepLog(log_path or default_log_path(bank_path))
    dataset = dict(dataset or {})
    bank, checkpoint = prepare_bank(
        bank_path, samples, dataset, config, workers[0].student.model_path,
        resume=resume, force=force,
    )  # fmt: skip
    kept = _start_log(log, bank, bank_path, checkpoint, resume, force)
    summary = DistillSummary(bank_path, log.path, resume, len(checkpoint.order), checkpoint.step, 0)
    summary.workers = [w.student.url for w in workers]
    for record in kept:
        if record.get("event") == STEP:
            summary.trajectories += record.get("student_total", 0)
            summary.correct += record.get("student_correct", 0)
    by_id = {s.id: s for s in samples}
    similarity, summary.similarity = load_similarity(config.similarity)
    policy = CompressionPolicy(
        budget=CompressionBudget(max_entries=config.max_entries, max_tokens=config.max_bank_tokens),
        similarity=similarity,
        merge_threshold=config.merge_threshold,
    )
    context = BatchContext(policy, teacher or workers[0].teacher, config, similarity)
    rng = checkpoint.rng()
    images = ImageFallback()
    remaining = [by_id[i] for i in checkpoint.remaining()]
    todo = deque(
        remaining[i : i + config.batch_size] for i in range(0, len(remaining), config.batch_size)
    )
    pending: deque[_InFlight] = deque()
    capacity = config.concurrency * len(workers)
    pool = WorkerPool(workers, capacity)
    bar = _progress_bar(len(checkpoint.order), checkpoint.step, enabled=progress)
    started = time.perf_counter()
    records: list[dict[str, Any]] = []

    def running() -> list[Future[PhaseResult]]:
        return [f for b in pending for f in b.futures if not f.done()]

    def fill() -> None:
        """Start samples, in order, while there is room; a batch's view is the bank
        as it is when its first sample starts."""
        while len(running()) < capacity and (todo or (pending and not pending[-1].is_started)):
            if not pending or pending[-1].is_started:
                pending.append(_InFlight(todo.popleft(), BankView.of(bank)))
            batch = pending[-1]
            sample = batch.samples[len(batch.futures)]
            order = rng.sample(range(config.rollouts), config.rollouts)
            work = _phases(sample, batch.view, config, images, order, watch)
            batch.futures.append(pool.submit(work))
            batch.rng_after = rng.getstate()

    try:
        fill()
        while pending:
            if watch.tripped:
                raise DistillStopped(
                    f"{watch.in_a_row} requests in a row could not reach a server (the last: "
                    f"{watch.last_error}). Every committed batch is saved in {bank_path} "
                    f"({checkpoint.step} of {len(checkpoint.order)} samples done): start the "
                    "server again and continue with --resume"
                )
            if not pending[0].is_finished:
                wait(running(), return_when=FIRST_COMPLETED)
                fill()
                continue
            batch = pending.popleft()
            results: list[PhaseResult] = []
            for sample, future in zip(batch.samples, batch.futures, strict=True):
                try:
                    results.append(future.result())
                except RequestFailed as exc:
                    summary.failed.append((sample.id, str(exc)))
                    log.append({"event": FAILED, "sample_id": sample.id, "error": str(exc)})
                    bar.write(f"sample {sample.id} failed: {exc}")
            if results:
                step_records, batch_record = commit_batch(
                    bank, results, batch=checkpoint.batches + 1, first_step=checkpoint.step + 1,
                    context=context,
                )  # fmt: skip
                done = [r.sample for r in results]
                checkpoint.mark_batch_done([s.id for s in done], batch.rng_after)
                checkpoint.store(bank)
                hashes = [question_hash(s) for s in done]
                bank.meta.add_training_samples([s.id for s in done], hashes)
                for record in [*step_records, batch_record]:
                    log.append(record)  # durable before the bank says the batch is done
                _save(bank, bank_path, checkpoint.batches - 1)
                records += [*step_records, batch_record]
                summary.count_batch(step_records, batch_record)
                bar.update(len(step_records))
                bar.set_postfix(
                    acc=f"{summary.student_accuracy:.2f}", bank=len(bank), skip=summary.num_skipped
                )
            fill()
    finally:
        pool.shutdown()
        bar.close()
        log.close()
    summary.seconds = time.perf_counter() - started
    summary.bank_version, summary.bank_size = bank.version, len(bank)
    summary.tokens = tokens_total(records)
    return summary


def _save(bank: ExperienceBank, bank_path: Path, committed_batches: int) -> None:
    """Save the bank (compare-and-swap: refused if another writer changed the file)."""
    try:
        bank.save(bank_path)
    except BankConflict as exc:
        now = (
            f"it is at version {exc.found_version} now"
            if exc.found_version != exc.expected_version
            else f"it is still at version {exc.found_version} but its content changed"
        )
        raise DistillStopped(
            f"another writer changed {bank_path} while distill ran (it was at version "
            f"{exc.expected_version} when distill last saved it, {now}), so the batch just "
            "finished was not saved; the "
            f"{committed_batches} batches committed before it are in the file. Continue "
            "with --resume once the other writer is done"
        ) from None
    except BankLockTimeout as exc:
        raise DistillStopped(
            f"{exc}; the {committed_batches} batches committed before are in the file: "
            "continue with --resume"
        ) from None


def _start_log(
    log: StepLog,
    bank: ExperienceBank,
    bank_path: Path,
    checkpoint: Checkpoint,
    resume: bool,
    force: bool,
) -> list[dict[str, Any]]:
    """A fresh log (and the fresh bank saved first), or the resumed run's log with the
    lines of unfinished batches dropped; returns the kept records."""
    if not resume:
        # First: a crash in between leaves a fresh bank, stale lines.  Without force, a
        # file that appeared since prepare_bank looked is not replaced.
        bank.save(bank_path, new_file=not force)
        log.start_fresh()
        return []
    kept, dropped = log.reconcile(checkpoint.done)
    if dropped:
        print(f"log: dropped {dropped} line(s) of unfinished steps", file=sys.stderr)
    steps = sum(r.get("event") == STEP for r in kept)
    if steps != checkpoint.step:
        print(
            f"warning: the log has {steps} of the {checkpoint.step} finished steps",
            file=sys.stderr,
        )
    return kept


def _phases(
    sample: Sample,
    view: BankView,
    config: DistillConfig,
    images: ImageFallback,
    order: list[int],
    watch: ConnectionWatch,
) -> Callable[[Worker], PhaseResult]:
    """The work of one sample, for whichever worker runs it (retried on failures)."""

    def work(worker: Worker) -> PhaseResult:
        return _with_retries(
            config.retries,
            lambda: run_phases(sample, view, worker.student, worker.teacher, config, images, order),
            watch,
        )

    return work


def _with_retries(retries: int, call: Callable[[], T], watch: ConnectionWatch) -> T:
    """``call()``, tried again up to ``retries`` times when a request fails; not tried
    (again) once ``watch`` says the servers are gone."""
    for attempt in range(retries + 1):
        if watch.tripped:
            raise RequestFailed(f"not tried: the server is unreachable ({watch.last_error})")
        try:
            result = call()
        except RequestFailed as exc:
            watch.failed(exc)
            if attempt == retries or watch.tripped:
                raise
            watch.pause(min(2.0**attempt, 10.0))
        else:
            watch.succeeded()
            return result
    raise AssertionError("unreachable")


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def set_postfix(self, **kwargs: Any) -> None:
        pass

    def write(self, text: str) -> None:
        print(text, file=sys.stderr)

    def close(self) -> None:
        pass


def _progress_bar(total: int, initial: int, *, enabled: bool) -> Any:
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc="distill", unit="sample", dynamic_ncols=True)
