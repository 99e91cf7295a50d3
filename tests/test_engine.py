"""The round loop on a tiny random Llama: identity with plain greedy decoding for every kind of
draft (none, chains, trees whose right branch is not the first), EOS and token budgets."""

from __future__ import annotations

import random

import pytest
import torch

from alignspec.drafters.base import Drafter, NoDrafter
from alignspec.drafters.prompt_lookup import PromptLookupConfig, PromptLookupDrafter
from alignspec.engine import Engine
from alignspec.stats import GenerationStats
from alignspec.targets.hf import HFTarget
from alignspec.tree import DraftTree
from alignspec.verifiers.greedy import GreedyVerifier

PROMPT = [1, 10, 11, 12, 13, 14, 10, 11, 12, 20, 21, 22, 10, 11]


def run(
    model,
    drafter: Drafter,
    max_new: int = 24,
    eos: frozenset[int] = frozenset(),
    prompt: list[int] = PROMPT,
) -> tuple[list[int], GenerationStats]:
    stats = GenerationStats()
    engine = Engine(HFTarget(model), drafter, GreedyVerifier())
    out: list[int] = []
    for new in engine.generate(prompt, max_new_tokens=max_new, eos_ids=eos, stats=stats):
        out.extend(new)
    return out, stats


class OracleTreeDrafter(Drafter):
    """Knows the true continuation; hides it on the second branch behind a wrong first one,
    and cuts it short with a wrong token so the bonus path is exercised too."""

    def __init__(self, truth: list[int], prompt_len: int, vocab: int) -> None:
        self.truth, self.n, self.vocab = truth, prompt_len, vocab

    def propose(self, tokens: list[int]) -> DraftTree:
        done = len(tokens) - self.n
        right = self.truth[done : done + 3]
        if not right:
            return DraftTree()
        wrong = [(t + 1) % self.vocab for t in right]
        cut = [*right, (right[-1] + 7) % self.vocab]
        return DraftTree.from_sequences([wrong, cut], max_nodes=16)


class DeepChainDrafter(Drafter):
    """Proposes the next six tokens of the true continuation as one chain."""

    def __init__(self, truth: list[int], prompt_len: int) -> None:
        self.truth, self.n = truth, prompt_len

    def propose(self, tokens: list[int]) -> DraftTree:
        done = len(tokens) - self.n
        return DraftTree.chain(self.truth[done : done + 6])


class RandomDrafter(Drafter):
    def __init__(self, vocab: int, seed: int = 0) -> None:
        self.rng = random.Random(seed)
        self.vocab = vocab

    def propose(self, tokens: list[int]) -> DraftTree:
        n = self.rng.randint(0, 8)
        parents = [self.rng.randint(0, i) for i in range(n)]
        toks = [self.rng.randrange(self.vocab) for _ in range(n)]
        return DraftTree(tokens=toks, parents=parents)


def test_ar_equals_transformers_generate(tiny_llama):
    out, stats = run(tiny_llama, NoDrafter())
    with torch.inference_mode():
        ref = tiny_llama.generate(
            torch.tensor([PROMPT]),
            max_new_tokens=24,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )[0, len(PROMPT) :].tolist()
    assert out == ref
    assert stats.tau == 1.0 and stats.new_tokens == 24 and stats.num_rounds == 23


def test_tree_drafts_are_lossless_and_accepted(tiny_llama):
    truth, _ = run(tiny_llama, NoDrafter(), max_new=30)
    drafter = OracleTreeDrafter(truth, len(PROMPT), tiny_llama.config.vocab_size)
    out, stats = run(tiny_llama, drafter, max_new=30)
    assert out == truth
    assert stats.tau == pytest.approx(4.0, abs=0.5)  # 3 accepted + bonus per round


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_trees_are_lossless(tiny_llama, seed):
    truth, _ = run(tiny_llama, NoDrafter(), max_new=20)
    out, _ = run(tiny_llama, RandomDrafter(tiny_llama.config.vocab_size, seed), max_new=20)
    assert out == truth


def test_prompt_lookup_chain_and_tree_lossless(tiny_llama):
    truth, _ = run(tiny_llama, NoDrafter(), max_new=30)
    for tree in (False, True):
        cfg = PromptLookupConfig(max_ngram=3, min_ngram=1, draft_len=6, tree=tree)
        out, _ = run(tiny_llama, PromptLookupDrafter(cfg), max_new=30)
        assert out == truth


def test_eos_stops_right_after_it(tiny_llama):
    truth, _ = run(tiny_llama, NoDrafter(), max_new=30)
    eos = truth[7]
    first = truth.index(eos)
    drafter = OracleTreeDrafter(truth, len(PROMPT), tiny_llama.config.vocab_size)
    for d in (NoDrafter(), drafter):
        out, stats = run(tiny_llama, d, max_new=30, eos=frozenset({eos}))
        assert out == truth[: first + 1]
        assert stats.new_tokens == first + 1


@pytest.mark.parametrize("max_new", [1, 2, 5, 7])
def test_max_new_tokens_is_exact(tiny_llama, max_new):
    truth, _ = run(tiny_llama, NoDrafter(), max_new=30)
    drafter = OracleTreeDrafter(truth, len(PROMPT), tiny_llama.config.vocab_size)
    out, stats = run(tiny_llama, drafter, max_new=max_new)
    assert out == truth[:max_new]
    assert stats.new_tokens == max_new
    assert all(r.depth <= max_new - 1 for r in stats.rounds)


def test_drafts_deeper_than_the_target_takes_are_cut(tiny_llama):
    """A target that limits how deep a tree row may sit (the int8 model's AMX attention) gets
    every draft cut to that depth, and the output stays plain greedy's."""
    truth, _ = run(tiny_llama, NoDrafter())
    target = HFTarget(tiny_llama)
    target.max_tree_depth = 2
    depths: list[int] = []
    verify = target.verify

    def recording(root, tree, **kwargs):
        depths.append(tree.max_depth() if len(tree) else 0)
        return verify(root, tree, **kwargs)

    target.verify = recording
    engine = Engine(target, DeepChainDrafter(truth, len(PROMPT)), GreedyVerifier())
    out: list[int] = []
    for new in engine.generate(
        PROMPT, max_new_tokens=24, eos_ids=frozenset(), stats=GenerationStats()
    ):
        out.extend(new)
    assert out == truth
    assert max(depths) == 2
