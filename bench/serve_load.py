"""What does ``ted-sglang serve`` add to a request, under load and alone?

Setup: an SGLang-API engine (``--endpoint URL``, or the reference engine launched on
``--model``: ``tiny``, a random 2-layer model written to a temporary directory, or
``smollm2-135m``), a bank of ``--entries`` experiences (fixed seed), and ``serve`` in
its own process in front of the engine, as a user runs it.

* concurrent: ``--clients`` clients for ``--duration`` seconds.  Each client sends a
  chat completion through serve, then the very same prompt (the text serve builds:
  the bank's system turn, the question, the open assistant turn) with the same
  sampling parameters straight to the engine's ``/generate``; the order flips every
  round, so both paths meet the same engine load.  Short outputs (``--max-tokens``,
  greedy) keep engine compute from swamping the difference.
* serial: ``--serial-requests`` such pairs from one client, no queueing.

Latency is request sent → whole response read, per path; overhead = serve − direct
at each percentile, and the median of the differences within pairs.  The CPU time the
serve process spends per request (``/proc``, Linux) measures its cost without the
noise of queueing.  Every failed request counts as an error (the run fails if there
is any).  The cached/prompt token ratio comes from the ``usage`` serve reports.
Figures are printed and saved as JSON in ``--out``.  From the repository root:
``python bench/serve_load.py [--endpoint URL | --model tiny] [--clients 64 --duration 60]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

from _report import machine, save_json

if TYPE_CHECKING:
    from ted_sglang.engine.launcher import LaunchedEngine

ADMIN_TOKEN = "bench-admin"
_ADVICE = (
    "check units count items twice read the question again draw the figure label every "
    "side write the equation first compare the result with the question subtract the "
    "smaller number from the larger state the final answer clearly in the asked format"
)
WORDS = _ADVICE.split()
SUBJECTS = ("balls", "apples", "triangles", "trains", "coins", "squares", "books", "birds")


def make_bank(path: Path, num_entries: int, rng: random.Random) -> None:
    from ted_sglang.bank import ExperienceBank

    bank = ExperienceBank(student_model="bench")
    for _ in range(num_entries):
        words = [rng.choice(WORDS) for _ in range(rng.randint(10, 18))]
        text = " ".join(words).capitalize() + "."
        report = bank.apply({"operations": [{"op": "add", "text": text}]})
        assert report.error is None, report
    bank.save(path)


def make_questions(num: int, rng: random.Random) -> list[str]:
    return [
        f"There are {rng.randint(2, 99)} {rng.choice(SUBJECTS)} and {rng.randint(2, 99)} "
        f"{rng.choice(SUBJECTS)}. How many are there in all?"
        for _ in range(num)
    ]


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100])."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def summary_ms(latencies: list[float]) -> dict[str, float]:
    if not latencies:
        return {"count": 0}
    ms = [x * 1000 for x in latencies]
    return {
        "count": len(ms),
        "mean_ms": sum(ms) / len(ms),
        "p50_ms": percentile(ms, 50),
        "p90_ms": percentile(ms, 90),
        "p99_ms": percentile(ms, 99),
        "max_ms": max(ms),
    }


class Paths:
    """Sends one question through serve, and the same prompt to the engine directly."""

    def __init__(self, serve_url: str, engine_url: str, bank: dict, max_tokens: int) -> None:
        import httpx

        from ted_sglang.serve.chat_format import ChatFormat
        from ted_sglang.serve.openai_protocol import ChatCompletionRequest
        from ted_sglang.serve.sampling import sampling_params

        self.serve_url, self.engine_url = serve_url, engine_url
        self.chat = ChatFormat(bank["chat_template"])
        self.system_prompt, self.prefix = bank["system_prompt"], bank["prefix"]
        self.max_tokens = max_tokens
        self._request = ChatCompletionRequest
        self._sampling = sampling_params
        limits = httpx.Limits(max_connections=1024, max_keepalive_connections=1024)
        self.client = httpx.AsyncClient(timeout=120.0, limits=limits)
        self.errors: list[str] = []
        self.latency: dict[str, list[float]] = {"serve": [], "direct": [], "paired_difference": []}
        self.tokens = {"serve_prompt": 0, "serve_cached": 0, "direct_prompt": 0, "direct_cached": 0}

    def bodies(self, question: str) -> tuple[dict, dict]:
        messages = [{"role": "user", "content": question}]
        body = {
            "model": "bench",
            "messages": messages,
            "max_tokens": self.max_tokens,
            "temperature": 0,
        }
        req = self._request.model_validate(body)
        prompt = self.chat.prompt(req.messages, self.system_prompt, self.prefix)
        direct = {"text": prompt.text, "sampling_params": self._sampling(req, self.chat.stop)}
        return body, direct

    async def serve(self, body: dict) -> float | None:
        """Latency of one chat completion through serve (None if it failed)."""
        start = time.perf_counter()
        try:
            response = await self.client.post(self.serve_url + "/v1/chat/completions", json=body)
            data = response.json()
        except Exception as exc:  # a failed request is a result here
            self.errors.append(f"serve: {exc!r}")
            return None
        elapsed = time.perf_counter() - start
        if response.status_code != 200:
            self.errors.append(f"serve {response.status_code}: {str(data)[:300]}")
            return None
        usage = data["usage"]
        self.tokens["serve_prompt"] += usage["prompt_tokens"]
        self.tokens["serve_cached"] += usage["prompt_tokens_details"]["cached_tokens"]
        return elapsed

    async def direct(self, body: dict) -> float | None:
        """Latency of the same prompt sent to the engine's /generate (None if it failed)."""
        start = time.perf_counter()
        try:
            response = await self.client.post(self.engine_url + "/generate", json=body)
            data = response.json()
        except Exception as exc:
            self.errors.append(f"direct: {exc!r}")
            return None
        elapsed = time.perf_counter() - start
        if response.status_code != 200:
            self.errors.append(f"direct {response.status_code}: {str(data)[:300]}")
            return None
        self.tokens["direct_prompt"] += data["meta_info"]["prompt_tokens"]
        self.tokens["direct_cached"] += data["meta_info"]["cached_tokens"]
        return elapsed

    async def pair(self, question: str, serve_first: bool) -> None:
        chat_body, direct_body = self.bodies(question)
        if serve_first:
            via_serve = await self.serve(chat_body)
            direct = await self.direct(direct_body)
        else:
            direct = await self.direct(direct_body)
            via_serve = await self.serve(chat_body)
        if via_serve is not None:
            self.latency["serve"].append(via_serve)
        if direct is not None:
            self.latency["direct"].append(direct)
        if via_serve is not None and direct is not None:
            self.latency["paired_difference"].append(via_serve - direct)

    def report(self) -> dict[str, Any]:
        serve, direct = summary_ms(self.latency["serve"]), summary_ms(self.latency["direct"])
        overhead = {
            k: serve[k] - direct[k]
            for k in ("mean_ms", "p50_ms", "p90_ms", "p99_ms")
            if k in serve and k in direct
        }
        paired = [x * 1000 for x in self.latency["paired_difference"]]
        t = self.tokens
        return {
            "serve": serve,
            "direct": direct,
            "overhead_ms": overhead,
            "paired_difference_p50_ms": percentile(paired, 50) if paired else None,
            "serve_cached_over_prompt": t["serve_cached"] / max(t["serve_prompt"], 1),
            "direct_cached_over_prompt": t["direct_cached"] / max(t["direct_prompt"], 1),
            "errors": len(self.errors),
            "error_samples": self.errors[:5],
        }


