"""The head-training loop: an EAGLE-2 or FSPAD head on cached target features, under Accelerate.

Per batch the head is unrolled ``cfg.unroll`` steps (step 1 teacher forcing, later steps fed
the head's own features, see :mod:`alignspec.training.unroll`) and trained on the sum of the
steps' losses (:mod:`alignspec.training.loss`). Everything runs through
:class:`accelerate.Accelerator`, so the same code trains on one CPU core or, launched with
``accelerate launch -m alignspec train-head ...``, data-parallel on several GPUs; checkpoints
are ``save_state`` folders and ``--resume`` continues from the newest one at the exact step it
stopped (:mod:`alignspec.training.checkpoint`).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from alignspec.errors import AlignspecError
from alignspec.heads.io import save_head
from alignspec.training.batching import BatchDataset, first_item, group_batches
from alignspec.training.checkpoint import (
    checkpoints,
    load_checkpoint,
    save_checkpoint,
    write_history,
)
from alignspec.training.config import HEAD_FILE, TrainConfig, TrainResult
from alignspec.training.evaluate import evaluate_into
from alignspec.training.features import FeatureStore, draft_vocabulary
from alignspec.training.loss import batch_loss
from alignspec.training.unroll import UnrolledHead
from alignspec.training.warmstart import FrozenTarget, build_head
from alignspec.training.window import Window


def lr_lambda(total: int, warmup: int, schedule: str) -> Any:
    """Multiplier of the base learning rate: linear warmup, then linear or cosine decay to 0."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0 - progress

    return factor


