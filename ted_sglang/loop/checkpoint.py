"""Where a distillation run stands, kept inside the bank file it writes.

The checkpoint (the planned sample order, the samples done in order, the step
counter, the RNG state, the run's settings and dataset fingerprint) lives in the
bank's ``meta.extra["distill"]``, so one atomic bank write commits a step's edits
and its progress together: a run killed at any moment resumes with nothing lost
and nothing applied twice.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ted_sglang.bank import ExperienceBank
from ted_sglang.data import Sample

CHECKPOINT_KEY = "distill"
CHECKPOINT_FORMAT = 1


def dataset_fingerprint(samples: Sequence[Sample]) -> str:
    """A digest of the samples a run trains on (ids, questions, answers, options,
    image file names), independent of where the dataset lives."""
    digest = hashlib.sha256()
    for s in samples:
        item = [s.id, s.question, s.answer, s.options, s.image.name if s.image else None]
        digest.update(json.dumps(item, ensure_ascii=False).encode("utf-8") + b"\n")
    return digest.hexdigest()


def rng_state_to_json(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def rng_state_from_json(data: Any) -> tuple:
    if not (isinstance(data, list) and len(data) == 3 and isinstance(data[1], list)):
        raise ValueError("the checkpoint's rng_state is not a Python random state")
    return (data[0], tuple(data[1]), data[2])


@dataclass
class Checkpoint:
    """Progress of a run: ``order`` (sample ids in training order), ``done`` (the
    ids applied so far, in order), ``step`` (= len(done)), ``batches`` (batches
    committed), ``rng_state`` (of the run's RNG after the last done sample's draws),
    ``dataset`` and ``config`` (what a resumed run must match)."""

    dataset: dict[str, Any]
    config: dict[str, Any]
    order: list[str]
    done: list[str] = field(default_factory=list)
    rng_state: list = field(default_factory=list)
    batches: int = 0

    @property
    def step(self) -> int:
        return len(self.done)

    @classmethod
    def start(
        cls, samples: Sequence[Sample], dataset: dict[str, Any], config: dict[str, Any], seed: int
    ) -> Checkpoint:
        """A new run over ``samples``: its training order is a shuffle drawn from
        ``seed``, and the RNG goes on from there."""
        rng = random.Random(seed)
        order = [s.id for s in samples]
        rng.shuffle(order)
        dataset = {**dataset, "fingerprint": dataset_fingerprint(samples), "size": len(samples)}
        return cls(dataset, config, order, [], rng_state_to_json(rng.getstate()))

    def rng(self) -> random.Random:
        """A generator in the saved state."""
        rng = random.Random()
        rng.setstate(rng_state_from_json(self.rng_state))
        return rng

    def remaining(self) -> list[str]:
        done = set(self.done)
        return [i for i in self.order if i not in done]

    def mark_done(self, sample_id: str, rng_state: tuple) -> int:
        """Record ``sample_id`` as applied; returns its step number."""
        assert sample_id in self.order and sample_id not in self.done, sample_id
        self.done.append(sample_id)
        self.rng_state = rng_state_to_json(rng_state)
        return self.step

    def mark_batch_done(self, sample_ids: Sequence[str], rng_state: tuple) -> int:
        """Record a committed batch of samples; returns the batch's number."""
        for sample_id in sample_ids:
            self.mark_done(sample_id, rng_state)
        self.batches += 1
        return self.batches

    def check_matches(
        self, samples: Sequence[Sample], dataset: dict[str, Any], config: dict[str, Any]
    ) -> None:
        """Raise ``ValueError`` saying what differs when a resumed run would not
        continue this one (another dataset, split, limit or setting)."""
        problems = []
        if dataset_fingerprint(samples) != self.dataset.get("fingerprint"):
            was, now = self.dataset, dataset
            problems.append(
                f"the dataset differs (the bank was distilled from {was.get('size')} samples "
                f"of {was.get('path')}, split {was.get('split')}, limit {was.get('limit')}; "
                f"now {len(samples)} samples of {now.get('path')}, split {now.get('split')}, "
                f"limit {now.get('limit')})"
            )
        for key in sorted(set(self.config) | set(config)):
            if self.config.get(key) != config.get(key):
                problems.append(f"{key} was {self.config.get(key)!r}, now {config.get(key)!r}")
        if problems:
            raise ValueError(
                "--resume must continue the same run: "
                + "; ".join(problems)
                + ". Use the same options, or --force to start over"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "dataset": self.dataset,
            "config": self.config,
            "order": list(self.order),
            "done": list(self.done),
            "step": self.step,
            "batches": self.batches,
            "rng_state": self.rng_state,
        }

    def store(self, bank: ExperienceBank) -> None:
        """Put the checkpoint into the bank's metadata (saved with the bank)."""
        bank.meta.extra[CHECKPOINT_KEY] = self.to_dict()

    @classmethod
    def from_bank(cls, bank: ExperienceBank) -> Checkpoint:
        """The checkpoint in a bank; ``ValueError`` if it has none or it is damaged."""
        data = bank.meta.extra.get(CHECKPOINT_KEY)
        if data is None:
            raise ValueError("the bank holds no distillation checkpoint, so it cannot be resumed")
        try:
            checkpoint = cls(
                dict(data["dataset"]), dict(data["config"]), list(data["order"]),
                list(data["done"]), list(data["rng_state"]), int(data.get("batches", 0)),
            )  # fmt: skip
            rng_state_from_json(checkpoint.rng_state)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"the bank's distillation checkpoint is damaged: {exc}") from None
        if data.get("format") != CHECKPOINT_FORMAT or data.get("step") != checkpoint.step:
            raise ValueError("the bank's distillation checkpoint is damaged (format or step)")
        if len(set(checkpoint.done)) != len(checkpoint.done) or not set(checkpoint.done) <= set(
            checkpoint.order
        ):
            raise ValueError("the bank's distillation checkpoint lists unknown or repeated samples")
        return checkpoint