async def concurrent_phase(
    paths: Paths, questions: list[str], clients: int, duration: float, seed: int
) -> dict[str, Any]:
    deadline = time.monotonic() + duration

    async def client(number: int) -> int:
        rng = random.Random(seed * 1000 + number)
        rounds = 0
        while time.monotonic() < deadline:
            await paths.pair(rng.choice(questions), serve_first=(rounds + number) % 2 == 0)
            rounds += 1
        return rounds

    start = time.perf_counter()
    rounds = await asyncio.gather(*(client(i) for i in range(clients)))
    wall = time.perf_counter() - start
    result = paths.report()
    result.update(
        clients=clients, wall_s=wall, pairs=sum(rounds), requests_per_s=2 * sum(rounds) / wall
    )
    return result


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of process ``pid`` (Linux /proc; None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float | None:
    """Resident memory of process ``pid`` in MiB (Linux /proc; None elsewhere)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return None


class CpuMeter:
    """CPU time the serve process spends per request, less what it spends idle (its
    timers and file watcher), measured over a phase."""

    def __init__(self, pid: int, idle_per_s: float) -> None:
        self.pid, self.idle_per_s = pid, idle_per_s
        self.cpu, self.wall = cpu_seconds(pid), time.perf_counter()

    def per_request_ms(self, paths: Paths) -> float | None:
        now, wall = cpu_seconds(self.pid), time.perf_counter() - self.wall
        if self.cpu is None or now is None or not paths.latency["serve"]:
            return None
        busy = now - self.cpu - self.idle_per_s * wall
        return busy / len(paths.latency["serve"]) * 1000


async def idle_cpu_per_s(pid: int, seconds: float = 3.0) -> float:
    before = cpu_seconds(pid)
    await asyncio.sleep(seconds)
    after = cpu_seconds(pid)
    return 0.0 if before is None or after is None else (after - before) / seconds


async def run_load(
    args: argparse.Namespace, serve_url: str, engine_url: str, serve_pid: int
) -> dict[str, Any]:
    import httpx

    bank = httpx.get(
        serve_url + "/admin/bank", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    ).json()
    questions = make_questions(args.questions, random.Random(args.seed))
    warm = Paths(serve_url, engine_url, bank, args.max_tokens)
    for question in questions[:4]:  # caches the bank prefix; not measured
        await warm.pair(question, serve_first=True)
    serial = Paths(serve_url, engine_url, bank, args.max_tokens)
    rng = random.Random(args.seed + 1)
    idle = await idle_cpu_per_s(serve_pid)
    rss = {"after_warmup": rss_mib(serve_pid)}
    meter = CpuMeter(serve_pid, idle)
    for i in range(args.serial_requests):
        await serial.pair(rng.choice(questions), serve_first=i % 2 == 0)
    serial_report = serial.report()
    serial_report["serve_cpu_ms_per_request"] = meter.per_request_ms(serial)
    rss["after_serial"] = rss_mib(serve_pid)
    loaded = Paths(serve_url, engine_url, bank, args.max_tokens)
    meter = CpuMeter(serve_pid, idle)
    concurrent = await concurrent_phase(loaded, questions, args.clients, args.duration, args.seed)
    concurrent["serve_cpu_ms_per_request"] = meter.per_request_ms(loaded)
    rss["after_concurrent"] = rss_mib(serve_pid)
    for paths in (warm, serial, loaded):
        await paths.client.aclose()
    return {
        "bank": {
            "version": bank["version"],
            "entries": bank["entries"],
            "prefix_chars": len(bank["prefix"]),
        },
        "warmup_errors": warm.errors[:5],
        "serve_idle_cpu_ms_per_s": idle * 1000,
        "serve_rss_mib": rss,
        "serial": serial_report,
        "concurrent": concurrent,
    }


def start_serve(bank: Path, engine_url: str, log: Path) -> LaunchedEngine:
    """``ted-sglang serve`` on ``bank`` in front of ``engine_url``, up and answering."""
    from ted_sglang.engine.launcher import free_port, start_server

    env = {**os.environ, "TED_ADMIN_TOKEN": ADMIN_TOKEN}
    env.pop("TED_API_KEY", None)
    port = free_port()
    cmd = [
        sys.executable, "-m", "ted_sglang.cli", "serve", "--bank", str(bank),
        "--endpoint", engine_url, "--port", str(port), "--log-level", "warning",
        "--served-model-name", "bench",
    ]  # fmt: skip
    return start_server(cmd, f"http://127.0.0.1:{port}", "serve", log, timeout=180, env=env)


def launch_model(model: str, workdir: Path) -> Any:
    from ted_sglang.engine.launcher import launch_engine
    from ted_sglang.runtime import SERVER_ARGS

    if model == "tiny":
        from ted_sglang.engine.tiny_model import write_tiny_model

        model = str(write_tiny_model(workdir / "tiny-model", seed=0))
    return launch_engine(model, extra_args=SERVER_ARGS, log_path=workdir / "engine.log")


def print_report(result: dict[str, Any]) -> None:
    for phase in ("serial", "concurrent"):
        r = result[phase]
        print(f"{phase}: {r['serve'].get('count', 0)} requests per path, errors {r['errors']}")
        for path in ("serve", "direct"):
            s = r[path]
            if s.get("count"):
                print(
                    f"  {path:6s} p50 {s['p50_ms']:8.2f} ms  p90 {s['p90_ms']:8.2f} ms  "
                    f"p99 {s['p99_ms']:8.2f} ms  mean {s['mean_ms']:8.2f} ms"
                )
        o = r["overhead_ms"]
        if o:
            print(
                f"  overhead (serve - direct): p50 {o['p50_ms']:+.2f} ms  "
                f"p99 {o['p99_ms']:+.2f} ms  mean {o['mean_ms']:+.2f} ms"
            )
        if r["paired_difference_p50_ms"] is not None:
            print(
                f"  paired difference (same client, back to back): p50 "
                f"{r['paired_difference_p50_ms']:+.2f} ms"
            )
        if r["serve_cpu_ms_per_request"] is not None:
            print(
                f"  serve CPU time per request (idle use taken out): "
                f"{r['serve_cpu_ms_per_request']:.2f} ms"
            )
        print(
            f"  cached/prompt tokens via serve: {r['serve_cached_over_prompt']:.3f} "
            f"(direct {r['direct_cached_over_prompt']:.3f})"
        )
    rss = result["serve_rss_mib"]
    if None not in rss.values():
        print(
            "serve resident memory: "
            + " -> ".join(f"{v:.1f} MiB ({k.replace('_', ' ')})" for k, v in rss.items())
        )
    c = result["concurrent"]
    print(
        f"concurrent throughput: {c['requests_per_s']:.1f} requests/s "
        f"({c['clients']} clients, {c['wall_s']:.1f} s)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--endpoint", default=None, help="engine URL (default: launch one)")
    parser.add_argument("--model", default="tiny", help="model to launch: tiny | smollm2-135m")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    parser.add_argument("--serial-requests", type=int, default=200)
    parser.add_argument("--max-tokens", type=int, default=2)
    parser.add_argument("--entries", type=int, default=20, help="experiences in the bank")
    parser.add_argument("--questions", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args(argv)

    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="serve-load-")))
        engine_url = args.endpoint
        if engine_url is None:
            print(f"launching the reference engine on {args.model} ...", file=sys.stderr)
            engine = launch_model(args.model, workdir)
            stack.callback(engine.close)
            engine_url = engine.url
        bank = workdir / "bank.json"
        make_bank(bank, args.entries, random.Random(args.seed))
        serve = stack.enter_context(start_serve(bank, engine_url, workdir / "serve.log"))
        load = asyncio.run(run_load(args, serve.url, engine_url, serve.process.pid))

    errors = load["serial"]["errors"] + load["concurrent"]["errors"] + len(load["warmup_errors"])
    result = {
        "question": "latency serve adds over calling the engine directly, same prompts",
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "engine_url": engine_url if args.endpoint else f"launched ({args.model})",
        "machine": machine(),
        **load,
        "errors": errors,
        "goal": "p50 overhead under 5 ms",
    }
    print_report(result)
    print(f"saved {save_json(result, args.out / 'serve_load.json')}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
