"""The registry's verifier contract: which verifier a method gets for given sampling settings,
the greedy-only refusal of lossy methods, and option names that would clash with generate()."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from alignspec.errors import AlignspecError
from alignspec.methods import (
    REGISTRY,
    Method,
    exact_or_lossless,
    get_method,
    register,
    require_greedy,
    takes_sampling,
)
from alignspec.sampling import SamplingParams
from alignspec.verifiers.base import Verifier, VerifyContext, VerifyResult
from alignspec.verifiers.greedy import GreedyVerifier
from alignspec.verifiers.lossless import LosslessVerifier

GREEDY = SamplingParams()
SAMPLED = SamplingParams(temperature=0.8)


class Lossy(Verifier):
    name = "lossy"
    lossless = False

    def verify(self, tree, logits, ctx: VerifyContext) -> VerifyResult:  # pragma: no cover
        raise NotImplementedError


def test_lossless_methods_sample_losslessly_and_decode_greedily():
    for name in ("ar", "pld", "pld-tree", "sps"):
        method = get_method(name)
        assert type(method.make_verifier(None, None, GREEDY)) is GreedyVerifier
        assert type(method.make_verifier(None, None, SAMPLED)) is LosslessVerifier


def test_two_argument_builders_still_work():
    """The original ``build_verifier(llm, cfg)`` contract: a lossless method keeps its own
    verifier for greedy decoding and gets the lossless sampler at T > 0; a lossy one is
    greedy-only and refuses T > 0 with one sentence."""
    lossless = Method("x-exact", "test", build_verifier=lambda llm, cfg: GreedyVerifier())
    assert not lossless.greedy_only
    assert type(lossless.make_verifier(None, None, GREEDY)) is GreedyVerifier
    assert type(lossless.make_verifier(None, None, SAMPLED)) is LosslessVerifier

    lossy = Method("x-lossy", "test", lossless=False, build_verifier=lambda llm, cfg: Lossy())
    assert lossy.greedy_only
    assert type(lossy.make_verifier(None, None, GREEDY)) is Lossy
    with pytest.raises(AlignspecError, match="method 'x-lossy' is greedy-only") as exc:
        lossy.make_verifier(None, None, SAMPLED)
    assert "\n" not in str(exc.value)
    with pytest.raises(AlignspecError, match="greedy-only"):
        lossy.check_sampling(SAMPLED)
    lossy.check_sampling(SamplingParams(repetition_penalty=1.2))  # greedy + penalty is fine


def test_three_argument_builders_decide_for_themselves():
    seen: list[SamplingParams] = []

    def build(llm, cfg, sampling: SamplingParams) -> Verifier:
        seen.append(sampling)
        require_greedy("x-own", sampling)
        return Lossy()

    method = Method("x-own", "test", lossless=False, build_verifier=build)
    assert takes_sampling(build) and not takes_sampling(lambda llm, cfg: Lossy())
    assert not method.greedy_only
    assert type(method.make_verifier(None, None, GREEDY)) is Lossy
    with pytest.raises(AlignspecError, match="greedy-only"):
        method.make_verifier(None, None, SAMPLED)
    assert seen == [GREEDY, SAMPLED]
    assert exact_or_lossless(None, None, SAMPLED).samples


@pytest.mark.parametrize("name", [n for n, m in REGISTRY.items() if not m.lossless])
def test_registered_lossy_methods_refuse_sampling(name):
    with pytest.raises(AlignspecError, match="greedy-only"):
        get_method(name).check_sampling(SAMPLED)


@dataclass
class Clashing:
    top_p: float = 0.5


def test_option_names_may_not_shadow_generate_arguments():
    with pytest.raises(ValueError, match="top_p"):
        register(Method("x-clash", "test", options=Clashing))
    assert "x-clash" not in REGISTRY
