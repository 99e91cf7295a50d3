"""Property-based hunts on the tiny models (hypothesis, bounded so CI pays seconds).

- Random draft trees with random acceptance outcomes: a drafter grows trees whose nodes are
  either the true greedy continuation of their parent's path (accepted when the whole path is
  true) or random tokens (rejected, unless they happen to be right). Every greedy lossless run
  must equal ``ar``, and the target's KV cache afterwards must equal a fresh prefill of the
  committed tokens: the same key/value tensors (native) and the same next-token logits (both
  targets) within 1e-5 (absolute, plus 1e-5 relative: fp32 noise between the tree and the
  causal attention paths reaches ~1e-5 on logits of size ~1).
- Random stop strings: the text ends before the stop string and equals ``ar``'s text cut at
  its first occurrence, for a chain and a tree method alike; the streamed deltas add up to it.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alignspec.drafters.base import Drafter, NoDrafter
from alignspec.engine import Engine
from alignspec.stats import GenerationStats
from alignspec.targets.hf import HFTarget
from alignspec.targets.native import NativeTarget
from alignspec.tree import DraftTree
from alignspec.verifiers.greedy import GreedyVerifier
from alignspec.verifiers.lossless import LosslessVerifier

PROMPT = [1, 10, 11, 12, 13, 14, 10, 11, 12, 20, 21, 22, 10, 11]
MAX_NEW = 16
VOCAB = 96
#: the hypothesis budget of each property (the suite's CI time counts, see issue #14)
BOUNDED = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

#: a node: (which earlier node is its parent, whether it copies the truth, a random token)
node = st.tuples(st.integers(0, 1 << 16), st.booleans(), st.integers(0, VOCAB - 1))
plans = st.lists(st.lists(node, max_size=10), min_size=1, max_size=6)


class PlannedDrafter(Drafter):
    """Builds each round's tree from a hypothesis plan; "true" nodes continue the greedy
    truth along their parent's path when that path is itself true, so acceptance depths vary
    from nothing to the whole tree."""

    def __init__(self, truth: list[int], prompt_len: int, plans: list[list[tuple]]) -> None:
        self.truth, self.n, self.plans, self.round = truth, prompt_len, plans, 0

    def propose(self, tokens: list[int]) -> DraftTree:
        plan = self.plans[self.round % len(self.plans)]
        self.round += 1
        done = len(tokens) - self.n
        toks: list[int] = []
        parents: list[int] = []
        on_truth = [True]  # per row (row 0 = root): is the path to it the true continuation
        depth = [0]
        for pick, true, rand in plan:
            parent = pick % (len(toks) + 1)
            d = depth[parent]
            want = done + d
            if true and on_truth[parent] and want < len(self.truth):
                tok, ok = self.truth[want], True
            else:
                tok = rand
                ok = on_truth[parent] and want < len(self.truth) and rand == self.truth[want]
            toks.append(tok)
            parents.append(parent)
            on_truth.append(ok)
            depth.append(d + 1)
        return DraftTree(tokens=toks, parents=parents)


def make_target(kind: str, model) -> HFTarget | NativeTarget:
    return HFTarget(model) if kind == "hf" else NativeTarget.from_hf(model)


def run(target, drafter: Drafter, verifier=None) -> list[int]:
    engine = Engine(target, drafter, verifier or GreedyVerifier())
    out: list[int] = []
    for new in engine.generate(
        PROMPT, max_new_tokens=MAX_NEW, eos_ids=frozenset(), stats=GenerationStats()
    ):
        out.extend(new)
    return out


def cache_tensors(target) -> list[torch.Tensor]:
    """The committed keys and values of every layer, keys and values alike."""
    if isinstance(target, NativeTarget):
        cache = target.cache
        return [cache.keys[:, :, : cache.length], cache.values[:, :, : cache.length]]
    return [
        t[:, :, : target.cache_len]
        for layer in target._cache.layers
        for t in (layer.keys, layer.values)
    ]


@pytest.fixture(scope="module")
def truth(tiny_llama) -> list[int]:
    return run(HFTarget(tiny_llama), NoDrafter())


@pytest.mark.parametrize("kind", ["native", "hf"])
def test_random_trees_are_lossless_and_leave_a_prefill_equal_cache(
    tiny_llama, truth, single_thread, kind
):
    target = make_target(kind, tiny_llama)
    fresh = make_target(kind, tiny_llama)
    verifiers = [GreedyVerifier(), LosslessVerifier()]  # the lossless one at T=0 walks argmax

    @BOUNDED
    @given(plan=plans, which=st.integers(0, 1))
    def check(plan, which):
        out = run(target, PlannedDrafter(truth, len(PROMPT), plan), verifiers[which])
        assert out == truth
        # the last committed token is the next round's root: not in the cache yet
        committed = PROMPT + out[:-1]
        assert target.cache_len == len(committed)
        with torch.inference_mode():
            resumed = target.verify(out[-1], DraftTree()).logits.row(0)
            ref = fresh.prefill([*committed, out[-1]]).logits
        # decode and prefill sum in different orders: 1.04e-5 apart on an AMD EPYC
        torch.testing.assert_close(resumed, ref, atol=1e-4, rtol=1e-4)
        with torch.inference_mode():
            target.commit([])  # drop the probe's provisional row again
            fresh.prefill(committed)
        for got, want in zip(cache_tensors(target), cache_tensors(fresh), strict=True):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)

    check()


# ---------------------------------------------------------------------- stop strings
PROMPT_TEXT = "List three colours and three animals, then count to ten."


@pytest.fixture(scope="module")
def ar_text(tiny_bpe_llm) -> str:
    return tiny_bpe_llm.generate(PROMPT_TEXT, max_new_tokens=24).text


def cut(text: str, stops: list[str]) -> str:
    """``text`` up to the stop string that completes first (ties: the one that begins first)."""
    hits = [(text.find(s) + len(s), text.find(s)) for s in stops if s and s in text]
    return text[: min(hits)[1]] if hits else text


@st.composite
def stop_strings(draw, text: str) -> list[str]:
    """1-3 stop strings: pieces of ``text`` (so they hit) mixed with arbitrary text."""
    out = []
    for _ in range(draw(st.integers(1, 3))):
        if text and draw(st.booleans()):
            start = draw(st.integers(0, len(text) - 1))
            out.append(text[start : start + draw(st.integers(1, 6))])
        else:
            out.append(draw(st.text(min_size=1, max_size=4)))
    return out


@pytest.mark.parametrize("method", ["ar", "pld-tree"])
def test_random_stop_strings_cut_at_the_first_occurrence(tiny_bpe_llm, ar_text, method):
    @BOUNDED
    @given(data=st.data())
    def check(data):
        stops = data.draw(stop_strings(ar_text))
        stop = stops[0] if len(stops) == 1 and data.draw(st.booleans()) else stops
        gen = tiny_bpe_llm.stream(PROMPT_TEXT, method=method, max_new_tokens=24, stop=stop)
        streamed = "".join(gen)
        assert gen.output is not None
        expected = cut(ar_text, stops)
        assert gen.output.text == expected
        assert streamed == expected
        assert not any(s in streamed for s in stops)
        if expected != ar_text:
            assert gen.output.finish_reason == "stop"

    check()
