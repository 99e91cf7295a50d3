"""Training an EAGLE-2 or FSPAD draft head on cached target features, under HF Accelerate.

Per batch (teacher forcing, methods.md section 3): the head sees pair i = (embed(t_{i+1}),
f_i + noise) at position i and must reproduce the target's next feature f_{i+1} (SmoothL1 on
``regress``) and the target's next-token distribution at i+1 (soft cross-entropy on
``predict`` through the frozen LM head). A pair counts only where the token it leads to,
t_{i+2}, is an assistant-response token.

Everything runs through :class:`accelerate.Accelerator`, so the same code trains on one CPU
core or, launched with ``accelerate launch -m alignspec train-head ...``, data-parallel on
several GPUs; checkpoints are ``save_state`` folders and ``--resume`` continues from the
newest one at the exact step it stopped.

Sequences are grouped by length into batches of about ``batch_tokens`` pair positions, so
padding wastes almost nothing and the LM head, the dominant cost on CPU, is evaluated only at
counted positions (and only over the draft vocabulary when one is set).
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from alignspec.errors import AlignspecError
from alignspec.heads.features import FeatureStore, draft_vocabulary

ARCHES = ("eagle2", "fspad")
#: learning rates of the papers (methods.md section 3)
DEFAULT_LR = {"eagle2": 3e-5, "fspad": 5e-5}
SCHEDULES = ("linear", "cosine")
STATE_FILE = "trainer_state.json"
HISTORY_FILE = "history.json"
CURVE_FILE = "training_curve.png"
HEAD_FILE = "head.safetensors"


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
        if self.grad_clip <= 0:
            raise AlignspecError(f"gradient clipping must be positive, got {self.grad_clip}")
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
    final_eval: dict[str, float] | None = None
    history: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- batching
def feature_noise(
    features: torch.Tensor,
    seq_lens: torch.Tensor,
    std: float = 0.2,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """EAGLE's input-feature noise: ``(U(0,1) - 0.5) * std * 512 / seq_len`` per sequence.

    The head is fed its own (imperfect) features at inference, so training on slightly
    perturbed target features makes it robust to that drift. ``seq_len`` is each row's own
    sequence length (EAGLE uses the padded batch length; batches here are grouped by
    length, so the two agree up to padding).
    """
    scale = std * 512.0 / seq_lens.to(features.dtype).clamp_min(1.0)
    shape = (features.shape[0],) + (1,) * (features.dim() - 1)
    u = torch.rand(
        features.shape, generator=generator, device=features.device, dtype=features.dtype
    )
    return (u - 0.5) * scale.view(shape)


def group_batches(lengths: np.ndarray, batch_tokens: int, seed: int = 0) -> list[list[int]]:
    """Indices of trainable sequences grouped into batches of at most ``batch_tokens`` padded
    pair positions (a longer sequence gets a batch of its own).

    Sorting by length (random order among equal lengths) before filling keeps padding
    negligible; the batches are fixed and only their order changes per epoch.
    """
    pairs = np.asarray(lengths, dtype=np.int64) - 1
    keep = np.flatnonzero(pairs >= 2)
    rng = np.random.default_rng(seed)
    order = keep[np.lexsort((rng.random(len(keep)), -pairs[keep]))]
    batches: list[list[int]] = []
    current: list[int] = []
    width = 0
    for i in order.tolist():
        if current and (len(current) + 1) * width > batch_tokens:
            batches.append(current)
            current = []
        if not current:
            width = int(pairs[i])  # the longest (first) sequence sets the padded width
        current.append(i)
    if current:
        batches.append(current)
    return batches


def collate(store: FeatureStore, indices: list[int]) -> dict[str, torch.Tensor]:
    """Right-padded tensors for one batch of sequences (padding is never counted).

    ``input_ids``/``hidden``/``topk_*`` have ``T + 1`` columns (every token of the longest
    sequence); pair i uses column i for its feature and column i + 1 for its token,
    regression target and soft label. ``counted`` ([B, T]) marks pairs whose t_{i+2} is an
    assistant token.
    """
    seqs = [store[i] for i in indices]
    width = max(len(s.input_ids) for s in seqs)
    b, hsz, k = len(seqs), store.hidden_size, store.topk
    # fill numpy arrays (one copy out of the read-only memory maps), then wrap them
    ids = np.zeros((b, width), dtype=np.int64)
    hidden = np.zeros((b, width, hsz), dtype=np.float16)
    top_ids = np.zeros((b, width, k), dtype=np.int64)
    top_probs = np.zeros((b, width, k), dtype=np.float16)
    counted = np.zeros((b, width - 1), dtype=np.bool_)
    seq_lens = np.zeros(b, dtype=np.int64)
    for r, s in enumerate(seqs):
        n = len(s.input_ids)
        ids[r, :n] = s.input_ids
        hidden[r, :n] = s.hidden
        top_ids[r, :n] = s.topk_ids
        top_probs[r, :n] = s.topk_probs
        counted[r, : n - 2] = s.loss_mask[2:n]
        seq_lens[r] = n
    arrays = {
        "input_ids": ids,
        "hidden": hidden,
        "topk_ids": top_ids,
        "topk_probs": top_probs,
        "counted": counted,
        "seq_lens": seq_lens,
    }
    return {name: torch.from_numpy(a) for name, a in arrays.items()}


class BatchDataset(torch.utils.data.Dataset):
    """Item ``i`` is the ``i``-th batch of the current epoch's shuffled order.

    The order comes from ``seed + epoch`` alone, so a resumed run replays the same epoch
    order and can skip exactly the batches it already trained on.
    """

    def __init__(self, store: FeatureStore, batches: list[list[int]], seed: int) -> None:
        self.store = store
        self.batches = batches
        self.seed = seed
        self.order = list(range(len(batches)))

    def use_epoch(self, epoch: int) -> None:
        # not named set_epoch: Accelerate's DataLoaderShard calls dataset.set_epoch with its
        # own iteration count, which restarts at 0 after a resume
        gen = torch.Generator().manual_seed(self.seed * 1000003 + epoch)
        self.order = torch.randperm(len(self.batches), generator=gen).tolist()

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return collate(self.store, self.batches[self.order[i]])


def _first(items: list[Any]) -> Any:
    """Collate function for a DataLoader whose items are already whole batches."""
    return items[0]


# --------------------------------------------------------------------------- loss
@dataclass
class LossParts:
    """Sums over a batch's counted pairs (so they add up across batches and processes)."""

    loss: torch.Tensor  # the mean loss to back-propagate
    vloss_sum: float
    ploss_sum: float
    correct: int
    count: int


