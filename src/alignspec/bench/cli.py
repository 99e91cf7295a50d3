"""``alignspec bench``: run a suite with several methods and write the results folder.

Registered by :mod:`alignspec.cli` through :func:`add_parser`. Everything a user can get wrong
(suite, method names, options, numbers, data files) is checked before the model loads, so a
typo costs a second, not a model load.
"""

from __future__ import annotations

import argparse
from datetime import datetime
from pathlib import Path
from typing import Any

from alignspec.cli import (
    add_budget_option,
    add_method_options,
    add_model_options,
    add_sampling_options,
    load_from_args,
    method_options,
    sampling_params,
)
from alignspec.errors import AlignspecError


def add_parser(subparsers: Any) -> None:
    """Add the ``bench`` subcommand to the main parser."""
    from alignspec.bench.backends import DRAFT_MODEL_OPTION, takes_draft_model
    from alignspec.bench.datasets import SUITES
    from alignspec.bench.runner import QUICK_PRESETS
    from alignspec.methods import REGISTRY

    quick = "; ".join(f"{suite}: {p.describe()}" for suite, p in QUICK_PRESETS.items())
    parser = subparsers.add_parser(
        "bench",
        help="benchmark methods on Spec-Bench, Multi-News, HumanEval, LCC or your own file",
        description="Run every listed method on every prompt of a suite (methods interleaved "
        "per prompt), then write <method>.jsonl, results.json, results.md, speedup.png and "
        "tau.png to the output folder.",
    )
    parser.add_argument(
        "--suite",
        required=True,
        help=f"one of: {', '.join(SUITES)}, or a .jsonl file of questions in Spec-Bench's "
        "format (question_id, category, turns, optional reference), grouped by category",
    )
    parser.add_argument(
        "--methods",
        default="ar,pld",
        help="comma-separated methods: any registered method (see `alignspec generate "
        "--help`), a transformers peer (hf-ar, hf-pld, hf-assisted) or a llama.cpp peer "
        "(llamacpp-ar, llamacpp-pld; needs llama-cpp-python, skipped without it) "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--baseline",
        default="ar",
        help="method speedups are measured against (default: %(default)s)",
    )
    parser.add_argument(
        "--output", default=None, help="results folder (default: runs/<suite>-<timestamp>)"
    )
    parser.add_argument("--limit", type=int, default=None, help="prompts per group (default: all)")
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        default=None,
        help="token budget per turn (default: the suite's, e.g. 1024 for spec-bench)",
    )
    parser.add_argument(
        "--max-prompt-tokens",
        type=int,
        default=None,
        help="middle-truncate each prompt to this many tokens, as LongBench does per model "
        "(default: only the model's context limits it)",
    )
    parser.add_argument(
        "--warmup", type=int, default=None, help="untimed runs of the first prompt (default: 1)"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed runs per prompt and method; the median is kept (default: 1)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed set before every run (default: %(default)s)"
    )
    parser.add_argument("--quick", action="store_true", help=f"smoke-scale preset ({quick})")
    parser.add_argument(
        "--data-dir",
        default=None,
        help="folder holding spec_bench/ and longbench/ (default: $ALIGNSPEC_DATA_DIR or "
        "../shared/data)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_model_options(parser)
    add_budget_option(parser)
    add_sampling_options(parser, seed=False)
    add_method_options(parser)
    if not any(takes_draft_model(name) for name in REGISTRY):
        # otherwise the method option of that name (e.g. sps's) already is --draft-model
        parser.add_argument(
            "--draft-model",
            dest=f"opt_{DRAFT_MODEL_OPTION}",
            default=argparse.SUPPRESS,
            help="draft model for hf-assisted (path or 'default')",
        )
    parser.set_defaults(handler=cmd_bench)


def resolve_settings(args: argparse.Namespace) -> dict[str, Any]:
    """Explicit flags win over the ``--quick`` preset, which wins over the defaults."""
    from alignspec.bench.datasets import SUITES
    from alignspec.bench.question_file import looks_like_file
    from alignspec.bench.runner import QuickPreset, quick_preset

    if args.suite not in SUITES and not looks_like_file(args.suite):
        raise AlignspecError(
            f"unknown suite '{args.suite}'; choose one of {', '.join(SUITES)} "
            "or a .jsonl question file"
        )
    preset: QuickPreset | None = quick_preset(args.suite) if args.quick else None

    def pick(given: Any, field: str, default: Any) -> Any:
        if given is not None:
            return given
        return getattr(preset, field) if preset is not None else default

    return {
        "limit": pick(args.limit, "limit", None),
        "max_new_tokens": pick(args.max_new_tokens, "max_new_tokens", None),
        "warmup": pick(args.warmup, "warmup", 1),
        "repeats": pick(args.repeats, "repeats", 1),
        "max_prompt_tokens": pick(args.max_prompt_tokens, "max_prompt_tokens", None),
    }


def default_output(suite: str) -> Path:
    """``runs/<suite>-<timestamp>``; a question file is named by its file name's stem."""
    from alignspec.bench.datasets import SUITES

    name = suite if suite in SUITES else Path(suite).stem
    return Path("runs") / f"{name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def check_output_dir(path: Path) -> None:
    """Refuse an ``--output`` that names a file (or lies under one) before anything runs."""
    for where in (path, *path.parents):
        if where.exists():
            if not where.is_dir():
                raise AlignspecError(
                    f"--output {path}: {where} is an existing file, not a folder; "
                    "give a folder for the results"
                )
            return


def cmd_bench(args: argparse.Namespace) -> int:
    from alignspec.bench.backends import (
        DRAFT_MODEL_OPTION,
        check_options,
        check_sampling,
        resolve_methods,
    )
    from alignspec.bench.llamacpp import LLAMACPP_PEERS, check_model, split_available
    from alignspec.bench.report import markdown_table
    from alignspec.bench.runner import check_settings, load_items, quick_preset
    from alignspec.loading import resolve

    if args.output:
        check_output_dir(Path(args.output))
    settings = resolve_settings(args)
    check_settings(**settings)
    names, skipped = split_available(resolve_methods(args.methods, args.baseline), args.baseline)
    if skipped:
        print(skipped)
    if any(n in LLAMACPP_PEERS for n in names):
        check_model(names, resolve(args.model))  # llama.cpp needs a .gguf: say so before loading
    options = method_options(args)
    draft = options.pop(DRAFT_MODEL_OPTION, None)  # for sps-like methods and hf-assisted alike
    check_options(names, options, draft)
    sampling = sampling_params(args, seed=False)  # --seed seeds every run (see run_bench)
    check_sampling(names, sampling)
    _, items = load_items(args.suite, args.data_dir, settings["limit"])  # data errors: now
    if args.quick:
        print(f"quick preset for {args.suite}: {quick_preset(args.suite).describe()}")
    output = Path(args.output) if args.output else default_output(args.suite)
    print(
        f"bench {args.suite}: {len(items)} prompts x {len(names)} methods ({', '.join(names)}), "
        f"baseline {args.baseline} -> {output}",
        flush=True,
    )

    from alignspec.bench.runner import run_bench

    llm = load_from_args(args)
    summary = run_bench(
        llm,
        args.suite,
        names,
        baseline=args.baseline,
        output_dir=output,
        data_dir=args.data_dir,
        method_options=options,
        budget=args.budget,
        draft_model=draft,
        sampling=sampling,
        seed=args.seed,
        progress=not args.no_progress,
        **settings,
    )
    print()
    print(markdown_table(summary), end="")
    files = [f"{n}.jsonl" for n in names] + ["results.json", "results.md", "speedup.png", "tau.png"]
    print(f"\nwrote {output}/: {', '.join(files)}")
    return 0
