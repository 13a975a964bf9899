"""Model runner, sampler and prompt building, in process on the tiny models."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest
import torch
from engine_runs import reference_logits, run_forks

from ted_sglang.engine.attention import SharedPrefixBackend
from ted_sglang.engine.errors import RequestError
from ted_sglang.engine.kv import path_values
from ted_sglang.engine.model_loader import load_model
from ted_sglang.engine.model_runner import ForwardInput, ModelRunner
from ted_sglang.engine.prompt import PromptBuilder, load_image_bytes, map_image_token
from ted_sglang.engine.radix_cache import RadixCache
from ted_sglang.engine.sampler import Sampler
from ted_sglang.engine.sampling_params import SamplingParams
from ted_sglang.engine.sequence import Sequence


@pytest.fixture(scope="module")
def loaded(tiny_model_dir: Path):
    return load_model(tiny_model_dir)


@pytest.fixture(scope="module")
def runner(loaded):
    return ModelRunner(loaded)


def test_packed_chunked_prefill_and_batched_decode_match_the_model(loaded, runner) -> None:
    gen = torch.Generator().manual_seed(0)
    a = torch.randint(3, 1000, (37,), generator=gen).tolist()
    b = torch.randint(3, 1000, (23,), generator=gen).tolist()
    ref_a, ref_b = reference_logits(loaded, a), reference_logits(loaded, b)
    kv_a, kv_b = runner.new_kv(8), runner.new_kv(40)  # kv_a must grow
    step = ForwardInput()
    step.add(kv_a, a[:5], 0)
    step.logit_rows = [4]
    kv_a.ensure_capacity(40)
    out = runner.forward(step)
    torch.testing.assert_close(out[0], ref_a[4], atol=1e-4, rtol=1e-4)
    step = ForwardInput()  # a's next chunk packed with all of b
    step.add(kv_a, a[5:30], 5)
    step.add(kv_b, b[:20], 0)
    step.logit_rows = [24, 25 + 19]
    out = runner.forward(step)
    torch.testing.assert_close(out[0], ref_a[29], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out[1], ref_b[19], atol=1e-4, rtol=1e-4)
    for i in range(3):  # one token each per step
        step = ForwardInput()
        step.add(kv_a, [a[30 + i]], 30 + i)
        step.add(kv_b, [b[20 + i]], 20 + i)
        step.logit_rows = [0, 1]
        out = runner.forward(step)
        torch.testing.assert_close(out[0], ref_a[30 + i], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(out[1], ref_b[20 + i], atol=1e-4, rtol=1e-4)
    assert kv_a.length == 33 and kv_b.length == 23


@pytest.mark.parametrize("chunk", [2048, 16])  # 16: chunked prefill, a path of several nodes
def test_forks_share_one_prefix_copy_and_decode_as_per_request(loaded, runner, chunk) -> None:
    gen = torch.Generator().manual_seed(1)
    prefix = torch.randint(3, 1000, (41,), generator=gen).tolist()
    prompts = [prefix + torch.randint(3, 1000, (n,), generator=gen).tolist() for n in (1, 6, 3, 9)]
    group_sizes: list[int] = []
    shared_steps = []

    class Counting(SharedPrefixBackend):
        def decode_group(self, layer, group, *args):
            if layer == 0:
                group_sizes.append(len(group.rows))
            super().decode_group(layer, group, *args)

    def check_shared(scheduler, cache) -> None:
        running = scheduler.running
        if len(running) < len(prompts):
            return
        path = path_values(cache.match_prefix(prefix).node)
        for seq in running:  # the prefix is the tree's one copy, read in place
            assert [p.data_ptr() for p in seq.kv.parts()[: len(path)]] == [
                p.data_ptr() for p in path
            ]
            assert seq.kv.prefix_len == seq.prompt_len
            assert seq.kv.buffer.shape[3] < len(prefix)  # own buffers hold outputs only
        shared_steps.append(len(running))

    def check_copies(scheduler, cache) -> None:
        for seq in scheduler.running:  # per-request: each holds its whole prompt
            assert seq.kv.prefix_node is None and seq.kv.buffer.shape[3] >= seq.prompt_len

    alone, alone_logits = run_forks(runner, prompts, 8, check_copies, chunk)
    shared, shared_logits = run_forks(
        ModelRunner(loaded, Counting), prompts, 8, check_shared, chunk
    )
    assert shared == alone
    assert group_sizes.count(len(prompts)) == len(shared_steps) > 0  # all four: one group
    for prompt, out, a, b in zip(prompts, shared, alone_logits, shared_logits, strict=True):
        ref = reference_logits(loaded, prompt + out[:-1])[len(prompt) - 1 :]  # the model's own
        torch.testing.assert_close(a, ref, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(b, ref, atol=1e-4, rtol=1e-4)


def seq_with(sp: SamplingParams, output: list[int] | None = None) -> Sequence:
    seq = Sequence(
        rid="r",
        prompt_ids=[1],
        cache_key=[1],
        sampling=sp,
        max_new_tokens=10,
        stop_ids=frozenset({2}),
    )
    seq.output_ids = list(output or [])
    return seq


def test_sampler_greedy_filters_and_distribution() -> None:
    sampler = Sampler(seed=0)
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0]] * 4)
    seqs = [
        seq_with(SamplingParams(top_k=1)),
        seq_with(SamplingParams(top_k=2)),
        seq_with(SamplingParams(top_p=0.5)),
        seq_with(SamplingParams(min_p=0.9)),
    ]
    for _ in range(20):
        out = sampler.sample(logits.clone(), seqs)
        assert out.token_ids[0] == 1 and out.token_ids[2] == 1 and out.token_ids[3] == 1
        assert out.token_ids[1] in (1, 3)
    probs = torch.softmax(torch.tensor([0.0, 1.0, 2.0, 0.5]), dim=0)
    draws = sampler.sample(
        torch.tensor([[0.0, 1.0, 2.0, 0.5]] * 4000), [seq_with(SamplingParams())] * 4000
    ).token_ids
    freq = torch.bincount(torch.tensor(draws), minlength=4).float() / len(draws)
    torch.testing.assert_close(freq, probs, atol=0.03, rtol=0)


def test_sampler_min_new_tokens_penalties_and_seed() -> None:
    sampler = Sampler(seed=0)
    logits = torch.tensor([[0.0, 0.0, 9.0, 0.0]])  # token 2 is the stop token
    assert sampler.sample(logits.clone(), [seq_with(SamplingParams(top_k=1))]).token_ids == [2]
    held = seq_with(SamplingParams(top_k=1, min_new_tokens=3), output=[0])
    assert sampler.sample(logits.clone(), [held]).token_ids != [2]
    penalised = seq_with(SamplingParams(top_k=1, presence_penalty=2.0), output=[1])
    out = sampler.sample(torch.tensor([[0.0, 1.5, 0.0, 1.0]]), [penalised])
    assert out.token_ids == [3]
    seeded = [seq_with(SamplingParams(sampling_seed=7))]
    first = [sampler.sample(torch.zeros(1, 50), seeded).token_ids[0] for _ in range(3)]
    again = [Sampler(seed=1).sample(torch.zeros(1, 50), seeded).token_ids[0] for _ in range(3)]
    assert first == again


def test_sampler_reports_rows_with_nothing_allowed() -> None:
    held = seq_with(
        SamplingParams(top_k=1, min_new_tokens=5, logit_bias={0: float("-inf"), 1: float("-inf")})
    )
    out = Sampler().sample(torch.tensor([[0.0, 0.0, 1.0]]), [held])
    assert out.failed == [0]


def test_image_marker_mapping() -> None:
    assert map_image_token("a <image>\nb", "<image>") == "a <image>\nb"
    assert map_image_token("<|vision_start|><|image_pad|><|vision_end|>hi", "<image>") == (
        "<image>hi"
    )
    assert map_image_token("x <image_placeholder>\ny", "<img>") == "x <img>\ny"
    with pytest.raises(RequestError, match="no image marker"):
        map_image_token("no marker", "<image>")
    with pytest.raises(RequestError, match="one image"):
        map_image_token("<image><image>", "<image>")


def test_image_inputs(tmp_path: Path, tiny_vision_model_dir: Path) -> None:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (9, 7), (1, 2, 3)).save(buf, format="PNG")
    raw = buf.getvalue()
    path = tmp_path / "x.png"
    path.write_bytes(raw)
    b64 = base64.b64encode(raw).decode()
    assert load_image_bytes(b64) == raw == load_image_bytes("x.png", str(tmp_path))
    assert load_image_bytes("data:image/png;base64," + b64) == raw
    with pytest.raises(RequestError, match="URLs are not fetched"):
        load_image_bytes("https://example.com/x.png")

    builder = PromptBuilder(load_model(tiny_vision_model_dir))
    prompt = builder.build("look: <image> now", None, b64)
    image = prompt.image
    assert image is not None and image.end - image.start == 16
    assert prompt.input_ids[image.start : image.end] == [builder.image_token_id] * 16
    assert set(prompt.cache_key[image.start : image.end]) == {image.pad_id}
    assert image.pad_id >= builder.vocab_size
    other = builder.build("look: <image> now", None, base64.b64encode(raw + b"x").decode())
    assert other.cache_key[: image.start] == prompt.cache_key[: image.start]
    assert other.image is not None and other.image.pad_id != image.pad_id
    with pytest.raises(RequestError, match="no image_data"):
        builder.build("look: <image> now", None, None)


def test_grouped_decode_matches_float64_attention() -> None:
    from ted_sglang.engine.attention import Segment, SequenceKV, group_decodes

    gen = torch.Generator().manual_seed(2)
    layers, kv_heads, q_heads, dim, shared = 2, 2, 6, 16, 29
    cache = RadixCache(1000)
    prefix = torch.randn(layers, 2, kv_heads, shared, dim, generator=gen)
    cache.insert(list(range(shared)), lambda start, end: prefix[:, :, :, start:end].clone())
    segments, full = [], []
    for i, own in enumerate((1, 5, 12, 30)):  # the last reads no cached prefix
        kv = SequenceKV(layers, kv_heads, dim, 64, torch.float32, "cpu")
        if i < 3:
            kv.share_prefix(cache.match_prefix(list(range(shared))).node, shared)
        tokens = torch.randn(layers, 2, kv_heads, own, dim, generator=gen)
        for layer in range(layers):
            kv.write(layer, kv.length, tokens[layer, 0], tokens[layer, 1])
        kv.length += own
        segments.append(Segment(kv, kv.length - 1, 1, i))
        full.append(torch.cat([prefix, tokens], dim=3) if i < 3 else tokens)
    groups, alone = group_decodes(segments)
    assert [g.rows for g in groups] == [[0, 1, 2]] and alone == [segments[3]]
    query = torch.randn(1, q_heads, 4, dim, generator=gen)
    out = torch.full((1, 4, q_heads, dim), float("nan"))
    SharedPrefixBackend(segments).decode(1, segments, query, out, 0.25)
    for i, kv in enumerate(full):
        k = kv[1, 0].double().repeat_interleave(q_heads // kv_heads, dim=0)  # [Hq, L, D]
        v = kv[1, 1].double().repeat_interleave(q_heads // kv_heads, dim=0)
        q = query[0, :, i].double().unsqueeze(1)  # [Hq, 1, D]
        expected = torch.softmax(q @ k.transpose(1, 2) * 0.25, dim=-1) @ v
        torch.testing.assert_close(out[0, i].double(), expected[:, 0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("sampling", [SamplingParams(top_k=1), SamplingParams(temperature=1.0)])
def test_grammar_rows_never_get_invalid_utf8(loaded, sampling) -> None:
    from ted_sglang.engine.grammar import GrammarCache

    vocab = loaded.model.get_output_embeddings().weight.shape[0]
    grammars = GrammarCache(loaded.tokenizer, vocab, loaded.eos_token_ids)
    byte_token = {p: i for i, p in enumerate(grammars.token_bytes) if len(p) == 1}
    lead, overlong, good = byte_token[b"\xe0"], byte_token[b"\x82"], byte_token[b"\xa0"]
    schema = '{"type": "string"}'

    def draw(sampler: Sampler, seq: Sequence, favoured: int) -> int:
        logits = torch.zeros(1, vocab)
        logits[0, favoured], logits[0, good] = 40.0, 20.0
        token = sampler.sample(logits, [seq]).token_ids[0]
        assert seq.grammar.accept_token(token)
        return token

    for checked in (False, True):
        seq = seq_with(sampling)
        seq.grammar = grammars.matcher(grammars.get("json_schema", schema))
        assert seq.grammar.accept_token(byte_token[b'"'])
        sampler = Sampler(seed=3, token_bytes=grammars.token_bytes if checked else None)
        assert draw(sampler, seq, lead) == lead
        # xgrammar allows the overlong E0 82; only the UTF-8 check keeps it out
        assert draw(sampler, seq, overlong) == (good if checked else overlong)
    assert seq.utf8_pending == b"\xe0\xa0"
