"""The engine: a model, a radix cache and a scheduler stepping on a background thread.

Requests enter through :meth:`Engine.make_sequences` (tokenize, check, compile
grammars; call it off the event loop) and :meth:`Engine.submit`. The thread,
which also loads the model, admits, prefills and decodes them and calls each
sequence's ``on_update`` when it has news. Everything that touches scheduler
state runs on that one thread; other threads talk to it through a queue.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import traceback
from concurrent.futures import Future
from typing import Any

from ted_sglang.engine.config import EngineConfig
from ted_sglang.engine.errors import RequestError
from ted_sglang.engine.limits import fit_context
from ted_sglang.engine.profiler import Profiler, ProfileSettings
from ted_sglang.engine.protocol import GenerateItem
from ted_sglang.engine.sequence import Sequence, finish_abort

logger = logging.getLogger("ted_sglang.engine")


class Engine:
    """Loads the model and serves generations from a scheduler thread."""

    def __init__(self, config: EngineConfig) -> None:
        """Start the scheduler thread; it loads the model, and this returns once it has.

        All torch work happens on that one thread: CPU thread pools are per calling
        thread, and a second thread driving torch measurably slows every step.
        """
        self.config = config
        self.num_steps = 0
        self.num_failed_steps = 0
        self.start_time = time.time()
        self._inbox: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._stopping = False
        self._ready = threading.Event()
        self._load_error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="engine-scheduler", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._load_error is not None:
            raise self._load_error

    def _load(self) -> None:
        import torch

        from ted_sglang.engine.attention import AttentionBackend, SharedPrefixBackend
        from ted_sglang.engine.grammar import GrammarCache
        from ted_sglang.engine.model_loader import load_model
        from ted_sglang.engine.model_runner import ModelRunner
        from ted_sglang.engine.output import OutputBuilder
        from ted_sglang.engine.prompt import PromptBuilder
        from ted_sglang.engine.radix_cache import RadixCache
        from ted_sglang.engine.sampler import Sampler
        from ted_sglang.engine.scheduler import Scheduler

        config = self.config
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        torch.manual_seed(config.random_seed)
        self.loaded = load_model(config.model, device=config.device, dtype=config.dtype)
        backend_cls = {"shared-prefix": SharedPrefixBackend, "per-request": AttentionBackend}
        self.runner = ModelRunner(self.loaded, backend_cls[config.attention_backend])
        self.prompts = PromptBuilder(self.loaded, config.allow_local_images)
        self.outputs = OutputBuilder(self.loaded.tokenizer)
        self.grammars = GrammarCache(
            self.loaded.tokenizer,
            self.runner.vocab_size,
            self.loaded.eos_token_ids,
            max_entries=config.grammar_cache_size,
            any_whitespace=config.json_any_whitespace,
            max_whitespace_cnt=config.json_max_whitespace_cnt,
        )
        self.cache = RadixCache(config.cache_tokens)
        self.profiler = Profiler()
        self.sampler = Sampler(config.random_seed, self.grammars.token_bytes)
        self.scheduler = Scheduler(
            self.runner,
            self.cache,
            self.outputs,
            config.max_batch_size,
            config.max_prefill_tokens,
            priority_sign=_priority_sign(config),
        )

    # -- public, any thread --------------------------------------------------------------

    def shutdown(self) -> None:
        self._stopping = True
        self._inbox.put(("stop", None))
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    @property
    def is_alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def is_ready(self) -> bool:
        """Loaded, stepping and not shutting down: new requests are welcome."""
        return self._thread.is_alive() and not self._stopping

    def make_sequences(self, items: list[GenerateItem], stream: bool) -> list[Sequence]:
        """Tokenize and check items, compile their grammars; raises RequestError (400)."""
        return [self._make_sequence(item, stream) for item in items]

    def submit(self, seqs: list[Sequence]) -> None:
        self._inbox.put(("add", seqs))

    def abort(self, seqs: list[Sequence], message: str = "aborted by the client") -> None:
        self._inbox.put(("abort", (seqs, message)))

    def abort_requests(self, rid: str, abort_all: bool = False, message: str | None = None) -> None:
        """SGLang's ``/abort_request``: finish every request whose rid starts with ``rid``
        (or all). Their clients get what was generated, with an abort ``finish_reason``;
        with a ``message``, a 503 carrying it instead (SGLang's timeout aborts)."""
        self._inbox.put(("abort_rid", (rid, abort_all, message)))

    def flush_cache(self, timeout: float = 30.0) -> tuple[bool, str]:
        """Empty the radix cache, unless requests are running or waiting (as SGLang)."""
        done: Future[tuple[bool, str]] = Future()
        self._inbox.put(("flush", done))
        return done.result(timeout=timeout)

    def profile(self, settings: ProfileSettings | None, timeout: float = 120.0) -> tuple[bool, str]:
        """Start (``settings``) or stop (None) profiling the scheduler's steps."""
        done: Future[tuple[bool, str]] = Future()
        self._inbox.put(("profile", (settings, done)))
        return done.result(timeout=timeout)

    def cache_info(self) -> dict[str, Any]:
        stats = self.scheduler.stats
        return {
            "budget_tokens": self.cache.max_tokens,
            "size_tokens": self.cache.total_tokens,
            "num_requests": stats.num_requests,
            "prompt_tokens": stats.prompt_tokens,
            "cached_tokens": stats.cached_tokens,
            "computed_prompt_tokens": stats.computed_prompt_tokens,
            "generated_tokens": stats.generated_tokens,
            "hit_rate": stats.hit_rate,
            "evicted_tokens": self.cache.evicted_tokens,
            "num_evictions": self.cache.num_evictions,
            "kv_bytes_per_token": self.runner.kv_bytes_per_token(),
        }

    # -- scheduler thread ----------------------------------------------------------------

    def _main(self) -> None:
        try:
            self._load()
        except BaseException as exc:
            self._load_error = exc
            return
        finally:
            self._ready.set()
        self._loop()

    def _loop(self) -> None:
        while not self._stopping:
            self._drain(block=not self.scheduler.has_work)
            if self._stopping:
                break
            try:
                plan = self.scheduler.schedule()
            except Exception as exc:  # a scheduling bug fails what is in flight, not the engine
                logger.error("scheduling failed: %s\n%s", exc, traceback.format_exc())
                sched = self.scheduler
                active = [*sched.waiting, *sched.prefilling, *sched.running]
                self._notify([self._fail(s, f"internal error: {exc}", 500) for s in active])
                continue
            if plan is not None:
                self._step(plan)
        for seq in [*self.scheduler.waiting, *self.scheduler.prefilling, *self.scheduler.running]:
            self._notify([self._fail(seq, "the engine is shutting down", 503)])

    def _drain(self, block: bool) -> None:
        try:
            command, arg = self._inbox.get(timeout=0.5) if block else self._inbox.get_nowait()
        except queue.Empty:
            return
        while True:
            try:
                self._handle(command, arg)
            except Exception:
                logger.error("command %r failed:\n%s", command, traceback.format_exc())
            try:
                command, arg = self._inbox.get_nowait()
            except queue.Empty:
                return

    def _handle(self, command: str, arg: Any) -> None:
        if command == "add":
            for seq in arg:
                self.scheduler.add(seq)
        elif command == "abort":
            seqs, message = arg
            self._notify([self._fail(s, message, 499) for s in seqs if not s.is_finished])
        elif command == "abort_rid":
            self._abort_matching(*arg)
        elif command == "flush":
            if self.scheduler.has_work:
                arg.set_result((False, "Cache not flushed: requests are running or waiting.\n"))
            else:
                try:
                    self.cache.reset()
                except AssertionError as exc:
                    arg.set_result((False, f"Cache not flushed: {exc}\n"))
                else:
                    arg.set_result((True, "Cache flushed.\n"))
        elif command == "profile":
            settings, done = arg
            try:
                result = (
                    self.profiler.stop()
                    if settings is None
                    else self.profiler.start(settings, self.num_steps)
                )
            except (RuntimeError, OSError) as exc:
                result = (False, f"profiling failed: {exc}")
            done.set_result(result)
        elif command == "stop":
            self._stopping = True

    def _step(self, plan: Any) -> None:
        try:
            logits = self.runner.forward(plan.forward)
            self.scheduler.record_input_logprobs(plan, logits)
            self.scheduler.record_hidden_states(plan)
            sampled = self.sampler.sample(logits[plan.sample_rows], plan.sample_seqs)
            updated = self.scheduler.postprocess(plan, sampled)
            self.num_steps += 1
            self.profiler.on_step(self.num_steps)
        except Exception as exc:  # one bad step fails its requests, not the engine
            self.num_failed_steps += 1
            logger.error("step failed: %s\n%s", exc, traceback.format_exc())
            updated = [self._fail(seq, f"internal error: {exc}", 500) for seq in plan.seqs]
        self._notify(updated)

    def _abort_matching(self, rid: str, abort_all: bool, message: str | None) -> None:
        sched = self.scheduler
        hits = [
            seq
            for seq in (*sched.waiting, *sched.prefilling, *sched.running)
            if abort_all or (rid and seq.rid.startswith(rid))
        ]
        for seq in hits:
            if message:
                seq.finish(finish_abort(message, 503, "ServiceUnavailableError"))
            else:
                seq.finish(finish_abort("Aborted", None, None))
        self._notify([self._fail(seq, "Aborted", 500) for seq in hits])

    def _fail(self, seq: Sequence, message: str, status_code: int) -> Sequence:
        try:
            self.scheduler.abort(seq, message, status_code)
        except Exception:  # the tree must not stop the loop either
            logger.error("could not release %s:\n%s", seq.rid, traceback.format_exc())
        return seq

    def _notify(self, seqs: list[Sequence]) -> None:
        for seq in seqs:
            if seq.on_update is not None and (seq.stream or seq.is_finished):
                try:
                    seq.on_update(seq)
                except Exception:
                    logger.error("on_update failed for %s:\n%s", seq.rid, traceback.format_exc())

    # -- request preparation -------------------------------------------------------------

    def _make_sequence(self, item: GenerateItem, stream: bool) -> Sequence:
        sp = item.sampling
        prompt = self.prompts.build(item.text, item.input_ids, item.image_data)
        prompt, max_new_tokens = fit_context(
            prompt,
            sp.max_new_tokens,
            sp.explicit_max_new_tokens,
            self.loaded.context_length,
            self.config.allow_auto_truncate,
        )
        num = len(prompt.input_ids)
        start = -1
        if item.return_logprob:
            start = num if item.logprob_start_len == -1 else item.logprob_start_len
            if start > num:
                raise RequestError(
                    f"logprob_start_len={start} is higher than the number of input tokens "
                    f"{num}. Please use a smaller logprob_start_len."
                )
        for token_id in [*sp.logit_bias, *sp.stop_token_ids]:
            if not 0 <= token_id < self.runner.vocab_size:
                raise RequestError(f"token id {token_id} is outside the vocabulary")
        self._check_extras(item)
        grammar = None
        if sp.grammar_key is not None:
            grammar = self.grammars.matcher(self.grammars.get(*sp.grammar_key))
        stop_ids = (
            frozenset()
            if sp.ignore_eos
            else frozenset({*self.loaded.eos_token_ids, *sp.stop_token_ids})
        )
        seq = Sequence(
            rid=item.rid,
            prompt_ids=prompt.input_ids,
            cache_key=prompt.cache_key,
            sampling=sp,
            max_new_tokens=max_new_tokens,
            stop_ids=stop_ids,
            image=prompt.image,
            grammar=grammar,
            stop_regex=sp.stop_matcher.fresh() if sp.stop_matcher else None,
            return_logprob=item.return_logprob,
            logprob_start_len=start,
            top_logprobs_num=item.top_logprobs_num,
            return_text_in_logprobs=item.return_text_in_logprobs,
            token_ids_logprob=item.token_ids_logprob,
            return_hidden_states=item.return_hidden_states,
            return_prompt_token_ids=item.return_prompt_token_ids,
            priority=item.priority,
            stream=stream,
        )
        if seq.wants_input_logprobs:
            seq.input_token_logprobs = [(None, t) for t in prompt.input_ids[start:]]
            seq.input_top_logprobs = [None] * (num - start)
            if seq.token_ids_logprob is not None:
                seq.input_token_ids_logprobs = [None] * (num - start)
        return seq

    def _check_extras(self, item: GenerateItem) -> None:
        """SGLang's checks of ``token_ids_logprob`` and ``return_hidden_states``."""
        vocab_size = self.runner.vocab_size
        for token_id in item.token_ids_logprob or ():
            if token_id >= vocab_size:
                raise RequestError(
                    f"token_ids_logprob contains out-of-vocabulary token id {token_id}; "
                    f"valid range is [0, {vocab_size})."
                )
        if item.return_hidden_states and not self.config.enable_return_hidden_states:
            raise RequestError(
                "The server is not configured to return hidden states. "
                "Please start it with `--enable-return-hidden-states`."
            )


def _priority_sign(config: EngineConfig) -> int:
    if not config.enable_priority_scheduling:
        return 0
    return 1 if config.schedule_low_priority_values_first else -1
