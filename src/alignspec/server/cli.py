"""``alignspec serve``: load the model once and serve it over the OpenAI API.

Registered by :mod:`alignspec.cli` through :func:`add_parser`. The method, its options and the
sampling flags are the same as ``alignspec generate``'s (generated from the option dataclasses)
and become the defaults of every request; they are checked before the model loads.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from alignspec.cli import (
    add_method_options,
    add_model_options,
    add_sampling_options,
    load_from_args,
    method_options,
    sampling_params,
)
from alignspec.errors import AlignspecError


def add_parser(subparsers: Any) -> None:
    """Add the ``serve`` subcommand to the main parser."""
    from alignspec.methods import REGISTRY

    parser = subparsers.add_parser(
        "serve",
        help="serve the model over an OpenAI-compatible HTTP API",
        description="POST /v1/chat/completions and /v1/completions (streaming or not), "
        "GET /v1/models, /health and /metrics (Prometheus). A request picks its own method "
        'with the extension field "alignspec": {"method": ..., "options": {...}}.',
    )
    parser.add_argument(
        "--method",
        default="pld",
        help=f"default method of requests; one of: {', '.join(REGISTRY)} (default: %(default)s)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
    parser.add_argument(
        "--max-queue",
        type=int,
        default=64,
        help="requests allowed to wait; beyond it 503 with Retry-After (default: %(default)s)",
    )
    parser.add_argument(
        "--served-model-name",
        default=None,
        help="the model id clients send and /v1/models lists (default: the model's name)",
    )
    parser.add_argument(
        "--default-max-tokens",
        type=int,
        default=256,
        help="chat completions' max_tokens when a request gives none (default: %(default)s)",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    parser.add_argument("--log-level", default="info", help="uvicorn log level (default: info)")
    add_model_options(parser)
    add_sampling_options(parser)
    add_method_options(parser)
    parser.set_defaults(handler=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    import torch
    import uvicorn

    from alignspec.methods import get_method
    from alignspec.server.app import create_app
    from alignspec.server.plan import ServeConfig

    method = get_method(args.method)
    options = method_options(args)
    method.make_options(options)
    sampling = sampling_params(args)
    method.check_sampling(sampling)
    if args.max_queue < 1:
        raise AlignspecError(f"--max-queue must be at least 1, got {args.max_queue}")
    if args.default_max_tokens <= 0:
        raise AlignspecError(
            f"--default-max-tokens must be positive, got {args.default_max_tokens}"
        )
    if not 0 < args.port < 65536:
        raise AlignspecError(f"--port must be in 1..65535, got {args.port}")
    if args.threads is not None:
        if args.threads < 1:
            raise AlignspecError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    llm = load_from_args(args)
    name = args.served_model_name or (llm.source.name if llm.source else args.model)
    config = ServeConfig(
        model_name=name,
        method=args.method,
        options=options,
        sampling=sampling,
        default_max_tokens=args.default_max_tokens,
        vocab_size=llm.target.vocab_size,
    )
    app = create_app(llm, config, max_queue=args.max_queue)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s:     %(message)s")
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0
