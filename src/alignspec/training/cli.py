"""``alignspec train-head`` and ``alignspec export-head``: thin parsers over the training API.

Registered by :mod:`alignspec.cli` through :func:`add_parser`. The handlers only translate
flags into calls of :func:`~alignspec.training.api.train_head`,
:func:`~alignspec.training.api.extract_head_features` and
:func:`~alignspec.training.export.export_eagle`; every setting a user can get wrong is checked
there, before the model loads, and ends in one line and exit code 2. Scale out with
``accelerate launch -m alignspec train-head ... --device cuda``.
"""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(subparsers: Any) -> None:
    """Add the ``train-head`` and ``export-head`` subcommands to the main parser."""
    _add_train_parser(subparsers)
    _add_export_parser(subparsers)


def _add_train_parser(subparsers: Any) -> None:
    from alignspec.targets.select import BACKENDS, QUANTIZATIONS
    from alignspec.training.config import ARCHES, DEFAULT_LR, SCHEDULES, TrainConfig

    d = TrainConfig()
    parser = subparsers.add_parser(
        "train-head",
        help="train an EAGLE-2 or FSPAD draft head for a target (features cached once)",
        description="Run the target over ShareGPT once (features cached under "
        "~/.cache/alignspec/features), then train a feature draft head with teacher forcing. "
        "With --unroll K the head is also trained on its own fed-back features (training-time "
        "test) and held-out top-1 agreement is reported per step. "
        "Writes <output>/head.safetensors (load it with the eagle2/fspad methods), history.json, "
        "training_curve.png and resumable checkpoints.",
    )
    parser.add_argument(
        "--target",
        "--model",
        dest="target",
        default="default",
        help="target model: 'default', a HF directory, a .gguf file or a hub id "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--arch", default=d.arch, help=f"head architecture: {' or '.join(ARCHES)} (default: fspad)"
    )
    parser.add_argument("--output", default=None, help="run folder (default: runs/head-<arch>)")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from the newest checkpoint in --output",
    )
    data = parser.add_argument_group("data and features")
    data.add_argument(
        "--data",
        default="sharegpt",
        help="training data: sharegpt (its own replies) or sharegpt-self (first user turns "
        "answered by the target itself, greedy, generated once and cached) (default: %(default)s)",
    )
    data.add_argument(
        "--max-conversations",
        type=int,
        default=None,
        help="training conversations to use, a fixed random sample (default: all)",
    )
    data.add_argument(
        "--eval-conversations",
        type=int,
        default=100,
        help="held-out conversations evaluated at each epoch end, 0 = none (default: %(default)s)",
    )
    data.add_argument(
        "--max-len", type=int, default=1024, help="tokens per conversation (default: %(default)s)"
    )
    data.add_argument(
        "--topk",
        type=int,
        default=32,
        help="target probabilities kept per position for the soft labels (default: %(default)s)",
    )
    data.add_argument(
        "--feature-dir",
        default=None,
        help="feature cache folder (default: ~/.cache/alignspec/features/<target>/<data>-...)",
    )
    data.add_argument("--extract-only", action="store_true", help="extract the features, then stop")
    data.add_argument(
        "--backend",
        choices=BACKENDS,
        default="native",
        help="who runs the target during extraction (default: %(default)s)",
    )
    data.add_argument(
        "--quantize",
        choices=QUANTIZATIONS,
        default="none",
        help="extract features from the int8 target the head will draft for (native backend; "
        "default: %(default)s)",
    )
    data.add_argument(
        "--pack-tokens",
        type=int,
        default=None,
        help="tokens of several conversations per native forward during extraction "
        "(default: 8192 on CUDA, 0 = one conversation per forward on CPU)",
    )
    train = parser.add_argument_group("training")
    train.add_argument(
        "--epochs", type=int, default=d.epochs, help="passes over the data (default: %(default)s)"
    )
    train.add_argument(
        "--max-steps",
        type=int,
        default=None,
        help="stop after this many optimizer steps (default: no limit)",
    )
    train.add_argument(
        "--lr",
        type=float,
        default=None,
        help=f"peak learning rate (default: eagle2 {DEFAULT_LR['eagle2']:g}, "
        f"fspad {DEFAULT_LR['fspad']:g})",
    )
    train.add_argument(
        "--batch-tokens",
        type=int,
        default=d.batch_tokens,
        help="padded pair positions per batch and process (default: %(default)s)",
    )
    train.add_argument(
        "--draft-vocab",
        type=int,
        default=d.draft_vocab,
        help="draft over the N most frequent tokens (0 = the full vocabulary; "
        "default: %(default)s)",
    )
    train.add_argument(
        "--warmup-ratio",
        type=float,
        default=d.warmup_ratio,
        help="fraction of steps of linear warmup (default: %(default)s)",
    )
    train.add_argument(
        "--schedule",
        default=d.schedule,
        help=f"decay after warmup: {' or '.join(SCHEDULES)} (default: %(default)s)",
    )
    train.add_argument(
        "--weight-decay", type=float, default=d.weight_decay, help="AdamW (default: %(default)s)"
    )
    train.add_argument(
        "--save-every",
        type=int,
        default=d.save_every,
        help="steps between checkpoints, 0 = epoch ends only (default: %(default)s)",
    )
    train.add_argument(
        "--log-every",
        type=int,
        default=d.log_every,
        help="steps between history rows (default: %(default)s)",
    )
    train.add_argument(
        "--p-weight",
        type=float,
        default=d.p_weight,
        help="weight of the token (soft-label cross-entropy) loss; EAGLE uses 0.1 "
        "(default: %(default)s)",
    )
    train.add_argument(
        "--v-weight",
        type=float,
        default=d.v_weight,
        help="weight of the feature (smooth L1) loss (default: %(default)s)",
    )
    train.add_argument(
        "--unroll",
        type=int,
        default=d.unroll,
        help="training-time test: unroll the head K steps on its own features, loss on each "
        "(1 = teacher forcing only; default: %(default)s)",
    )
    train.add_argument(
        "--unroll-decay",
        type=float,
        default=d.unroll_decay,
        help="weight step j's loss by DECAY**(j-1) (EAGLE-3 uses 0.8; default: %(default)s)",
    )
    train.add_argument(
        "--unroll-vloss",
        action=argparse.BooleanOptionalAction,
        default=d.unroll_vloss,
        help="keep the feature loss on steps >= 2 (EAGLE-3 drops it; default: on)",
    )
    train.add_argument(
        "--init-from-target",
        action=argparse.BooleanOptionalAction,
        default=d.init_from_target,
        help="start the head's decoder layer from the target's last layer; off by default: "
        "on SmolLM2-135M it starts far worse than random (see README) (default: off)",
    )
    train.add_argument(
        "--init-from",
        default=None,
        metavar="PATH",
        help="continue training the head in this file (its draft vocabulary is kept)",
    )
    train.add_argument("--seed", type=int, default=d.seed, help="(default: %(default)s)")
    train.add_argument(
        "--device",
        default="auto",
        help="cpu, cuda or auto (cuda when available) (default: %(default)s)",
    )
    train.add_argument(
        "--mixed-precision",
        default=d.mixed_precision,
        help="auto (bf16 on CUDA), no, bf16 or fp16 (default: %(default)s)",
    )
    train.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    parser.set_defaults(handler=cmd_train_head)


