"""Text and SGLang-shaped responses (``text``, ``output_ids``, ``meta_info``) of sequences."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ted_sglang.engine.sequence import Sequence


class StreamText:
    """The text of a growing list of output ids, decoding only a short window of the
    newest ones each time (SGLang's detokenizer keeps the same two offsets): ``settled``
    is the text of ``ids[:read]``, and the window starts at ``surr``, the previous
    ``read``, so that a token's text is decoded beside the one before it."""

    def __init__(self, decode: Callable[[list[int]], str]) -> None:
        self.decode = decode
        self.settled = ""
        self.surr = 0
        self.read = 0

    def update(self, ids: list[int]) -> str:
        """The text of ``ids`` (which extend the ids of the last call) without an
        unfinished UTF-8 character at its end."""
        context = self.decode(ids[self.surr : self.read])
        window = self.decode(ids[self.surr :])
        if not window.startswith(context):  # a tokenizer that rewrites across tokens:
            self.settled, self.surr, self.read = "", 0, 0  # start again from the first id
            return self.update(ids)
        if window.endswith("\ufffd"):
            return self.settled + window[len(context) :].rstrip("\ufffd")
        self.settled += window[len(context) :]
        self.surr, self.read = self.read, len(ids)
        return self.settled


class OutputBuilder:
    """Detokenizes outputs and builds ``/generate`` answers as SGLang 0.5.23 shapes them."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def final_text(self, seq: Sequence) -> str:
        """The output text with the matched stop token or stop string trimmed (as SGLang)."""
        ids = seq.output_ids
        matched = (seq.finish_reason or {}).get("matched")
        trim = not seq.sampling.no_stop_trim
        if isinstance(matched, int) and trim and ids and ids[-1] == matched:
            ids = ids[:-1]
        text = self.decode(ids, seq)
        if isinstance(matched, str):
            pos = text.find(matched)
            if pos != -1:
                text = text[: pos + len(matched)] if not trim else text[:pos]
        return text

    def partial_text(self, seq: Sequence, num_tokens: int, text: StreamText) -> str:
        """Text of the first ``num_tokens`` outputs that is safe to stream: an unfinished
        UTF-8 character, or a tail that may grow into a stop string, is held back.
        ``text``: the stream's :class:`StreamText`, so that only new outputs are decoded."""
        shown = text.update(seq.output_ids[:num_tokens])
        for stop in seq.sampling.stop:
            if stop in shown:
                shown = shown[: shown.find(stop)]
            for k in range(min(len(stop) - 1, len(shown)), 0, -1):
                if shown.endswith(stop[:k]):
                    shown = shown[:-k]
                    break
        return shown

    def decode(self, ids: list[int], seq: Sequence) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=seq.sampling.skip_special_tokens)

    def tail_text(self, ids: list[int], num_tokens: int) -> str:
        return self.tokenizer.decode(ids[-num_tokens:])

    def response(
        self, seq: Sequence, text: str, num_tokens: int | None = None, since: int = 0
    ) -> dict[str, Any]:
        """``{"text", "output_ids", "meta_info"}`` for the first ``num_tokens`` outputs.

        ``since > 0`` makes an incremental stream chunk (SGLang's
        ``--incremental-streaming-output``): ``output_ids`` and the output-side logprob
        lists hold only outputs ``since`` to ``num_tokens``; ``text`` is the caller's delta.
        """
        n = seq.num_output_tokens if num_tokens is None else num_tokens
        meta = self.meta_info(seq, n, since)
        if not seq.stream and "e2e_latency" in meta:  # the answer goes out now
            meta["response_sent_to_client_ts"] = time.time()
        out = {"text": text, "output_ids": seq.output_ids[since:n], "meta_info": meta}
        if seq.return_prompt_token_ids:
            out["prompt_token_ids"] = list(seq.prompt_ids)
        return out

    def meta_info(self, seq: Sequence, num_tokens: int, since: int = 0) -> dict[str, Any]:
        """``meta_info`` after ``num_tokens`` outputs; the output-side logprob lists start at
        output ``since`` (SGLang's ``_INCREMENTAL_STREAMING_META_INFO_KEYS``), so that an
        incremental chunk builds only its own entries."""
        finished = seq.is_finished and num_tokens == seq.num_output_tokens
        meta: dict[str, Any] = {
            "id": seq.rid,
            "finish_reason": seq.finish_reason if finished else None,
            "prompt_tokens": seq.prompt_len,
            "weight_version": "default",
            "num_retractions": 0,
            "reasoning_tokens": 0,
            "completion_tokens": num_tokens,
            "cached_tokens": seq.num_cached_tokens,
            # SGLang's OutputStreamer.get_cached_tokens_details without a host cache
            "cached_tokens_details": (
                {"device": seq.num_cached_tokens, "host": 0} if seq.num_cached_tokens else None
            ),
            "dp_rank": 0,
        }
        if finished:  # SGLang's add_weight_versions_to_meta_info: one span, one version
            meta["weight_versions"] = [{"version": "default", "start": 0, "end": num_tokens}]
        if seq.image is not None:
            meta["image_tokens"] = seq.image.end - seq.image.start
        if seq.return_logprob:
            text = seq.return_text_in_logprobs
            meta["input_token_logprobs"] = self._entries(seq.input_token_logprobs, text)
            meta["output_token_logprobs"] = self._entries(
                seq.output_token_logprobs[since:num_tokens], text
            )
            meta["output_token_logprobs_length"] = min(num_tokens, len(seq.output_token_logprobs))
            if seq.top_logprobs_num > 0:
                meta["input_top_logprobs"] = [
                    None if row is None else self._entries(row, text)
                    for row in seq.input_top_logprobs
                ]
                meta["output_top_logprobs"] = [
                    self._entries(row, text) for row in seq.output_top_logprobs[since:num_tokens]
                ]
            if seq.token_ids_logprob is not None:
                meta["input_token_ids_logprobs"] = [
                    self._entries(row, text) if row else None
                    for row in seq.input_token_ids_logprobs
                ]
                meta["output_token_ids_logprobs"] = [
                    self._entries(row, text) if row else None
                    for row in seq.output_token_ids_logprobs[since:num_tokens]
                ]
        if seq.return_hidden_states:
            meta["hidden_states"] = seq.hidden_states[: max(num_tokens, 1)]
        if finished:
            meta["e2e_latency"] = (seq.finish_time or time.perf_counter()) - seq.arrival_time
        return meta

    def _entries(self, pairs: list[Any], with_text: bool) -> list[list[Any]]:
        """SGLang's ``[logprob, token_id, text-or-None]`` triples."""
        if not pairs:
            return []
        if not with_text:
            return [[lp, tid, None] for lp, tid in pairs]
        texts = self.tokenizer.batch_decode([[tid] for _, tid in pairs])
        return [[lp, tid, t] for (lp, tid), t in zip(pairs, texts, strict=True)]
