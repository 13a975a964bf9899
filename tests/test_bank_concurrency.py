"""Many writers on one bank file: real processes, real files.  No edit that a writer
reported as saved is ever lost; a writer killed mid-save leaves at most one temp file,
which the next save removes; a stuck writer makes the others wait, then give up."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from ted_sglang.bank import BankConflict, BankFileError, BankLockTimeout, ExperienceBank

# A writer process: waits for the start signal (so all of them overlap), then makes its
# edits and prints each one once it is saved.
WRITER = r"""
import sys, time
from pathlib import Path
from ted_sglang.bank import BankConflict, ExperienceBank

path, who, edits, mode, go = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
while not Path(go).exists():
    time.sleep(0.005)
for n in range(edits):
    text = f"Writer {who} made its edit number {n}."
    doc = {"operations": [{"op": "add", "text": text}]}
    if mode == "update_file":
        ExperienceBank.update_file(path, lambda bank: bank.apply(doc))
    else:  # the plain cycle: a conflict is refused (and reported), never lost
        bank = ExperienceBank.load(path)
        bank.apply(doc)
        try:
            bank.save(path)
        except BankConflict:
            print("conflict", flush=True)
            continue
    print(text, flush=True)
"""

# A writer that is killed after its temp file is complete and before the rename.
STUCK_WRITER = r"""
import os, sys, time
from ted_sglang.bank import ExperienceBank

def stuck(src, dst):
    print("temp file written", flush=True)
    time.sleep(600)

os.replace = stuck
doc = {"operations": [{"op": "add", "text": f"An edit by process {os.getpid()}."}]}
ExperienceBank.update_file(sys.argv[1], lambda bank: bank.apply(doc))
"""


@contextmanager
def stuck_writer(path: Path) -> Iterator[subprocess.Popen]:
    """A :data:`STUCK_WRITER` on ``path``, its temp file written; killed on leaving."""
    proc = subprocess.Popen(
        [sys.executable, "-c", STUCK_WRITER, str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline() == "temp file written\n", proc.stderr.read()
        yield proc
    finally:
        proc.kill()
        proc.wait()


def start_bank(path: Path) -> None:
    bank = ExperienceBank(student_model="tiny")
    bank.apply({"operations": [{"op": "add", "text": "The first entry of the bank."}]})
    bank.save(path)


def run_writers(path: Path, mode: str, processes: int, edits: int) -> list[str]:
    """Start the writers together; returns every line they printed."""
    go = path.with_name("go")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), str(p), str(edits), mode, str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for p in range(processes)
    ]
    time.sleep(0.5)  # let them import
    go.touch()
    lines = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
        lines += out.splitlines()
    return lines


def texts_in(path: Path) -> set[str]:
    return {e.text for e in ExperienceBank.load(path).entries}


def test_update_file_from_many_processes_loses_no_edit(tmp_path: Path) -> None:
    path = tmp_path / "bank.json"
    start_bank(path)
    reported = run_writers(path, "update_file", processes=4, edits=25)
    assert len(reported) == 100
    bank = ExperienceBank.load(path)
    assert set(reported) <= {e.text for e in bank.entries}
    assert len(bank) == 101 and bank.version == 101
    assert ExperienceBank.load(path.with_name("bank.json.bak")).version == 100
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "bank.json", "bank.json.bak", "bank.json.lock", "go"
    ]  # fmt: skip


def test_load_apply_save_never_loses_a_reported_edit(tmp_path: Path) -> None:
    """The plain cycle without update_file: the compare-and-swap refuses the saves that
    would overwrite another writer's edit (about half lost them before)."""
    path = tmp_path / "bank.json"
    start_bank(path)
    lines = run_writers(path, "plain", processes=4, edits=25)
    reported = [line for line in lines if line != "conflict"]
    texts = texts_in(path)
    assert set(reported) <= texts, f"{len(set(reported) - texts)} reported edits vanished"
    assert len(texts) == len(reported) + 1  # and nothing unreported was saved


def test_threads_of_one_process_lose_no_edit(tmp_path: Path) -> None:
    path = tmp_path / "bank.json"
    start_bank(path)

    def writer(who: int) -> None:
        for n in range(10):
            doc = {"operations": [{"op": "add", "text": f"Thread {who} made edit {n}."}]}
            ExperienceBank.update_file(path, lambda bank, doc=doc: bank.apply(doc))

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(texts_in(path)) == 41