def batch_loss(
    head: Any,
    batch: dict[str, torch.Tensor],
    embed_weight: torch.Tensor,
    lm_head_weight: torch.Tensor,
    vocab_map: torch.Tensor | None,
    *,
    forward: Any = None,
    noise_std: float = 0.0,
    generator: torch.Generator | None = None,
    v_weight: float = 1.0,
    p_weight: float = 0.1,
) -> LossParts:
    """The EAGLE/FSPAD loss of one batch and its draft-token accuracy.

    ``forward`` is the (possibly DDP-wrapped) module to call; ``head`` is the bare module
    whose ``draft_logits`` maps ``predict`` to logits over the draft vocabulary.
    ``vocab_map`` maps a full-vocabulary id to its draft index (-1 when outside the draft
    vocabulary); the target's cached top-K probabilities are restricted to the draft
    vocabulary and renormalised to form the soft labels.
    """
    forward = head if forward is None else forward
    device = embed_weight.device
    ids = batch["input_ids"].to(device)
    hidden = batch["hidden"].to(device).float()
    counted = batch["counted"].to(device)
    feats, target = hidden[:, :-1], hidden[:, 1:]
    if noise_std > 0:
        lens = batch["seq_lens"].to(device)
        feats = feats + feature_noise(feats, lens, noise_std, generator)
    b, t = counted.shape
    with torch.no_grad():
        embeds = F.embedding(ids[:, 1:], embed_weight)
    positions = torch.arange(t, device=device).expand(b, t)
    predict, regress = forward(embeds, feats, positions)
    count = int(counted.sum())
    if count == 0:
        zero = (predict.sum() + regress.sum()) * 0.0  # keeps every parameter in the graph
        return LossParts(zero, 0.0, 0.0, 0, 0)
    vloss = F.smooth_l1_loss(regress[counted].float(), target[counted], reduction="none").mean(-1)
    logits = head.draft_logits(predict[counted], lm_head_weight).float()
    logq = torch.log_softmax(logits, dim=-1)
    top_ids = batch["topk_ids"].to(device)[:, 1:][counted]
    probs = batch["topk_probs"].to(device)[:, 1:][counted].float()
    idx = top_ids if vocab_map is None else vocab_map[top_ids]
    probs = probs * (idx >= 0)
    mass = probs.sum(-1, keepdim=True)
    valid = mass.squeeze(-1) > 0
    probs = probs / mass.clamp_min(1e-12)
    ploss = -(probs * logq.gather(-1, idx.clamp_min(0))).sum(-1)
    loss = v_weight * vloss.mean()
    if bool(valid.any()):
        loss = loss + p_weight * ploss[valid].mean()
    with torch.no_grad():
        best = logits.argmax(-1)
        draft_ids = getattr(head, "draft_ids", None)
        if draft_ids is not None and draft_ids.numel() > 0:
            best = draft_ids[best]
        correct = int((best == top_ids[:, 0]).sum())
    return LossParts(
        loss, float(vloss.detach().sum()), float(ploss[valid].detach().sum()), correct, count
    )


