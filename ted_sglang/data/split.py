"""Train/test splits that never show the same question on both sides.

Distillation reads ``train`` and evaluation reads ``test``. A JSONL dataset
carries the split in each row's ``split`` field (``load_dataset(...,
split="train")``); a benchmark that ships no training split is divided with
:func:`split_samples`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

from ted_sglang.data.sample import Sample

TRAIN, TEST = "train", "test"


def question_key(sample: Sample) -> str:
    """The question text with case and spacing normalised: equal keys are the same question."""
    return re.sub(r"\s+", " ", sample.question).strip().lower()


def split_samples(
    samples: Sequence[Sample], num_train: int, *, seed: int = 0
) -> tuple[list[Sample], list[Sample]]:
    """Divide ``samples`` into ``(train, test)`` deterministically.

    Samples that share a question text (:func:`question_key`) stay together, so
    no test question is seen in training; ids are disjoint too. Groups are taken
    in an order fixed by ``seed`` and their text alone, so adding samples does
    not reshuffle the others. Train gets at most ``num_train`` samples (fewer
    only when a group would overflow it). Both lists keep the input order.
    """
    if not 0 <= num_train <= len(samples):
        raise ValueError(f"num_train must be between 0 and {len(samples)}, got {num_train}")
    ids = [s.id for s in samples]
    if len(set(ids)) != len(ids):
        raise ValueError("samples must have distinct ids to be split")
    groups: dict[str, list[int]] = {}
    for index, sample in enumerate(samples):
        groups.setdefault(question_key(sample), []).append(index)

    def order(key: str) -> str:
        return hashlib.sha256(f"{seed}\0{key}".encode()).hexdigest()

    train_indices: set[int] = set()
    for key in sorted(groups, key=order):
        members = groups[key]
        if len(train_indices) + len(members) <= num_train:
            train_indices.update(members)
    train = [s for i, s in enumerate(samples) if i in train_indices]
    test = [s for i, s in enumerate(samples) if i not in train_indices]
    return train, test
