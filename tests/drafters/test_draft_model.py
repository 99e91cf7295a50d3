"""The draft-model drafter (method ``sps``) on tiny random Llamas: its cache stays in step with
the committed tokens (so its q rows are exactly the draft model's distributions), greedy output
equals plain greedy decoding, and sampled output follows plain sampling's distribution."""

from __future__ import annotations

import pytest
import torch

from alignspec.cli import main
from alignspec.drafters.base import NoDrafter
from alignspec.drafters.draft_model import DraftModelConfig, DraftModelDrafter
from alignspec.engine import Engine
from alignspec.errors import AlignspecError
from alignspec.sampling import SamplingParams
from alignspec.stats import GenerationStats
from alignspec.targets.hf import HFTarget
from alignspec.tree import DraftTree
from alignspec.verifiers.greedy import GreedyVerifier
from alignspec.verifiers.lossless import LosslessVerifier
from tests.conftest import make_tiny_llama
from tests.stat_helpers import assert_matches
from tests.test_engine import PROMPT

pytestmark = pytest.mark.usefixtures("single_thread")


def run(
    target, drafter, verifier, sampling: SamplingParams, max_new: int = 30, prompt=PROMPT
) -> tuple[list[int], GenerationStats]:
    stats = GenerationStats()
    engine = Engine(HFTarget(target), drafter, verifier)
    rounds = engine.generate(
        prompt, max_new_tokens=max_new, eos_ids=frozenset(), stats=stats, sampling=sampling
    )
    return [tok for new in rounds for tok in new], stats


@pytest.fixture(scope="module")
def draft_llama():
    return make_tiny_llama(seed=1)


def test_options_are_checked(capsys):
    with pytest.raises(AlignspecError, match="needs a draft model"):
        DraftModelConfig()
    # on the command line the error comes before any model loads (the path does not exist)
    assert main(["generate", "hi", "--method", "sps", "--model", "./no/such/model"]) == 2
    assert "needs a draft model: pass --draft-model" in capsys.readouterr().err
    with pytest.raises(AlignspecError, match="draft_len"):
        DraftModelConfig(draft_model="some/dir", draft_len=0)
    assert DraftModelConfig(draft_model="some/dir").draft_len == 4


@pytest.mark.parametrize("penalty", [1.0, 1.3])
def test_greedy_equals_plain_greedy(tiny_llama, draft_llama, penalty):
    sampling = SamplingParams(repetition_penalty=penalty)
    truth, _ = run(tiny_llama, NoDrafter(), GreedyVerifier(), sampling)
    vocab = tiny_llama.config.vocab_size
    for draft_len in (1, 3, 5):
        drafter = DraftModelDrafter(draft_llama, draft_len, vocab)
        out, stats = run(tiny_llama, drafter, GreedyVerifier(), sampling)
        assert out == truth
        assert stats.rounds and all(r.proposed <= draft_len for r in stats.rounds)


def test_self_drafting_is_always_accepted(tiny_llama):
    """The target as its own draft model: every greedy draft must be accepted, which only
    holds if the drafter's cache follows the committed tokens exactly round after round."""
    drafter = DraftModelDrafter(tiny_llama, 4, tiny_llama.config.vocab_size)
    out, stats = run(tiny_llama, drafter, GreedyVerifier(), SamplingParams(), max_new=31)
    truth, _ = run(tiny_llama, NoDrafter(), GreedyVerifier(), SamplingParams(), max_new=31)
    assert out == truth
    assert stats.acceptance_rate == 1.0 and stats.tau == 5.0