# --------------------------------------------------------------------------- schedule
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


# --------------------------------------------------------------------------- the run
@dataclass
class FrozenTarget:
    """What the head borrows from the target: its config, embedding and LM head (frozen)."""

    hf_config: Any
    embed_weight: torch.Tensor
    lm_head_weight: torch.Tensor
    name: str = ""

    @classmethod
    def from_model(cls, model: Any, name: str = "") -> FrozenTarget:
        embed = model.get_input_embeddings().weight.detach()
        head = model.get_output_embeddings()
        lm = head.weight.detach() if head is not None else embed
        return cls(model.config, embed, lm, name or getattr(model.config, "_name_or_path", ""))


def build_head(target: FrozenTarget, cfg: TrainConfig, draft_ids: torch.Tensor | None) -> Any:
    from alignspec.heads.config import HeadConfig
    from alignspec.heads.modules import FeatureHead

    n = 0 if draft_ids is None else len(draft_ids)
    head_cfg = HeadConfig.for_target(
        target.hf_config, cfg.arch, draft_vocab_size=n, target_name=target.name
    )
    head = FeatureHead(head_cfg)
    if draft_ids is not None:
        head.set_draft_vocab(draft_ids)
    return head


def _checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints (their state file is written last), oldest first."""
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        return []
    done = [
        p for p in folder.iterdir() if p.name.startswith("step-") and (p / STATE_FILE).is_file()
    ]
    return sorted(done, key=lambda p: int(p.name.split("-")[1]))


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

    from alignspec.heads.io import save_head

    cfg.validate()
    run_dir = Path(output)
    if accelerator is None:
        accelerator = make_accelerator(cfg)
    existing = _checkpoints(run_dir)
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
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, shuffle=False, collate_fn=_first)
    model, optimizer, loader, scheduler = accelerator.prepare(head, optimizer, loader, scheduler)
    bare = accelerator.unwrap_model(model)
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
        saved = json.loads((ckpt / STATE_FILE).read_text())
        _check_resume(saved.get("config", {}), cfg)
        accelerator.load_state(str(ckpt))
        rng_file = ckpt / f"noise_rng_{accelerator.process_index}.pt"
        if rng_file.is_file():
            noise_rng.set_state(torch.load(rng_file))
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
    window = _Window()
    last_eval_step = -1

    def evaluate() -> None:
        assert eval_store is not None
        _evaluate_into(
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
                    _save_checkpoint(accelerator, run_dir, state, history, cfg, noise_rng)
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
                _save_checkpoint(accelerator, run_dir, state, history, cfg, noise_rng)
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
        save_head(accelerator.unwrap_model(model), head_path, metadata=meta)
        _write_history(run_dir, history)
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


def _check_resume(saved: dict[str, Any], cfg: TrainConfig) -> None:
    """A run can resume with other step limits, but not with another model or vocabulary."""
    for key in ("arch", "draft_vocab", "batch_tokens", "seed"):
        if key in saved and saved[key] != getattr(cfg, key):
            raise AlignspecError(
                f"cannot resume: the checkpoint was trained with {key}={saved[key]}, "
                f"not {getattr(cfg, key)}"
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
    print(
        f"training {cfg.arch} head: {len(store)} sequences, {pairs} pairs, {len(batches)} "
        f"batches of <= {cfg.batch_tokens} tokens, {steps} steps, lr {cfg.learning_rate:g}, "
        f"{vocab} -> {run_dir}",
        flush=True,
    )


class _Window:
    """Running sums between two log rows."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.loss = self.vloss = self.ploss = 0.0
        self.correct = self.count = self.pairs = self.steps = 0
        self.seconds = 0.0

    def add(self, parts: LossParts, pairs: int, seconds: float) -> None:
        self.loss += float(parts.loss.detach())
        self.vloss += parts.vloss_sum
        self.ploss += parts.ploss_sum
        self.correct += parts.correct
        self.count += parts.count
        self.pairs += pairs
        self.steps += 1
        self.seconds += seconds

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
            "lr": lr,
            "tokens_per_s": self.pairs / max(self.seconds, 1e-9),
        }
        self.reset()
        return row


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
    forward: Any = None,
    rank: int = 0,
    world: int = 1,
) -> torch.Tensor:
    """Sums ``[vloss, ploss, correct, count]`` over this process's share of ``batches``
    (no noise: the held-out score of the head as it would be used)."""
    sums = torch.zeros(4, dtype=torch.float64, device=embed_weight.device)
    for indices in batches[rank::world]:
        parts = batch_loss(
            head,
            collate(store, indices),
            embed_weight,
            lm_head_weight,
            vocab_map,
            forward=forward,
            v_weight=cfg.v_weight,
            p_weight=cfg.p_weight,
        )
        sums += torch.tensor(
            [parts.vloss_sum, parts.ploss_sum, parts.correct, parts.count],
            dtype=torch.float64,
            device=sums.device,
        )
    return sums


