"""Streamed text decodes only the newest outputs, and still reads exactly as the whole
output decoded at once: real tokenizer, outputs that split characters across tokens."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ted_sglang.engine.output import StreamText


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def stream(tokenizer, ids: list[int], skip_special_tokens: bool = True) -> tuple[list[str], int]:
    """What a stream shows after each output, and how many ids it decoded in all."""
    decoded = 0

    def decode(window: list[int]) -> str:
        nonlocal decoded
        decoded += len(window)
        return tokenizer.decode(window, skip_special_tokens=skip_special_tokens)

    text = StreamText(decode)
    return [text.update(ids[:n]) for n in range(1, len(ids) + 1)], decoded


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_each_step_reads_as_the_whole_output_decoded(tokenizer, data: st.DataObject) -> None:
    # Byte tokens (which split characters), common pieces, special tokens, and the
    # tokens of text in scripts that take several bytes a character.
    pieces = tokenizer.encode("Das Maß: 中文 数学 👍🏽 é, the end.")
    token = st.one_of(
        st.integers(0, tokenizer.vocab_size - 1),
        st.sampled_from(pieces),
        st.sampled_from(tokenizer.all_special_ids),
    )
    ids = data.draw(st.lists(token, min_size=1, max_size=60))
    skip = data.draw(st.booleans())
    shown, _ = stream(tokenizer, ids, skip)
    for n, text in enumerate(shown, start=1):
        whole = tokenizer.decode(ids[:n], skip_special_tokens=skip)
        assert text == whole.rstrip("\ufffd")


def test_a_long_stream_decodes_each_output_a_few_times(tokenizer) -> None:
    ids = tokenizer.encode("Count the sides, then check each one twice. 数一数。 " * 120)
    shown, decoded = stream(tokenizer, ids)
    assert shown[-1] == tokenizer.decode(ids, skip_special_tokens=True)
    assert len(ids) > 2000 and decoded < 8 * len(ids)  # decoding it all each time: n²/2
