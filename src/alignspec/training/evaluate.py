"""Held-out score of a head as it would draft: no noise, every unrolled step scored.

Top-1 agreement at step j is how often the head's draft token equals the target's top-1 when
the head reads its own features j - 1 times: the number that predicts acceptance at depth j.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from alignspec.training.batching import collate
from alignspec.training.config import TrainConfig
from alignspec.training.features import FeatureStore
from alignspec.training.loss import batch_loss


@torch.no_grad()
def evaluate(
    head: Any,
    store: FeatureStore,
    batches: list[list[int]],
    embed_weight: torch.Tensor,
    lm_head_weight: torch.Tensor,
    vocab_map: torch.Tensor | None,
    cfg: TrainConfig,
    *,
    rank: int = 0,
    world: int = 1,
) -> torch.Tensor:
    """Sums ``[steps, 4]`` (``vloss, ploss, correct, count`` per unrolled step) over this
    process's share of ``batches``."""
    sums = torch.zeros(cfg.unroll, 4, dtype=torch.float64, device=embed_weight.device)
    for indices in batches[rank::world]:
        parts = batch_loss(
            head,
            collate(store, indices),
            embed_weight,
            lm_head_weight,
            vocab_map,
            unroll=cfg.unroll,
            v_weight=cfg.v_weight,
            p_weight=cfg.p_weight,
        )
        rows = [[s.vloss, s.ploss, s.correct, s.count] for s in parts.steps]
        sums += torch.tensor(rows, dtype=torch.float64, device=sums.device)
    return sums


def eval_row(sums: torch.Tensor, state: dict[str, int], cfg: TrainConfig) -> dict[str, Any]:
    """One ``history["eval"]`` row from the reduced sums; the plain keys are step 1's."""
    per_step = []
    for vloss, ploss, correct, count in sums.tolist():
        n = max(count, 1.0)
        per_step.append(
            {
                "loss": cfg.v_weight * vloss / n + cfg.p_weight * ploss / n,
                "vloss": vloss / n,
                "ploss": ploss / n,
                "acc": correct / n,
                "pairs": int(count),
            }
        )
    first = per_step[0]
    return {
        "step": state["step"],
        "epoch": state["epoch"],
        "eval_loss": first["loss"],
        "eval_vloss": first["vloss"],
        "eval_ploss": first["ploss"],
        "eval_acc": first["acc"],
        "eval_pairs": first["pairs"],
        "eval_loss_steps": [s["loss"] for s in per_step],
        "eval_acc_steps": [s["acc"] for s in per_step],
    }


def evaluate_into(
    accelerator: Any,
    bare: Any,
    model: Any,
    store: FeatureStore,
    batches: list[list[int]],
    state: dict[str, int],
    history: dict[str, Any],
    embed_weight: torch.Tensor,
    lm_weight: torch.Tensor,
    vocab_map: torch.Tensor | None,
    cfg: TrainConfig,
) -> None:
    """Evaluate on every process, reduce, append the row to ``history`` and print it."""
    model.eval()
    with accelerator.autocast():
        sums = evaluate(
            bare,
            store,
            batches,
            embed_weight,
            lm_weight,
            vocab_map,
            cfg,
            rank=accelerator.process_index,
            world=accelerator.num_processes,
        )
    sums = accelerator.reduce(sums, reduction="sum")
    model.train()
    row = eval_row(sums, state, cfg)
    history["eval"].append(row)
    if accelerator.is_main_process:
        from tqdm.auto import tqdm

        steps = " ".join(f"{a:.3f}" for a in row["eval_acc_steps"])
        # tqdm.write keeps the line from being glued to a running progress bar
        tqdm.write(
            f"eval @ step {row['step']}: loss {row['eval_loss']:.4f} "
            f"top-1 per step {steps} ({row['eval_pairs']} pairs)"
        )


def evaluate_file(
    target: Any,
    head: str | Path,
    feature_dir: str | Path,
    *,
    unroll: int = 3,
    batch_tokens: int = 2048,
) -> dict[str, Any]:
    """:func:`eval_row` of the head saved at ``head`` over the features in ``feature_dir``,
    for a :class:`~alignspec.training.warmstart.FrozenTarget` ``target``."""
    from alignspec.heads.io import load_head
    from alignspec.training.batching import group_batches

    store = FeatureStore(feature_dir)
    loaded = load_head(
        str(head),
        hidden_size=int(target.embed_weight.shape[1]),
        vocab_size=int(target.lm_head_weight.shape[0]),
    ).float()
    cfg = TrainConfig(arch=loaded.cfg.arch, unroll=unroll, batch_tokens=batch_tokens)
    vocab_map = None
    if loaded.draft_ids.numel():
        vocab_map = torch.full((store.vocab_size,), -1, dtype=torch.long)
        vocab_map[loaded.draft_ids] = torch.arange(len(loaded.draft_ids))
    sums = evaluate(
        loaded.eval(),
        store,
        group_batches(store.lengths, batch_tokens, cfg.seed),
        target.embed_weight.float(),
        target.lm_head_weight.float(),
        vocab_map,
        cfg,
    )
    return eval_row(sums, {"step": 0, "epoch": 0}, cfg)
