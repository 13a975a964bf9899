"""Generated bank files (random JSON, strings with lone surrogates and control
characters, huge integers, deep nesting, and mutations of a good bank file so that many
do load): each one either loads and then shows, stats, diffs, saves and serves, or is
refused with a BankFileError; never another exception."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ted_sglang.bank import BankFileError, ExperienceBank
from ted_sglang.cli import main

SPECIAL_STRINGS = [
    "", " ", "\x00", "\n", "a\nb", "\ud800", "\udfff x", "tab\there", " lead", "two  spaces",
    "\u2028", "\x1b[31mred", "x" * 401, "E1", "E99999999999999999999", "ted-sglang-bank",
]  # fmt: skip
SPECIAL_INTS = [-1, 0, 1, 2**63 - 1, 2**63, -(2**63), 10**30, 10**4000]

strings = st.one_of(
    st.sampled_from(SPECIAL_STRINGS),
    st.text(st.characters(exclude_categories=()), max_size=12),  # surrogates included
    st.text(max_size=30),
)
integers = st.one_of(st.sampled_from(SPECIAL_INTS), st.integers(-5, 50), st.integers())
floats = st.floats(allow_nan=True, allow_infinity=True)
scalars = st.one_of(st.none(), st.booleans(), integers, floats, strings)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(strings, inner, max_size=4)
    ),
    max_leaves=12,
)
counts = st.one_of(st.integers(0, 1000), integers)
# Texts that are often valid stored texts (one normalised line), sometimes not.
texts = st.one_of(
    st.text(st.sampled_from("abc xyz.,é漢"), min_size=1, max_size=60).map(
        lambda t: " ".join(t.split())
    ),
    strings,
)
deep_values = st.sampled_from([31, 32, 33, 200, 600]).map(lambda d: json.loads("[" * d + "]" * d))


def base_bank() -> dict[str, Any]:
    """A good bank with every kind of content: adds, an update, a merge, a delete,
    usage, training samples, a checkpoint-like meta.extra and history meta."""
    bank = ExperienceBank(student_model="tiny-model")
    bank.apply({"operations": [
        {"op": "add", "text": "Check the units before answering."},
        {"op": "add", "text": "Draw the figure first."},
        {"op": "add", "text": "Count the objects twice."},
    ]}, meta={"source": "teacher", "sample_ids": ["s1"]})  # fmt: skip
    bank.apply({"operations": [{"op": "update", "id": "E2", "text": "Draw the figure."}]}, step=2)
    bank.apply({"operations": [{"op": "merge", "ids": ["E1", "E3"], "text": "Check twice."}]})
    bank.apply(
        {"operations": [{"op": "add", "text": "Read the options."}, {"op": "delete", "id": "E2"}]}
    )
    bank.record_shown(bank.ids, step=4)
    bank.record_outcome(bank.ids, True, step=4)
    bank.record_cited(["E4"], ["E5"], step=4)
    bank.meta.add_training_samples(["s1", "s2"], ["h1", "h2"])
    bank.meta.extra["distill"] = {"order": ["s1", "s2"], "rng_state": [3, [1, 2, 3], None]}
    return bank.to_dict()


BASE = base_bank()


def paths_of(value: Any, path: tuple = ()) -> list[tuple]:
    out = [path]
    if isinstance(value, dict):
        for key, item in value.items():
            out += paths_of(item, (*path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            out += paths_of(item, (*path, i))
    return out


def like(original: Any) -> st.SearchStrategy:
    """Values of the same kind as ``original`` (so that many mutations still load)."""
    if isinstance(original, bool):
        return st.booleans()
    if isinstance(original, int):
        return counts
    if isinstance(original, str):
        return texts
    if isinstance(original, list):
        return st.lists(json_values, max_size=3)
    if isinstance(original, dict):
        return st.dictionaries(strings, json_values, max_size=3)
    return json_values


def replace_text(value: Any, old: str, new: str) -> Any:
    if value == old:
        return new
    if isinstance(value, dict):
        return {k: replace_text(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [replace_text(v, old, new) for v in value]
    return value


@st.composite
def mutated_banks(draw: st.DrawFn) -> bytes:
    data = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(1, 3))):
        kinds = ["free"] * 4 + ["text"] * 2 + ["like", "any", "deep", "delete", "add"]
        kind = draw(st.sampled_from(kinds))
        if kind == "text":  # one entry's text, everywhere it is stored (so it may load)
            old = draw(st.sampled_from([e["text"] for e in BASE["entries"]]))
            data = replace_text(data, old, draw(texts))
            continue
        paths = paths_of(data)[1:]
        if kind == "free":  # where a file may hold other values and still be a good bank
            paths = [p for p in paths if p[0] == "meta" or "usage" in p or p[-1:] == ("meta",)]
            kind = "like"
        path = draw(st.sampled_from(paths))
        parent = data
        for key in path[:-1]:
            parent = parent[key]
        key = path[-1]
        if kind == "delete":
            del parent[key]
        elif kind == "add" and isinstance(parent, dict):
            parent[draw(strings)] = draw(json_values)
        elif kind == "deep":
            parent[key] = draw(deep_values)
        else:
            parent[key] = draw(like(parent[key]) if kind == "like" else json_values)
    return encode(data, draw(st.booleans()))


def encode(data: Any, ascii_only: bool) -> bytes:
    """JSON bytes; non-ASCII output writes lone surrogates as (invalid) UTF-8 bytes."""
    text = json.dumps(data, ensure_ascii=ascii_only, allow_nan=True, indent=1)
    return text.encode("utf-8", "surrogatepass")


@st.composite
def random_documents(draw: st.DrawFn) -> bytes:
    value = draw(json_values)
    if draw(st.booleans()):
        value = {"format": "ted-sglang-bank", "format_version": 1, **(
            value if isinstance(value, dict) else {"entries": value}
        )}  # fmt: skip
    return encode(value, draw(st.booleans()))


@st.composite
def damaged_bytes(draw: st.DrawFn) -> bytes:
    raw = bytearray(encode(BASE, True))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(raw)))
        choice = draw(st.sampled_from(["cut", "insert", "flip"]))
        if choice == "cut":
            del raw[at : at + draw(st.integers(1, 200))]
        elif choice == "insert":
            raw[at:at] = draw(st.binary(max_size=8) | st.sampled_from([b"[" * 3000, b"9" * 5000]))
        elif at < len(raw):
            raw[at] ^= 1 << draw(st.integers(0, 7))
    return bytes(raw)


def known_bad() -> list[bytes]:
    """Files the loader once accepted although commands then failed on them."""
    out = []
    for text in ("Check \ud800 twice.", "Check\x00twice.", "Check\ntwice.", "z" * 401):
        out.append(encode(replace_text(BASE, "Check twice.", text), True))
    for value in ("\udfff", json.loads("[" * 400 + "]" * 400), 10**4000, float("nan")):
        data = copy.deepcopy(BASE)
        data["meta"]["extra"]["x"] = value
        out.append(encode(data, True))
    return out


def cli(*argv: str) -> tuple[int, str]:
    """The real command in-process, its output written as strict UTF-8 (a terminal)."""
    buffer = io.BytesIO()
    out = io.TextIOWrapper(buffer, encoding="utf-8", errors="strict")
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        code = main(list(argv))
        out.flush()
    return code, buffer.getvalue().decode("utf-8")


@pytest.fixture(scope="module")
def chat_prefix():
    """The system block serve puts before every request (the frontend's ChatML)."""
    from ted_sglang.serve.chat_format import ChatFormat

    return ChatFormat("chatml").system_block


def check(raw: bytes, workdir: Path, chat_prefix: Any) -> str:
    """Write ``raw`` as a bank file and use it every way there is."""
    folder = Path(tempfile.mkdtemp(dir=workdir))
    path = folder / "bank.json"
    path.write_bytes(raw)
    try:
        bank = ExperienceBank.load(path)
    except BankFileError as exc:
        assert str(path) in str(exc)
        assert cli("bank", "validate", str(path))[0] == 1
        return "refused"
    for argv in (
        ["show"], ["show", "--json"], ["show", "--version", "0"], ["stats"],
        ["stats", "--json"], ["diff"], ["validate"], ["schema"],
    ):  # fmt: skip
        code, _ = cli("bank", argv[0], str(path), *argv[1:])
        assert code == 0, argv
    for version in range(bank.version + 1):
        bank.at_version(version).render().encode("utf-8")
    copy_path = folder / "copy.json"
    bank.save(copy_path)
    bank.save(path)
    assert ExperienceBank.load(copy_path).to_dict() == bank.to_dict()
    from ted_sglang.serve.bank_state import BankState

    served = BankState(path, chat_prefix).load()
    assert served.version == bank.version
    served.prefix.encode("utf-8")
    return "loaded"


SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize(
    "files, least_loaded",
    [(mutated_banks(), 15), (random_documents(), 0), (damaged_bytes(), 0)],
    ids=["mutated banks", "random JSON", "damaged bytes"],
)
def test_generated_bank_files_load_and_work_or_are_refused(
    files: st.SearchStrategy, least_loaded: int, tmp_path_factory, chat_prefix
) -> None:
    workdir = tmp_path_factory.mktemp("fuzz")
    outcomes: Counter[str] = Counter()

    def run(raw: bytes) -> None:
        outcomes[check(raw, workdir, chat_prefix)] += 1

    for raw in known_bad():
        run = example(raw)(run)
    run = SETTINGS(given(files)(run))

    run()
    assert outcomes["loaded"] >= least_loaded, outcomes
    assert outcomes["refused"] >= 15 + len(known_bad()), outcomes
