"""Shared-prefix decode over a prefix cached as several radix nodes: one shared read."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from engine_runs import reference_logits, run_forks

from ted_sglang.engine.attention import Segment, SequenceKV, SharedPrefixBackend
from ted_sglang.engine.decode_groups import JoinedChains, group_decodes
from ted_sglang.engine.kv import path_values
from ted_sglang.engine.model_loader import load_model
from ted_sglang.engine.model_runner import ModelRunner
from ted_sglang.engine.radix_cache import RadixCache, common_prefix_len


@pytest.fixture(scope="module")
def loaded(tiny_model_dir: Path):
    return load_model(tiny_model_dir)


def random_ids(gen: torch.Generator, n: int) -> list[int]:
    return torch.randint(3, 1000, (n,), generator=gen).tolist()


class Recording(SharedPrefixBackend):
    """Records, per step, each group's rows, prefix tensor and suffix lengths, and how
    many chain copies the runner had made by then."""

    steps: list[list[tuple[list[int], torch.Tensor, list[int]]]]
    joins: list[int]

    def decode_group(self, layer, group, *args):
        if layer == 0:
            if group is self._groups[0]:
                self.steps.append([])
                self.joins.append(self._chains.joins)
            lengths = [sum(p.shape[3] for p in parts) for parts in group.suffixes]
            self.steps[-1].append((group.rows, group.prefix, lengths))
        super().decode_group(layer, group, *args)


def recording_runner(loaded) -> tuple[ModelRunner, type[Recording]]:
    cls = type("Recording", (Recording,), {"steps": [], "joins": []})
    return ModelRunner(loaded, cls), cls


@pytest.mark.parametrize(
    "layout",
    ["chunked", "cached-in-pieces"],  # prefilled 16 tokens a step; cached by 3 requests in turn
)
def test_forks_over_a_multi_node_prefix_read_it_as_one_segment(loaded, layout) -> None:
    gen = torch.Generator().manual_seed(5)
    prefix = random_ids(gen, 41)
    prompts = [prefix + random_ids(gen, n) for n in (1, 6, 3, 9)]
    shared = min(common_prefix_len(prompts[0], p) for p in prompts)
    chunk, cached = (16, ()) if layout == "chunked" else (2048, (prefix[:13], prefix[:29]))
    runner, record = recording_runner(loaded)
    nodes: list[int] = []

    def check(scheduler, cache) -> None:
        if len(scheduler.running) == len(prompts):
            nodes.append(len(path_values(cache.match_prefix(prefix).node)))

    shared_out, shared_logits = run_forks(runner, prompts, 8, check, chunk, cached)
    full = [i for i, step in enumerate(record.steps) if sum(len(g[0]) for g in step) == 4]
    all_decoding = [record.steps[i] for i in full]
    assert all_decoding and set(nodes) == {3}  # the prefix is a chain of three nodes
    for step in all_decoding:  # one group, whose prefix is the whole shared run
        [(rows, prefix_kv, suffix_lengths)] = step
        assert len(rows) == 4 and prefix_kv.shape[3] == shared
        assert sum(suffix_lengths) < 4 * 16  # the members' own tokens only
    assert len({prefix_kv.data_ptr() for [(_, prefix_kv, _)] in all_decoding}) == 1
    assert len({record.joins[i] for i in full}) == 1  # joined once, reused while they decode
    assert runner.joined_chains.num_copies == 0  # let go when the last request ended
    alone_out, alone_logits = run_forks(ModelRunner(loaded), prompts, 8, lambda *a: None, chunk)
    assert shared_out == alone_out
    for prompt, out, a, b in zip(prompts, alone_out, alone_logits, shared_logits, strict=True):
        ref = reference_logits(loaded, prompt + out[:-1])[len(prompt) - 1 :]
        torch.testing.assert_close(a, ref, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(b, ref, atol=1e-4, rtol=1e-4)


def test_two_fork_families_over_one_system_prompt_get_a_group_each(loaded) -> None:
    gen = torch.Generator().manual_seed(6)
    system = random_ids(gen, 10)
    families = [system + random_ids(gen, 30), system + random_ids(gen, 30)]
    prompts = [f + random_ids(gen, n) for f in families for n in (2, 5, 3)]
    runner, record = recording_runner(loaded)
    shared_out, _ = run_forks(runner, prompts, 6, lambda *a: None, 16, (system,))
    full = [step for step in record.steps if sum(len(rows) for rows, _, _ in step) == 6]
    assert full
    for step in full:  # each family reads system prompt + its own prefix as one segment
        assert sorted(len(rows) for rows, _, _ in step) == [3, 3]
        assert [prefix_kv.shape[3] for _, prefix_kv, _ in step] == [40, 40]
    alone_out, _ = run_forks(ModelRunner(loaded), prompts, 6, lambda *a: None, 16, (system,))
    assert shared_out == alone_out


def test_chain_copies_follow_splits_and_go_when_nothing_decodes() -> None:
    gen = torch.Generator().manual_seed(7)
    layers, kv_heads, q_heads, dim = 2, 2, 4, 8
    key = list(range(41))
    kv_all = torch.randn(layers, 2, kv_heads, 41, dim, generator=gen)
    cache = RadixCache(1000)
    for end in (13, 29, 41):  # three requests leave three nodes
        cache.insert(key[:end], lambda start, stop: kv_all[:, :, :, start:stop].clone())
    segments, full = [], []
    for i, shared in enumerate((41, 41, 41, 13, 0)):
        kv = SequenceKV(layers, kv_heads, dim, 48, torch.float32, "cpu")
        if shared:
            kv.share_prefix(cache.match_prefix(key[:shared]).node, shared)
        own = torch.randn(layers, 2, kv_heads, 3, dim, generator=gen)
        for layer in range(layers):
            kv.write(layer, kv.length, own[layer, 0], own[layer, 1])
        kv.length += 3
        segments.append(Segment(kv, kv.length - 1, 1, i))
        full.append(torch.cat([kv_all[:, :, :, :shared], own], dim=3).double())
    query = torch.randn(1, q_heads, len(segments), dim, generator=gen)
    chains = JoinedChains()

    def decode_and_check() -> None:
        out = torch.full((1, len(segments), q_heads, dim), float("nan"))
        SharedPrefixBackend(segments, chains).decode(1, segments, query, out, 0.3)
        for i, kv in enumerate(full):
            k = kv[1, 0].repeat_interleave(q_heads // kv_heads, dim=0)  # [Hq, L, D]
            v = kv[1, 1].repeat_interleave(q_heads // kv_heads, dim=0)
            q = query[0, :, i].double().unsqueeze(1)
            expected = torch.softmax(q @ k.transpose(1, 2) * 0.3, dim=-1) @ v
            torch.testing.assert_close(out[0, i].double(), expected[:, 0], atol=1e-5, rtol=1e-5)

    groups, alone = group_decodes(segments, JoinedChains())
    assert [(g.rows, g.prefix.shape[3], len(g.chain)) for g in groups] == [
        ([0, 1, 2], 41, 3),
        ([3], 13, 1),
    ]
    assert groups[1].prefix is groups[1].chain[0]  # one node: read in place, no copy
    assert alone == [segments[4]]
    decode_and_check()
    decode_and_check()
    assert (chains.joins, chains.num_copies) == (1, 1)  # the second step reused the copy
    cache.match_prefix(key[:20])  # splits the middle node: new values, a new chain
    decode_and_check()
    assert (chains.joins, chains.num_copies) == (2, 1)
    prefill = [Segment(SequenceKV(layers, kv_heads, dim, 4, torch.float32, "cpu"), 0, 2, 0)]
    SharedPrefixBackend(prefill, chains)
    assert chains.num_copies == 0  # a step without decodes lets the copies go
