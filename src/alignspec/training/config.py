"""The settings of one head-training run, checked before anything loads, and what it returns.

Defaults follow EAGLE/FSPAD where the papers give a value; ``unroll`` (training-time test,
EAGLE-3/HASS) defaults to 3 steps because the drafter reads its own features from step 2 on.
That default is the methods' recommendation, not something measured here at scale.
``init_from_target`` is off by default: on SmolLM2-135M the copied last layer, which works in
residual-stream units (RMS ~36-40 there) while the head works on final-normed features (RMS
~1.6), starts at 18x the random head's feature loss and its fed-back features grow ~10x per
unrolled step (see :mod:`alignspec.training.warmstart`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignspec.errors import AlignspecError

ARCHES = ("eagle2", "fspad")
#: learning rates of the papers (methods.md section 3)
DEFAULT_LR = {"eagle2": 3e-5, "fspad": 5e-5}
SCHEDULES = ("linear", "cosine")
STATE_FILE = "trainer_state.json"
HISTORY_FILE = "history.json"
CURVE_FILE = "training_curve.png"
HEAD_FILE = "head.safetensors"
#: most unrolled steps a run may ask for (each step costs one more head forward)
MAX_UNROLL = 8


@dataclass
class TrainConfig:
    """Hyperparameters of one head-training run (defaults follow EAGLE/FSPAD where they exist)."""

    arch: str = "fspad"
    lr: float | None = None  # None: the paper's (eagle2 3e-5, fspad 5e-5)
    epochs: int = 1
    max_steps: int | None = None
    batch_tokens: int = 2048
    draft_vocab: int = 8192  # 0 = the full target vocabulary
    seed: int = 0
    warmup_ratio: float = 0.03
    schedule: str = "linear"
    weight_decay: float = 0.0
    v_weight: float = 1.0
    p_weight: float = 0.1
    noise_std: float = 0.2
    grad_clip: float = 0.5
    unroll: int = 3  # training-time test: head steps per position (1 = teacher forcing only)
    unroll_decay: float = 1.0  # step j's loss is weighted decay ** (j - 1) (EAGLE-3: 0.8)
    unroll_vloss: bool = True  # feature loss on steps >= 2 too (EAGLE-3 keeps only the token loss)
    init_from_target: bool = False  # start the head's layer from the target's last layer
    init_from: str | None = None  # continue from this head file instead
    log_every: int = 10
    save_every: int = 200  # optimizer steps between checkpoints (0: only at epoch ends)
    keep_checkpoints: int = 2
    device: str = "cpu"
    mixed_precision: str = "auto"  # auto: bf16 on CUDA, none on CPU
    progress: bool = True

    def __post_init__(self) -> None:
        self.validate()

    @property
    def learning_rate(self) -> float:
        return DEFAULT_LR[self.arch] if self.lr is None else self.lr

    def validate(self) -> None:
        """Raise :class:`AlignspecError` (one sentence) for any value that cannot work."""
        if self.arch not in ARCHES:
            raise AlignspecError(f"unknown head architecture '{self.arch}'; choose eagle2 or fspad")
        if self.lr is not None and not (0 < self.lr < 1):
            raise AlignspecError(f"the learning rate must be in (0, 1), got {self.lr}")
        if self.epochs < 1:
            raise AlignspecError(f"epochs must be at least 1, got {self.epochs}")
        if self.max_steps is not None and self.max_steps < 1:
            raise AlignspecError(f"max steps must be positive, got {self.max_steps}")
        if self.batch_tokens < 16:
            raise AlignspecError(f"batch tokens must be at least 16, got {self.batch_tokens}")
        if self.draft_vocab < 0:
            raise AlignspecError(f"the draft vocabulary size must be >= 0, got {self.draft_vocab}")
        if not 0 <= self.warmup_ratio < 1:
            raise AlignspecError(f"the warmup ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.schedule not in SCHEDULES:
            raise AlignspecError(f"unknown schedule '{self.schedule}'; choose linear or cosine")
        if self.v_weight < 0 or self.p_weight < 0 or self.v_weight + self.p_weight == 0:
            raise AlignspecError(
                f"the loss weights must be >= 0 and not both 0, got v {self.v_weight}, "
                f"p {self.p_weight}"
            )
        if self.grad_clip <= 0:
            raise AlignspecError(f"gradient clipping must be positive, got {self.grad_clip}")
        if not 1 <= self.unroll <= MAX_UNROLL:
            raise AlignspecError(f"unroll must be between 1 and {MAX_UNROLL}, got {self.unroll}")
        if not 0 < self.unroll_decay <= 1:
            raise AlignspecError(f"the unroll decay must be in (0, 1], got {self.unroll_decay}")
        if self.init_from is not None and not Path(self.init_from).is_file():
            raise AlignspecError(f"no draft head file at {self.init_from} (--init-from)")
        if self.log_every < 1 or self.save_every < 0:
            raise AlignspecError("log-every must be >= 1 and save-every >= 0")
        if self.device not in ("cpu", "cuda"):
            raise AlignspecError(f"unknown device '{self.device}'; choose cpu or cuda")
        if self.mixed_precision not in ("auto", "no", "bf16", "fp16"):
            raise AlignspecError(
                f"unknown mixed precision '{self.mixed_precision}'; choose auto, no, bf16, fp16"
            )


@dataclass
class TrainResult:
    """Where a finished run left its outputs, and its last numbers."""

    run_dir: Path
    head_path: Path
    steps: int
    final_eval: dict[str, Any] | None = None
    history: dict[str, Any] = field(default_factory=dict)
