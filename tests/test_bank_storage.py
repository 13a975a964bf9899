"""Persistence: versions, diff, atomic writes, backups and damaged files."""

from __future__ import annotations

import json

import pytest

from ted_sglang.bank import BankFileError, BankMeta, ExperienceBank

TEXTS = [
    "Check the units before answering.",
    "Draw a diagram of the figure first.",
    "Count the objects twice, from different corners.",
    "Rotate the shape mentally and compare edges.",
]


def build(tmp_path):
    """A bank saved after each of three versions; returns it, its path and the renders."""
    path = tmp_path / "bank.json"
    bank = ExperienceBank(student_model="tiny-student")
    renders = {0: bank.render()}
    bank.apply({"operations": [{"op": "add", "text": t} for t in TEXTS[:3]]}, step=1)
    renders[1] = bank.render()
    bank.save(path)
    bank.apply(
        {
            "operations": [
                {"op": "update", "id": "E1", "text": "Check units and signs before answering."},
                {"op": "delete", "id": "E2"},
            ]
        },
        step=2,
        meta={"sample_id": "s2", "source": "teacher"},
    )
    renders[2] = bank.render()
    bank.save(path)
    bank.apply({"operations": [{"op": "add", "text": TEXTS[3]}]}, step=3)
    renders[3] = bank.render()
    bank.record_shown(bank.ids, step=3)
    bank.save(path)
    return bank, path, renders


def snapshot(directory):
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in directory.iterdir()}


def test_roundtrip_keeps_state_usage_meta_and_history(tmp_path):
    bank, path, _ = build(tmp_path)
    bank.meta.add_training_samples(["s1", "s2", "s1"])
    bank.meta.extra["note"] = "first run"
    bank.save(path)
    loaded = ExperienceBank.load(path)
    assert loaded.to_dict() == bank.to_dict()
    assert loaded.meta.student_model == "tiny-student"
    assert loaded.meta.training_sample_ids == ["s1", "s2"]
    assert loaded["E4"].usage.shown == 1 and loaded["E4"].usage.last_used_step == 3
    assert loaded.history[1].meta == {"sample_id": "s2", "source": "teacher"}
    assert loaded.loaded_from == path
    data = json.loads(path.read_text())
    assert data["format"] == "ted-sglang-bank" and data["format_version"] == 1
    # No temp file is left; the lock file stays (removing it could let two writers in).
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "bank.json", "bank.json.bak", "bank.json.lock"
    ]  # fmt: skip


def test_any_version_can_be_rebuilt(tmp_path):
    bank, path, renders = build(tmp_path)
    for version, render in renders.items():
        old = ExperienceBank.load(path, version=version)
        assert old.version == version and old.render() == render
        assert len(old.history) == version
    assert ExperienceBank.load(path, version=1)["E1"].usage.shown == 0
    with pytest.raises(ValueError, match="version must be"):
        bank.at_version(4)


def test_diff(tmp_path):
    bank, _, _ = build(tmp_path)
    last = bank.diff()
    assert (last.version_a, last.version_b) == (2, 3)
    assert [e.id for e in last.added] == ["E4"] and not last.removed and not last.changed
    d = bank.diff(1, 3)
    assert [e.id for e in d.removed] == ["E2"]
    assert [(a.id, a.text, b.text) for a, b in d.changed] == [
        ("E1", TEXTS[0], "Check units and signs before answering.")
    ]
    assert "+ [E4]" in d.summary() and "- [E2]" in d.summary()
    assert bank.diff(3, 3).is_empty
    reverse = bank.diff(3, 1)
    assert [e.id for e in reverse.added] == ["E2"] and [e.id for e in reverse.removed] == ["E4"]


def test_save_keeps_the_previous_file_as_backup(tmp_path):
    _, path, renders = build(tmp_path)
    backup = tmp_path / "bank.json.bak"
    assert ExperienceBank.load(backup).render() == renders[2]
    assert ExperienceBank.load(path).render() == renders[3]


