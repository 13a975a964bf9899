"""What each server-sent chunk of a streamed ``/generate`` holds, as SGLang streams it.

Cumulative (SGLang's default): every chunk carries the text, ``output_ids`` and
output logprobs so far. Incremental (``--incremental-streaming-output``): every
chunk carries only what is new since the previous one (text delta, new ids, new
output-side logprob entries); ``completion_tokens`` and
``output_token_logprobs_length`` stay cumulative, as in SGLang's
``TokenizerManager._handle_batch_output``. ``stream_interval`` (per request, or
the server's) spaces chunks: the first token goes out at once, then a chunk
whenever that many tokens are unsent; the last one always goes.
"""

from __future__ import annotations

import time
from typing import Any

from ted_sglang.engine.output import OutputBuilder, StreamText
from ted_sglang.engine.sequence import Sequence


class StreamChunks:
    """The chunks of one streamed sequence; ``partial`` may hold a chunk back."""

    def __init__(
        self, outputs: OutputBuilder, seq: Sequence, incremental: bool, default_interval: int
    ) -> None:
        self.outputs = outputs
        self.seq = seq
        self.incremental = incremental
        self.interval = max(seq.sampling.stream_interval or default_interval, 1)
        self.sent_text = ""
        self.sent_tokens = 0
        self.sent_chunk = False
        self.text = StreamText(lambda ids: outputs.decode(ids, seq))

    def partial(self, num_tokens: int) -> dict[str, Any] | None:
        """The chunk for the first ``num_tokens`` outputs, or None when it is not due or
        would show nothing new (text still held back: a partial stop string or character)."""
        unsent = num_tokens - self.sent_tokens
        if unsent <= 0 or (self.sent_tokens and unsent < self.interval):
            return None
        text = self.outputs.partial_text(self.seq, num_tokens, self.text)
        if text == self.sent_text:
            return None
        return self._chunk(text, num_tokens)

    def final(self) -> dict[str, Any]:
        """The last chunk: the finished text (stop strings trimmed) and every output."""
        return self._chunk(self.outputs.final_text(self.seq), self.seq.num_output_tokens)

    def _chunk(self, text: str, num_tokens: int) -> dict[str, Any]:
        if self.incremental:
            delta = text[len(self.sent_text) :] if text.startswith(self.sent_text) else ""
            chunk = self.outputs.response(self.seq, delta, num_tokens, since=self.sent_tokens)
        else:
            chunk = self.outputs.response(self.seq, text, num_tokens)
        if not self.sent_chunk:  # SGLang stamps the first chunk a client gets
            chunk["meta_info"]["response_sent_to_client_ts"] = time.time()
            self.sent_chunk = True
        self.sent_text, self.sent_tokens = text, num_tokens
        return chunk
