"""What one target forward costs, per backend, as a function of the rows it scores.

Speculative decoding pays off only if verifying a k-token draft costs about one decoding step,
so this prints, for the transformers backend and the native one:

1. the time of one forward over 1, 2, 4, ... new tokens against a KV cache of realistic length
   (median of several runs after warmup), the weight bytes it reads divided by that time
   (achieved bandwidth, as gpt-fast prints it: the floor is bytes / memory bandwidth), and
   each time relative to the one-token forward;
2. prefill tokens/s of the native backends for long prompts (2000 and 8000 tokens by
   default: SmolLM2's context is 8192);
3. tokens/s of ``ar``, ``pld`` and ``aasd`` on a few real prompts through the same engine,
   and whether both backends produced the same tokens.

Backends and methods are interleaved run by run so that load from other processes hits them
alike; the load average is printed before and after because on a shared machine absolute
numbers drift while the ratios hold. Usage::

    python benchmarks/forward_cost.py [--model default] [--quantize int8|none] [--compile]
        [--threads N] [--cache-len 512] [--repeats 7] [--max-new-tokens 64]
        [--prefill-lengths 2000,8000] [--no-generate]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import dataclass

import torch

import alignspec
from alignspec.cost import load_or_measure
from alignspec.engine import Engine
from alignspec.methods import get_method
from alignspec.rows import RowLogits
from alignspec.sampling import SamplingParams
from alignspec.stats import GenerationStats
from alignspec.targets.base import Target
from alignspec.targets.hf import HFTarget
from alignspec.targets.native import NativeTarget
from alignspec.targets.select import make_target
from alignspec.tree import DraftTree

ROWS = (1, 2, 4, 8, 16, 32, 64)
FILLER = (
    "The Eiffel Tower, completed in 1889 for the World's Fair in Paris, was first criticised "
    "by artists and is now the most visited paid monument in the world. "
)
PROMPTS = {
    "summarize": (
        "Summarize in three sentences: The Eiffel Tower is a wrought-iron lattice tower on the "
        "Champ de Mars in Paris, France. It is named after the engineer Gustave Eiffel, whose "
        "company designed and built the tower from 1887 to 1889. Locally nicknamed 'La dame de "
        "fer', it was constructed as the centrepiece of the 1889 World's Fair, and to crown the "
        "centennial anniversary of the French Revolution. Although initially criticised by "
        "some of France's leading artists and intellectuals for its design, it has since "
        "become a global cultural icon of France and one of the most recognisable structures "
        "in the world. The tower received 5,889,000 visitors in 2022."
    ),
    "code": (
        "Add type hints and a docstring to this function, keeping its logic:\n\n"
        "def moving_average(values, window):\n"
        "    if window <= 0:\n"
        "        raise ValueError('window must be positive')\n"
        "    result = []\n"
        "    total = 0.0\n"
        "    for i, value in enumerate(values):\n"
        "        total += value\n"
        "        if i >= window:\n"
        "            total -= values[i - window]\n"
        "        if i >= window - 1:\n"
        "            result.append(total / window)\n"
        "    return result\n"
    ),
}


@dataclass
class Backend:
    """A named target and the weight bytes one of its forwards reads."""

    name: str
    target: Target
    weight_bytes: int


def hf_weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of the decoder layers, final norm and LM head (embedding rows are gathered)."""
    base = model.get_decoder()
    params = list(base.layers.parameters()) + list(base.norm.parameters())
    params.append(model.get_output_embeddings().weight)
    return sum(p.numel() * p.element_size() for p in params)


def forward_time(target: Target, rows: int) -> float:
    """Seconds for one verify over ``rows`` new tokens; the rows are dropped afterwards."""
    tree = DraftTree.chain([(1000 + 7 * i) % target.vocab_size for i in range(rows - 1)])
    start = time.perf_counter()
    out = target.verify(42, tree)
    RowLogits.wrap(out.logits).row(0)  # the LM head over the chain, as a verify walk reads it
    elapsed = time.perf_counter() - start
    target.commit([])  # keep none of the provisional rows: the cache length is unchanged
    return elapsed


def print_prediction(name: str, target: Target, measured: dict[int, float], context: int) -> None:
    """The cost model the draft budget uses (cached curve, see alignspec.cost) at this run's
    cache length beside this run's own measurement of the same forwards."""
    cost = load_or_measure(target)
    print(f"\n## Cost model (alignspec calibrate) vs measured, {name}, {context} cached\n")
    print("| rows | predicted ms | measured ms | predicted / measured |")
    print("|---|---|---|---|")
    for rows, seconds in sorted(measured.items()):
        pred = cost.verify(rows, context)
        print(f"| {rows} | {1e3 * pred:.2f} | {1e3 * seconds:.2f} | {pred / seconds:.2f} |")


