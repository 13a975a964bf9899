"""Which requests run in the next step, and what their results do to them.

Every step packs (1) the next chunks of prompts being prefilled, within a token
budget, and (2) one token of every decoding request into a single forward.
Waiting requests join at the next step. A request is admitted with its longest
cached prefix; one whose prompt shares more with a prompt still being prefilled
than with the cache waits for that prefill to land in the tree, so requests
arriving together with a common uncached prefix compute it once.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ted_sglang.engine.model_runner import ForwardInput
from ted_sglang.engine.radix_cache import common_prefix_len
from ted_sglang.engine.sampler import token_ids_logprobs, top_logprobs
from ted_sglang.engine.sequence import (
    SeqStatus,
    finish_abort,
    finish_length,
    finish_stop,
)
from ted_sglang.engine.stop_match import StopRegexTimeout

if TYPE_CHECKING:
    import torch

    from ted_sglang.engine.model_runner import ModelRunner
    from ted_sglang.engine.output import OutputBuilder
    from ted_sglang.engine.radix_cache import RadixCache
    from ted_sglang.engine.sampler import SampleOutput
    from ted_sglang.engine.sequence import Sequence

_INITIAL_OUTPUT_ROOM = 256  # decode tokens a request's KV has room for before it grows


@dataclass
class CacheStats:
    """Totals over all admitted requests (what ``/server_info`` reports under ``cache``)."""

    num_requests: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    computed_prompt_tokens: int = 0
    generated_tokens: int = 0

    @property
    def hit_rate(self) -> float:
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0


@dataclass
class StepPlan:
    """One step: the packed forward and what each of its logit rows is for."""

    forward: ForwardInput = field(default_factory=ForwardInput)
    chunks: list[tuple[Sequence, int]] = field(default_factory=list)  # (seq, num_tokens)
    decodes: list[Sequence] = field(default_factory=list)
    sample_seqs: list[Sequence] = field(default_factory=list)
    sample_rows: list[int] = field(default_factory=list)
    logprob_targets: list[tuple[Sequence, int]] = field(default_factory=list)  # (seq, position)
    logprob_rows: list[int] = field(default_factory=list)
    hidden_targets: list[tuple[Sequence, int, int]] = field(default_factory=list)  # seq, at, n

    @property
    def seqs(self) -> list[Sequence]:
        return [seq for seq, _ in self.chunks] + self.decodes


class Scheduler:
    def __init__(
        self,
        runner: ModelRunner,
        cache: RadixCache,
        outputs: OutputBuilder,
        max_batch_size: int,
        max_prefill_tokens: int,
        priority_sign: int = 0,
    ) -> None:
        """``priority_sign``: 0 admits in arrival order; -1 admits higher ``priority``
        values first, 1 lower ones first (SGLang's priority scheduling)."""
        self.runner = runner
        self.cache = cache
        self.outputs = outputs
        self.max_batch_size = max_batch_size
        self.max_prefill_tokens = max_prefill_tokens
        self.priority_sign = priority_sign
        self.waiting: deque[Sequence] = deque()
        self._arrived = False  # requests joined ``waiting`` since it was last put in order
        self.prefilling: list[Sequence] = []
        self.running: list[Sequence] = []
        self.stats = CacheStats()

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.prefilling or self.running)

    @property
    def num_active(self) -> int:
        return len(self.prefilling) + len(self.running)

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)
        self._arrived = True

    # -- scheduling ----------------------------------------------------------------------

    def schedule(self) -> StepPlan | None:
        plan = StepPlan()
        budget = self.max_prefill_tokens
        for seq in self.prefilling:
            if budget <= 0:
                break
            budget -= self._add_chunk(plan, seq, budget)
        admitted: list[Sequence] = []
        if self.priority_sign and self._arrived:  # removals keep the order: sort on arrival only
            self.waiting = deque(sorted(self.waiting, key=self._priority_key))
            self._arrived = False
        for seq in list(self.waiting):
            if budget <= 0 or self.num_active >= self.max_batch_size:
                break
            if self._admit(seq, admitted):
                admitted.append(seq)
                budget -= self._add_chunk(plan, seq, budget)
        for seq in self.running:
            assert seq.kv is not None
            assert seq.kv.length == seq.prompt_len + seq.num_output_tokens - 1
            seq.kv.ensure_capacity(seq.kv.length + 1)
            seg = plan.forward.add(seq.kv, [seq.output_ids[-1]], seq.kv.length)
            plan.decodes.append(seq)
            self._add_sample_row(plan, seq, seg.offset)
            if seq.return_hidden_states:
                plan.hidden_targets.append((seq, seg.offset, 0))
        plan.forward.capture_hidden = bool(plan.hidden_targets)
        return plan if plan.forward.num_tokens else None

    def _priority_key(self, seq: Sequence) -> tuple[bool, int, float]:
        """Requests without a priority go last, as in SGLang; ties by arrival."""
        value = 0 if seq.priority is None else seq.priority * self.priority_sign
        return (seq.priority is None, value, seq.arrival_time)

    def _admit(self, seq: Sequence, admitted: list[Sequence]) -> bool:
        """Start prefilling ``seq`` from its cached prefix, unless it should wait for another."""
        limit = seq.max_prefix_len
        match = self.cache.match_prefix(seq.cache_key, limit)
        length = seq.clip_to_image(match.length)
        if self.cache.enabled:
            for other in (*self.prefilling, *admitted):
                if min(common_prefix_len(seq.cache_key, other.cache_key), limit) > length:
                    return False  # its prefix is being computed right now
        if length != match.length:
            match = self.cache.match_prefix(seq.cache_key, length)
        seq.kv = self.runner.new_kv(seq.prompt_len + min(seq.max_new_tokens, _INITIAL_OUTPUT_ROOM))
        if self.runner.shares_prefix_kv and length:
            seq.kv.share_prefix(match.node, length)  # read in place: one copy for all readers
        else:
            seq.kv.extend_from(match.values)
        self.cache.lock(match.node)
        seq.cache_node = match.node
        seq.num_cached_tokens = seq.num_computed_tokens = length
        seq.status = SeqStatus.PREFILL
        self.waiting.remove(seq)
        self.prefilling.append(seq)
        self.stats.num_requests += 1
        self.stats.prompt_tokens += seq.prompt_len
        self.stats.cached_tokens += length
        return True

    def _add_chunk(self, plan: StepPlan, seq: Sequence, budget: int) -> int:
        start = seq.num_computed_tokens
        n = min(seq.prompt_len - start, budget)
        image = seq.image
        if image is not None and start < image.end and image.start < start + n < image.end:
            n = image.start - start if image.start > start else image.end - start
        assert seq.kv is not None and n > 0
        seg = plan.forward.add(seq.kv, seq.prompt_ids[start : start + n], start)
        if image is not None and start <= image.start < start + n:
            plan.forward.pixel_values.append(image.pixel_values)
        plan.chunks.append((seq, n))
        if seq.wants_input_logprobs:
            for pos in range(max(seq.logprob_start_len, start), min(start + n, seq.prompt_len - 1)):
                plan.logprob_targets.append((seq, pos + 1))
                plan.logprob_rows.append(len(plan.forward.logit_rows))
                plan.forward.logit_rows.append(seg.offset + pos - start)
        if start + n == seq.prompt_len and seq.max_new_tokens > 0:
            self._add_sample_row(plan, seq, seg.offset + n - 1)
        if start + n == seq.prompt_len and seq.return_hidden_states:
            plan.hidden_targets.append((seq, seg.offset, n))
        return n

    @staticmethod
    def _add_sample_row(plan: StepPlan, seq: Sequence, offset: int) -> None:
        plan.sample_seqs.append(seq)
        plan.sample_rows.append(len(plan.forward.logit_rows))
        plan.forward.logit_rows.append(offset)

    # -- results -------------------------------------------------------------------------

    def record_input_logprobs(self, plan: StepPlan, logits: torch.Tensor) -> None:
        import torch

        if not plan.logprob_rows:
            return
        logprobs = torch.log_softmax(logits[plan.logprob_rows], dim=-1)
        token_ids = [seq.prompt_ids[pos] for seq, pos in plan.logprob_targets]
        index = torch.tensor(token_ids, device=logprobs.device).unsqueeze(1)
        chosen = logprobs.gather(1, index).squeeze(1).tolist()
        for i, (seq, pos) in enumerate(plan.logprob_targets):
            index = pos - seq.logprob_start_len
            seq.input_token_logprobs[index] = (chosen[i], token_ids[i])
            if seq.top_logprobs_num > 0:
                seq.input_top_logprobs[index] = top_logprobs(logprobs[i], seq.top_logprobs_num)
            if seq.token_ids_logprob is not None:
                seq.input_token_ids_logprobs[index] = token_ids_logprobs(
                    logprobs[i], seq.token_ids_logprob
                )

    def record_hidden_states(self, plan: StepPlan) -> None:
        """SGLang's ``return_hidden_states`` rows: the rows of a prompt's last prefill
        chunk as one entry, then one row per decode step."""
        hidden = plan.forward.hidden_states
        if hidden is None:
            return
        for seq, offset, num in plan.hidden_targets:
            if num:
                seq.hidden_states.append(hidden[offset : offset + num].tolist())
            else:
                seq.hidden_states.append(hidden[offset].tolist())

    def postprocess(self, plan: StepPlan, sampled: SampleOutput) -> list[Sequence]:
        """Apply a step's results; returns the sequences with news for their clients."""
        updated: list[Sequence] = []
        for seq, n in plan.chunks:
            seq.num_computed_tokens += n
            self.stats.computed_prompt_tokens += n
            self._cache_prefix(seq, seq.num_computed_tokens)
            if seq.num_computed_tokens == seq.prompt_len:
                self.prefilling.remove(seq)
                self._share_prompt(seq)
                if seq.max_new_tokens == 0:
                    seq.finish(finish_length(0))
                    updated.append(seq)
                else:
                    seq.status = SeqStatus.DECODE
                    self.running.append(seq)
        failed = set(sampled.failed)
        for i, seq in enumerate(plan.sample_seqs):
            if i in failed:
                seq.finish(finish_abort("no token is allowed next: every token was masked out"))
            else:
                self._append_token(seq, sampled, i)
            updated.append(seq)
        for seq in updated:
            if seq.is_finished:
                self.release(seq)
        return updated

    def _append_token(self, seq: Sequence, sampled: SampleOutput, i: int) -> None:
        token = sampled.token_ids[i]
        seq.output_ids.append(token)
        self.stats.generated_tokens += 1
        if seq.return_logprob and sampled.logprobs is not None:
            seq.output_token_logprobs.append((sampled.logprobs[i], token))
            if seq.top_logprobs_num > 0:
                seq.output_top_logprobs.append(sampled.top_logprobs[i] or [])
            if seq.token_ids_logprob is not None and sampled.token_ids_logprobs is not None:
                seq.output_token_ids_logprobs.append(sampled.token_ids_logprobs[i] or [])
        if seq.grammar is not None and not seq.grammar.accept_token(token):
            seq.finish(finish_abort(f"the grammar rejected token {token}"))
            return
        reason = self._finish_reason(seq, token)
        if reason is not None:
            seq.finish(reason)

    def _finish_reason(self, seq: Sequence, token: int) -> dict | None:
        """SGLang's order: stop strings, stop tokens, length, grammar end."""
        sp = seq.sampling
        if sp.stop:
            window = max(len(s) for s in sp.stop) + 2
            tail = self.outputs.tail_text(seq.output_ids, window)
            for stop in sp.stop:
                if stop in tail:
                    return finish_stop(stop)
        if seq.stop_regex is not None:
            tail = self.outputs.tail_text(seq.output_ids, seq.stop_regex.window_tokens)
            try:
                matched = seq.stop_regex.search(tail)
            except StopRegexTimeout as exc:
                return finish_abort(str(exc), 400, "BadRequestError")
            if matched is not None:
                return finish_stop(matched)
        if token in seq.stop_ids:
            return finish_stop(token)
        if seq.num_output_tokens >= seq.max_new_tokens:
            return finish_length(seq.max_new_tokens)
        if seq.grammar is not None and seq.grammar.is_terminated():
            return finish_stop(token)
        return None

    # -- cache and lifetime --------------------------------------------------------------

    def _cache_prefix(self, seq: Sequence, length: int) -> None:
        """Put the first ``length`` KV tokens of ``seq`` in the tree and hold them there."""
        assert seq.kv is not None
        key = seq.kv_key()[:length]
        kv = seq.kv
        node, _ = self.cache.insert(key, lambda start, end: kv.segment(start, end))
        if node is not seq.cache_node:
            self.cache.lock(node)
            if seq.cache_node is not None:
                self.cache.unlock(seq.cache_node)
            seq.cache_node = node

    def _share_prompt(self, seq: Sequence) -> None:
        """With shared storage, read the prompt from the tree and drop the own copy."""
        node = seq.cache_node
        if self.runner.shares_prefix_kv and node is not None and node is not self.cache.root:
            assert seq.kv is not None
            seq.kv.share_prefix(node, seq.prompt_len)

    def release(self, seq: Sequence) -> None:
        """Drop a finished sequence from the queues; keep its KV in the tree, free the rest."""
        if seq.kv is not None and seq.finish_reason and seq.finish_reason["type"] != "abort":
            self._cache_prefix(seq, seq.kv.length)
        if seq.cache_node is not None:
            self.cache.unlock(seq.cache_node)
            seq.cache_node = None
        seq.kv = None
        for queue in (self.prefilling, self.running):
            if seq in queue:
                queue.remove(seq)
        if seq in self.waiting:
            self.waiting.remove(seq)
        if not self.running and not self.prefilling:
            self.runner.joined_chains.clear()  # no joined prefix is read any more

    def abort(self, seq: Sequence, message: str, status_code: int = 500) -> None:
        if not seq.is_finished:
            seq.finish(finish_abort(message, status_code))
        self.release(seq)
