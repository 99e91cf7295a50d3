"""Running sums of the training loss and per-step accuracy between two history rows.

What the progress bar shows and what each ``history["train"]`` row holds (loss, feature and
token losses, top-1 agreement for step 1 and for every unrolled step, pairs per second).
"""

from __future__ import annotations

from typing import Any

from alignspec.training.loss import LossParts


class Window:
    """Running sums between two log rows."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.loss = self.vloss = self.ploss = 0.0
        self.correct = self.count = self.pairs = self.steps = 0
        self.seconds = 0.0
        self.step_correct: list[int] = []
        self.step_count: list[int] = []

    def add(self, parts: LossParts, pairs: int, seconds: float) -> None:
        self.loss += float(parts.loss.detach())
        self.vloss += parts.vloss_sum
        self.ploss += parts.ploss_sum
        self.correct += parts.correct
        self.count += parts.count
        self.pairs += pairs
        self.steps += 1
        self.seconds += seconds
        if not self.step_count:
            self.step_correct = [0] * len(parts.steps)
            self.step_count = [0] * len(parts.steps)
        for j, s in enumerate(parts.steps):
            self.step_correct[j] += s.correct
            self.step_count[j] += s.count

    def postfix(self) -> str:
        loss = self.loss / max(1, self.steps)
        acc = self.correct / max(1, self.count)
        return f"loss {loss:.4f} acc {acc:.3f} {self.pairs / max(self.seconds, 1e-9):.0f} tok/s"

    def flush(self, state: dict[str, int], lr: float) -> dict[str, Any]:
        row = {
            "step": state["step"],
            "epoch": state["epoch"],
            "loss": self.loss / max(1, self.steps),
            "vloss": self.vloss / max(1, self.count),
            "ploss": self.ploss / max(1, self.count),
            "acc": self.correct / max(1, self.count),
            "acc_steps": [
                c / max(1, n) for c, n in zip(self.step_correct, self.step_count, strict=True)
            ],
            "lr": lr,
            "tokens_per_s": self.pairs / max(self.seconds, 1e-9),
        }
        self.reset()
        return row
