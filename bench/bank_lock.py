"""What one-writer-at-a-time costs on a bank file.

Question: how long does a bank write take with its lock and compare-and-swap
(:meth:`ExperienceBank.save`, :meth:`ExperienceBank.update_file`), against the bare
atomic write it wraps, and how do writes behave when several processes contend for
one file?

* A bank of ``--entries`` entries built over ``--versions`` versions (adds, then
  updates), with usage statistics, saved once.
* Uncontended, in this process: taking and releasing the lock alone; one bare atomic
  write of the bank's bytes (temp file, fsync, rename); a save as it was before the
  lock (check the file it replaces, write the backup, write the file: no lock, no
  compare-and-swap, no validation of the new content); ``save`` (validation, lock,
  compare-and-swap read, backup, write); and ``update_file`` (lock, load, change,
  save).  Each timed ``--repeat`` times.
* Contended: ``--processes`` processes (and, for comparison, one) started together
  each run ``--updates`` ``update_file`` calls that add one entry, on a copy of the
  same starting bank; the latency of each call (lock wait included) and the
  throughput of all; every edit is checked to be in the file at the end.

Figures are printed with units and saved as JSON in ``--out``.  Run from the
repository root: ``python bench/bank_lock.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _report import machine, save_json

from ted_sglang.bank import ExperienceBank
from ted_sglang.bank.locking import bank_lock
from ted_sglang.bank.storage import backup_path, write_atomic

WRITER = r"""
import json, sys, time
from pathlib import Path
from ted_sglang.bank import ExperienceBank

path, who, updates, go = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
while not go.exists():
    time.sleep(0.001)
times = []
for n in range(updates):
    doc = {"operations": [{"op": "add", "text": f"Process {who} adds its entry {n}."}]}
    start = time.perf_counter()
    ExperienceBank.update_file(path, lambda bank: bank.apply(doc))
    times.append(time.perf_counter() - start)
print(json.dumps(times))
"""


def build_bank(path: Path, entries: int, versions: int) -> ExperienceBank:
    bank = ExperienceBank(student_model="bench")
    for n in range(entries):
        bank.apply({"operations": [{"op": "add", "text": f"Experience number {n}: check it."}]})
    for n in range(max(versions - entries, 0)):
        target = bank.ids[n % len(bank.ids)]
        text = f"Experience {target} as rewritten at step {n}."
        bank.apply({"operations": [{"op": "update", "id": target, "text": text}]})
    bank.record_shown(bank.ids, step=versions)
    bank.save(path)
    return bank


def timed(repeat: int, call: Any) -> dict[str, float]:
    """Milliseconds per call: median and 95th percentile."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000)
    return _summary(times)


def _summary(ms: list[float]) -> dict[str, float]:
    ordered = sorted(ms)
    return {
        "median_ms": round(statistics.median(ordered), 3),
        "p95_ms": round(ordered[int(0.95 * (len(ordered) - 1))], 3),
        "calls": len(ordered),
    }


def uncontended(path: Path, repeat: int) -> dict[str, Any]:
    bank = ExperienceBank.load(path)
    payload = path.read_bytes()
    scratch = path.with_name("scratch.json")

    def lock_only() -> None:
        with bank_lock(path):
            pass

    def touch(b: ExperienceBank) -> None:
        b.record_shown(b.ids[:1], step=1)

    def save() -> None:
        touch(bank)
        bank.save(path)

    before = path.with_name("before.json")  # its own file: the old way takes no lock
    before.write_bytes(payload)

    def save_as_before() -> None:
        touch(bank)
        previous = before.read_bytes()
        ExperienceBank.from_dict(json.loads(previous))
        write_atomic(backup_path(before), previous)
        text = json.dumps(bank.to_dict(), ensure_ascii=False, indent=1) + "\n"
        write_atomic(before, text.encode("utf-8"))

    return {
        "lock_only": timed(repeat, lock_only),
        "bare_atomic_write": timed(repeat, lambda: write_atomic(scratch, payload)),
        "save_as_before": timed(repeat, save_as_before),
        "save": timed(repeat, save),
        "update_file": timed(repeat, lambda: ExperienceBank.update_file(path, touch)),
    }


def contended(path: Path, processes: int, updates: int) -> dict[str, Any]:
    before = len(ExperienceBank.load(path))
    go = path.with_name("go")
    go.unlink(missing_ok=True)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), f"{processes}.{p}", str(updates), str(go)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for p in range(processes)
    ]
    time.sleep(1.0)  # imports
    start = time.perf_counter()
    go.touch()
    times: list[float] = []
    for proc in procs:
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0
        times += [t * 1000 for t in json.loads(out)]
    wall = time.perf_counter() - start
    after = len(ExperienceBank.load(path))
    return {
        "processes": processes,
        "updates_each": updates,
        "latency": _summary(times),
        "updates_per_s": round(processes * updates / wall, 1),
        "edits_in_file": after - before,
        "edits_made": processes * updates,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=64)
    parser.add_argument("--versions", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--updates", type=int, default=50)
    parser.add_argument("--out", type=Path, default=Path("bench/results/bank_lock.json"))
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bank.json"
        build_bank(path, args.entries, args.versions)
        size = path.stat().st_size
        start = path.read_bytes()
        alone = uncontended(path, args.repeat)
        runs = []
        for processes in (1, args.processes):  # each from the same starting bank
            fresh = Path(tmp) / f"contended-{processes}.json"
            fresh.write_bytes(start)
            runs.append(contended(fresh, processes, args.updates))
        solo, together = runs
    result = {
        "bank": {"entries": args.entries, "versions": args.versions, "file_bytes": size},
        "uncontended": alone,
        "one_process": solo,
        "contended": together,
        "machine": machine(load_before),
    }
    print(f"bank: {args.entries} entries, {args.versions} versions, {size / 1024:.0f} KiB")
    for name, figures in alone.items():
        print(f"{name:>18}: {figures['median_ms']:8.3f} ms median, {figures['p95_ms']:8.3f} ms p95")
    for name, run in (("1 process", solo), (f"{args.processes} processes", together)):
        lat = run["latency"]
        print(
            f"update_file, {name}: {lat['median_ms']:.1f} ms median, {lat['p95_ms']:.1f} ms "
            f"p95, {run['updates_per_s']} updates/s, {run['edits_in_file']} of "
            f"{run['edits_made']} edits in the file"
        )
    print(f"saved {save_json(result, args.out)}")


if __name__ == "__main__":
    main()