def train(
    target: FrozenTarget,
    train_dir: str | Path,
    eval_dir: str | Path | None,
    output: str | Path,
    cfg: TrainConfig,
    *,
    resume: bool = False,
    accelerator: Any = None,
) -> TrainResult:
    """Train a head on the features in ``train_dir``; evaluate on ``eval_dir`` each epoch.

    Writes ``output/checkpoints/step-N`` (Accelerate state + ``trainer_state.json``),
    ``history.json``, ``training_curve.png`` and the final head
    (``output/head.safetensors``, bf16, written by :func:`~alignspec.heads.io.save_head`).
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    cfg.validate()
    run_dir = Path(output)
    if accelerator is None:
        accelerator = make_accelerator(cfg)
    existing = checkpoints(run_dir)
    if existing and not resume:
        raise AlignspecError(
            f"{run_dir} already holds a training run; pass --resume to continue it "
            "or choose another --output"
        )
    assert isinstance(accelerator, Accelerator)
    main = accelerator.is_main_process
    set_seed(cfg.seed)

    store = FeatureStore(train_dir)
    eval_store = FeatureStore(eval_dir) if eval_dir is not None else None
    _check_store(store, target)
    draft_ids = None
    if cfg.draft_vocab and cfg.draft_vocab < store.vocab_size:
        draft_ids = draft_vocabulary(store.frequencies(), cfg.draft_vocab)
    batches = group_batches(store.lengths, cfg.batch_tokens, cfg.seed)
    if not batches:
        raise AlignspecError("the training features hold no sequence with a trainable pair")
    eval_batches = (
        group_batches(eval_store.lengths, cfg.batch_tokens, cfg.seed) if eval_store else []
    )

    head = build_head(target, cfg, draft_ids)
    if cfg.init_from:  # a continued head keeps the draft vocabulary it was trained with
        draft_ids = head.draft_ids.clone() if head.draft_ids.numel() else None
    optimizer = torch.optim.AdamW(
        head.parameters(),
        lr=cfg.learning_rate,
        betas=(0.9, 0.95),
        weight_decay=cfg.weight_decay,
    )
    per_process = math.ceil(len(batches) / accelerator.num_processes)
    steps_total = cfg.epochs * per_process
    if cfg.max_steps is not None:
        steps_total = min(steps_total, cfg.max_steps)
    # AcceleratedScheduler steps num_processes times per optimizer step
    sched_total = steps_total * accelerator.num_processes
    warmup = round(cfg.warmup_ratio * sched_total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(sched_total, warmup, cfg.schedule)
    )
    dataset = BatchDataset(store, batches, cfg.seed)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=1, shuffle=False, collate_fn=first_item
    )
    model, optimizer, loader, scheduler = accelerator.prepare(
        UnrolledHead(head, cfg.unroll), optimizer, loader, scheduler
    )
    bare = accelerator.unwrap_model(model).head
    device = accelerator.device
    embed_weight = target.embed_weight.to(device=device, dtype=torch.float32)
    lm_weight = target.lm_head_weight.to(device=device, dtype=torch.float32)
    # the noise has its own generator, saved with each checkpoint, so a resumed run draws
    # exactly the noise the uninterrupted run would have drawn
    noise_rng = torch.Generator(device=device)
    noise_rng.manual_seed(cfg.seed * 7919 + accelerator.process_index)
    vocab_map = None
    if draft_ids is not None:
        vocab_map = torch.full((store.vocab_size,), -1, dtype=torch.long, device=device)
        vocab_map[draft_ids.to(device)] = torch.arange(len(draft_ids), device=device)

    state = {"step": 0, "epoch": 0, "batch_in_epoch": 0}
    run_config = {**asdict(cfg), "learning_rate": cfg.learning_rate, "warmup_steps": warmup}
    history: dict[str, Any] = {"config": run_config, "train": [], "eval": []}
    if resume and existing:
        ckpt = existing[-1]
        saved = load_checkpoint(accelerator, ckpt, cfg, noise_rng)
        state = {k: int(saved[k]) for k in state}
        history = saved.get("history", history)
        history["config"] = run_config
        if main:
            print(f"resuming from {ckpt} (step {state['step']})", flush=True)
    elif resume and main:
        print(f"no checkpoint in {run_dir}; starting from scratch", flush=True)
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        _describe(cfg, store, batches, steps_total, draft_ids, run_dir)

    bar = None
    if cfg.progress and main:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps_total, initial=state["step"], desc=f"train {cfg.arch}", unit="step")
    window = Window()
    last_eval_step = -1

    def evaluate() -> None:
        assert eval_store is not None
        evaluate_into(
            accelerator,
            bare,
            model,
            eval_store,
            eval_batches,
            state,
            history,
            embed_weight,
            lm_weight,
            vocab_map,
            cfg,
        )

    try:
        while state["step"] < steps_total and state["epoch"] < cfg.epochs:
            dataset.use_epoch(state["epoch"])
            batches_iter: Any = loader
            if state["batch_in_epoch"]:
                batches_iter = accelerator.skip_first_batches(loader, state["batch_in_epoch"])
            model.train()
            t0 = time.perf_counter()  # step time includes loading the batch
            for batch in batches_iter:
                with accelerator.autocast():
                    parts = batch_loss(
                        bare,
                        batch,
                        embed_weight,
                        lm_weight,
                        vocab_map,
                        forward=model,
                        noise_std=cfg.noise_std,
                        generator=noise_rng,
                        v_weight=cfg.v_weight,
                        p_weight=cfg.p_weight,
                        unroll_decay=cfg.unroll_decay,
                        unroll_vloss=cfg.unroll_vloss,
                    )
                accelerator.backward(parts.loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                state["step"] += 1
                state["batch_in_epoch"] += 1
                pairs = int((batch["seq_lens"] - 1).clamp_min(0).sum())
                now = time.perf_counter()
                window.add(parts, pairs, now - t0)
                t0 = now
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix_str(window.postfix(), refresh=False)
                if state["step"] % cfg.log_every == 0 or state["step"] == steps_total:
                    row = window.flush(state, scheduler.get_last_lr()[0])
                    if main:
                        history["train"].append(row)
                if cfg.save_every and state["step"] % cfg.save_every == 0:
                    save_checkpoint(accelerator, run_dir, state, history, cfg, noise_rng)
                    t0 = time.perf_counter()
                if state["step"] >= steps_total:
                    break
            epoch_done = state["batch_in_epoch"] >= len(loader)
            if epoch_done:
                state["epoch"] += 1
                state["batch_in_epoch"] = 0
            if eval_store is not None and (epoch_done or state["step"] >= steps_total):
                evaluate()
                last_eval_step = state["step"]
            if epoch_done or state["step"] >= steps_total:
                save_checkpoint(accelerator, run_dir, state, history, cfg, noise_rng)
        if eval_store is not None and last_eval_step != state["step"]:
            evaluate()
    finally:
        if bar is not None:
            bar.close()

    head_path = run_dir / HEAD_FILE
    accelerator.wait_for_everyone()
    final = history["eval"][-1] if history["eval"] else None
    if main:
        meta = {
            "trained_steps": str(state["step"]),
            "train_sequences": str(len(store)),
            "train_data": str(store.manifest.get("source", "")),
            "learning_rate": f"{cfg.learning_rate:g}",
        }
        if final is not None:
            meta["eval_loss"] = f"{final['eval_loss']:.6f}"
            meta["eval_top1"] = f"{final['eval_acc']:.6f}"
            meta["eval_top1_steps"] = ",".join(f"{a:.6f}" for a in final["eval_acc_steps"])
        meta["unroll"] = str(cfg.unroll)
        save_head(bare, head_path, metadata=meta)
        write_history(run_dir, history)
    accelerator.wait_for_everyone()
    return TrainResult(run_dir, head_path, state["step"], final, history)


def make_accelerator(cfg: TrainConfig) -> Any:
    """The Accelerator for ``cfg`` (CPU-only when asked; bf16 autocast on CUDA by default)."""
    try:
        from accelerate import Accelerator
    except ImportError:
        raise AlignspecError(
            "training a draft head needs Hugging Face Accelerate; run "
            "`pip install 'alignspec[train]'` (or `pip install accelerate`)"
        ) from None

    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise AlignspecError("device 'cuda' was asked for but no CUDA GPU is available")
    precision = cfg.mixed_precision
    if precision == "auto":
        precision = "bf16" if cfg.device == "cuda" else "no"
    return Accelerator(cpu=cfg.device == "cpu", mixed_precision=precision)


def _check_store(store: FeatureStore, target: FrozenTarget) -> None:
    hsz = int(target.embed_weight.shape[1])
    vocab = int(target.lm_head_weight.shape[0])
    if store.hidden_size != hsz or store.vocab_size != vocab:
        raise AlignspecError(
            f"the cached features (hidden {store.hidden_size}, vocab {store.vocab_size}) were "
            f"made by another target than this one (hidden {hsz}, vocab {vocab})"
        )


def _describe(
    cfg: TrainConfig,
    store: FeatureStore,
    batches: list[list[int]],
    steps: int,
    draft_ids: torch.Tensor | None,
    run_dir: Path,
) -> None:
    pairs = int((store.lengths - 1).clip(min=0).sum())
    vocab = f"draft vocab {len(draft_ids)}" if draft_ids is not None else "full vocab"
    start = cfg.init_from or ("target's last layer" if cfg.init_from_target else "random")
    print(
        f"training {cfg.arch} head: {len(store)} sequences, {pairs} pairs, {len(batches)} "
        f"batches of <= {cfg.batch_tokens} tokens, {steps} steps, lr {cfg.learning_rate:g}, "
        f"{vocab}, unroll {cfg.unroll}, start {start} -> {run_dir}",
        flush=True,
    )
