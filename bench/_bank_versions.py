"""Bank versions for the prefix-cache benchmarks: simulated growth, or a bank file's history.

A simulated bank grows the way distillation grows it: each teacher step applies one
small operations document (mostly adds, some updates, merges and deletes) drawn,
seeded, from a pool of experience texts built from templates; the student's usage
statistics move every step; when the bank passes its budget, the
:class:`~ted_sglang.bank.CompressionPolicy` removals are applied as one version and the
teacher's merges and rewrites (simulated with generated texts) as another.

Each version is kept as a :class:`BankVersion` (entries with the usage they had then),
so any layout can render it: :data:`LAYOUTS` holds the project's cache-friendly
rendering and two naive ones.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from ted_sglang.bank import CompressionBudget, CompressionPolicy, Experience, ExperienceBank
from ted_sglang.bank.experience import id_number
from ted_sglang.bank.render import render_text

# ---- the pool of experience texts ------------------------------------------------------

# (situation, actions) per kind of problem; a text is "<situation>, <action><reason>."
_TOPICS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "counting": (
        (
            "When a question asks how many shapes of one colour there are",
            "When counting objects in a described scene",
            "When the scene mixes several shapes and colours",
            "When a count question names both a colour and a shape",
            "When objects in a picture may overlap",
        ),
        (
            "list every object with its colour and shape before counting",
            "count only the objects that match both the colour and the shape",
            "count twice in different orders and compare the totals",
            "write the running total after each matching object",
            "cross out each object in the list once it is counted",
            "check that the final count is not larger than the number of objects shown",
        ),
    ),
    "charts": (
        (
            "When reading a bar chart",
            "When a question asks for the tallest or shortest bar",
            "When bars have close heights",
            "When a chart has a title and labelled axes",
            "When comparing values read from a chart",
        ),
        (
            "read the axis range first and the value of each bar against it",
            "write down every bar's label and value before comparing them",
            "compare the values numerically rather than by eye",
            "answer with the label of the bar, not its value, when the options are labels",
            "check the title to know what quantity the bars measure",
            "look for the bar's top against the nearest gridline before reading its value",
        ),
    ),
    "sizes": (
        (
            "When comparing the sizes of shapes",
            "When a question asks which shape is the largest",
            "When two shapes look almost the same size",
            "When sizes are given as diameters or side lengths",
            "When the scene description lists sizes in pixels",
        ),
        (
            "compare the stated measurements instead of the positions of the shapes",
            "rank all shapes by size before answering",
            "make sure the compared shapes are the ones the question names",
            "treat the diameter of a circle and the side of a square as comparable widths",
            "state the two numbers being compared before picking the larger",
            "ignore colour unless the question asks about it",
        ),
    ),
    "arithmetic": (
        (
            "When a word problem combines several operations",
            "When the numbers in a question come from a picture",
            "When a question asks for a total or a difference",
            "When an answer must be a whole number",
            "When a result seems too large or too small",
        ),
        (
            "write each step as an equation and compute it separately",
            "check the order of operations before computing",
            "redo the computation in reverse to verify the result",
            "keep track of the units of every quantity",
            "estimate the result roughly first and compare it with the exact answer",
            "read every number again from the question before the final step",
        ),
    ),
    "answers": (
        (
            "When the question gives lettered options",
            "When the final answer is a number",
            "Before writing the final answer",
            "When two options seem equally right",
            "When the reasoning and the chosen option disagree",
        ),
        (
            "answer with the letter of the option, exactly in the format asked",
            "write the final answer on its own line after the word Answer",
            "restate what the question asks and check that the answer fits it",
            "eliminate the options that contradict the given facts first",
            "trust the reasoning and recheck the option's text, not its position",
            "give only the number without units unless units are requested",
        ),
    ),
    "reasoning": (
        (
            "When a problem has several conditions",
            "When a step depends on an assumption",
            "When the first approach leads nowhere",
            "When the description of the image is long",
            "When a question uses words like all, none or exactly",
        ),
        (
            "check every condition separately before combining them",
            "state the assumption and check it against the given facts",
            "go back to the last step that was certainly right and try another path",
            "pick out only the facts the question needs before reasoning",
            "read the quantifier carefully and test the answer against it",
            "summarise the known facts in one line before the next step",
        ),
    ),
}
_REASONS = (
    "",
    ", so that nothing is missed",
    ", because small slips here cause most wrong answers",
    ", which avoids answering a different question",
    ", since the first impression is often wrong",
)


def experience_pool(seed: int = 0) -> Iterator[str]:
    """Experience texts from the templates, shuffled by ``seed``, each once: first the
    900 one-lesson texts, then 2,250 that pair two pieces of advice."""
    rng = random.Random(seed)
    single = [
        f"{situation}, {action}{reason}."
        for situations, actions in _TOPICS.values()
        for situation in situations
        for action in actions
        for reason in _REASONS
    ]
    paired = [
        f"{situation}, {first} and {second}{reason}."
        for situations, actions in _TOPICS.values()
        for situation in situations
        for first, second in itertools.combinations(actions, 2)
        for reason in _REASONS
    ]
    for texts in (single, paired):
        rng.shuffle(texts)
        yield from texts


def merged_text(texts: list[str]) -> str:
    """What a teacher's merge of ``texts`` might read like: the first lesson, plus the
    second one's advice."""
    first = texts[0].rstrip(".")
    second = texts[1].rstrip(".").split(", ", 1)[-1]
    return f"{first}; also {second}."


