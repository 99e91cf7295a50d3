"""The training API in one call each: extract a target's features, train a head on them.

``train-head`` on the command line is a thin parser over these two functions. Every setting
is checked before the model loads; extraction runs the target through the native backend by
default (its prefill returns the final-norm hidden states of a whole conversation in one
forward), in fp32 or, with ``quantize="int8"``, in the precision the head will draft for.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from alignspec.errors import AlignspecError
from alignspec.training.checkpoint import checkpoints
from alignspec.training.config import TrainConfig, TrainResult
from alignspec.training.features import FeatureSplits


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
        from alignspec.training.data import DATA_SOURCES, sharegpt_path

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
    llm: Any,
    data: DataSettings,
    accelerator: Any = None,
    *,
    progress: bool = True,
    pack_tokens: int | None = None,
) -> FeatureSplits:
    """Extract (or reuse) the features for ``data``; returns their :class:`FeatureSplits`.

    ``pack_tokens``: conversations packed per native forward (None: on CUDA only, see
    :mod:`alignspec.training.prefill`); it changes speed, not the cached features. Under
    ``accelerate launch`` only the main process extracts; the others wait, then read the
    same cache.
    """
    from alignspec.training.features import feature_splits, prepare_features
    from alignspec.training.prefill import default_pack_tokens

    settings = asdict(data)
    if pack_tokens is None:
        pack_tokens = default_pack_tokens(llm.target.device)
    main = accelerator is None or accelerator.is_main_process
    splits = None
    if main:
        splits = prepare_features(llm, progress=progress, pack_tokens=pack_tokens, **settings)
    if accelerator is not None:
        accelerator.wait_for_everyone()
    if splits is None:
        splits = feature_splits(llm, **settings)
    if main:
        print(f"features: {splits.root}", flush=True)
    return splits


def _load_target(target: str, device: str, backend: str, quantize: str | None) -> Any:
    from alignspec.api import load

    return load(target, device=device, dtype="float32", backend=backend, quantize=quantize)


def extract_head_features(
    target: str = "default",
    data: DataSettings | None = None,
    *,
    device: str = "cpu",
    backend: str = "native",
    quantize: str | None = None,
    progress: bool = True,
    pack_tokens: int | None = None,
) -> FeatureSplits:
    """Extract (or finish extracting: finished shards are kept) the features a head for
    ``target`` trains on."""
    data = data or DataSettings()
    data.validate()
    llm = _load_target(target, device, backend, quantize)
    return extract_for_training(llm, data, progress=progress, pack_tokens=pack_tokens)


def train_head(
    target: str = "default",
    *,
    arch: str = "fspad",
    data: str | DataSettings = "sharegpt",
    output: str | Path | None = None,
    max_conversations: int | None = None,
    eval_conversations: int = 100,
    max_len: int = 1024,
    topk: int = 32,
    feature_dir: str | Path | None = None,
    resume: bool = False,
    backend: str = "native",
    quantize: str | None = None,
    pack_tokens: int | None = None,
    **options: Any,
) -> TrainResult:
    """Extract the target's features (when not cached) and train a draft head on them.

    ``options`` are :class:`TrainConfig` fields (``lr``, ``epochs``, ``max_steps``,
    ``unroll``, ``init_from_target``, ``init_from``, ``batch_tokens``, ``draft_vocab``,
    ``seed``, ``device`` ...). ``data`` is a source name (with the loose data arguments) or a
    whole :class:`DataSettings`. Returns where the head was written
    (``<output>/head.safetensors``; default output ``runs/head-<arch>``).
    """
    from alignspec.training.loop import make_accelerator, train
    from alignspec.training.warmstart import FrozenTarget

    unknown = sorted(set(options) - set(TrainConfig.__dataclass_fields__))
    if unknown:
        raise AlignspecError(f"unknown training option(s): {', '.join(unknown)}")
    cfg = TrainConfig(arch=arch, **options)
    if isinstance(data, DataSettings):
        settings = data
    else:
        settings = DataSettings(
            data, max_conversations, eval_conversations, max_len, topk, feature_dir
        )
    settings.validate()
    run_dir = Path(output) if output else Path("runs") / f"head-{arch}"
    if not resume and checkpoints(run_dir):
        raise AlignspecError(
            f"{run_dir} already holds a training run; pass --resume to continue it "
            "or choose another --output"
        )
    accelerator = make_accelerator(cfg)
    llm = _load_target(target, cfg.device, backend, quantize)
    splits = extract_for_training(
        llm, settings, accelerator, progress=cfg.progress, pack_tokens=pack_tokens
    )
    frozen = FrozenTarget.from_model(llm.model, llm.source.name if llm.source else "")
    del llm  # the target's own (native) copy of the weights is not needed for training
    return train(
        frozen, splits.train, splits.eval, run_dir, cfg, resume=resume, accelerator=accelerator
    )


def evaluate_head(
    target: str,
    head: str | Path,
    feature_dir: str | Path,
    *,
    unroll: int = 3,
    batch_tokens: int = 2048,
) -> dict[str, Any]:
    """Held-out numbers of a head file on cached features: the row ``history.json`` would hold.

    ``feature_dir`` is a split folder (``.../eval``) written by :func:`extract_head_features`
    for ``target``; it lets one compare heads, trained on any data, on the same text.
    """
    from alignspec.training.evaluate import evaluate_file
    from alignspec.training.warmstart import FrozenTarget

    llm = _load_target(target, "cpu", "hf", None)  # only its embedding and LM head are read
    frozen = FrozenTarget.from_model(llm.model)
    return evaluate_file(frozen, head, feature_dir, unroll=unroll, batch_tokens=batch_tokens)
