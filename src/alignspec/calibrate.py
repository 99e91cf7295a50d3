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
    print("| rows | ms | x one row |")
    print("|---|---|---|")
    for rows, seconds in cost.table():
        print(f"| {rows} | {1e3 * seconds:.2f} | {seconds / one:.2f} |")
    return 0
