"""The ``alignspec`` command line: ``generate`` (more subcommands register themselves here).

User mistakes end in one line on stderr and exit code 2, never a traceback. Every method
option is generated from the methods' option dataclasses, so ``--help`` always shows the real
defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable, Sequence
from typing import Any

from alignspec.errors import AlignspecError
from alignspec.methods import REGISTRY
from alignspec.prompting import TRUNCATE_MODES
from alignspec.sampling import SamplingParams
from alignspec.targets.select import BACKENDS, QUANTIZATIONS
from alignspec.text import check_stop

Handler = Callable[[argparse.Namespace], int]


def _method_option_fields() -> dict[str, list[tuple[str, dataclasses.Field]]]:
    """Option name -> [(method, field)] over every registered method."""
    seen: dict[str, list[tuple[str, dataclasses.Field]]] = {}
    for name, method in REGISTRY.items():
        for f in dataclasses.fields(method.options):
            seen.setdefault(f.name, []).append((name, f))
    return seen


def add_method_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--<option>`` flags for every method hyperparameter, defaults shown per method."""
    group = parser.add_argument_group("method options (each applies to the methods listed)")
    for opt, users in _method_option_fields().items():
        f0 = users[0][1]
        defaults = ", ".join(f"{m}={REGISTRY[m].presets.get(f.name, f.default)}" for m, f in users)
        help_text = f"{f0.metadata.get('help', '')} (default: {defaults})"
        flag = "--" + opt.replace("_", "-")
        if flag in parser._option_string_actions:
            continue  # the subcommand defines this flag itself (bench: --draft-model) and owns it
        if f0.type in (bool, "bool"):
            group.add_argument(
                flag,
                dest=f"opt_{opt}",
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,  # absent unless given: the method's default applies
                help=help_text,
            )
        else:
            kind = {"int": int, "float": float, "str": str}.get(str(f0.type), type(f0.default))
            group.add_argument(
                flag,
                dest=f"opt_{opt}",
                type=kind,
                metavar=opt.upper(),
                default=argparse.SUPPRESS,
                help=help_text,
            )


def add_budget_option(parser: argparse.ArgumentParser) -> None:
    """``--budget auto|N``: how each round's draft tree is sized (see :mod:`alignspec.budget`)."""
    parser.add_argument(
        "--budget",
        default="auto",
        help="draft rows per round: auto (keep what pays on this machine's measured verify "
        "cost, nothing when nothing does) or N (at most N draft nodes, most likely first)",
    )


def method_options(args: argparse.Namespace) -> dict[str, Any]:
    """The method options the user actually gave."""
    return {k[4:]: v for k, v in vars(args).items() if k.startswith("opt_") and v is not None}


def add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default="default",
        help="'default' (embedded SmolLM2-135M-Instruct), a HF model directory, "
        "a .gguf file or a hub id (default: %(default)s)",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    parser.add_argument(
        "--dtype",
        default="auto",
        help="auto (fp32 on CPU, bf16 on CUDA), float32, bfloat16, float16",
    )
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default="auto",
        help="who runs the target forward: native (alignspec's own, Llama/Qwen2/Mistral), "
        "hf (transformers, any causal LM) or auto (native when supported) "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--quantize",
        choices=QUANTIZATIONS,
        default="none",
        help="int8 weights and per-row int8 activations for the native backend (a quarter of "
        "the weight bytes; speculation stays lossless relative to the int8 model's own ar; "
        "whether it is faster depends on the CPU, see BENCHMARKS.md) (default: %(default)s)",
    )


def load_from_args(args: argparse.Namespace) -> Any:
    """The :class:`~alignspec.api.LLM` that :func:`add_model_options` flags describe."""
    from alignspec.api import load

    return load(
        args.model,
        device=args.device,
        dtype=args.dtype,
        backend=args.backend,
        quantize=args.quantize,
    )


def add_sampling_options(parser: argparse.ArgumentParser, *, seed: bool = True) -> None:
    """Add the sampling flags (temperature 0, the default, is greedy decoding).

    ``seed=False`` leaves ``--seed`` to the caller (the bench seeds every run itself).
    """
    group = parser.add_argument_group(
        "sampling (lossless methods sample exactly as plain sampling; lossy ones are greedy-only)"
    )
    group.add_argument("--temperature", type=float, default=0.0, help="0 = greedy; > 0 samples")
    group.add_argument("--top-k", type=int, default=0, help="keep the k most likely (0 = off)")
    group.add_argument("--top-p", type=float, default=1.0, help="nucleus mass in (0, 1] (1 = off)")
    if seed:
        group.add_argument("--seed", type=int, default=None, help="seed for reproducible sampling")
    group.add_argument(
        "--repetition-penalty",
        type=float,
        default=1.0,
        help="transformers-style repetition penalty, > 0 (1 = off)",
    )


def sampling_params(args: argparse.Namespace, *, seed: bool = True) -> SamplingParams:
    """The validated sampling settings from :func:`add_sampling_options` flags."""
    return SamplingParams(
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed if seed else None,
        repetition_penalty=args.repetition_penalty,
    )


