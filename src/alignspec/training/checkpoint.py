"""Resumable checkpoints of a head-training run and its history files.

Each checkpoint is an Accelerate ``save_state`` folder ``checkpoints/step-N`` plus the noise
generator's state and ``trainer_state.json``; the state file is written last, so a folder
without it (a run killed mid-save) is ignored and a resume continues from the one before.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from alignspec.errors import AlignspecError
from alignspec.training.config import CURVE_FILE, HISTORY_FILE, STATE_FILE, TrainConfig
from alignspec.training.plot import plot_history

#: settings a resumed run must share with its checkpoint (the rest may change, e.g. limits)
FIXED_ON_RESUME = ("arch", "draft_vocab", "batch_tokens", "seed")


def checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints (their state file is written last), oldest first."""
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        return []
    done = [
        p for p in folder.iterdir() if p.name.startswith("step-") and (p / STATE_FILE).is_file()
    ]
    return sorted(done, key=lambda p: int(p.name.split("-")[1]))


def check_resume(saved: dict[str, Any], cfg: TrainConfig) -> None:
    """A run can resume with other step limits, but not with another model or vocabulary."""
    for key in FIXED_ON_RESUME:
        if key in saved and saved[key] != getattr(cfg, key):
            raise AlignspecError(
                f"cannot resume: the checkpoint was trained with {key}={saved[key]}, "
                f"not {getattr(cfg, key)}"
            )


def save_checkpoint(
    accelerator: Any,
    run_dir: Path,
    state: dict[str, int],
    history: dict[str, Any],
    cfg: TrainConfig,
    noise_rng: torch.Generator,
) -> None:
    """``save_state`` into ``checkpoints/step-N``; the state file last marks it complete."""
    folder = run_dir / "checkpoints" / f"step-{state['step']:07d}"
    if (folder / STATE_FILE).is_file():
        return
    accelerator.wait_for_everyone()
    accelerator.save_state(str(folder))
    torch.save(noise_rng.get_state(), folder / f"noise_rng_{accelerator.process_index}.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        payload = {**state, "config": asdict(cfg), "history": history}
        (folder / STATE_FILE).write_text(json.dumps(payload, indent=1) + "\n")
        for old in checkpoints(run_dir)[: -cfg.keep_checkpoints or None]:
            shutil.rmtree(old, ignore_errors=True)
        write_history(run_dir, history)
    accelerator.wait_for_everyone()


def load_checkpoint(
    accelerator: Any, ckpt: Path, cfg: TrainConfig, noise_rng: torch.Generator
) -> dict[str, Any]:
    """Restore model, optimizer, scheduler and noise state; returns the saved trainer state."""
    saved = json.loads((ckpt / STATE_FILE).read_text())
    check_resume(saved.get("config", {}), cfg)
    accelerator.load_state(str(ckpt))
    rng_file = ckpt / f"noise_rng_{accelerator.process_index}.pt"
    if rng_file.is_file():
        noise_rng.set_state(torch.load(rng_file))
    return saved


def write_history(run_dir: Path, history: dict[str, Any]) -> None:
    (run_dir / HISTORY_FILE).write_text(json.dumps(history, indent=1) + "\n")
    plot_history(history, run_dir / CURVE_FILE)