def leftovers(directory: Path) -> list[str]:
    return sorted(
        p.name for p in directory.iterdir()
        if p.name not in ("bank.json", "bank.json.bak", "bank.json.lock")
    )  # fmt: skip


def test_killed_writers_leave_at_most_one_temp_file(tmp_path: Path) -> None:
    path = tmp_path / "bank.json"
    start_bank(path)
    before = path.read_bytes()
    for _ in range(3):
        with stuck_writer(path) as proc:
            os.kill(proc.pid, signal.SIGKILL)  # it holds the lock: the kernel frees it
            proc.wait(timeout=30)
        (stale,) = leftovers(tmp_path)
        assert stale.startswith(".bank.json.") and stale.endswith(".ted-tmp")
        assert path.read_bytes() == before
    ExperienceBank.update_file(
        path, lambda bank: bank.apply({"operations": [{"op": "add", "text": "A last edit."}]})
    )
    assert leftovers(tmp_path) == []
    assert "A last edit." in texts_in(path)


def test_a_temp_file_of_another_file_is_not_touched(tmp_path: Path) -> None:
    path = tmp_path / "bank.json"
    start_bank(path)
    others = [".bank.json.log.jsonl.0123456789abcdef.ted-tmp", ".bank.json.usage.json.tmp"]
    for name in others:
        (tmp_path / name).write_text("someone else's")
    (tmp_path / ".bank.json.0123456789abcdef.ted-tmp").write_text("stale")
    ExperienceBank.load(path).save(path)
    assert leftovers(tmp_path) == sorted(others)


def test_a_writer_holding_the_lock_makes_others_wait_then_give_up(tmp_path: Path) -> None:
    path = tmp_path / "bank.json"
    start_bank(path)
    with stuck_writer(path):
        bank = ExperienceBank.load(path)
        bank.apply({"operations": [{"op": "add", "text": "Waits for the lock."}]})
        started = time.monotonic()
        with pytest.raises(BankLockTimeout, match="held its lock") as info:
            bank.save(path, lock_timeout_s=0.3)
        assert 0.3 <= time.monotonic() - started < 5
        assert str(path) in str(info.value) and isinstance(info.value, BankFileError)
    bank.save(path)  # the kernel released the dead holder's lock
    assert "Waits for the lock." in texts_in(path)


def test_save_refuses_when_the_file_changed_since_it_was_read(tmp_path: Path) -> None:
    path = tmp_path / "bank.json"
    start_bank(path)
    first, second = ExperienceBank.load(path), ExperienceBank.load(path)
    first.apply({"operations": [{"op": "add", "text": "Saved by the first writer."}]})
    first.save(path)
    second.apply({"operations": [{"op": "add", "text": "Saved by the second writer."}]})
    with pytest.raises(BankConflict) as info:
        second.save(path)
    assert (info.value.expected_version, info.value.found_version) == (1, 2)
    message = str(info.value)
    assert str(path) in message and "version 1" in message and "version 2" in message
    assert texts_in(path) == {"The first entry of the bank.", "Saved by the first writer."}
    # Usage only (same version, other bytes) is a change too.
    third = ExperienceBank.load(path)
    first.record_shown(first.ids, step=2)
    first.save(path)
    third.record_shown(third.ids, step=2)
    with pytest.raises(BankConflict, match="still at version 2"):
        third.save(path)
    # The writer that saved last goes on saving.
    first.record_shown(first.ids, step=3)
    first.save(path)
    assert ExperienceBank.load(path)["E1"].usage.shown == 2


def test_overwrites_that_lose_nothing_are_allowed(tmp_path: Path) -> None:
    path = tmp_path / "bank.json"
    start_bank(path)
    # A bank that never read the file replaces it (the old one is the backup) ...
    ExperienceBank(student_model="other").save(path)
    assert ExperienceBank.load(path).meta.student_model == "other"
    assert len(ExperienceBank.load(path.with_name("bank.json.bak"))) == 1
    # ... unless new_file=True.
    with pytest.raises(BankFileError, match="already exists") as info:
        ExperienceBank().save(path, new_file=True)
    assert str(path) in str(info.value)
    # A damaged file or a deleted one holds nothing to lose: the save repairs it.
    bank = ExperienceBank.load(path)
    path.write_bytes(b"garbage")
    bank.save(path)
    assert ExperienceBank.load(path).meta.student_model == "other"
    path.unlink()
    bank.save(path)
    assert ExperienceBank.load(path).meta.student_model == "other"


