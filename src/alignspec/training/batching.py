"""Batches of cached features for head training: length-grouped, right-padded, resumable.

Sequences are grouped by length into batches of about ``batch_tokens`` pair positions, so
padding wastes almost nothing; the batches are fixed and only their order changes per epoch,
from the seed alone, so a resumed run replays the same order.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from alignspec.training.features import FeatureStore


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


def first_item(items: list[Any]) -> Any:
    """Collate function for a DataLoader whose items are already whole batches."""
    return items[0]