def _read_prompt(prompt: str) -> str:
    """The prompt argument, or stdin for ``-``, decoded strictly as UTF-8.

    Reading the bytes ourselves makes invalid UTF-8 one sentence whatever the locale (under a
    C locale Python would smuggle the bad bytes in as lone surrogates, under UTF-8 raise).
    """
    if prompt != "-":
        return prompt
    buffer = getattr(sys.stdin, "buffer", None)
    if buffer is None:  # a text stream without bytes underneath (tests, embedding)
        return sys.stdin.read()
    data = buffer.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise AlignspecError(
            f"the prompt on stdin is not valid UTF-8 (byte 0x{data[exc.start]:02x} at offset "
            f"{exc.start}); convert it to UTF-8 first"
        ) from None


def check_argv_text(argv: Sequence[str]) -> None:
    """Refuse command-line arguments that UTF-8 cannot encode, before argparse sees them.

    Python decodes ``argv`` with ``surrogateescape``, so invalid UTF-8 on the command line
    arrives as lone surrogates, which tokenizers (and JSON, and most libraries) cannot take;
    even argparse's own error message about such an argument could fail to print.
    """
    for i, arg in enumerate(argv, start=1):
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            shown = ascii(arg if len(arg) <= 40 else arg[:37] + "...")
            raise AlignspecError(
                f"command-line argument {i} ({shown}) is not valid UTF-8 text (an undecodable "
                "byte or a lone surrogate); pass UTF-8"
            ) from None


def cmd_generate(args: argparse.Namespace) -> int:
    from alignspec.methods import get_method

    # fail on a bad method, option or sampling value before spending seconds on loading
    method = get_method(args.method)
    method.make_options(method_options(args))
    sampling = sampling_params(args)
    method.check_sampling(sampling)
    if args.max_new_tokens <= 0:
        raise AlignspecError(f"--max-new-tokens must be positive, got {args.max_new_tokens}")
    check_stop(args.stop)
    prompt = _read_prompt(args.prompt)
    llm = load_from_args(args)
    gen = llm.stream(
        prompt,
        method=args.method,
        max_new_tokens=args.max_new_tokens,
        stop=args.stop or (),
        raw=args.raw,
        truncate=args.truncate,
        budget=args.budget,
        **dataclasses.asdict(sampling),
        **method_options(args),
    )
    for piece in gen:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    assert gen.output is not None
    print(
        f"[{args.method}] {gen.output.stats.summary()} finish={gen.output.finish_reason}",
        file=sys.stderr,
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alignspec",
        description="Faster LLM generation by speculative decoding (AASD, FSPAD, PLD, ...).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser(
        "generate",
        help="generate text for one prompt, streamed to stdout",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    gen.add_argument("prompt", help="the prompt text, or - to read it from stdin")
    gen.add_argument("--method", default="ar", help=f"one of: {', '.join(REGISTRY)}")
    gen.add_argument("--max-new-tokens", type=int, default=256)
    gen.add_argument("--stop", action="append", help="stop string (repeatable); not printed")
    gen.add_argument("--raw", action="store_true", help="skip the chat template")
    gen.add_argument(
        "--truncate",
        choices=TRUNCATE_MODES,
        default="none",
        help="what to do with a prompt longer than the context",
    )
    add_model_options(gen)
    add_sampling_options(gen)
    add_budget_option(gen)
    add_method_options(gen)
    gen.set_defaults(handler=cmd_generate)
    for register in _subcommand_registrars():
        register(sub)
    return parser


def _subcommand_registrars() -> list[Callable[[Any], None]]:
    """Other subcommands (bench, train-head and export-head, serve) live beside their own code.

    Each module exposes ``add_parser(subparsers)``; a module that is not present yet is skipped,
    so this file never has to change when a subcommand is added.
    """
    import importlib

    found = []
    for module in (
        "alignspec.bench.cli",
        "alignspec.training.cli",
        "alignspec.server.cli",
        "alignspec.calibrate",
    ):
        try:
            found.append(importlib.import_module(module).add_parser)
        except ModuleNotFoundError as exc:
            if not exc.name or not (module + ".").startswith(exc.name + "."):
                raise  # a real import error inside an existing subcommand module
    return found


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        check_argv_text(argv)
    except AlignspecError as exc:
        _print_error(exc)
        return 2
    parser = build_parser()
    args = parser.parse_args(argv)
    _quiet_libraries()
    try:
        return args.handler(args)
    except AlignspecError as exc:
        _print_error(exc)
        return 2
    except KeyboardInterrupt:
        return 130


def _print_error(exc: AlignspecError) -> None:
    """The error as one line on stderr: a user's value echoed in it (``--method $'\\n'``)
    has its control characters escaped, so scripts can read the first line as the error."""
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(exc))
    print(f"alignspec: error: {text}", file=sys.stderr)


def _quiet_libraries() -> None:
    """Silence transformers' load-time progress bars and warnings on the CLI."""
    import os

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass


if __name__ == "__main__":
    sys.exit(main())