def _evaluate_into(
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
    vloss, ploss, correct, count = (float(x) for x in sums.tolist())
    n = max(count, 1.0)
    row = {
        "step": state["step"],
        "epoch": state["epoch"],
        "eval_loss": cfg.v_weight * vloss / n + cfg.p_weight * ploss / n,
        "eval_vloss": vloss / n,
        "eval_ploss": ploss / n,
        "eval_acc": correct / n,
        "eval_pairs": int(count),
    }
    history["eval"].append(row)
    if accelerator.is_main_process:
        from tqdm.auto import tqdm

        # tqdm.write keeps the line from being glued to a running progress bar
        tqdm.write(
            f"eval @ step {row['step']}: loss {row['eval_loss']:.4f} "
            f"acc {row['eval_acc']:.3f} ({row['eval_pairs']} pairs)"
        )


def _save_checkpoint(
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
        for old in _checkpoints(run_dir)[: -cfg.keep_checkpoints or None]:
            shutil.rmtree(old, ignore_errors=True)
        _write_history(run_dir, history)
    accelerator.wait_for_everyone()


def _write_history(run_dir: Path, history: dict[str, Any]) -> None:
    (run_dir / HISTORY_FILE).write_text(json.dumps(history, indent=1) + "\n")
    plot_history(history, run_dir / CURVE_FILE)


def plot_history(history: dict[str, Any], path: Path) -> None:
    """Loss and draft-token accuracy against the step, train and held-out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train_rows, eval_rows = history.get("train", []), history.get("eval", [])
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    if train_rows:
        steps = [r["step"] for r in train_rows]
        ax_loss.plot(steps, [r["loss"] for r in train_rows], label="train")
        ax_acc.plot(steps, [r["acc"] for r in train_rows], label="train")
    if eval_rows:
        steps = [r["step"] for r in eval_rows]
        ax_loss.plot(steps, [r["eval_loss"] for r in eval_rows], "o-", label="held-out")
        ax_acc.plot(steps, [r["eval_acc"] for r in eval_rows], "o-", label="held-out")
    arch = history.get("config", {}).get("arch", "")
    ax_loss.set(xlabel="step", ylabel="loss", title=f"{arch} head: loss")
    ax_acc.set(xlabel="step", ylabel="top-1 agreement", title="draft token = target top-1")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --------------------------------------------------------------------------- one call
@dataclass(frozen=True)
class DataSettings:
    """Which features a run trains on (they key the feature cache)."""

    source: str = "sharegpt"
    max_conversations: int | None = None
    eval_conversations: int = 100
    max_len: int = 1024
    topk: int = 32
    cache_dir: str | Path | None = None

    def validate(self) -> None:
        """Raise :class:`AlignspecError` for a bad value or missing data, before any loading."""
        from alignspec.heads.data import DATA_SOURCES, sharegpt_path

        if self.source not in DATA_SOURCES:
            choices = ", ".join(DATA_SOURCES)
            raise AlignspecError(f"unknown data source '{self.source}'; choose one of {choices}")
        if self.max_conversations is not None and self.max_conversations < 1:
            raise AlignspecError(
                f"max conversations must be positive, got {self.max_conversations}"
            )
        if self.eval_conversations < 0:
            raise AlignspecError(f"eval conversations must be >= 0, got {self.eval_conversations}")
        if self.max_len < 3:
            raise AlignspecError(f"the maximum length must be at least 3, got {self.max_len}")
        if self.topk < 1:
            raise AlignspecError(f"topk must be at least 1, got {self.topk}")
        sharegpt_path()  # a missing data package fails now, not after the model loads


def extract_for_training(
    llm: Any, data: DataSettings, accelerator: Any = None, *, progress: bool = True
) -> Any:
    """Extract (or reuse) the features for ``data``; returns their :class:`FeatureSplits`.

    Under ``accelerate launch`` only the main process extracts; the others wait, then read
    the same cache.
    """
    from alignspec.heads.features import feature_splits, prepare_features

    settings = asdict(data)
    main = accelerator is None or accelerator.is_main_process
    splits = prepare_features(llm, progress=progress, **settings) if main else None
    if accelerator is not None:
        accelerator.wait_for_everyone()
    return splits if splits is not None else feature_splits(llm, **settings)


def train_head(
    target: str = "default",
    *,
    arch: str = "fspad",
    data: str = "sharegpt",
    output: str | Path | None = None,
    max_conversations: int | None = None,
    eval_conversations: int = 100,
    max_len: int = 1024,
    topk: int = 32,
    feature_dir: str | Path | None = None,
    resume: bool = False,
    backend: str = "hf",
    **options: Any,
) -> TrainResult:
    """Extract the target's features (when not cached) and train a draft head on them.

    ``options`` are :class:`TrainConfig` fields (``lr``, ``epochs``, ``max_steps``,
    ``batch_tokens``, ``draft_vocab``, ``seed``, ``device`` ...). Every setting is checked
    before the model loads. ``backend`` runs the target during extraction: transformers'
    forward (``"hf"``) prefills long sequences faster than the native one, which is built
    for decoding. Returns where the head was written (``<output>/head.safetensors``).
    """
    from alignspec.api import load

    unknown = sorted(set(options) - set(TrainConfig.__dataclass_fields__))
    if unknown:
        raise AlignspecError(f"unknown training option(s): {', '.join(unknown)}")
    cfg = TrainConfig(arch=arch, **options)
    settings = DataSettings(data, max_conversations, eval_conversations, max_len, topk, feature_dir)
    settings.validate()
    accelerator = make_accelerator(cfg)
    llm = load(target, device=cfg.device, dtype="float32", backend=backend)
    splits = extract_for_training(llm, settings, accelerator, progress=cfg.progress)
    frozen = FrozenTarget.from_model(llm.model, llm.source.name if llm.source else "")
    del llm  # the target's own (native) copy of the weights is not needed for training
    run_dir = Path(output) if output else Path("runs") / f"head-{arch}"
    return train(
        frozen, splits.train, splits.eval, run_dir, cfg, resume=resume, accelerator=accelerator
    )
