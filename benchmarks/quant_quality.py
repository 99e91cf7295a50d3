"""How far the quantised native targets drift from fp32 under greedy decoding.

For a few Spec-Bench questions (one per task group), decodes greedily with the fp32 native
target, with ``quantize="int8"`` (as it runs by default: a bf16 KV cache where the kernel's
AVX-512 attention runs, attended on bf16 tiles where the CPU has AMX), with int8 and its keys
and values in fp32 (``kv_bf16=False``, the "fp32-kv" column), and with the bf16 model
(weights and activations in bf16), and prints per prompt the share of positions where the
tokens equal fp32's and the index of the first divergence. Usage::

    python benchmarks/quant_quality.py [--prompts 4] [--max-new-tokens 64] [--threads 1]
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch

import alignspec
from alignspec.drafters.base import NoDrafter
from alignspec.engine import Engine
from alignspec.stats import GenerationStats
from alignspec.targets.base import Target
from alignspec.targets.native import NativeTarget
from alignspec.verifiers.greedy import GreedyVerifier

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "spec_bench"


def greedy(target: Target, ids: list[int], max_new: int, eos: frozenset[int]) -> list[int]:
    out: list[int] = []
    engine = Engine(target, NoDrafter(), GreedyVerifier())
    for new in engine.generate(ids, max_new_tokens=max_new, eos_ids=eos, stats=GenerationStats()):
        out.extend(new)
    return out


def compare(ref: list[int], got: list[int]) -> tuple[float, int]:
    """Share of equal positions (over the longer output) and the first differing index."""
    same = sum(a == b for a, b in zip(ref, got, strict=False))
    first = next((i for i, (a, b) in enumerate(zip(ref, got, strict=False)) if a != b), None)
    if first is None:
        first = min(len(ref), len(got)) if len(ref) != len(got) else len(ref)
    return same / max(len(ref), len(got), 1), first


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [json.loads(line) for line in (DATA / "question.jsonl").read_text().splitlines()]
    by_group: dict[str, dict] = {}
    for row in rows:
        by_group.setdefault(row["category"], row)
    questions = list(by_group.values())[: args.prompts]
    llm = alignspec.load("default", device="cpu", backend="hf")
    targets = {
        "int8": NativeTarget.from_hf(llm.model, quantize="int8"),
        "int8 fp32-kv": NativeTarget.from_hf(llm.model, quantize="int8", kv_bf16=False),
        "bf16": NativeTarget.from_hf(copy.deepcopy(llm.model).to(torch.bfloat16)),
    }
    fp32 = NativeTarget.from_hf(llm.model)
    print(
        "| question | category | fp32 tokens | "
        + " | ".join(f"{n} same / first diff" for n in targets)
        + " |"
    )
    print("|---|---|---:|" + "---:|" * len(targets))
    for q in questions:
        ids = llm.encode(q["turns"][0], max_new_tokens=args.max_new_tokens)
        ref = greedy(fp32, ids, args.max_new_tokens, llm.eos_ids)
        cells = []
        for target in targets.values():
            share, first = compare(ref, greedy(target, ids, args.max_new_tokens, llm.eos_ids))
            cells.append(f"{share:.0%} / {first}")
        print(f"| {q['question_id']} | {q['category']} | {len(ref)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