def shortened_text(text: str) -> str:
    """What a teacher's rewrite of a long entry might read like: its first lesson."""
    head = text.split("; also ", 1)[0].rstrip(".")
    return f"{head} (in short)."


# ---- versions -----------------------------------------------------------------------------


@dataclass(frozen=True)
class BankVersion:
    """One version of a bank: its entries in the bank's render order (with the usage
    they had at that version, where known), and whether compression made it."""

    version: int
    entries: tuple[Experience, ...]
    compressed: bool = False


@dataclass(frozen=True)
class BankHistory:
    """Every version of one bank, version 0 (empty) first."""

    versions: tuple[BankVersion, ...]
    source: str  # "generated" or the bank file's name
    has_usage: bool  # whether entries carry the usage they had at their version

    @property
    def compression_versions(self) -> list[int]:
        return [v.version for v in self.versions if v.compressed]


# Op mix of a teacher step (by weight), and how many ops one document holds.
OP_WEIGHTS = {"add": 0.72, "update": 0.12, "merge": 0.06, "delete": 0.10}
OPS_PER_STEP = (1, 2, 3)


def simulate_history(entries: int, seed: int = 0, tail: float = 0.25) -> BankHistory:
    """Grow a bank with teacher steps until it first passes ``entries`` entries (its
    budget, so it is compressed there), then run ``tail`` as many steps again, which
    brings more compressions.  Deterministic in ``seed``."""
    if entries < 2:
        raise ValueError(f"--entries must be at least 2, got {entries}")
    rng = random.Random(seed)
    pool = experience_pool(seed)
    policy = CompressionPolicy(budget=CompressionBudget(max_entries=entries, max_tokens=None))
    bank = ExperienceBank(student_model="benchmark")
    versions = [BankVersion(0, ())]
    step, first_compression, stop_at = 0, None, None
    while stop_at is None or step < stop_at:
        step += 1
        document = _teacher_document(bank, rng, pool)
        report = bank.apply(document, step=step, meta={"source": "teacher"})
        assert report.error is None, report.error
        _simulate_usage(bank, rng, step)
        if report.version != report.previous_version:
            versions.append(BankVersion(bank.version, tuple(bank.entries)))
        if policy.is_over_budget(bank):
            versions += _compress(bank, policy, step)
            if first_compression is None:
                first_compression = step
                stop_at = step + max(1, math.ceil(tail * step))
    return BankHistory(tuple(versions), "generated", has_usage=True)


