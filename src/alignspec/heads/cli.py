"""``alignspec train-head``: extract the target's features (once, cached) and train a draft head.

Registered by :mod:`alignspec.cli` through :func:`add_parser`. Every setting a user can get
wrong (architecture, numbers, a missing data package) is checked before the model loads and
ends in one line and exit code 2. Scale out with
``accelerate launch -m alignspec train-head ... --device cuda``.
"""

from __future__ import annotations

import argparse
from typing import Any

from alignspec.errors import AlignspecError


def add_parser(subparsers: Any) -> None:
    """Add the ``train-head`` subcommand to the main parser."""
    from alignspec.heads.train import ARCHES, DEFAULT_LR, SCHEDULES, TrainConfig
    from alignspec.targets.select import BACKENDS

    d = TrainConfig()
    parser = subparsers.add_parser(
        "train-head",
        help="train an EAGLE-2 or FSPAD draft head for a target (features cached once)",
        description="Run the target over ShareGPT once (features cached under "
        "~/.cache/alignspec/features), then train a feature draft head with teacher forcing. "
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
    data.add_argument("--data", default="sharegpt", help="training data (default: %(default)s)")
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
        default="hf",
        help="who runs the target during extraction; transformers' forward prefills long "
        "sequences faster than the native one, which is built for decoding "
        "(default: %(default)s)",
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


def _has_checkpoints(run_dir: Any) -> bool:
    folder = run_dir / "checkpoints"
    return folder.is_dir() and any(folder.iterdir())


def cmd_train_head(args: argparse.Namespace) -> int:
    from pathlib import Path

    from alignspec.heads.train import (
        DataSettings,
        FrozenTarget,
        TrainConfig,
        extract_for_training,
        make_accelerator,
        train,
    )

    cfg = TrainConfig(
        arch=args.arch,
        lr=args.lr,
        epochs=args.epochs,
        max_steps=args.max_steps,
        batch_tokens=args.batch_tokens,
        draft_vocab=args.draft_vocab,
        seed=args.seed,
        warmup_ratio=args.warmup_ratio,
        schedule=args.schedule,
        weight_decay=args.weight_decay,
        log_every=args.log_every,
        save_every=args.save_every,
        device=_device(args.device),
        mixed_precision=args.mixed_precision,
        progress=not args.no_progress,
    )
    settings = DataSettings(
        args.data,
        args.max_conversations,
        args.eval_conversations,
        args.max_len,
        args.topk,
        args.feature_dir,
    )
    settings.validate()
    run_dir = Path(args.output) if args.output else Path("runs") / f"head-{args.arch}"
    if not args.resume and not args.extract_only and _has_checkpoints(run_dir):
        raise AlignspecError(
            f"{run_dir} already holds a training run; pass --resume to continue it "
            "or choose another --output"
        )
    accelerator = make_accelerator(cfg)

    from alignspec.api import load

    llm = load(args.target, device=cfg.device, dtype="float32", backend=args.backend)
    splits = extract_for_training(llm, settings, accelerator, progress=cfg.progress)
    if accelerator.is_main_process:
        print(f"features: {splits.root}", flush=True)
    if args.extract_only:
        return 0
    frozen = FrozenTarget.from_model(llm.model, llm.source.name if llm.source else "")
    del llm
    result = train(
        frozen,
        splits.train,
        splits.eval,
        run_dir,
        cfg,
        resume=args.resume,
        accelerator=accelerator,
    )
    if accelerator.is_main_process:
        summary = ""
        if result.final_eval:
            ev = result.final_eval
            summary = f" (held-out loss {ev['eval_loss']:.4f}, top-1 {ev['eval_acc']:.3f})"
        print(f"head written to {result.head_path} after {result.steps} steps{summary}")
    return 0
