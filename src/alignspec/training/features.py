"""Target features for head training, extracted once and cached on disk.

A draft head is trained by teacher forcing on the target's own last hidden states and
next-token distributions. Running the target is most of the cost of a training step, and the
same features serve every epoch and both head architectures, so they are computed once per
(target, data, max length, top-K) and written as safetensors shards:

``<cache>/features/<target-key>/<name>/{train,eval}/shard-00000.safetensors``

Each shard holds whole sequences back to back: ``input_ids`` (int32), ``loss_mask`` (uint8),
``hidden`` (fp16, after the final norm), ``topk_ids`` (int32) and ``topk_probs`` (fp16, the
target's top-K next-token probabilities, never the full ``L x V``), and ``offsets`` (int64,
``S + 1`` sequence boundaries). A shard is rewritten only when missing or made with other
settings, so an interrupted extraction resumes where it stopped. Training reads the shards
through memory maps, so a dataset larger than RAM works.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.numpy import save_file

from alignspec.errors import AlignspecError
from alignspec.training.data import Conversation, encode_conversation
from alignspec.training.prefill import target_features

FORMAT_VERSION = "1"
SHARD_SIZE = 64  # conversations per shard: ~5 min of CPU extraction lost at most
MANIFEST = "manifest.json"
FREQUENCIES = "frequencies.safetensors"
_NP_DTYPES = {"F16": np.float16, "F32": np.float32, "I32": np.int32, "I64": np.int64}
_NP_DTYPES |= {"U8": np.uint8, "BOOL": np.bool_}


def target_key(llm: Any) -> str:
    """A folder name for the target: its readable name plus a short hash of where it is from.

    The hash keeps two different checkpoints that share a name (a fine-tune, another
    dtype, the native backend's int8 weights) from sharing cached features.
    """
    source = getattr(llm, "source", None)
    config = llm.model.config
    name = source.name if source is not None else getattr(config, "_name_or_path", "") or "model"
    where = source.location if source is not None else json.dumps(config.to_dict(), default=str)
    dtype = str(next(llm.model.parameters()).dtype)
    quantize = getattr(getattr(llm, "target", None), "quantize", None)
    if quantize:  # an int8 target's features are another model's (unquantized keys unchanged)
        dtype += f"|{quantize}"
    digest = hashlib.sha1(f"{where}|{dtype}".encode()).hexdigest()[:8]
    clean = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(str(name)).name).strip("-") or "model"
    return f"{clean}-{digest}"


def dataset_name(source: str, max_len: int, topk: int) -> str:
    return f"{source}-len{max_len}-top{topk}"


def default_feature_dir(llm: Any, source: str, max_len: int, topk: int) -> Path:
    """``<alignspec cache>/features/<target-key>/<source>-len<max_len>-top<K>``."""
    from alignspec.loading import cache_root

    return cache_root() / "features" / target_key(llm) / dataset_name(source, max_len, topk)


# --------------------------------------------------------------------------- reading
def read_safetensors_mmap(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Memory-mapped numpy views of every tensor in a safetensors file, plus its metadata.

    ``safetensors`` copies tensors into RAM on load; the format is a JSON header followed by
    raw little-endian buffers, so mapping the buffers directly costs nothing until a
    sequence is read.
    """
    with open(path, "rb") as fh:
        (header_len,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(header_len))
    metadata = header.pop("__metadata__", {}) or {}
    base = 8 + header_len
    # one map per file (each map holds a file descriptor), sliced into typed views
    raw = np.memmap(path, dtype=np.uint8, mode="r") if header else None
    arrays = {}
    for name, info in header.items():
        dtype = _NP_DTYPES[info["dtype"]]
        begin, end = info["data_offsets"]
        shape = tuple(info["shape"])
        if end == begin:
            arrays[name] = np.zeros(shape, dtype=dtype)
            continue
        assert raw is not None
        arrays[name] = raw[base + begin : base + end].view(dtype).reshape(shape)
    return arrays, metadata


@dataclass
class CachedSequence:
    """One cached sequence (numpy views; nothing is copied until used)."""

    input_ids: np.ndarray  # [L] int32
    loss_mask: np.ndarray  # [L] uint8
    hidden: np.ndarray  # [L, H] fp16
    topk_ids: np.ndarray  # [L, K] int32
    topk_probs: np.ndarray  # [L, K] fp16


class FeatureStore:
    """Read access to one split's shards (see the module docstring for the layout)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        path = self.folder / MANIFEST
        if not path.is_file():
            raise AlignspecError(f"no extracted features at {self.folder} (missing {MANIFEST})")
        self.manifest: dict[str, Any] = json.loads(path.read_text())
        self._shards = [read_safetensors_mmap(self.folder / n)[0] for n in self.manifest["shards"]]
        index = []
        for s, shard in enumerate(self._shards):
            offsets = np.asarray(shard["offsets"])
            index.extend((s, int(a), int(b)) for a, b in itertools.pairwise(offsets))
        self._index = index
        self.lengths = np.array([b - a for _, a, b in index], dtype=np.int64)

    @property
    def topk(self) -> int:
        return int(self.manifest["topk"])

    @property
    def hidden_size(self) -> int:
        return int(self.manifest["hidden_size"])

    @property
    def vocab_size(self) -> int:
        return int(self.manifest["vocab_size"])

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, i: int) -> CachedSequence:
        s, a, b = self._index[i]
        shard = self._shards[s]
        return CachedSequence(
            input_ids=shard["input_ids"][a:b],
            loss_mask=shard["loss_mask"][a:b],
            hidden=shard["hidden"][a:b],
            topk_ids=shard["topk_ids"][a:b],
            topk_probs=shard["topk_probs"][a:b],
        )

    def frequencies(self) -> dict[str, np.ndarray]:
        """Token counts saved with the training split (``assistant`` and ``top1``)."""
        path = self.folder / FREQUENCIES
        if not path.is_file():
            raise AlignspecError(f"no token frequencies at {path}; extract the features again")
        arrays, _ = read_safetensors_mmap(path)
        return {k: np.asarray(v) for k, v in arrays.items()}


# --------------------------------------------------------------------------- writing
def _shard_metadata(
    target: str, start: int, stop: int, topk: int, max_len: int, ids_digest: str
) -> dict:
    return {
        "format": FORMAT_VERSION,
        "target": target,
        "conv_start": str(start),
        "conv_stop": str(stop),
        "topk": str(topk),
        "max_len": str(max_len),
        "conversations": ids_digest,
    }


def _ids_digest(conversations: Sequence[Conversation]) -> str:
    return hashlib.sha1("\n".join(c.id for c in conversations).encode()).hexdigest()[:16]


def _shard_is_done(path: Path, expected: dict[str, str]) -> bool:
    if not path.is_file():
        return False
    try:
        _, metadata = read_safetensors_mmap(path)
    except (OSError, ValueError, KeyError):
        return False  # a damaged or foreign file: recompute it
    return all(metadata.get(k) == v for k, v in expected.items())


def extract_features(
    llm: Any,
    conversations: Sequence[Conversation],
    out_dir: str | Path,
    *,
    topk: int = 32,
    max_len: int = 1024,
    shard_size: int = SHARD_SIZE,
    source: str = "sharegpt",
    split: str = "train",
    frequencies: bool = True,
    progress: bool = True,
    pack_tokens: int = 0,
) -> Path:
    """Run the target over ``conversations`` and write shards plus a manifest to ``out_dir``.

    Shard ``k`` holds conversations ``[k * shard_size, (k + 1) * shard_size)`` (those that
    survive encoding); a shard already written with the same conversations and settings is
    kept, so a rerun only computes what is missing. With ``frequencies`` the token counts
    for picking a draft vocabulary are saved too. Returns the manifest path.
    """
    if topk < 1:
        raise AlignspecError(f"topk must be at least 1, got {topk}")
    if max_len < 3:
        raise AlignspecError(f"max_len must be at least 3 tokens, got {max_len}")
    if shard_size < 1:
        raise AlignspecError(f"shard_size must be positive, got {shard_size}")
    if not conversations:
        raise AlignspecError("there are no conversations to extract features from")
    max_len = min(max_len, int(llm.target.max_context))
    topk = min(topk, int(llm.target.vocab_size))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    starts = range(0, len(conversations), shard_size)
    plan = []
    key = target_key(llm)
    for k, start in enumerate(starts):
        chunk = conversations[start : start + shard_size]
        meta = _shard_metadata(key, start, start + len(chunk), topk, max_len, _ids_digest(chunk))
        plan.append((out / f"shard-{k:05d}.safetensors", chunk, meta))
    todo = [p for p in plan if not _shard_is_done(p[0], p[2])]
    bar = _progress_bar(sum(len(p[1]) for p in todo), split, progress)
    tokens_done, t0 = 0, time.perf_counter()
    try:
        for path, chunk, meta in todo:
            tokens_done += _write_shard(
                llm, chunk, path, meta, topk, max_len, bar, tokens_done, t0, pack_tokens
            )
    finally:
        if bar is not None:
            bar.close()
    if todo and progress:
        seconds = time.perf_counter() - t0
        print(
            f"features ({split}): {tokens_done} tokens in {len(todo)} shards, {seconds:.1f} s, "
            f"{tokens_done / max(seconds, 1e-9):.0f} tokens/s",
            flush=True,
        )
    shards = [p[0] for p in plan]
    return _write_manifest(llm, out, shards, source, split, topk, max_len, frequencies)


def _progress_bar(total: int, split: str, enabled: bool) -> Any:
    if not enabled or total == 0:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"features ({split})", unit="conv", dynamic_ncols=True)


def _write_shard(
    llm: Any,
    chunk: Sequence[Conversation],
    path: Path,
    meta: dict[str, str],
    topk: int,
    max_len: int,
    bar: Any,
    tokens_before: int,
    t0: float,
    pack_tokens: int = 0,
) -> int:
    """Compute one shard and write it atomically; returns the number of tokens in it."""
    ids_parts, mask_parts, hid_parts, tid_parts, tpr_parts = [], [], [], [], []
    offsets = [0]
    encoded = [encode_conversation(llm.tokenizer, conv, max_len) for conv in chunk]
    kept = [e for e in encoded if e is not None]
    if bar is not None and len(kept) < len(encoded):
        bar.update(len(encoded) - len(kept))  # dropped conversations cost nothing
    step = max(1, len(kept) if pack_tokens > 0 else 1)
    for start in range(0, len(kept), step):
        group = kept[start : start + step]
        feats = target_features(llm.target, [e.input_ids for e in group], topk, pack_tokens)
        for enc, (hidden, top_ids, top_probs) in zip(group, feats, strict=True):
            ids_parts.append(np.asarray(enc.input_ids, dtype=np.int32))
            mask_parts.append(np.asarray(enc.loss_mask, dtype=np.uint8))
            hid_parts.append(hidden)
            tid_parts.append(top_ids)
            tpr_parts.append(top_probs)
            offsets.append(offsets[-1] + len(enc.input_ids))
        if bar is not None:
            bar.update(len(group))
            rate = (tokens_before + offsets[-1]) / max(time.perf_counter() - t0, 1e-9)
            bar.set_postfix_str(f"{rate:.0f} tok/s", refresh=False)
    hidden_size = int(llm.model.config.hidden_size)

    def cat(parts: list[np.ndarray], dtype: Any, tail: tuple[int, ...] = ()) -> np.ndarray:
        return np.concatenate(parts) if parts else np.zeros((0, *tail), dtype=dtype)

    tensors = {
        "input_ids": cat(ids_parts, np.int32),
        "loss_mask": cat(mask_parts, np.uint8),
        "hidden": cat(hid_parts, np.float16, (hidden_size,)),
        "topk_ids": cat(tid_parts, np.int32, (topk,)),
        "topk_probs": cat(tpr_parts, np.float16, (topk,)),
        "offsets": np.asarray(offsets, dtype=np.int64),
    }
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(path)
    return offsets[-1]


def _write_manifest(
    llm: Any,
    out: Path,
    shards: list[Path],
    source: str,
    split: str,
    topk: int,
    max_len: int,
    frequencies: bool,
) -> Path:
    sequences = tokens = assistant = 0
    vocab = int(llm.target.vocab_size)
    assistant_counts = np.zeros(vocab, dtype=np.int64)
    top1_counts = np.zeros(vocab, dtype=np.int64)
    for path in shards:
        arrays, _ = read_safetensors_mmap(path)
        ids, mask = np.asarray(arrays["input_ids"]), np.asarray(arrays["loss_mask"]).astype(bool)
        sequences += len(arrays["offsets"]) - 1
        tokens += len(ids)
        assistant += int(mask.sum())
        if frequencies and len(ids):
            assistant_counts += np.bincount(ids[mask], minlength=vocab)[:vocab]
            # the target's top-1 where the next token is a trained one (what the head drafts)
            before = np.zeros_like(mask)
            before[:-1] = mask[1:]
            starts = np.asarray(arrays["offsets"])[1:] - 1  # last position of each sequence
            before[starts] = False
            top1 = np.asarray(arrays["topk_ids"][:, 0])[before]
            top1_counts += np.bincount(top1, minlength=vocab)[:vocab]
    if frequencies:
        save_file(
            {"assistant": assistant_counts, "top1": top1_counts},
            str(out / FREQUENCIES),
            metadata={"split": split},
        )
    manifest = {
        "format": FORMAT_VERSION,
        "target": target_key(llm),
        "source": source,
        "split": split,
        "topk": topk,
        "max_len": max_len,
        "hidden_size": int(llm.model.config.hidden_size),
        "vocab_size": vocab,
        "hidden_dtype": "float16",
        "sequences": sequences,
        "tokens": tokens,
        "assistant_tokens": assistant,
        "shards": [p.name for p in shards],
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    path = out / MANIFEST
    # per-process name: two trainers sharing one cache both rewrite the manifest at start
    tmp = path.with_name(f"{MANIFEST}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    tmp.replace(path)
    return path


def draft_vocabulary(frequencies: dict[str, np.ndarray], size: int) -> torch.Tensor:
    """The ``size`` most frequent token ids (EAGLE-3 style), sorted by id.

    Counts are the assistant tokens plus the target's top-1 predictions where the head is
    trained, so the vocabulary covers both what is written and what the target would draft.
    Ties go to the lower id, so the choice is deterministic.
    """
    counts = frequencies["assistant"].astype(np.int64) + frequencies["top1"].astype(np.int64)
    if size <= 0 or size >= len(counts):
        return torch.arange(len(counts), dtype=torch.long)
    order = np.lexsort((np.arange(len(counts)), -counts))[:size]
    return torch.from_numpy(np.sort(order).astype(np.int64))


@dataclass(frozen=True)
class FeatureSplits:
    """Where the extracted train and eval features of one run live."""

    root: Path
    train: Path
    eval: Path | None


def prepare_features(
    llm: Any,
    *,
    source: str = "sharegpt",
    max_conversations: int | None = None,
    eval_conversations: int = 100,
    max_len: int = 1024,
    topk: int = 32,
    cache_dir: str | Path | None = None,
    eval_fraction: float | None = None,
    progress: bool = True,
    pack_tokens: int = 0,
) -> FeatureSplits:
    """Extract (or reuse) the features of the train and held-out splits of ``source``.

    ``max_conversations`` caps the training conversations (the first N of a fixed shuffle);
    ``eval_conversations`` caps the held-out ones (0 = no evaluation). The folder defaults to
    :func:`default_feature_dir`; shards already there are reused.
    """
    from alignspec.training.data import EVAL_FRACTION, load_conversations, split_conversations
    from alignspec.training.selfdistill import GENERATED_FILE, SELF_SOURCE, self_distill

    if max_conversations is not None and max_conversations < 1:
        raise AlignspecError(f"max_conversations must be positive, got {max_conversations}")
    if eval_conversations < 0:
        raise AlignspecError(f"eval_conversations must be >= 0, got {eval_conversations}")
    max_len = min(max_len, int(llm.target.max_context))
    root = feature_splits(llm, source=source, max_len=max_len, topk=topk, cache_dir=cache_dir).root
    conversations = load_conversations(source)
    fraction = EVAL_FRACTION if eval_fraction is None else eval_fraction
    train, held = split_conversations(conversations, fraction)
    if max_conversations is not None:
        train = train[:max_conversations]
    held = held[:eval_conversations]
    if source == SELF_SOURCE:
        replies = root / GENERATED_FILE
        train = self_distill(llm, train, replies, max_len=max_len, progress=progress)
        held = self_distill(llm, held, replies, max_len=max_len, progress=progress)
    common = {"topk": topk, "max_len": max_len, "source": source, "progress": progress}
    common["pack_tokens"] = pack_tokens
    extract_features(llm, train, root / "train", split="train", **common)
    eval_dir = None
    if held:
        extract_features(llm, held, root / "eval", split="eval", frequencies=False, **common)
        eval_dir = root / "eval"
    return FeatureSplits(root, root / "train", eval_dir)


def feature_splits(
    llm: Any,
    *,
    source: str = "sharegpt",
    max_len: int = 1024,
    topk: int = 32,
    cache_dir: str | Path | None = None,
    eval_conversations: int = 100,
    **_: Any,
) -> FeatureSplits:
    """Where :func:`prepare_features` puts (or put) the features, without computing any.

    Extra keyword arguments of :func:`prepare_features` are accepted and ignored, so both can
    take the same settings (processes other than the main one only need the paths).
    """
    max_len = min(max_len, int(llm.target.max_context))
    root = Path(cache_dir) if cache_dir else default_feature_dir(llm, source, max_len, topk)
    has_eval = eval_conversations > 0 and (root / "eval" / MANIFEST).is_file()
    return FeatureSplits(root, root / "train", root / "eval" if has_eval else None)