def test_update_file_writes_only_changes_and_keeps_the_file_on_error(tmp_path: Path) -> None:
    path = tmp_path / "bank.json"
    start_bank(path)
    before = path.stat().st_mtime_ns, path.read_bytes()
    assert ExperienceBank.update_file(path, lambda bank: bank.version) == 1
    with pytest.raises(ZeroDivisionError):
        ExperienceBank.update_file(path, lambda bank: bank.record_shown(bank.ids, 1) / 0)
    assert (path.stat().st_mtime_ns, path.read_bytes()) == before
    with pytest.raises(BankFileError, match="no such file"):
        ExperienceBank.update_file(tmp_path / "missing.json", lambda bank: None)


def test_serve_usage_apply_waits_for_a_writer_holding_the_lock(tmp_path: Path) -> None:
    """``serve-usage --apply`` while another writer (e.g. distill) is mid-cycle: both
    changes end up in the file."""
    from ted_sglang.bank.locking import bank_lock
    from ted_sglang.cli import main

    path = tmp_path / "bank.json"
    start_bank(path)
    usage = {
        "format": "ted-sglang-serve-usage", "format_version": 1, "requests_by_version": {},
        "feedback": {"correct": 0, "wrong": 0},
        "entries": {"E1": {"shown": 7, "correct": 0, "wrong": 0, "helpful": 0, "harmful": 0}},
    }  # fmt: skip
    (tmp_path / "bank.json.usage.json").write_text(json.dumps(usage))
    reading = threading.Event()

    def other_writer() -> None:
        with bank_lock(path):
            bank = ExperienceBank.load(path)
            reading.set()
            time.sleep(0.3)
            bank.apply({"operations": [{"op": "add", "text": "Added by the other writer."}]})
            bank.save(path)

    thread = threading.Thread(target=other_writer)
    thread.start()
    reading.wait()
    assert main(["serve-usage", "--bank", str(path), "--apply"]) == 0
    thread.join()
    bank = ExperienceBank.load(path)
    assert "Added by the other writer." in {e.text for e in bank.entries}
    assert bank["E1"].usage.shown == 7


def test_a_run_lock_admits_one_run_and_leaves_writes_to_others(tmp_path: Path) -> None:
    from ted_sglang.bank.locking import run_lock

    path = tmp_path / "bank.json"
    start_bank(path)
    doc = {"operations": [{"op": "add", "text": "Written during the run."}]}
    with run_lock(path, "distill"):
        refused = pytest.raises(BankFileError, match="another distill run is using it")
        with refused as info, run_lock(path, "distill"):
            pass
        assert str(path) in str(info.value)
        with run_lock(path, "other"):  # another kind of run is another lock
            ExperienceBank.update_file(path, lambda bank: bank.apply(doc))  # writers write
    with run_lock(path, "distill"):  # released on leaving
        pass
    assert "Written during the run." in texts_in(path)


def test_a_symlinked_bank_stays_a_link_and_shares_its_targets_lock(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "bank.json"
    link = tmp_path / "bank.json"
    start_bank(target)
    link.symlink_to(target)
    via_link, via_target = ExperienceBank.load(link), ExperienceBank.load(target)
    via_target.apply({"operations": [{"op": "add", "text": "Saved through the target."}]})
    via_target.save(target)
    via_link.apply({"operations": [{"op": "add", "text": "Saved through the link."}]})
    with pytest.raises(BankConflict) as conflict:  # one file, one history, whichever name
        via_link.save(link)
    assert conflict.value.path == link  # errors name the path given
    with pytest.raises(BankFileError, match="already exists") as refused:
        ExperienceBank().save(link, new_file=True)
    assert refused.value.path == link
    doc = {"operations": [{"op": "add", "text": "Saved through the link."}]}
    ExperienceBank.update_file(link, lambda bank: bank.apply(doc))
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert texts_in(target) >= {"Saved through the target.", "Saved through the link."}
    assert (tmp_path / "real" / "bank.json.bak").exists() and not Path(f"{link}.bak").exists()
    assert not Path(f"{link}.lock").exists() and Path(f"{target}.lock").exists()
