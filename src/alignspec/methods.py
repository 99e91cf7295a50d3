"""The method registry: one name -> (drafter, verifier), shared by CLI, API, bench and server.

Each method declares its options as a dataclass whose fields carry defaults and help text, so
the CLI can print every hyperparameter with its default and the API can validate keyword
options against the same source of truth.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from alignspec.drafters.base import Drafter, NoDrafter
from alignspec.drafters.prompt_lookup import PromptLookupConfig, PromptLookupDrafter
from alignspec.errors import AlignspecError
from alignspec.verifiers.base import Verifier
from alignspec.verifiers.greedy import GreedyVerifier


@dataclass
class NoOptions:
    """Methods without hyperparameters."""


@dataclass(frozen=True)
class Method:
    """A named drafter + verifier combination."""

    name: str
    description: str
    options: type = NoOptions
    presets: Mapping[str, Any] = field(default_factory=dict)
    lossless: bool = True
    build_drafter: Callable[[Any, Any], Drafter] = lambda llm, cfg: NoDrafter()
    build_verifier: Callable[[Any, Any], Verifier] = lambda llm, cfg: GreedyVerifier()

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


REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    REGISTRY[method.name] = method
    return method


def get_method(name: str) -> Method:
    """Look a method up by name, failing with the list of valid names."""
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
