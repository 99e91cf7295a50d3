"""Lossless speculative sampling, checked statistically, and its reduction to greedy at T = 0.

Verifier level (the main evidence): a tiny random Llama with a 12-token vocabulary and a small
initializer, so next-token distributions are spread over many tokens. Its logits at every
context of up to two tokens after a fixed prefix are computed once; from them the exact joint
distribution of the first three generated tokens under plain sampling follows by enumeration
(12^3 cells). Each configuration then runs the real :class:`LosslessVerifier` for 20,000
generations, round after round as the engine does (trees cut to the remaining token budget,
repetition penalty per row), and the histogram of the first three committed tokens must pass a
chi-square test against the exact distribution at p >= 1e-4 (threshold justified in
:mod:`tests.stat_helpers`).

Deliberately broken verifiers (accept every draft; no renormalisation after a rejection;
residual ``p`` instead of ``max(0, p - q)``) must fail the same check. They run 5,000
generations: a chi-square test's power only grows with the sample size, and at 5,000 each
already fails with p < 1e-12, so the 20,000-sample tests would catch them with more margin.

Engine level (the plumbing): the real tree forward, cache compaction and one generator across
rounds through :class:`~alignspec.engine.Engine`, with fewer samples over a top-3 support.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest
import torch

from alignspec.drafters.base import Drafter, NoDrafter
from alignspec.engine import Engine
from alignspec.errors import AlignspecError
from alignspec.sampling import SamplingParams
from alignspec.stats import GenerationStats
from alignspec.targets.hf import HFTarget
from alignspec.tree import DraftTree
from alignspec.verifiers.base import VerifyContext
from alignspec.verifiers.greedy import GreedyVerifier
from alignspec.verifiers.lossless import LosslessVerifier, draw_siblings
from tests.conftest import make_tiny_llama
from tests.stat_helpers import assert_matches
from tests.test_engine import PROMPT, RandomDrafter

pytestmark = pytest.mark.usefixtures("single_thread")

VOCAB = 12
PREFIX = [1, 5, 7, 3, 9]
LENGTH = 3  # generated tokens whose joint distribution is checked
SAMPLES = 20_000
BROKEN_SAMPLES = 5_000

# Top-k puts zeros into both p and q (their exactness against transformers, top-p included,
# is checked bit for bit in tests/test_sampling.py; here they only shape the distributions).
PLAIN = SamplingParams(temperature=1.0)
PENALISED = SamplingParams(temperature=0.8, repetition_penalty=1.3)
FILTERED = SamplingParams(temperature=0.8, top_k=8, repetition_penalty=1.3)

State = tuple[int, ...]  # tokens generated so far (after PREFIX)
Logits = dict[State, torch.Tensor]


def logits_table(model: torch.nn.Module, depth: int) -> Logits:
    """Next-token logits after PREFIX + every context of at most ``depth`` tokens."""
    table: Logits = {}
    with torch.inference_mode():
        for d in range(depth + 1):
            contexts = list(itertools.product(range(VOCAB), repeat=d))
            ids = torch.tensor([PREFIX + list(c) for c in contexts])
            for context, row in zip(contexts, model(ids).logits[:, -1].float(), strict=True):
                table[context] = row
    return table


def exact_joint(table: Logits, sampling: SamplingParams) -> torch.Tensor:
    """P(first three tokens = a, b, c) under plain sampling, by enumeration."""

    def dist(state: State) -> torch.Tensor:
        return sampling.distribution(table[state][None], PREFIX + list(state))[0].double()

    joint = torch.zeros(VOCAB, VOCAB, VOCAB, dtype=torch.float64)
    p1 = dist(())
    for a in range(VOCAB):
        p2 = dist((a,))
        for b in range(VOCAB):
            joint[a, b] = p1[a] * p2[b] * dist((a, b))
    return joint


@pytest.fixture(scope="module")
def target_model() -> torch.nn.Module:
    return make_tiny_llama(seed=0, vocab=VOCAB, init=0.1)


@pytest.fixture(scope="module")
def target_table(target_model) -> Logits:
    return logits_table(target_model, LENGTH - 1)


@pytest.fixture(scope="module")
def draft_table() -> Logits:
    """A second, different tiny model: the draft model's logits."""
    return logits_table(make_tiny_llama(seed=1, vocab=VOCAB, init=0.1), LENGTH - 2)


