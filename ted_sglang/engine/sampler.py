"""Next-token choice for a batch of rows: penalties, masks, temperature, top-k/p, min-p.

Logprobs follow SGLang: output logprobs are taken after temperature scaling and
before top-k/top-p filtering; prompt logprobs are the raw ``log_softmax``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ted_sglang.engine.grammar import apply_grammar_masks, utf8_tail

if TYPE_CHECKING:
    import torch

    from ted_sglang.engine.sequence import Sequence


@dataclass
class SampleOutput:
    token_ids: list[int]
    logprobs: list[float] | None  # chosen token's logprob per row (when any row asks)
    top_logprobs: list[list[tuple[float, int]] | None]
    failed: list[int]  # rows where every token was masked out
    # per row, (logprob, id) of each id in the row's ``token_ids_logprob`` (or None)
    token_ids_logprobs: list[list[tuple[float, int]] | None] | None = None


class Sampler:
    """Samples one token per row; rows without a usable token are reported in ``failed``.

    With ``token_bytes`` (each token id's output bytes), a row under a grammar never
    gets a token that would make its output bytes invalid UTF-8: such a draw is
    masked out and the row drawn again (xgrammar alone lets some through).
    """

    def __init__(self, seed: int = 0, token_bytes: list[bytes] | None = None) -> None:
        import torch

        self.generator = torch.Generator().manual_seed(seed)
        self.token_bytes = token_bytes

    def sample(self, logits: torch.Tensor, seqs: list[Sequence]) -> SampleOutput:
        import torch

        assert logits.shape[0] == len(seqs)
        self._adjust(logits, seqs)
        dead = torch.isneginf(logits).all(dim=1)
        failed = dead.nonzero().flatten().tolist()
        if failed:
            logits[dead] = 0.0
        temps = torch.tensor(
            [1.0 if s.sampling.is_greedy else s.sampling.temperature for s in seqs],
            dtype=logits.dtype,
            device=logits.device,
        )
        logits.div_(temps.unsqueeze(1))
        need_logprobs = any(s.return_logprob for s in seqs)
        logprobs_all = torch.log_softmax(logits, dim=-1) if need_logprobs else None

        tokens = logits.argmax(dim=-1)
        sample_rows = [i for i, s in enumerate(seqs) if not s.sampling.is_greedy]
        if sample_rows:
            rows = torch.tensor(sample_rows, device=logits.device)
            tokens[rows] = self._sample_rows(logits[rows], [seqs[i] for i in sample_rows])
        if self.token_bytes is not None:
            for i, s in enumerate(seqs):
                if s.grammar is not None and i not in failed:
                    tokens[i] = self._utf8_safe(logits, i, s, int(tokens[i]), failed)
        token_ids = tokens.tolist()

        chosen = None
        top: list[list[tuple[float, int]] | None] = [None] * len(seqs)
        by_id: list[list[tuple[float, int]] | None] = [None] * len(seqs)
        if logprobs_all is not None:
            chosen = logprobs_all.gather(1, tokens.unsqueeze(1)).squeeze(1).tolist()
            for i, s in enumerate(seqs):
                if s.return_logprob and s.top_logprobs_num > 0:
                    top[i] = top_logprobs(logprobs_all[i], s.top_logprobs_num)
                if s.return_logprob and s.token_ids_logprob is not None:
                    by_id[i] = token_ids_logprobs(logprobs_all[i], s.token_ids_logprob)
        return SampleOutput(token_ids, chosen, top, failed, by_id)

    def _utf8_safe(
        self, logits: torch.Tensor, i: int, seq: Sequence, token: int, failed: list[int]
    ) -> int:
        """``token``, or the row's next draw without the tokens that break UTF-8; records
        the output's unfinished UTF-8 tail on ``seq`` (or adds ``i`` to ``failed``)."""
        import torch

        assert self.token_bytes is not None
        row = logits[i]
        while True:
            piece = self.token_bytes[token] if token < len(self.token_bytes) else b""
            tail = utf8_tail(seq.utf8_pending, piece)
            if tail is not None:
                seq.utf8_pending = tail
                return token
            row[token] = float("-inf")
            if bool(torch.isneginf(row).all()):
                failed.append(i)
                return token
            if seq.sampling.is_greedy:
                token = int(row.argmax())
            else:
                token = int(self._sample_rows(row.unsqueeze(0), [seq])[0])

    def _adjust(self, logits: torch.Tensor, seqs: list[Sequence]) -> None:
        """Penalties, logit bias, min_new_tokens and grammar masks, in place."""
        import torch

        for i, s in enumerate(seqs):
            sp = s.sampling
            if sp.has_penalties and s.output_ids:
                ids = torch.tensor(s.output_ids, device=logits.device)
                ids, counts = ids.unique(return_counts=True)
                row = logits[i]
                if sp.repetition_penalty != 1.0:
                    vals = row[ids]
                    row[ids] = torch.where(
                        vals > 0, vals / sp.repetition_penalty, vals * sp.repetition_penalty
                    )
                row[ids] -= sp.frequency_penalty * counts.to(row.dtype) + sp.presence_penalty
            if sp.logit_bias:
                for token_id, bias in sp.logit_bias.items():
                    if token_id < logits.shape[1]:
                        logits[i, token_id] += bias
            if s.num_output_tokens < sp.min_new_tokens and s.stop_ids:
                logits[i, [t for t in s.stop_ids if t < logits.shape[1]]] = float("-inf")
        apply_grammar_masks(logits, [(i, s.grammar) for i, s in enumerate(seqs) if s.grammar])

    def _sample_rows(self, logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
        import torch

        probs = torch.softmax(logits, dim=-1)
        top_ks = [s.sampling.top_k for s in seqs]
        top_ps = [s.sampling.top_p for s in seqs]
        min_ps = [s.sampling.min_p for s in seqs]
        if any(k < probs.shape[1] for k in top_ks) or any(p < 1.0 for p in top_ps) or any(min_ps):
            sorted_probs, order = probs.sort(dim=-1, descending=True)
            device = probs.device
            ranks = torch.arange(probs.shape[1], device=device).unsqueeze(0)
            top_k = torch.tensor(top_ks, device=device).clamp(max=probs.shape[1])
            drop = ranks >= top_k.unsqueeze(1)
            cumulative = sorted_probs.cumsum(dim=-1)
            drop |= (cumulative - sorted_probs) > torch.tensor(top_ps, device=device).unsqueeze(1)
            min_p = torch.tensor(min_ps, device=device, dtype=probs.dtype)
            drop |= sorted_probs < sorted_probs[:, :1] * min_p.unsqueeze(1)
            sorted_probs = sorted_probs.masked_fill(drop, 0.0)
            probs = torch.zeros_like(probs).scatter_(1, order, sorted_probs)
        # Inverse-CDF sampling: one uniform number per row (a full-vocabulary RNG pass is slow).
        uniform = torch.rand(len(seqs), generator=self.generator, dtype=probs.dtype)
        for i, s in enumerate(seqs):
            if s.sampling.sampling_seed is not None:  # reproducible per request and step
                gen = torch.Generator().manual_seed(
                    (s.sampling.sampling_seed + s.num_output_tokens) % (1 << 63)
                )
                uniform[i] = torch.rand(1, generator=gen, dtype=probs.dtype)[0]
        uniform = uniform.to(probs.device)  # drawn on the CPU: the same numbers on any device
        cdf = probs.cumsum(dim=-1)
        targets = (uniform * cdf[:, -1]).unsqueeze(1)
        tokens = torch.searchsorted(cdf, targets, right=True).squeeze(1)
        return tokens.clamp(max=probs.shape[1] - 1)


def top_logprobs(logprobs: torch.Tensor, k: int) -> list[tuple[float, int]]:
    """The ``k`` largest ``(logprob, token_id)`` of one row."""
    values, ids = logprobs.topk(min(k, logprobs.shape[-1]))
    return list(zip(values.tolist(), ids.tolist(), strict=True))


def token_ids_logprobs(logprobs: torch.Tensor, token_ids: list[int]) -> list[tuple[float, int]]:
    """``(logprob, token_id)`` of the given ids in one row, in the order given."""
    values = logprobs[token_ids].tolist()
    return list(zip(values, token_ids, strict=True))