def measure_forwards(
    backends: list[Backend], context: list[int], rows_list: tuple[int, ...], repeats: int
) -> dict[str, dict[int, float]]:
    """Median forward time per backend and row count, backends interleaved per repeat."""
    for b in backends:
        b.target.prefill(context)
        for rows in rows_list:  # warmup (and, with --compile, compilation)
            forward_time(b.target, rows)
    times: dict[str, dict[int, list[float]]] = {
        b.name: {r: [] for r in rows_list} for b in backends
    }
    for rows in rows_list:
        for _ in range(repeats):
            for b in backends:
                times[b.name][rows].append(forward_time(b.target, rows))
    return {n: {r: statistics.median(v) for r, v in per.items()} for n, per in times.items()}


def generate(llm, target: Target, method: str, ids: list[int], max_new: int):
    """Greedy ``method`` on ``target`` through the engine, with the registry's drafter/verifier."""
    spec = get_method(method)
    cfg = spec.make_options({})
    verifier = spec.make_verifier(llm, cfg, SamplingParams())
    stats = GenerationStats()
    tokens: list[int] = []
    engine = Engine(target, spec.build_drafter(llm, cfg), verifier)
    eos = llm.eos_ids
    for new in engine.generate(ids, max_new_tokens=max_new, eos_ids=eos, stats=stats):
        tokens.extend(new)
    return tokens, stats


METHODS = ("ar", "pld", "aasd")