class Recording(DraftModelDrafter):
    """Keeps every proposed tree with the tokens it was proposed after."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.seen: list[tuple[list[int], DraftTree]] = []

    def propose(self, tokens: list[int]) -> DraftTree:
        tree = super().propose(tokens)
        self.seen.append((list(tokens), tree))
        return tree


def test_q_rows_are_the_draft_models_distributions(tiny_llama, draft_llama):
    sampling = SamplingParams(temperature=0.9, top_k=20, repetition_penalty=1.2, seed=3)
    drafter = Recording(draft_llama, 3, tiny_llama.config.vocab_size)
    run(tiny_llama, drafter, LosslessVerifier(), sampling, max_new=20)
    assert len(drafter.seen) >= 3
    for tokens, tree in drafter.seen:
        assert tree.draft_probs is not None and tree.draft_probs.shape == (len(tree), 96)
        for i in range(len(tree)):
            context = tokens + tree.tokens[:i]
            with torch.inference_mode():
                logits = draft_llama(torch.tensor([context])).logits[0, -1].float()
            q = sampling.distribution(logits[None], context)[0]
            assert torch.allclose(tree.draft_probs[i], q, atol=1e-5)
            assert q[tree.tokens[i]] > 0  # drawn from q


def test_a_larger_draft_head_never_proposes_tokens_outside_the_target_vocab(tiny_llama):
    """Padded LM heads differ in size: q is cut to the target's vocabulary before the draw."""
    draft = make_tiny_llama(seed=2, vocab=120)
    sampling = SamplingParams(temperature=1.0, seed=0)
    drafter = Recording(draft, 4, 96)
    run(tiny_llama, drafter, LosslessVerifier(), sampling, max_new=16)
    for _, tree in drafter.seen:
        assert tree.draft_probs.shape[1] == 96
        assert all(0 <= t < 96 for t in tree.tokens)
        assert torch.allclose(tree.draft_probs.sum(-1), torch.ones(len(tree)))


def test_a_smaller_draft_head_gives_zero_probability_to_missing_ids(draft_llama):
    drafter = DraftModelDrafter(draft_llama, 2, 100)
    fitted = drafter._fit_vocab(torch.zeros(96))
    assert fitted.shape == (100,) and torch.isinf(fitted[96:]).all()
    assert SamplingParams(temperature=1.0).probs(fitted[None])[0, 96:].sum() == 0


def test_seeded_sampling_is_reproducible(tiny_llama, draft_llama):
    def sample(seed: int) -> list[int]:
        drafter = DraftModelDrafter(draft_llama, 3, 96)
        sampling = SamplingParams(temperature=1.2, seed=seed)
        return run(tiny_llama, drafter, LosslessVerifier(), sampling, max_new=20)[0]

    assert sample(5) == sample(5)
    assert sample(5) != sample(6)


def test_sampled_output_follows_plain_sampling():
    """500 engine generations of three tokens with a different tiny model drafting (vocab 12,
    top-3 support: 27 cells, ~19 samples each) against the exact distribution by enumeration;
    the chi-square threshold is justified in tests/stat_helpers.py."""
    vocab, prefix = 12, [1, 5, 7, 3, 9]
    target = make_tiny_llama(seed=0, vocab=vocab, init=0.1)
    draft = make_tiny_llama(seed=1, vocab=vocab, init=0.1)
    sampling = SamplingParams(temperature=1.0, top_k=3, seed=11)

    def dist(context: list[int]) -> torch.Tensor:
        with torch.inference_mode():
            logits = target(torch.tensor([prefix + context])).logits[0, -1].float()
        return sampling.distribution(logits[None], prefix + context)[0].double()

    exact = torch.zeros(vocab, vocab, vocab, dtype=torch.float64)
    p1 = dist([])
    for a in p1.nonzero().flatten().tolist():
        p2 = dist([a])
        for b in p2.nonzero().flatten().tolist():
            exact[a, b] = p1[a] * p2[b] * dist([a, b])

    engine = Engine(HFTarget(target), DraftModelDrafter(draft, 2, vocab), LosslessVerifier())
    gen = sampling.make_generator()
    counts = torch.zeros(vocab, vocab, vocab)
    accepted = 0
    for _ in range(500):
        stats = GenerationStats()
        rounds = engine.generate(
            prefix,
            max_new_tokens=3,
            eos_ids=frozenset(),
            stats=stats,
            generator=gen,
            sampling=sampling,
        )
        out = [tok for new in rounds for tok in new]
        counts[out[0], out[1], out[2]] += 1
        accepted += sum(r.accepted for r in stats.rounds)
    assert accepted > 50  # drafts were really accepted, not only bonus tokens
    assert_matches(counts, exact, "sps engine sampling")
