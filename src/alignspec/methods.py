"""The method registry: one name -> (drafter, verifier), shared by CLI, API, bench and server.

Each method declares its options as a dataclass whose fields carry defaults and help text, so
the CLI can print every hyperparameter with its default and the API can validate keyword
options against the same source of truth.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from alignspec.drafters.aasd import AASDConfig, AASDDrafter
from alignspec.drafters.base import Drafter, NoDrafter
from alignspec.drafters.draft_model import DraftModelConfig, DraftModelDrafter
from alignspec.drafters.feature_head import FeatureHeadConfig, FeatureHeadDrafter
from alignspec.drafters.prompt_lookup import PromptLookupConfig, PromptLookupDrafter
from alignspec.errors import AlignspecError
from alignspec.sampling import SamplingParams
from alignspec.verifiers.base import Verifier
from alignspec.verifiers.conditional import ConditionalVerifier
from alignspec.verifiers.greedy import GreedyVerifier
from alignspec.verifiers.lossless import LosslessVerifier


@dataclass
class NoOptions:
    """Methods without hyperparameters."""


#: ``(llm, cfg, sampling) -> Verifier``: builds a method's verifier for one request.
VerifierBuilder = Callable[[Any, Any, SamplingParams], Verifier]


def exact_or_lossless(llm: Any, cfg: Any, sampling: SamplingParams) -> Verifier:
    """The verifier of a lossless method: greedy exact at T = 0, lossless sampling at T > 0."""
    return GreedyVerifier() if sampling.greedy else LosslessVerifier()


def require_greedy(method: str, sampling: SamplingParams) -> None:
    """Refuse T > 0 for a greedy-only method (a lossy rule defined on the argmax, like AASD's).

    Lossy methods with a two-argument verifier builder get this check automatically (see
    :meth:`Method.make_verifier`); a three-argument builder can call it itself.
    """
    if not sampling.greedy:
        raise AlignspecError(
            f"method '{method}' is greedy-only (its verification is lossy and defined for "
            "temperature 0); use temperature 0 or a lossless method such as pld"
        )


def takes_sampling(build: Callable[..., Verifier]) -> bool:
    """Whether a verifier builder takes ``(llm, cfg, sampling)`` rather than ``(llm, cfg)``."""
    try:
        inspect.signature(build).bind(None, None, None)
    except TypeError:
        return False
    return True


@dataclass(frozen=True)
class Method:
    """A named drafter + verifier combination.

    ``build_verifier`` is a :data:`VerifierBuilder` ``(llm, cfg, sampling)``; the original
    two-argument form ``(llm, cfg)`` is still accepted and means "the verifier for greedy
    decoding" (see :meth:`make_verifier` for what happens at T > 0). Build verifiers through
    :meth:`make_verifier`, never by calling ``build_verifier`` directly.
    """

    name: str
    description: str
    options: type = NoOptions
    presets: Mapping[str, Any] = field(default_factory=dict)
    lossless: bool = True
    build_drafter: Callable[[Any, Any], Drafter] = lambda llm, cfg: NoDrafter()
    build_verifier: Callable[..., Verifier] = exact_or_lossless

    def make_options(self, given: Mapping[str, Any]) -> Any:
        """The method's option dataclass from user overrides (unknown names are an error)."""
        names = {f.name for f in dataclasses.fields(self.options)}
        unknown = sorted(set(given) - names)
        if unknown:
            allowed = ", ".join(sorted(names)) or "none"
            raise AlignspecError(
                f"method '{self.name}' does not take option(s) {', '.join(unknown)} "
                f"(its options: {allowed})"
            )
        return self.options(**{**self.presets, **given})

    @property
    def greedy_only(self) -> bool:
        """A lossy method whose verifier builder never sees the sampling settings."""
        return not self.lossless and not takes_sampling(self.build_verifier)

    def check_sampling(self, sampling: SamplingParams) -> None:
        """Fail early (before any model is loaded) when T > 0 is asked of a greedy-only method."""
        if self.greedy_only:
            require_greedy(self.name, sampling)

    def make_verifier(self, llm: Any, cfg: Any, sampling: SamplingParams) -> Verifier:
        """The verifier for one request with these sampling settings.

        A three-argument builder decides for itself. A two-argument builder builds the greedy
        verifier; at T > 0 a lossless method then gets :class:`LosslessVerifier` (its drafts
        are point masses unless the drafter attaches ``draft_probs``), and a lossy one is
        refused as greedy-only.
        """
        self.check_sampling(sampling)
        if takes_sampling(self.build_verifier):
            return self.build_verifier(llm, cfg, sampling)
        if sampling.greedy:
            return self.build_verifier(llm, cfg)
        return LosslessVerifier()


REGISTRY: dict[str, Method] = {}

#: Names a method option may not take: they are keyword arguments of ``LLM.generate`` (the
#: sampling settings among them) or flags of ``alignspec generate``, so an option with one of
#: them would be swallowed by the API or clash on the command line.
RESERVED_OPTION_NAMES = frozenset(
    {f.name for f in dataclasses.fields(SamplingParams)}
    | {"prompt", "method", "max_new_tokens", "stop", "raw", "truncate", "prompt_ids"}
    | {"on_tokens", "model", "device", "dtype", "backend", "quantize", "budget"}
    # flags of ``alignspec bench``, which adds every method option to its own parser
    | {"suite", "methods", "baseline", "output", "limit", "warmup", "repeats", "quick"}
    | {"data_dir", "no_progress", "max_prompt_tokens", "seed"}
)


def register(method: Method) -> Method:
    clash = sorted({f.name for f in dataclasses.fields(method.options)} & RESERVED_OPTION_NAMES)
    if clash:
        raise ValueError(f"method '{method.name}' options {clash} clash with generate() arguments")
    REGISTRY[method.name] = method
    return method


def get_method(name: str) -> Method:
    """Look a method up by name, failing with the list of valid names."""
    if not isinstance(name, str):
        raise AlignspecError(f"method must be a method name (a string), got {name!r}")
    try:
        return REGISTRY[name]
    except KeyError:
        raise AlignspecError(
            f"unknown method '{name}'; choose one of {', '.join(REGISTRY)}"
        ) from None


register(Method("ar", "plain autoregressive decoding through the same engine (baseline)"))
register(
    Method(
        "pld",
        "prompt lookup: copy the continuation of the longest matching n-gram (chain)",
        options=PromptLookupConfig,
        build_drafter=lambda llm, cfg: PromptLookupDrafter(cfg),
    )
)
register(
    Method(
        "pld-tree",
        "prompt lookup merging every match's continuation into one draft tree",
        options=PromptLookupConfig,
        presets={"tree": True},
        build_drafter=lambda llm, cfg: PromptLookupDrafter(cfg),
    )
)


def _aasd_verifier(llm: Any, cfg: AASDConfig) -> Verifier:
    if cfg.verify == "exact":
        return GreedyVerifier()
    return ConditionalVerifier(cfg.threshold, tau=cfg.tau, alpha=cfg.alpha, beta=cfg.beta)


def _register_aasd(name: str, description: str, verify: str, alignment: bool) -> None:
    """AASD and its ablations differ only in their presets (each still overridable)."""
    register(
        Method(
            name,
            description,
            options=AASDConfig,
            presets={"verify": verify, "alignment": alignment},
            lossless=verify == "exact",
            build_drafter=lambda llm, cfg: AASDDrafter(cfg),
            build_verifier=_aasd_verifier,
        )
    )


_register_aasd(
    "aasd",
    "AASD: context retrieval + alignment sampling + conditional verification (lossy)",
    "conditional",
    True,
)
_register_aasd(
    "aasd-exact",
    "AASD drafting (retrieval + alignment sampling) with exact verification (lossless)",
    "exact",
    True,
)
_register_aasd(
    "aasd-noalign",
    "ablation: AASD without alignment sampling (retrieval + conditional verification)",
    "conditional",
    False,
)
_register_aasd(
    "aasd-exact-noalign",
    "ablation: AASD retrieval only, exact verification (lossless)",
    "exact",
    False,
)
register(
    Method(
        "sps",
        "speculative sampling: a small draft model (--draft-model) drafts a chain",
        options=DraftModelConfig,
        build_drafter=lambda llm, cfg: DraftModelDrafter(
            llm.load_draft_model(cfg.draft_model), cfg.draft_len, llm.target.vocab_size
        ),
    )
)


def _feature_head_builder(arch: str) -> Callable[[Any, FeatureHeadConfig], Drafter]:
    """Drafter builder for a feature-head method: the given head file or the shipped one.

    Heads are loaded through :meth:`LLM.load_feature_head`, which keeps them per path, so a
    server or a benchmark reads each file once.
    """

    def build(llm: Any, cfg: FeatureHeadConfig) -> Drafter:
        from alignspec.heads.io import shipped_head_path

        path = cfg.head or str(shipped_head_path(arch))
        if not cfg.head and not shipped_head_path(arch).is_file():
            raise AlignspecError(
                f"no shipped {arch} head in this installation ({path}); train one with "
                f"`alignspec train-head --arch {arch}` and pass it with --head PATH"
            )
        int8 = cfg.precision == "int8" or (
            cfg.precision == "auto" and getattr(llm.target, "quantize", None) == "int8"
        )
        head = llm.load_feature_head(path, int8=int8)
        if head.cfg.arch != arch:
            raise AlignspecError(
                f"{path} holds a {head.cfg.arch} head; use --method {head.cfg.arch} for it"
            )
        return FeatureHeadDrafter(
            head,
            llm.model.get_input_embeddings().weight,
            llm.model.get_output_embeddings().weight,
            cfg,
        )

    return build


for _arch, _what in (
    ("eagle2", "EAGLE-2: a trained feature head drafts a dynamic tree (lossless)"),
    ("fspad", "FSPAD: EAGLE-2 drafting with feature sampling + partial alignment (lossless)"),
):
    register(
        Method(_arch, _what, options=FeatureHeadConfig, build_drafter=_feature_head_builder(_arch))
    )