def _device(name: str) -> str:
    if name == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def cmd_train_head(args: argparse.Namespace) -> int:
    from alignspec.training.api import DataSettings, extract_head_features, train_head

    settings = DataSettings(
        args.data,
        args.max_conversations,
        args.eval_conversations,
        args.max_len,
        args.topk,
        args.feature_dir,
    )
    quantize = None if args.quantize == "none" else args.quantize
    device = _device(args.device)
    if args.extract_only:
        extract_head_features(
            args.target,
            settings,
            device=device,
            backend=args.backend,
            quantize=quantize,
            progress=not args.no_progress,
            pack_tokens=args.pack_tokens,
        )
        return 0
    result = train_head(
        args.target,
        arch=args.arch,
        data=settings,
        output=args.output,
        resume=args.resume,
        backend=args.backend,
        quantize=quantize,
        pack_tokens=args.pack_tokens,
        lr=args.lr,
        epochs=args.epochs,
        max_steps=args.max_steps,
        batch_tokens=args.batch_tokens,
        draft_vocab=args.draft_vocab,
        seed=args.seed,
        warmup_ratio=args.warmup_ratio,
        schedule=args.schedule,
        weight_decay=args.weight_decay,
        p_weight=args.p_weight,
        v_weight=args.v_weight,
        unroll=args.unroll,
        unroll_decay=args.unroll_decay,
        unroll_vloss=args.unroll_vloss,
        init_from_target=args.init_from_target,
        init_from=args.init_from,
        log_every=args.log_every,
        save_every=args.save_every,
        device=device,
        mixed_precision=args.mixed_precision,
        progress=not args.no_progress,
    )
    if _is_main_process():
        summary = ""
        if result.final_eval:
            ev = result.final_eval
            steps = " ".join(f"{a:.3f}" for a in ev["eval_acc_steps"])
            summary = f" (held-out loss {ev['eval_loss']:.4f}, top-1 per step {steps})"
        print(f"head written to {result.head_path} after {result.steps} steps{summary}")
    return 0


def _is_main_process() -> bool:
    """Only one process prints the summary under ``accelerate launch``."""
    from accelerate import PartialState

    return bool(PartialState().is_main_process)


def _add_export_parser(subparsers: Any) -> None:
    from alignspec.training.export import FORMATS

    parser = subparsers.add_parser(
        "export-head",
        help="write an eagle2 head as an EAGLE draft checkpoint for vLLM / SGLang",
        description="Convert an alignspec eagle2 head file into the EAGLE checkpoint layout "
        "(fc.weight, layers.0.* with Llama's names, config.json) that vLLM and SGLang load "
        "as an EAGLE draft model. fspad heads have no such format (see the README).",
    )
    parser.add_argument("--format", choices=FORMATS, default="eagle", help="(default: eagle)")
    parser.add_argument("--head", required=True, metavar="PATH", help="the head file")
    parser.add_argument("--output", required=True, metavar="DIR", help="folder to write")
    parser.add_argument(
        "--target",
        default=None,
        help="the target model, recorded as the draft's base (default: the name in the head)",
    )
    parser.set_defaults(handler=cmd_export_head)


def cmd_export_head(args: argparse.Namespace) -> int:
    from alignspec.training.export import export_eagle

    folder = export_eagle(args.head, args.output, target=args.target)
    print(f"EAGLE draft checkpoint written to {folder}")
    return 0
