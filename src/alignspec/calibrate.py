"""``alignspec calibrate``: measure (or show) this machine's verify-cost curve for a model.

The curve is what the cost-aware draft budget sizes trees with (see :mod:`alignspec.cost`);
it is measured on first use anyway, so this command is for looking at it, or for measuring
again after the machine or its load changed (``--force``).
"""

from __future__ import annotations

import argparse
from typing import Any

from alignspec.cost import cache_path


def add_parser(sub: Any) -> None:
    from alignspec.cli import add_model_options

    parser = sub.add_parser(
        "calibrate",
        help="measure and print the verify cost per tree size on this machine",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--force", action="store_true", help="measure again even if cached")
    add_model_options(parser)
    parser.set_defaults(handler=cmd_calibrate)


def cmd_calibrate(args: argparse.Namespace) -> int:
    from alignspec.cli import load_from_args

    llm = load_from_args(args)
    cost = llm.cost_model(force=args.force)
    key = cost.key
    print(
        f"verify cost: {key['backend']} quantize={key['quantize']} on {key['cpu']}, "
        f"{key['threads']} threads (cached in {cache_path(key)})"
    )
    one = cost.verify(1)
    if cost.long_seconds is None:
        print(f"| rows | ms | x one row |   (after {cost.prefix} cached tokens)")
        print("|---|---|---|")
        for rows, seconds, _ in cost.table():
            print(f"| {rows} | {1e3 * seconds:.2f} | {seconds / one:.2f} |")
        return 0
    long_one = cost.verify(1, cost.long_prefix)
    print(
        f"| rows | ms, {cost.prefix} cached | x one row | ms, {cost.long_prefix} cached "
        "| x one row |"
    )
    print("|---|---|---|---|---|")
    for rows, seconds, long in cost.table():
        print(
            f"| {rows} | {1e3 * seconds:.2f} | {seconds / one:.2f} | {1e3 * long:.2f} "
            f"| {long / long_one:.2f} |"
        )
    return 0
