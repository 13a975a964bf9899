"""The operations schema under xgrammar: it compiles, and every document a constrained
decoder can produce is one the bank reads (ids always exist)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

xgr = pytest.importorskip("xgrammar")

from ted_sglang.bank import (  # noqa: E402
    SEMANTIC_CODES,
    ExperienceBank,
    OperationLimits,
    operations_schema_text,
)

EOS = "<|endoftext|>"


@pytest.fixture(scope="module")
def tokenizer_info():
    """A byte-level BPE of ~400 tokens trained here, wrapped as a Hugging Face tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = [
        '{"operations": [{"op": "add", "text": "Check the units before answering."}]}',
        '{"op": "update", "id": "E12", "text": "Draw a diagram of the figure first."}',
        '{"op": "merge", "ids": ["E1", "E2", "E3"], "text": "Count the objects twice."}',
        '{"op": "delete", "id": "E7"}, {"op": "none"}]}',
        "Rotate the shape and compare the edges; estimate before computing.",
    ] * 10
    tok.train_from_iterator(corpus, trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS)
    return xgr.TokenizerInfo.from_huggingface(hf)


def compile_schema(info, ids, limits=None):
    return xgr.GrammarCompiler(info).compile_json_schema(operations_schema_text(ids, limits))


def accepts(compiled, text: str) -> bool:
    matcher = xgr.GrammarMatcher(compiled, terminate_without_stop_token=True)
    return matcher.accept_string(text) and matcher.is_terminated()


def random_walk(compiled, info, rng: random.Random, soft_len: int = 40, max_steps: int = 3000):
    """Sample a document token by token from the grammar's masks, uniformly at first,
    then mostly among tokens that close a string, an object or the array."""
    vocab = info.decoded_vocab
    closing = np.array([any(c in t for c in b'"]}') for t in vocab], dtype=bool)
    closing[info.stop_token_ids] = True
    matcher = xgr.GrammarMatcher(compiled)
    bitmask = xgr.allocate_token_bitmask(1, info.vocab_size)
    out: list[bytes] = []
    for step in range(max_steps):
        if matcher.is_terminated():
            break
        matcher.fill_next_token_bitmask(bitmask)
        bits = np.unpackbits(bitmask.numpy().view(np.uint8), bitorder="little")
        allowed = np.flatnonzero(bits[: info.vocab_size])
        assert allowed.size, "the grammar left no token to choose"
        if step > soft_len and rng.random() < 0.9:
            preferred = allowed[closing[allowed]]
            allowed = preferred if preferred.size else allowed
        token = int(allowed[rng.randrange(allowed.size)])
        assert matcher.accept_token(token)
        if token not in info.stop_token_ids:
            out.append(vocab[token])
    assert matcher.is_terminated(), "the walk did not finish"
    # The grammar admits any byte in a string; a server's detokenizer replaces invalid
    # UTF-8 the same way.
    return b"".join(out).decode("utf-8", errors="replace")


def make_bank(n: int) -> ExperienceBank:
    bank = ExperienceBank()
    texts = [f"Experience number {i} about checking step {i}." for i in range(n + 2)]
    bank.apply({"operations": [{"op": "add", "text": t} for t in texts]}, limits=_wide())
    bank.apply({"operations": [{"op": "delete", "id": "E1"}, {"op": "delete", "id": "E2"}]})
    return bank


def _wide() -> OperationLimits:
    return OperationLimits(max_operations=64)


@pytest.mark.parametrize("num_ids", [0, 1, 5, 200])
def test_schema_compiles(tokenizer_info, num_ids):
    ids = [f"E{i}" for i in range(1, num_ids + 1)]
    compiled = compile_schema(tokenizer_info, ids)
    assert compiled.memory_size_bytes > 0


def test_grammar_admits_only_existing_ids(tokenizer_info):
    compiled = compile_schema(tokenizer_info, ["E2", "E10"])
    ok = '{"operations": [{"op": "delete", "id": "E10"}, {"op": "merge", "ids": ["E2", "E10"], '
    ok += '"text": "Check the units first."}, {"op": "none"}]}'
    assert accepts(compiled, ok)
    assert not accepts(compiled, '{"operations": [{"op": "delete", "id": "E1"}]}')
    assert not accepts(compiled, '{"operations": [{"op": "update", "id": "E2"}]}')
    assert not accepts(compiled, '{"operations": [{"op": "add", "text": "short"}]}')
    assert not accepts(compiled, '{"operations": [{"op": "none", "why": "x"}]}')

    empty = compile_schema(tokenizer_info, [])
    assert accepts(empty, '{"operations": [{"op": "add", "text": "Check the units first."}]}')
    assert not accepts(empty, '{"operations": [{"op": "delete", "id": "E1"}]}')


def test_grammar_bounds_the_number_of_operations(tokenizer_info):
    limits = OperationLimits(max_operations=2)
    compiled = compile_schema(tokenizer_info, [], limits)
    none = '{"op": "none"}'
    assert accepts(compiled, '{"operations": [' + ", ".join([none] * 2) + "]}")
    assert not accepts(compiled, '{"operations": [' + ", ".join([none] * 3) + "]}")


@pytest.mark.parametrize("num_ids", [0, 1, 6])
def test_random_walks_give_documents_the_bank_reads(tokenizer_info, num_ids):
    bank = make_bank(num_ids)
    assert len(bank) == num_ids
    compiled = compile_schema(tokenizer_info, bank.ids, bank.limits)
    applied = 0
    for seed in range(10):
        text = random_walk(compiled, tokenizer_info, random.Random(seed * 31 + num_ids))
        copy = ExperienceBank.from_dict(bank.to_dict())
        report = copy.apply(text)
        assert report.error is None, (text, report.error)
        ops = json.loads(text, strict=False)["operations"]
        assert len(report.results) == len(ops) <= bank.limits.max_operations
        for result in report.rejected:
            # Only semantic reasons: the grammar already guarantees shape and ids.
            assert result.code in SEMANTIC_CODES - {"unknown_id", "text_too_long"}, (text, result)
        if num_ids == 0:
            assert {op["op"] for op in ops} <= {"add", "none"}
        applied += len(report.applied)
    assert applied > 0
