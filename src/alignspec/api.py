"""The public surface: ``load()`` a model once, then ``generate()`` or ``stream()`` with a method.

Example::

    import alignspec
    llm = alignspec.load()                      # the embedded SmolLM2-135M-Instruct
    out = llm.generate("Summarize: ...", method="pld", max_new_tokens=128)
    print(out.text, out.stats.tau)
    out = llm.generate("Write a poem.", method="pld", temperature=0.8, top_p=0.95, seed=1)
    for piece in llm.stream("Hello!", method="pld"):
        print(piece, end="", flush=True)
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from alignspec.budget import Budget, RealizedRates, parse_budget
from alignspec.cost import CostModel, fingerprint, load_or_measure
from alignspec.engine import Engine
from alignspec.errors import AlignspecError
from alignspec.loading import ModelSource, load_hf
from alignspec.methods import get_method
from alignspec.prompting import Messages, encode_prompt, fit_context
from alignspec.sampling import SamplingParams
from alignspec.stats import GenerationStats
from alignspec.targets.base import Target
from alignspec.targets.select import check_backend, make_target
from alignspec.text import TextAssembler
from alignspec.validation import check_request

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class GenerationOutput:
    """The result of one generation."""

    text: str
    token_ids: list[int]
    prompt_ids: list[int]
    finish_reason: str  # "stop" (EOS or a stop string) or "length"
    stats: GenerationStats
    method: str
    sampling: SamplingParams = field(default_factory=SamplingParams)


@dataclass
class Generation:
    """A running generation: an iterator of text deltas; ``output`` is set when it ends."""

    _deltas: Iterator[str]
    output: GenerationOutput | None = field(default=None, init=False)

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        return next(self._deltas)

    def close(self) -> None:
        """Stop the generation now (as closing a generator does): the model is free again and
        ``output`` stays ``None``."""
        close = getattr(self._deltas, "close", None)
        if close is not None:
            close()


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise AlignspecError(f"unknown device '{device}'; use auto, cpu or cuda") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise AlignspecError("device 'cuda' was asked for but no CUDA GPU is available")
    return dev


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise AlignspecError(f"unknown dtype '{dtype}'; choose auto or one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


class LLM:
    """A loaded target model plus its tokenizer; methods are chosen per call."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        source: ModelSource | None = None,
        *,
        backend: str = "auto",
        quantize: str | None = None,
    ) -> None:
        """Wrap a loaded transformers model and its tokenizer.

        ``backend`` picks who runs the forward: ``"auto"`` takes alignspec's native forward
        when it implements the architecture (verifying a draft tree then costs about one
        decoding step) and transformers otherwise; ``"native"`` and ``"hf"`` force one.
        ``quantize="int8"`` stores the native backend's weights in int8 and rounds each
        activation row to int8 before every product (smaller and, with an exact oneDNN int8
        GEMM, faster; outputs are those of the quantized model).
        """
        self.model = model
        self.tokenizer = tokenizer
        self.source = source
        self.target: Target = make_target(model, backend, quantize)
        self.eos_ids = self._eos_ids()
        self._draft_models: dict[str, Any] = {}
        self._feature_heads: dict[tuple[str, bool], Any] = {}
        # One KV cache, so one generation at a time: other threads wait for it, and a second
        # generation opened on the thread that holds it would deadlock, so it is refused.
        self._kv_lock = threading.Lock()
        self._kv_owner: int | None = None
        self._cost: CostModel | None = None
        #: per method and options (see :meth:`make_budget`)
        self._realized: dict[str, RealizedRates] = {}

    def cost_model(self, *, force: bool = False) -> CostModel:
        """This target's verify cost per row count on this machine (measured once, cached).

        Measuring runs the target, so it takes the KV cache like a generation does.
        """
        stale = self._cost is not None and self._cost.key != fingerprint(self.target)
        if self._cost is None or force or stale:  # stale: e.g. the thread count changed
            if self._kv_owner == threading.get_ident():
                self._cost = load_or_measure(self.target, force=force)
            else:
                with self._kv_lock:
                    self._cost = load_or_measure(self.target, force=force)
        return self._cost

    def make_budget(
        self, budget: str | int | None, method: str = "", options: object = None
    ) -> Budget:
        """A request's draft budget: ``"auto"`` (cost-aware) or at most ``N`` draft nodes.

        The realized rounds of earlier requests with the same ``method`` and ``options`` (its
        option dataclass) carry over (:class:`RealizedRates`): what a drafter's rounds realize
        depends on its options (an eagle2 tree four levels deep costs three times a one-level
        one), so another configuration's rates would veto or allow the wrong drafts."""
        limit = parse_budget(budget)
        if limit is not None:
            return Budget(limit=limit)
        history = self._realized.setdefault(f"{method} {options!r}", RealizedRates())
        return Budget(cost=self.cost_model(), history=history)

    def _eos_ids(self) -> frozenset[int]:
        ids: set[int] = set()
        for value in (
            getattr(self.model.generation_config, "eos_token_id", None),
            getattr(self.tokenizer, "eos_token_id", None),
        ):
            if isinstance(value, int):
                ids.add(value)
            elif value:
                ids.update(int(v) for v in value)
        return frozenset(ids)

    def load_draft_model(self, model: str) -> Any:
        """A draft model for this target (method ``sps``), loaded once and then reused.

        It goes on the target's device and dtype and must share the target's tokenizer:
        speculative sampling compares the two models' distributions token id by token id.
        """
        if model not in self._draft_models:
            dtype = next(self.model.parameters()).dtype
            draft, tokenizer, _ = load_hf(model, self.target.device, dtype)
            if tokenizer.get_vocab() != self.tokenizer.get_vocab():
                raise AlignspecError(
                    f"draft model '{model}' has a different tokenizer from the target; "
                    "speculative sampling needs both models to share one vocabulary"
                )
            self._draft_models[model] = draft
        return self._draft_models[model]

    def load_feature_head(self, path: str, *, int8: bool = False) -> Any:
        """A trained draft head for this target (``eagle2``/``fspad``), loaded once and reused.

        Loading checks the head's hidden size and vocabulary against this model. ``int8``
        gives a copy that drafts through the int8 kernels (:mod:`alignspec.heads.quantized`).
        """
        key = (path, int8)
        if key not in self._feature_heads:
            if int8:
                from alignspec.heads.quantized import quantize_head

                base = self.load_feature_head(path)
                lm_head = self.model.get_output_embeddings().weight
                self._feature_heads[key] = quantize_head(base, lm_head)
            else:
                from alignspec.heads.io import load_head

                self._feature_heads[key] = load_head(
                    path,
                    hidden_size=self.model.config.hidden_size,
                    vocab_size=self.model.get_input_embeddings().weight.shape[0],
                    device=self.target.device,
                )
        return self._feature_heads[key]

    # ------------------------------------------------------------------ prompts
    def encode(
        self,
        prompt: str | Messages,
        *,
        raw: bool = False,
        max_new_tokens: int = 256,
        truncate: str = "none",
    ) -> list[int]:
        """Prompt ids, checked against the context (see :func:`fit_context`)."""
        ids = encode_prompt(self.tokenizer, prompt, raw=raw)
        return fit_context(
            ids,
            max_new_tokens=max_new_tokens,
            max_context=self.target.max_context,
            truncate=truncate,
        )

    # ------------------------------------------------------------------ generation
    def _refuse_reentry(self) -> None:
        """Fail on a second generation opened on the thread whose generation is still open."""
        if self._kv_owner == threading.get_ident():
            raise AlignspecError(
                "another generation is still running on this LLM; finish or close it first"
            )

    def _hold_kv_cache(self) -> None:
        """Take the KV cache for one generation (waits while another thread's runs)."""
        self._refuse_reentry()
        self._kv_lock.acquire()
        self._kv_owner = threading.get_ident()

    def _free_kv_cache(self) -> None:
        self._kv_owner = None
        self._kv_lock.release()

    @contextmanager
    def _kv_cache_held(self) -> Iterator[None]:
        """Hold the KV cache for the block (a generation's whole life, closed or finished)."""
        self._hold_kv_cache()
        try:
            yield
        finally:
            self._free_kv_cache()

    def stream(
        self,
        prompt: str | Messages | None = None,
        *,
        method: str = "ar",
        max_new_tokens: int = 256,
        stop: str | Sequence[str] | None = (),
        raw: bool = False,
        truncate: str = "none",
        prompt_ids: Sequence[int] | None = None,
        on_tokens: Callable[[list[int]], None] | None = None,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = None,
        repetition_penalty: float = 1.0,
        budget: str | int = "auto",
        **options: Any,
    ) -> Generation:
        """Start a generation whose text arrives as each round commits it.

        ``prompt_ids`` bypasses the chat template with ready token ids. ``temperature`` 0 is
        greedy decoding; above 0 lossless methods sample exactly as plain sampling would,
        after ``top_k``/``top_p`` filtering, reproducibly when ``seed`` is given (see
        :class:`~alignspec.sampling.SamplingParams`). ``repetition_penalty`` works as in
        transformers, in both modes. ``budget`` sizes each round's tree: ``"auto"`` keeps the
        nodes whose expected acceptance pays for their rows on this machine's measured cost
        curve (and drafts nothing when nothing does), ``N`` keeps at most the ``N`` most likely
        draft nodes. ``options`` are the method's hyperparameters (see
        ``alignspec generate --help``).

        The model has one KV cache, so generations on one ``LLM`` run one at a time: a
        generation started from another thread waits (at its first step) until the running
        one is finished or closed; one started on the same thread while another is still
        open raises :class:`AlignspecError`.

        ``stop`` is one stop string or a list of them. Every argument is checked here, before
        any work: a wrong type or value raises one :class:`AlignspecError` sentence.
        """
        self._refuse_reentry()
        checked = check_request(
            prompt=prompt,
            method=method,
            max_new_tokens=max_new_tokens,
            stop=stop,
            raw=raw,
            truncate=truncate,
            prompt_ids=prompt_ids,
            on_tokens=on_tokens,
            vocab_size=self.target.vocab_size,
        )
        stop, max_new_tokens = checked.stop, checked.max_new_tokens
        sampling = SamplingParams(
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            seed=seed,
            repetition_penalty=repetition_penalty,
        )
        spec = get_method(method)
        cfg = spec.make_options(options)
        spec.check_sampling(sampling)
        if prompt_ids is not None:
            ids = fit_context(
                checked.prompt_ids or [],
                max_new_tokens=max_new_tokens,
                max_context=self.target.max_context,
                truncate=truncate,
            )
            if not ids:
                raise AlignspecError("the prompt is empty")
        elif prompt is None:
            raise AlignspecError("give a prompt (text or chat messages)")
        else:
            ids = self.encode(prompt, raw=raw, max_new_tokens=max_new_tokens, truncate=truncate)
        parse_budget(budget)  # a bad value fails before any work
        verifier = spec.make_verifier(self, cfg, sampling)
        engine = Engine(self.target, spec.build_drafter(self, cfg), verifier)
        gen = Generation(iter(()))
        gen._deltas = self._run(
            gen, engine, ids, method, cfg, max_new_tokens, stop, on_tokens, sampling, budget
        )
        return gen

    def _run(
        self,
        gen: Generation,
        engine: Engine,
        ids: list[int],
        method: str,
        cfg: object,
        max_new_tokens: int,
        stop: Sequence[str],
        on_tokens: Callable[[list[int]], None] | None,
        sampling: SamplingParams,
        budget: str | int,
    ) -> Iterator[str]:
        with self._kv_cache_held():
            # built under the lock: measuring the cost curve (first use only) runs the target
            engine.budget = self.make_budget(budget, method, cfg)
            stats = GenerationStats()
            text = TextAssembler(self.tokenizer, stop)
            rounds = engine.generate(
                ids,
                max_new_tokens=max_new_tokens,
                eos_ids=self.eos_ids,
                stats=stats,
                sampling=sampling,
            )
            try:
                for new in rounds:
                    if on_tokens is not None:
                        on_tokens(new)
                    delta = text.push(new)
                    if delta:
                        yield delta
                    if text.stopped_at is not None:
                        break
            finally:
                rounds.close()
            tail = text.flush()
            if tail:
                yield tail
            token_ids = text.token_ids_through_stop()
            hit_eos = bool(token_ids) and token_ids[-1] in self.eos_ids
            reason = "stop" if text.stopped_at is not None or hit_eos else "length"
            gen.output = GenerationOutput(
                text=text.text,
                token_ids=token_ids,
                prompt_ids=ids,
                finish_reason=reason,
                stats=stats,
                method=method,
                sampling=sampling,
            )

    def generate(self, prompt: str | Messages | None = None, **kwargs: Any) -> GenerationOutput:
        """Generate to completion; takes the same arguments as :meth:`stream`."""
        gen = self.stream(prompt, **kwargs)
        for _ in gen:
            pass
        assert gen.output is not None
        return gen.output


def load(
    model: str = "default",
    device: str = "auto",
    dtype: str | torch.dtype = "auto",
    *,
    backend: str = "auto",
    quantize: str | None = None,
) -> LLM:
    """Load a target model: ``"default"``, a HF directory, a ``.gguf`` file or a hub id.

    ``backend`` (``auto``, ``native``, ``hf``) and ``quantize`` (``None``/``"none"``,
    ``"int8"``) are checked before the weights are read, so a typo fails fast.
    """
    check_backend(backend, quantize)
    dev = resolve_device(device)
    hf_model, tokenizer, source = load_hf(model, dev, resolve_dtype(dtype, dev))
    return LLM(hf_model, tokenizer, source, backend=backend, quantize=quantize)


def generate(prompt: str | Messages, *, model: str = "default", **kwargs: Any) -> GenerationOutput:
    """One-shot convenience: load ``model`` and generate (reuse :func:`load` for many calls)."""
    return load(model).generate(prompt, **kwargs)
