"""Load test of ``alignspec serve``: many concurrent streaming clients with mixed methods.

It starts its own server on 127.0.0.1 (a free port; no other host is ever contacted), then:

1. sends each (prompt, method) pair once, alone: the single-request outputs;
2. sends ``--requests`` streamed chat requests, ``--concurrency`` at a time, cycling through the
   prompts and ``--methods`` (ar, pld, aasd by default);

and checks that every request completed, that every lossless response equals its single-request
output, that the server's RSS after all requests is within 10% of its RSS after the first 50,
and that ``/metrics`` counters grew by exactly the responses' usage and speculation figures.
It prints requests/s, p50/p95 time to first token and tokens/s per method, and exits 1 when a
check fails. Everything is bounded: ``--requests`` in count, ``--deadline`` in time. Usage::

    python benchmarks/load_test.py --requests 500 --concurrency 50
    python benchmarks/load_test.py --requests 20 --concurrency 5 --max-tokens 8   # smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import psutil

MODEL = "SmolLM2-135M-Instruct"
LOSSLESS = {"ar", "pld", "pld-tree", "aasd-exact", "aasd-exact-noalign"}
PROMPTS = [
    "Count from one to ten.",
    "What is the capital of Italy?",
    "Name three animals that live in the sea.",
    "Say good morning in Spanish.",
    "What colour is the sky on a clear day?",
    "Repeat after me: the quick brown fox jumps over the lazy dog.",
    "List the days of the week.",
    "What is 7 times 6?",
]
RSS_CHECKPOINT = 50


@dataclass
class Result:
    prompt: str
    method: str
    text: str = ""
    ttft: float = float("nan")
    latency: float = 0.0
    usage: dict = field(default_factory=dict)
    block: dict = field(default_factory=dict)
    error: str | None = None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args: argparse.Namespace, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "alignspec", "serve", "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--max-queue", str(max(64, args.concurrency)), "--device", "cpu"]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=5):
                return proc, url
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("the server did not come up within 300 s")


def scrape(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url + "/metrics", timeout=30) as resp:
        text = resp.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def total(metrics: dict[str, float], name: str) -> float:
    pattern = re.compile(re.escape(name) + r"(\{.*\})?$")
    return sum(v for k, v in metrics.items() if pattern.match(k))


async def one(client, prompt: str, method: str, max_tokens: int) -> Result:
    res = Result(prompt, method)
    start = time.perf_counter()
    try:
        stream = await client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": prompt}],
            max_tokens=max_tokens,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"alignspec": {"method": method}},
        )
        pieces = []
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                if not pieces:
                    res.ttft = time.perf_counter() - start
                pieces.append(chunk.choices[0].delta.content)
            if chunk.usage is not None:
                res.usage = chunk.usage.model_dump()
                res.block = chunk.model_extra.get("alignspec", {})
        res.text = "".join(pieces)
    except Exception as exc:  # recorded and reported: a load test must see every failure
        res.error = f"{type(exc).__name__}: {exc}"
    res.latency = time.perf_counter() - start
    return res


async def load(args: argparse.Namespace, url: str, pid: int) -> int:
    import openai

    client = openai.AsyncOpenAI(
        base_url=url + "/v1", api_key="unused", max_retries=0, timeout=args.deadline
    )
    methods = args.methods.split(",")
    prompts = PROMPTS[: args.prompts]
    jobs = [(prompts[i % len(prompts)], methods[i % len(methods)]) for i in range(args.requests)]

    print(f"single requests: {len(set(jobs))} (prompt, method) pairs ...", flush=True)
    solo = {}
    for prompt, method in sorted(set(jobs)):
        r = await one(client, prompt, method, args.max_tokens)
        if r.error:
            print(f"FAIL single request {method}: {r.error}")
            return 1
        solo[prompt, method] = r.text

    server = psutil.Process(pid)
    rss: dict[str, int] = {}
    results: list[Result] = []
    gate = asyncio.Semaphore(args.concurrency)

    async def limited(prompt: str, method: str) -> None:
        async with gate:
            res = await one(client, prompt, method, args.max_tokens)
        results.append(res)
        if len(results) == min(RSS_CHECKPOINT, len(jobs)):
            rss["first"] = server.memory_info().rss

    print(f"load: {len(jobs)} streamed requests, {args.concurrency} at a time ...", flush=True)
    before = scrape(url)
    t0 = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(limited(p, m) for p, m in jobs)), timeout=args.deadline)
    wall = time.perf_counter() - t0
    rss["last"] = server.memory_info().rss
    after = scrape(url)
    await client.close()
    return report(args, results, solo, rss, before, after, wall)


def report(args, results, solo, rss, before, after, wall) -> int:
    failures = []
    errors = [r for r in results if r.error]
    if errors:
        failures.append(f"{len(errors)} requests failed, e.g. {errors[0].error}")
    for r in results:
        if not r.error and r.method in LOSSLESS and r.text != solo[r.prompt, r.method]:
            failures.append(f"{r.method} on {r.prompt!r} differs from its single-request output")

    def grew(name: str) -> float:
        return total(after, name) - total(before, name)

    ok = [r for r in results if not r.error]
    sums = {
        "alignspec:prompt_tokens_total": sum(r.usage["prompt_tokens"] for r in ok),
        "alignspec:generation_tokens_total": sum(r.usage["completion_tokens"] for r in ok),
        "alignspec:spec_decode_num_drafts_total": sum(r.block["num_drafts"] for r in ok),
        "alignspec:spec_decode_num_draft_tokens_total": sum(
            r.block["num_draft_tokens"] for r in ok
        ),
        "alignspec:spec_decode_num_accepted_tokens_total": sum(
            r.block["num_accepted_tokens"] for r in ok
        ),
        "alignspec:request_success_total": len(ok),
    }
    for name, expected in sums.items():
        if grew(name) != expected:
            failures.append(f"{name} grew by {grew(name):g}, the responses add up to {expected}")

    growth = rss["last"] / rss["first"] - 1
    checked = len(results) > RSS_CHECKPOINT
    if checked and growth > 0.10:
        failures.append(f"RSS grew {growth:.1%} from request {RSS_CHECKPOINT} to the last")

    print(f"\n{len(results)} requests in {wall:.1f} s, concurrency {args.concurrency}")
    print(f"{'method':<12}{'requests':>9}{'req/s':>8}{'ttft p50':>10}{'ttft p95':>10}{'tok/s':>8}")
    for method in args.methods.split(","):
        mine = [r for r in ok if r.method == method]
        if not mine:
            continue
        ttfts = sorted(r.ttft for r in mine)
        p95 = ttfts[min(len(ttfts) - 1, int(0.95 * len(ttfts)))]
        rate = statistics.mean(r.usage["completion_tokens"] / r.latency for r in mine)
        print(
            f"{method:<12}{len(mine):>9}{len(mine) / wall:>8.2f}"
            f"{statistics.median(ttfts):>9.2f}s{p95:>9.2f}s{rate:>8.2f}"
        )
    mib = 2**20
    print(
        f"server RSS: {rss['first'] / mib:.0f} MiB after {min(RSS_CHECKPOINT, len(results))} "
        f"requests, {rss['last'] / mib:.0f} MiB after {len(results)} ({growth:+.1%}"
        f"{'' if checked else ', not checked: needs more than 50 requests'})"
    )
    print("metrics: " + ", ".join(f"{k.split(':')[1]}={v}" for k, v in sums.items()))
    for f in failures:
        print("FAIL", f)
    print("PASS" if not failures else f"{len(failures)} check(s) failed")
    return 1 if failures else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--methods", default="ar,pld,aasd")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--prompts", type=int, default=len(PROMPTS), help="how many prompts")
    parser.add_argument("--threads", type=int, default=None, help="server torch threads")
    parser.add_argument("--deadline", type=float, default=3600, help="seconds for the load")
    args = parser.parse_args()
    if not (0 < args.requests <= 100_000 and 0 < args.concurrency <= 1000):
        parser.error("--requests must be in 1..100000 and --concurrency in 1..1000")
    log = Path(tempfile.mkdtemp(prefix="alignspec-load-")) / "server.log"
    proc, url = start_server(args, log)
    try:
        code = asyncio.run(load(args, url, proc.pid))
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    if "Traceback" in log.read_text():
        print(f"FAIL the server log shows a traceback: {log}")
        code = 1
    print(f"server log: {log}")
    return code


if __name__ == "__main__":
    sys.exit(main())