# ---------------------------------------------------------------------- simulation harness
class Harness:
    """One simulation: the tables, the settings, one generator, and caches that make 20,000
    generations cheap (rows are computed once per context; draft-model draws are made in
    bulk, which is the same as making them one at a time)."""

    POOL = 4096

    def __init__(self, target: Logits, draft: Logits, sampling: SamplingParams, seed: int):
        self.target, self.draft, self.sampling = target, draft, sampling
        self.gen = torch.Generator().manual_seed(seed)
        self._rows: dict[State, torch.Tensor] = {}
        self._q: dict[State, torch.Tensor] = {}
        self._q_without: dict[tuple[State, State], torch.Tensor] = {}
        self._pools: dict[tuple[State, int, bool], list[list[int]]] = {}

    def row(self, context: State) -> torch.Tensor:
        """Target logits after PREFIX + context with the repetition penalty over exactly
        that context: bit for bit what the engine's per-row penalty gives a tree row there
        (see tests/test_sampling.py)."""
        if context not in self._rows:
            logits = self.target[context][None]
            self._rows[context] = self.sampling.penalize(logits, PREFIX + list(context))[0]
        return self._rows[context]

    def ranked(self, state: State) -> list[int]:
        """The target's tokens at ``state``, most likely first."""
        return self.target[state].argsort(descending=True).tolist()

    def q(self, state: State) -> torch.Tensor:
        """The draft model's distribution, shaped like the target's (same transform)."""
        if state not in self._q:
            logits = self.draft[state][None]
            self._q[state] = self.sampling.distribution(logits, PREFIX + list(state))[0]
        return self._q[state]

    def q_without(self, state: State, removed: State) -> torch.Tensor:
        """q with earlier draws removed and renormalised (draws without replacement)."""
        key = (state, removed)
        if key not in self._q_without:
            q = self.q(state).clone()
            q[list(removed)] = 0.0
            self._q_without[key] = q / q.sum()
        return self._q_without[key]

    def draw(self, state: State, k: int, replacement: bool) -> list[int]:
        """``k`` draft tokens from q at ``state``: independent, or without replacement (ordered,
        by the Gumbel-top-k trick, which equals sequential draws without replacement)."""
        key = (state, k, replacement)
        pool = self._pools.get(key)
        if not pool:
            q = self.q(state)
            if replacement:
                flat = torch.multinomial(q, self.POOL * k, replacement=True, generator=self.gen)
                pool = flat.view(self.POOL, k).tolist()
            else:
                u = torch.rand(self.POOL, VOCAB, generator=self.gen, dtype=torch.float64)
                keys = q.double().log() - (-u.log()).log()
                pool = keys.topk(k, dim=-1).indices.tolist()
            self._pools[key] = pool
        return pool.pop()


# A drafter proposes the tree below ``state`` of at most ``depth`` levels.
HarnessDrafter = Callable[[Harness, State, int], DraftTree]


def no_draft(h: Harness, state: State, depth: int) -> DraftTree:
    """Plain sampling (method ``ar``): the verifier samples from p at the root."""
    return DraftTree()


def point_mass_chain(h: Harness, state: State, depth: int) -> DraftTree:
    """The target's 2nd choice, then its 1st choice after that (not always the likeliest)."""
    tokens: list[int] = []
    for rank in (1, 0)[:depth]:
        tokens.append(h.ranked((*state, *tokens))[rank])
    return DraftTree.chain(tokens)


