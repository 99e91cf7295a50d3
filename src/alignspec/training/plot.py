"""The training plot: loss and top-1 agreement against the optimizer step.

The agreement panel draws held-out top-1 for every unrolled step (1 = teacher forcing), so a
head that collapses once it reads its own features shows it at a glance.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_history(history: dict[str, Any], path: Path) -> None:
    """Loss and draft-token accuracy against the step, train and held-out (per step)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train_rows, eval_rows = history.get("train", []), history.get("eval", [])
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    if train_rows:
        steps = [r["step"] for r in train_rows]
        ax_loss.plot(steps, [r["loss"] for r in train_rows], label="train (all steps)")
        ax_acc.plot(steps, [r["acc"] for r in train_rows], label="train, step 1")
    if eval_rows:
        steps = [r["step"] for r in eval_rows]
        ax_loss.plot(steps, [r["eval_loss"] for r in eval_rows], "o-", label="held-out, step 1")
        depth = len(eval_rows[-1].get("eval_acc_steps", [eval_rows[-1]["eval_acc"]]))
        for j in range(depth):
            accs = [r.get("eval_acc_steps", [r["eval_acc"]])[j] for r in eval_rows]
            ax_acc.plot(steps, accs, "o-", label=f"held-out, step {j + 1}")
    arch = history.get("config", {}).get("arch", "")
    ax_loss.set(xlabel="step", ylabel="loss", title=f"{arch} head: loss")
    ax_acc.set(xlabel="step", ylabel="top-1 agreement", title="draft token = target top-1")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
