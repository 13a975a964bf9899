"""One validation on load and on save: a file that loads is one every command handles;
any other file is refused with a BankFileError naming it (and its good backup)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ted_sglang.bank import BankFileError, ExperienceBank, storage
from ted_sglang.cli import main

TEXT = "Check the units first."


def build(tmp_path: Path) -> Path:
    """A bank saved twice, so ``bank.json.bak`` holds a good version 1."""
    path = tmp_path / "bank.json"
    bank = ExperienceBank(student_model="tiny")
    bank.apply({"operations": [{"op": "add", "text": TEXT}]})
    bank.save(path)
    bank.apply({"operations": [{"op": "add", "text": "Draw the figure before solving."}]})
    bank.meta.extra["note"] = "kept"
    bank.save(path)
    return path


def retext(new: bytes):
    """Replace the first entry's text everywhere (entry and history agree)."""
    return lambda raw: raw.replace(TEXT.encode(), new)


def in_extra(value_json: str):
    return lambda raw: raw.replace(b'"note": "kept"', b'"note": ' + value_json.encode())


DAMAGE = {
    "lone surrogate in a text": retext(b"Check the \\ud800 units."),
    "NUL in a text": retext(b"Check the\\u0000units first."),
    "newline in a text": retext(b"Check the units\\nfirst."),
    "tab and double space": retext(b"Check  the\\tunits."),
    "text over the limit": retext(b"x" * 401),
    "empty text": retext(b""),
    "nested 500 deep": in_extra("[" * 500 + "]" * 500),
    "nested 33 deep": in_extra("[" * 33 + "]" * 33),
    "5000-digit integer": in_extra("1" * 5000),
    "integer over 64 bits": lambda raw: raw.replace(b'"shown": 0', b'"shown": ' + b"9" * 30, 1),
    "NaN": in_extra("NaN"),
    "infinite float": in_extra("1e999"),
    "surrogate in a key": in_extra('{"\\udfff": 1}'),
    "surrogate in history meta": lambda raw: raw.replace(
        b'"meta": {}', b'"meta": {"who": "\\ud83d"}', 1
    ),
    "a string as usage": lambda raw: raw.replace(b'"usage": {', b'"usage": "x", "u": {', 1),
    "huge version": lambda raw: raw.replace(
        b'"version": 2,', b'"version": ' + b"7" * 4000 + b",", 1
    ),
}


@pytest.mark.parametrize("damage", DAMAGE.values(), ids=DAMAGE.keys())
def test_bad_content_is_refused_naming_the_file_and_backup(tmp_path, damage, capsys) -> None:
    path = build(tmp_path)
    raw = damage(path.read_bytes())
    assert raw != path.read_bytes()
    path.write_bytes(raw)
    with pytest.raises(BankFileError) as info:
        ExperienceBank.load(path)
    message = str(info.value)
    assert str(path) in message and "bank.json.bak" in message and "version 1" in message
    assert len(message) < 1000
    with pytest.raises(BankFileError):
        ExperienceBank.load_file(path)
    capsys.readouterr()
    assert main(["bank", "validate", str(path)]) == 1
    out = capsys.readouterr().out
    assert f"bad: {path}" in out and "ok: " in out  # the backup is good
    assert main(["bank", "show", str(path)]) == 2
    assert main(["bank", "show", str(path), "--recover"]) == 0


def test_oversized_file_is_refused_unread(tmp_path, monkeypatch) -> None:
    path = build(tmp_path)
    monkeypatch.setattr(storage, "MAX_FILE_BYTES", path.stat().st_size - 1)
    with pytest.raises(BankFileError, match="larger than"):
        ExperienceBank.load_file(path)


@pytest.mark.parametrize(
    "spoil",
    [
        lambda bank: bank.meta.extra.__setitem__("x", "half a pair \ud83d"),
        lambda bank: bank.meta.extra.__setitem__("deep", json.loads("[" * 40 + "]" * 40)),
        lambda bank: bank.meta.extra.__setitem__("nan", float("nan")),
        lambda bank: bank.meta.extra.__setitem__("set", {1, 2}),
        lambda bank: bank.record_counts("E1", 1, shown=2**64),
        lambda bank: setattr(bank.meta, "student_model", "\udc80"),
    ],
    ids=["surrogate", "deep", "nan", "set", "huge count", "surrogate model"],
)
def test_a_bank_that_would_not_load_is_not_saved(tmp_path, spoil) -> None:
    path = build(tmp_path)
    before = path.read_bytes()
    bank = ExperienceBank.load(path)
    spoil(bank)
    with pytest.raises(BankFileError, match="not saved") as info:
        bank.save(path)
    assert str(path) in str(info.value)
    assert path.read_bytes() == before


def test_the_limits_are_the_banks_own(tmp_path) -> None:
    """A text as long as the bank's limit loads; the limit is the one in the file."""
    path = tmp_path / "bank.json"
    bank = ExperienceBank()
    text = "y" * 400
    assert bank.apply({"operations": [{"op": "add", "text": text}]}).version == 1
    bank.save(path)
    assert ExperienceBank.load(path)["E1"].text == text
    data = json.loads(path.read_text())
    data["limits"]["max_text_chars"] = 399
    path.write_text(json.dumps(data))
    with pytest.raises(BankFileError, match="over the bank's limit of 399"):
        ExperienceBank.load(path)


@pytest.mark.parametrize(
    "content",
    [
        b"[" * 100_000 + b"]" * 100_000,
        b"\xff\xfe\xfd",
        b"{",
        None,
        b'{"format": "ted-sglang-serve-usage"}',
        b'{"format": "ted-sglang-serve-usage", "entries": []}',
        b'{"format": "ted-sglang-serve-usage", "entries": {"E1": 3}}',
        b'{"format": "ted-sglang-serve-usage", "entries": {"E1": {"shown": -1}}}',
    ],
    ids=[
        "nested deep",
        "not UTF-8",
        "truncated",
        "a folder",
        "no entries",
        "entries a list",
        "an entry not an object",
        "a negative count",
    ],
)
def test_serve_usage_refuses_an_unreadable_usage_file(tmp_path, content, capsys) -> None:
    path = build(tmp_path)
    before = path.read_bytes()
    usage = tmp_path / "bank.json.usage.json"
    if content is None:
        usage.mkdir()
    else:
        usage.write_bytes(content)
    for extra in ([], ["--apply"]):
        assert main(["serve-usage", "--bank", str(path), *extra]) == 2
        assert f"error: {usage}: " in capsys.readouterr().err
    assert path.read_bytes() == before