def prefill_table(llm, backends: list[Backend], lengths: tuple[int, ...], repeats: int) -> None:
    """Print prefill tokens/s of each native backend for prompts of ``lengths`` tokens
    (the filler text repeated; median of ``repeats``, after one short warmup prefill)."""
    natives = [b for b in backends if isinstance(b.target, NativeTarget)]
    print("| prompt tokens | " + " | ".join(f"{b.name} tok/s | {b.name} s" for b in natives) + " |")
    print("|---:|" + "---:|---:|" * len(natives))
    for b in natives:
        b.target.prefill(llm.encode(PROMPTS["code"]))
    for n in lengths:
        ids = llm.tokenizer(FILLER * (n // 20 + 1))["input_ids"][:n]
        cells = []
        for b in natives:
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                b.target.prefill(ids)
                times.append(time.perf_counter() - start)
            t = statistics.median(times)
            cells.append(f"{len(ids) / t:.0f} | {t:.2f}")
        print(f"| {len(ids)} | " + " | ".join(cells) + " |")


def forward_table(backends: list[Backend], med: dict[str, dict[int, float]]) -> str:
    head = "| new tokens |"
    rule = "|---:|"
    for b in backends:
        head += f" {b.name} ms | {b.name} GB/s | {b.name} / 1 token |"
        rule += "---:|---:|---:|"
    for b in backends[1:]:
        head += f" {b.name} speedup |"
        rule += "---:|"
    lines = [head, rule]
    base = backends[0].name
    for rows in next(iter(med.values())):
        line = f"| {rows} |"
        for b in backends:
            t = med[b.name][rows]
            line += f" {t * 1e3:.1f} | {b.weight_bytes / t / 1e9:.1f} | {t / med[b.name][1]:.2f}x |"
        for b in backends[1:]:
            line += f" {med[base][rows] / med[b.name][rows]:.2f}x |"
        lines.append(line)
    return "\n".join(lines)


def generation_table(llm, backends: list[Backend], max_new: int, repeats: int) -> None:
    """Print tokens/s of each method per backend and prompt, then the ratios to ``hf`` ar.

    "same tokens" compares every fp32 backend with ``hf`` running the same method, and a
    quantised backend with its own ``ar`` (it is lossless relative to itself only).
    """
    heads = " | ".join(f"{b.name} tok/s" for b in backends)
    print(f"| prompt | method | {heads} | tau | same tokens |")
    print("|---|---|" + "---:|" * len(backends) + "---:|---|")
    speed: dict[str, dict[str, list[float]]] = {b.name: {m: [] for m in METHODS} for b in backends}
    for b in backends:  # warmup each backend and method once
        for method in METHODS:
            generate(llm, b.target, method, llm.encode("Hello!"), 8)
    for pname, prompt in PROMPTS.items():
        ids = llm.encode(prompt, max_new_tokens=max_new)
        own_ar: dict[str, list[int]] = {}
        for method in METHODS:
            runs: dict[str, list[float]] = {b.name: [] for b in backends}
            outs: dict[str, list[int]] = {}
            tau = 0.0
            for _ in range(repeats):
                for b in backends:
                    toks, stats = generate(llm, b.target, method, ids, max_new)
                    runs[b.name].append(stats.new_tokens / stats.wall_time)
                    outs[b.name] = toks
                    if b.name == "native":
                        tau = stats.tau
            if method == "ar":
                own_ar = dict(outs)
            same = []
            for b in backends[1:]:
                quantized = b.name.startswith("native-int8")
                if quantized and method == "ar":
                    continue
                ref = own_ar[b.name] if quantized else outs["hf"]
                vs = "own ar" if quantized else "hf"
                same.append(f"{b.name} = {vs}: {'yes' if outs[b.name] == ref else 'NO'}")
            for name, values in runs.items():
                speed[name][method].append(statistics.median(values))
            cells = " | ".join(f"{statistics.median(v):.2f}" for v in runs.values())
            print(f"| {pname} | {method} | {cells} | {tau:.2f} | {'; '.join(same) or '-'} |")
    print()
    hf_ar = statistics.mean(speed["hf"]["ar"])
    for b in backends[1:]:
        for method in METHODS:
            ratio = statistics.mean(speed[b.name][method]) / hf_ar
            print(f"- {b.name} {method} / hf ar: {ratio:.2f}x")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="default")
    p.add_argument(
        "--quantize", choices=["none", "int8"], default="int8", help="also time this native"
    )
    p.add_argument("--compile", action="store_true", help="also time a torch.compile'd native")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--cache-len", type=int, default=512)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--rows", default=",".join(map(str, ROWS)))
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--gen-repeats", type=int, default=3, help="generations per prompt, median")
    p.add_argument("--no-generate", action="store_true", help="skip the generation table")
    p.add_argument("--prefill-lengths", default="2000,8000", help="'' to skip the prefill table")
    p.add_argument("--prefill-repeats", type=int, default=1)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]

    device = "cpu" if not torch.cuda.is_available() else "auto"
    llm = alignspec.load(args.model, device=device, backend="hf")
    model = llm.model
    backends = [Backend("hf", HFTarget(model), hf_weight_bytes(model))]
    native = make_target(model, "native")
    assert isinstance(native, NativeTarget)
    backends.append(Backend("native", native, native.weight_bytes))
    if args.quantize == "int8":
        q = make_target(model, "native", "int8")
        assert isinstance(q, NativeTarget)
        backends.append(Backend("native-int8", q, q.weight_bytes))
    compile_s = None
    if args.compile:
        c = make_target(model, "native", args.quantize, compile=True)
        assert isinstance(c, NativeTarget)
        start = time.perf_counter()
        c.prefill(llm.encode(PROMPTS["code"]))
        compile_s = time.perf_counter() - start
        backends.append(Backend("native-compiled", c, c.weight_bytes))

    rows_list = tuple(int(r) for r in args.rows.split(","))
    context = llm.tokenizer(FILLER * (args.cache_len // 20 + 1))["input_ids"][: args.cache_len]
    with torch.inference_mode():
        med = measure_forwards(backends, context, rows_list, args.repeats)

    print(f"\n## Forward cost ({args.model}, cache length {len(context)})\n")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"device {native.device}, median of {args.repeats} after warmup; weights read per "
        + ", ".join(f"{b.name} forward {b.weight_bytes / 1e6:.0f} MB" for b in backends)
    )
    if compile_s is not None:
        print(f"torch.compile: first prefill (compilation) took {compile_s:.1f} s")
    print()
    print(forward_table(backends, med))
    for b in backends:
        if isinstance(b.target, NativeTarget) and b.name != "native-compiled":
            print_prediction(b.name, b.target, med[b.name], len(context))

    lengths = tuple(int(n) for n in args.prefill_lengths.split(",") if n)
    if lengths:
        print(f"\n## Prefill (tokens/s, median of {args.prefill_repeats})\n")
        with torch.inference_mode():
            prefill_table(llm, backends, lengths, args.prefill_repeats)

    if not args.no_generate:
        print(f"\n## Generation ({args.max_new_tokens} new tokens, tokens/s incl. prefill)\n")
        generation_table(llm, backends, args.max_new_tokens, args.gen_repeats)
    print(f"\nload average: {load_before:.2f} before, {os.getloadavg()[0]:.2f} after")


if __name__ == "__main__":
    main()