def point_mass_tree(h: Harness, state: State, depth: int) -> DraftTree:
    """Four root siblings (1st, 3rd and 2nd choice, then the 1st again, which must then always
    be rejected), each with two children (the 2nd and 1st choice below it)."""
    if depth < 1:
        return DraftTree()
    order = h.ranked(state)
    tokens: list[int] = []
    parents: list[int] = []
    for tok in (order[0], order[2], order[1], order[0]):
        tokens.append(tok)
        parents.append(0)
        node = len(tokens)
        if depth >= 2:
            below = h.ranked((*state, tok))
            tokens += [below[1], below[0]]
            parents += [node, node]
    return DraftTree(tokens=tokens, parents=parents)


def draft_model_chain(h: Harness, state: State, depth: int) -> DraftTree:
    """Leviathan/Chen: each draft token sampled from the draft model's q."""
    tokens: list[int] = []
    rows: list[torch.Tensor] = []
    for _ in range(depth):
        context = (*state, *tokens)
        tokens += h.draw(context, 1, replacement=True)
        rows.append(h.q(context))
    if not tokens:
        return DraftTree()
    return DraftTree(tokens=tokens, parents=list(range(len(tokens))), draft_probs=torch.stack(rows))


def draft_model_tree(replacement: bool) -> HarnessDrafter:
    """Three root siblings drawn from q (independently, or without replacement), each with two
    children drawn the same way below it. Each node's row is the distribution it was drawn
    from given its earlier siblings: q itself, or q without the earlier draws."""

    def siblings(h: Harness, state: State, k: int) -> tuple[list[int], list[torch.Tensor]]:
        toks = h.draw(state, k, replacement)
        if replacement:
            return toks, [h.q(state)] * k
        return toks, [h.q_without(state, tuple(toks[:j])) for j in range(k)]

    def drafter(h: Harness, state: State, depth: int) -> DraftTree:
        if depth < 1:
            return DraftTree()
        tokens: list[int] = []
        parents: list[int] = []
        rows: list[torch.Tensor] = []
        first, first_rows = siblings(h, state, 3)
        for tok, row in zip(first, first_rows, strict=True):
            tokens.append(tok)
            parents.append(0)
            rows.append(row)
            node = len(tokens)
            if depth >= 2:
                kids, kid_rows = siblings(h, (*state, tok), 2)
                tokens += kids
                parents += [node] * len(kids)
                rows += kid_rows
        return DraftTree(tokens=tokens, parents=parents, draft_probs=torch.stack(rows))

    return drafter


DETERMINISTIC = {no_draft, point_mass_chain, point_mass_tree}


def simulate(
    verifier: LosslessVerifier,
    drafter: HarnessDrafter,
    h: Harness,
    samples: int,
) -> torch.Tensor:
    """Histogram of the first LENGTH tokens over ``samples`` verifier-driven generations."""
    counts = torch.zeros(VOCAB, VOCAB, VOCAB)
    memo: dict[State, tuple[DraftTree, torch.Tensor]] = {}  # trees of deterministic drafters
    with torch.inference_mode():  # as in the engine (and less overhead per tiny op)
        for _ in range(samples):
            out: list[int] = []
            while len(out) < LENGTH:
                state = tuple(out)
                hit = memo.get(state) if drafter in DETERMINISTIC else None
                if hit is None:
                    # as the engine does: the tree may not reach past the token budget
                    tree = drafter(h, state, LENGTH - 1 - len(out))
                    contexts = [state]
                    for tok, parent in zip(tree.tokens, tree.parents, strict=True):
                        contexts.append((*contexts[parent], tok))
                    hit = (tree, torch.stack([h.row(c) for c in contexts]))
                    memo[state] = hit
                tree, logits = hit
                ctx = VerifyContext(committed=PREFIX + out, generator=h.gen, sampling=h.sampling)
                out += verifier.verify(tree, logits, ctx).tokens
            counts[out[0], out[1], out[2]] += 1
    return counts


# ---------------------------------------------------------------------- broken verifiers
class AcceptEverything(LosslessVerifier):
    """Bug: skips the acceptance test (takes the first branch down to its leaf)."""

    @staticmethod
    def accepts(px: float, qx: float | None, u: float) -> bool:
        return True


