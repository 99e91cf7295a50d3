"""Soak: many short generations across every method in one process, watching memory.

A server keeps one process alive for days, so anything a generation leaves behind (a cache
that is never cropped, a per-request tensor kept in a dict, a growing alignment table) shows
up as resident memory that climbs with the request count. This runs ``--n`` generations
(1,000 by default) round-robin over every method that runs on the default model, with varied
prompts, short outputs, greedy decoding and (for lossless methods) some sampled runs, prints
the resident set size (RSS) every ``--every`` generations, and ends with a verdict: RSS at
the end must be within ``--tolerance`` (10%) of RSS after the warm-up (generation 200, or half
the run for short checks), when the allocator and the caches have reached their working size.

Usage::

    python benchmarks/soak.py [--n 1000] [--every 100] [--warmup 200] [--model default]
        [--device auto] [--max-new-tokens 16,32] [--tolerance 0.10] [--threads N]

Exit code 0 when RSS stayed flat, 1 when it grew, 2 on a user error.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import sys
import time

import torch

import alignspec
from alignspec.errors import AlignspecError
from alignspec.methods import get_method

#: every method that runs on the default model without extra files (sps needs a draft model)
METHODS = (
    "ar",
    "pld",
    "pld-tree",
    "aasd",
    "aasd-exact",
    "aasd-noalign",
    "aasd-exact-noalign",
    "eagle2",
    "fspad",
)
TOPICS = (
    "the water cycle",
    "how a bicycle gear works",
    "the history of the printing press",
    "why the sky is blue",
    "a recipe for pancakes",
    "photosynthesis",
    "the rules of chess",
    "black holes",
)
TEMPLATES = (
    "Explain {t} in two sentences.",
    "Summarize: {t} is a topic many people ask about. Tell me about {t}.",
    "Write a short poem about {t}.",
    "List three facts about {t}.",
    "def describe():\n    # {t}\n    return",
)


def rss_mib() -> float:
    """Current resident set size of this process in MiB (Linux /proc; psutil elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        import psutil

        return psutil.Process().memory_info().rss / 2**20


def request(i: int, rng: random.Random, budgets: list[int]) -> tuple[str, str, dict]:
    """The i-th request: method round-robin, a varied prompt, greedy or (sometimes) sampled."""
    method = METHODS[i % len(METHODS)]
    prompt = rng.choice(TEMPLATES).format(t=rng.choice(TOPICS))
    kwargs: dict = {"max_new_tokens": rng.choice(budgets)}
    if get_method(method).lossless and rng.random() < 0.3:
        kwargs.update(temperature=0.8, top_p=0.95, seed=rng.randrange(1 << 30))
    if rng.random() < 0.2:
        kwargs["stop"] = rng.choice(["\n\n", ".", "```"])
    return method, prompt, kwargs


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=1000, help="generations in total")
    p.add_argument("--every", type=int, default=100, help="print RSS every this many")
    p.add_argument("--warmup", type=int, default=200, help="generations before the baseline")
    p.add_argument("--model", default="default")
    p.add_argument("--device", default="auto")
    p.add_argument("--max-new-tokens", default="16,32", help="comma-separated budgets")
    p.add_argument("--tolerance", type=float, default=0.10, help="allowed RSS growth (0.10)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = p.parse_args(argv)
    if args.n < 2 or args.every < 1 or not 0 < args.tolerance < 10:
        p.error("need --n >= 2, --every >= 1 and a tolerance in (0, 10)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    budgets = [int(b) for b in args.max_new_tokens.split(",") if b.strip()]
    # a short check still has a baseline and an end; and the baseline comes after every method
    # ran once where the run allows it (the feature heads load at their first use)
    warmup = min(args.warmup, args.n // 2)
    if args.n >= 2 * len(METHODS):
        warmup = max(warmup, len(METHODS))
    rng = random.Random(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        llm = alignspec.load(args.model, device=args.device)
    except AlignspecError as exc:
        print(f"soak: error: {exc}", file=sys.stderr)
        return 2
    print(f"soak: {args.n} generations over {len(METHODS)} methods on {llm.target.device}")
    print(f"{'gens':>6} {'rss MiB':>9} {'tokens':>8} {'s':>7}  per method (tokens/s)")
    start, tokens, baseline = time.perf_counter(), 0, None
    per_method: dict[str, list[float]] = {m: [0.0, 0.0] for m in METHODS}  # tokens, seconds
    for i in range(args.n):
        method, prompt, kwargs = request(i, rng, budgets)
        t0 = time.perf_counter()
        out = llm.generate(prompt, method=method, **kwargs)
        per_method[method][0] += len(out.token_ids)
        per_method[method][1] += time.perf_counter() - t0
        tokens += len(out.token_ids)
        done = i + 1
        if done == warmup:
            gc.collect()
            baseline = rss_mib()
        if done % args.every == 0 or done == args.n or done == warmup:
            gc.collect()
            speeds = " ".join(f"{m}={t / s:.0f}" for m, (t, s) in per_method.items() if s > 0)
            mark = " (baseline)" if done == warmup else ""
            elapsed = time.perf_counter() - start
            print(f"{done:>6} {rss_mib():>9.1f} {tokens:>8} {elapsed:>7.1f}  {speeds}{mark}")
            sys.stdout.flush()
    gc.collect()
    end = rss_mib()
    assert baseline is not None
    growth = end / baseline - 1
    flat = growth <= args.tolerance
    verdict = "FLAT" if flat else "GROWING"
    print(
        f"verdict: {verdict}: RSS {baseline:.1f} MiB after {warmup} generations, {end:.1f} MiB "
        f"after {args.n} ({growth:+.1%}, allowed +{args.tolerance:.0%})"
    )
    return 0 if flat else 1


if __name__ == "__main__":
    sys.exit(main())