def _teacher_document(bank: ExperienceBank, rng: random.Random, pool: Iterator[str]) -> dict:
    ops: list[dict] = []
    touched: set[str] = set()
    for _ in range(rng.choice(OPS_PER_STEP)):
        free = [i for i in bank.ids if i not in touched]
        op = rng.choices(list(OP_WEIGHTS), weights=list(OP_WEIGHTS.values()))[0]
        if op == "update" and free:
            target = rng.choice(free)
            touched.add(target)
            ops.append({"op": "update", "id": target, "text": next(pool)})
        elif op == "merge" and len(free) >= 2:
            ids = rng.sample(free, 2)
            touched.update(ids)
            text = merged_text([bank[i].text for i in ids])
            ops.append({"op": "merge", "ids": ids, "text": text})
        elif op == "delete" and free:
            target = rng.choice(free)
            touched.add(target)
            ops.append({"op": "delete", "id": target})
        else:
            ops.append({"op": "add", "text": next(pool)})
    return {"operations": ops}


def _simulate_usage(bank: ExperienceBank, rng: random.Random, step: int) -> None:
    """The student saw every entry; the teacher cited a few as helpful or harmful."""
    ids = bank.ids
    bank.record_shown(ids, step)
    bank.record_outcome(ids, rng.random() < 0.5, step)
    if ids:
        helpful = rng.sample(ids, min(len(ids), rng.randint(0, 2)))
        harmful = rng.sample(ids, min(len(ids), rng.randint(0, 1)))
        bank.record_cited(helpful, [i for i in harmful if i not in helpful], step=step)


def _compress(bank: ExperienceBank, policy: CompressionPolicy, step: int) -> list[BankVersion]:
    """Removals as one version, then the teacher's merges and rewrites as another."""
    out = []
    plan, report = policy.compress(bank, step=step)
    if report is not None and report.version != report.previous_version:
        out.append(BankVersion(bank.version, tuple(bank.entries), compressed=True))
    ops: list[dict] = [
        {"op": "merge", "ids": list(m.ids[:2]), "text": merged_text([bank[i].text for i in m.ids])}
        for m in plan.merges
        if all(i in bank for i in m.ids[:2])
    ]
    ops += [
        {"op": "update", "id": r.id, "text": shortened_text(bank[r.id].text)}
        for r in plan.rewrites
        if r.id in bank
    ]
    if ops:
        limits = replace(bank.limits, max_operations=max(bank.limits.max_operations, len(ops)))
        meta = {"source": "compression", "kind": "teacher"}
        report = bank.apply({"operations": ops}, step=step, meta=meta, limits=limits)
        if report.version != report.previous_version:
            out.append(BankVersion(bank.version, tuple(bank.entries), compressed=True))
    return out


def load_history(path: str | Path) -> BankHistory:
    """Every version of a saved bank (``ted-sglang distill``'s bank file), rebuilt from
    its history; usage statistics are not versioned, so they are not known."""
    bank = ExperienceBank.load(path)
    versions = [BankVersion(0, ())]
    for record in bank.history:
        past = bank.at_version(record.version)
        compressed = record.meta.get("source") == "compression"
        versions.append(BankVersion(record.version, tuple(past.entries), compressed))
    return BankHistory(tuple(versions), Path(path).name, has_usage=False)


# ---- layouts ----------------------------------------------------------------------------


def _by_utility(entries: tuple[Experience, ...]) -> list[Experience]:
    """Best first: utility (which moves every step) high to low, then id."""
    policy = CompressionPolicy()
    return sorted(entries, key=lambda e: (-policy.utility(e), id_number(e.id)))


def _newest_first(entries: tuple[Experience, ...]) -> list[Experience]:
    """Most recently written first: last change high to low, then id high to low."""
    return sorted(entries, key=lambda e: e.order_key, reverse=True)


# Layout name -> the order its rendering lists the entries in.
LAYOUTS: dict[str, Callable[[tuple[Experience, ...]], list[Experience]]] = {
    "cache_friendly": list,  # the bank's own render order (ExperienceBank.render)
    "naive_utility": _by_utility,
    "naive_newest": _newest_first,
}


def render(version: BankVersion, layout: str) -> str:
    """The experiences block of ``version`` in ``layout``."""
    return render_text(LAYOUTS[layout](version.entries))