class NoRenormalisation(LosslessVerifier):
    """Bug: zeroes a rejected token but does not renormalise, so the next sibling is accepted
    too rarely (the final draw still normalises implicitly)."""

    @staticmethod
    def residual(p: torch.Tensor, q: torch.Tensor | None, tok: int) -> torch.Tensor:
        rest = p.clone()
        rest[tok] = 0.0
        return rest


class ResidualIsTarget(LosslessVerifier):
    """Bug: after a rejection samples from p again instead of max(0, p - q)."""

    @staticmethod
    def residual(p: torch.Tensor, q: torch.Tensor | None, tok: int) -> torch.Tensor:
        return p


# ---------------------------------------------------------------------- the tests
CONFIGS = {
    "plain sampling (ar)": (no_draft, PLAIN),
    "point-mass chain, temperature + penalty": (point_mass_chain, PENALISED),
    "point-mass tree with siblings": (point_mass_tree, PLAIN),
    "draft-model chain, top-k + penalty": (draft_model_chain, FILTERED),
    "draft-model tree, i.i.d. siblings": (draft_model_tree(replacement=True), PLAIN),
    "draft-model tree, siblings without replacement": (draft_model_tree(False), PLAIN),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_first_three_tokens_follow_plain_sampling(name, target_table, draft_table):
    drafter, sampling = CONFIGS[name]
    h = Harness(target_table, draft_table, sampling, seed=0)
    counts = simulate(LosslessVerifier(), drafter, h, SAMPLES)
    assert_matches(counts, exact_joint(target_table, sampling), name)


BROKEN = {
    "accepts every draft": (AcceptEverything(), point_mass_tree),
    "no renormalisation after a rejection": (NoRenormalisation(), point_mass_tree),
    "residual p instead of max(0, p - q)": (ResidualIsTarget(), draft_model_chain),
}


@pytest.mark.parametrize("name", list(BROKEN))
def test_the_check_catches_broken_verification(name, target_table, draft_table):
    verifier, drafter = BROKEN[name]
    h = Harness(target_table, draft_table, PLAIN, seed=0)
    counts = simulate(verifier, drafter, h, BROKEN_SAMPLES)
    with pytest.raises(AssertionError, match="do not follow the exact distribution"):
        assert_matches(counts, exact_joint(target_table, PLAIN), name)


# ---------------------------------------------------------------------- engine level
class TableTreeDrafter(Drafter):
    """:func:`point_mass_tree` on the engine's tokens (drafts from the exact table)."""

    def __init__(self, h: Harness) -> None:
        self.h = h

    def propose(self, tokens: list[int]) -> DraftTree:
        state = tuple(tokens[len(PREFIX) :])
        return point_mass_tree(self.h, state, LENGTH - 1 - len(state))


def engine_histogram(model, drafter: Drafter, sampling: SamplingParams, n: int) -> torch.Tensor:
    """First three tokens of ``n`` engine generations sharing one seeded generator."""
    engine = Engine(HFTarget(model), drafter, LosslessVerifier())
    gen = sampling.make_generator()
    counts = torch.zeros(VOCAB, VOCAB, VOCAB)
    for _ in range(n):
        rounds = engine.generate(
            PREFIX,
            max_new_tokens=LENGTH,
            eos_ids=frozenset(),
            stats=GenerationStats(),
            generator=gen,
            sampling=sampling,
        )
        out = [tok for new in rounds for tok in new]
        counts[out[0], out[1], out[2]] += 1
    return counts


def test_engine_sampling_with_sibling_trees_matches_exact(target_model, target_table, draft_table):
    """1,500 engine generations (top-4 support: 64 cells, ~23 samples per cell) with sibling
    trees verified through the real tree forward; the first token is the prefill's plain draw,
    and the 4th-ranked token can only come from a residual after every sibling was rejected."""
    sampling = SamplingParams(temperature=1.0, top_k=4, seed=7)
    h = Harness(target_table, draft_table, sampling, seed=0)
    counts = engine_histogram(target_model, TableTreeDrafter(h), sampling, 1_500)
    assert_matches(counts, exact_joint(target_table, sampling), "engine with sibling trees")


# ---------------------------------------------------------------------- temperature 0
@pytest.mark.parametrize("penalty", [1.0, 1.4])
def test_greedy_is_greedy_exact_on_random_trees(penalty):
    gen = torch.Generator().manual_seed(0)
    rng = RandomDrafter(16, seed=3)
    sampling = SamplingParams(repetition_penalty=penalty)
    for _ in range(300):
        tree = rng.propose([])
        logits = torch.randn(tree.num_rows, 16, generator=gen)
        committed = torch.randint(0, 16, (6,), generator=gen).tolist()
        logits = sampling.penalize(logits, committed, tree)
        ctx = VerifyContext(committed=committed, sampling=sampling)
        ours = LosslessVerifier().verify(tree, logits, ctx)
        ref = GreedyVerifier().verify(tree, logits, ctx)
        assert (ours.rows, ours.tokens) == (ref.rows, ref.tokens)


def greedy_tokens(model, drafter, verifier, sampling: SamplingParams) -> list[int]:
    engine = Engine(HFTarget(model), drafter, verifier)
    rounds = engine.generate(
        PROMPT, max_new_tokens=30, eos_ids=frozenset(), stats=GenerationStats(), sampling=sampling
    )
    return [tok for new in rounds for tok in new]


@pytest.mark.parametrize("penalty", [1.0, 1.3])
def test_lossless_verifier_at_t0_is_identical_to_greedy(tiny_llama, penalty):
    sampling = SamplingParams(repetition_penalty=penalty)
    truth = greedy_tokens(tiny_llama, NoDrafter(), GreedyVerifier(), sampling)
    vocab = tiny_llama.config.vocab_size
    for seed in range(3):
        drafter = RandomDrafter(vocab, seed)
        assert greedy_tokens(tiny_llama, drafter, LosslessVerifier(), sampling) == truth


def test_seed_reproduces_and_varies_engine_sampling(tiny_llama):
    def sample(seed: int) -> list[int]:
        sampling = SamplingParams(temperature=1.5, seed=seed)
        return greedy_tokens(tiny_llama, RandomDrafter(96, 0), LosslessVerifier(), sampling)

    assert sample(1) == sample(1)
    assert sample(1) != sample(2)


def test_engine_refuses_sampling_with_a_greedy_only_verifier(tiny_llama):
    engine = Engine(HFTarget(tiny_llama), NoDrafter(), GreedyVerifier())
    rounds = engine.generate(
        PROMPT,
        max_new_tokens=3,
        eos_ids=frozenset(),
        stats=GenerationStats(),
        sampling=SamplingParams(temperature=0.7),
    )
    with pytest.raises(AlignspecError, match="greedy-only"):
        next(rounds)


# ---------------------------------------------------------------------- draw_siblings
def test_draw_siblings_rows():
    q = torch.tensor([0.1, 0.4, 0.0, 0.3, 0.2])
    gen = torch.Generator().manual_seed(0)
    tokens, rows = draw_siblings(q, 3, gen, replacement=True)
    assert len(tokens) == 3 and torch.equal(rows, q.expand(3, -1))
    tokens, rows = draw_siblings(q, 6, gen, replacement=False)
    assert sorted(tokens) == [0, 1, 3, 4]  # only the support, each once
    for j, tok in enumerate(tokens):
        assert rows[j, tokens[:j]].sum() == 0 and rows[j, tok] > 0
        assert rows[j].sum().item() == pytest.approx(1.0)


def test_draw_siblings_without_replacement_is_sequential_sampling():
    """The first two draws follow P(a, b) = q(a) q(b) / (1 - q(a)) (10,000 draws, 20 cells)."""
    q = torch.tensor([0.35, 0.25, 0.2, 0.12, 0.08])
    gen = torch.Generator().manual_seed(1)
    counts = torch.zeros(5, 5)
    for _ in range(10_000):
        a, b = draw_siblings(q, 2, gen, replacement=False)[0]
        counts[a, b] += 1
    exact = q[:, None] * q[None, :] / (1 - q[:, None])
    exact.fill_diagonal_(0.0)
    assert_matches(counts, exact, "draws without replacement")