@pytest.mark.parametrize(
    "damage",
    [
        lambda raw: raw[: len(raw) // 2],  # write killed midway
        lambda raw: b"",  # killed before anything was written
        lambda raw: bytes(range(256)) * 4,  # garbage
        lambda raw: raw.replace(b'"version": 3', b'"version": 7'),  # inconsistent
    ],
)
def test_damaged_file_names_itself_and_points_to_the_backup(tmp_path, damage):
    _, path, renders = build(tmp_path)
    path.write_bytes(damage(path.read_bytes()))
    before = snapshot(tmp_path)
    with pytest.raises(BankFileError) as info:
        ExperienceBank.load(path)
    message = str(info.value)
    assert str(path) in message and "bank.json.bak" in message and "version 2" in message
    assert isinstance(info.value, ValueError) and info.value.path == path
    recovered = ExperienceBank.load(path, recover=True)
    assert recovered.version == 2 and recovered.render() == renders[2]
    assert recovered.loaded_from == tmp_path / "bank.json.bak"
    assert snapshot(tmp_path) == before  # loading never writes

    # Saving the recovered bank does not let the damaged file replace the good backup.
    recovered.apply({"operations": [{"op": "add", "text": "Write down what is given."}]})
    recovered.save(path)
    assert ExperienceBank.load(path).version == 3
    assert ExperienceBank.load(tmp_path / "bank.json.bak").version == 2


def test_damaged_file_without_backup(tmp_path):
    path = tmp_path / "bank.json"
    ExperienceBank().save(path)
    path.write_bytes(b'{"format": "ted-sglang-bank", "format_ver')
    with pytest.raises(BankFileError, match="not valid JSON") as info:
        ExperienceBank.load(path)
    assert str(path) in str(info.value) and ".bak" not in str(info.value)
    with pytest.raises(BankFileError):
        ExperienceBank.load(path, recover=True)


def test_both_files_damaged(tmp_path):
    _, path, _ = build(tmp_path)
    path.write_bytes(b"garbage")
    (tmp_path / "bank.json.bak").write_bytes(b"{}")
    with pytest.raises(BankFileError, match="unusable too") as info:
        ExperienceBank.load(path, recover=True)
    assert str(path) in str(info.value)


def test_missing_file_and_missing_main_with_backup(tmp_path):
    with pytest.raises(BankFileError, match="no such file"):
        ExperienceBank.load(tmp_path / "nope.json")
    _, path, _ = build(tmp_path)
    path.unlink()
    with pytest.raises(BankFileError, match="holds a good bank"):
        ExperienceBank.load(path)


def test_wrong_format_and_newer_format(tmp_path):
    path = tmp_path / "other.json"
    path.write_text('{"hello": 1}')
    with pytest.raises(BankFileError, match="not a bank file"):
        ExperienceBank.load(path)
    bank, bank_path, _ = build(tmp_path)
    data = bank.to_dict()
    data["format_version"] = 99
    bank_path.write_text(json.dumps(data))
    with pytest.raises(BankFileError, match="newer"):
        ExperienceBank.load_file(bank_path)


def test_edited_entry_that_disagrees_with_history_is_refused(tmp_path):
    bank, path, _ = build(tmp_path)
    data = bank.to_dict()
    data["entries"][0]["text"] = "Something nobody applied."
    path.write_text(json.dumps(data))
    with pytest.raises(BankFileError, match="does not match the history"):
        ExperienceBank.load_file(path)


def test_meta_validation():
    with pytest.raises(ValueError):
        BankMeta.from_dict({"student_model": 3})
    with pytest.raises(ValueError):
        BankMeta().add_training_samples("s1")
    meta = BankMeta.from_dict({"student_model": "m", "training_sample_ids": ["a"]})
    assert meta.add_training_samples(["a", "b"]) == 1 and meta.training_sample_ids == ["a", "b"]
