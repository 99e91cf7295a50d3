import math

import pytest
import torch

from alignspec.tree import DraftTree
from alignspec.verifiers.base import VerifyContext
from alignspec.verifiers.conditional import ConditionalVerifier, entropy

EOS = 0


def logits_from_probs(rows: list[list[float]]) -> torch.Tensor:
    return torch.log(torch.tensor(rows))


def test_entropy_of_known_distributions():
    assert float(entropy(torch.tensor([0.25] * 4))) == pytest.approx(math.log(4))
    assert float(entropy(torch.tensor([1.0, 0.0, 0.0]))) == pytest.approx(0.0, abs=1e-6)
    p = torch.tensor([0.5, 0.25, 0.25])
    expected = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    assert float(entropy(p)) == pytest.approx(expected)


def test_entropy_threshold_is_beta_minus_alpha_h():
    v = ConditionalVerifier("entropy", alpha=0.1, beta=0.3)
    p = torch.tensor([[0.5, 0.25, 0.25], [1.0, 0.0, 0.0]])
    h = -(0.5 * math.log(0.5) + 0.5 * math.log(0.25))
    assert v.thresholds(torch.log(p)).tolist() == pytest.approx([0.3 - 0.1 * h, 0.3])


def test_argmax_always_accepted_even_with_huge_threshold():
    v = ConditionalVerifier("constant", tau=0.99)
    # vocab: 0=EOS,1,2,3 ; root dist argmax is 2 with p=0.4
    logits = logits_from_probs([[0.1, 0.3, 0.4, 0.2], [0.05, 0.05, 0.1, 0.8], [0.25] * 4])
    res = v.verify(DraftTree.chain([2, 3]), logits, VerifyContext([], eos_ids=frozenset({EOS})))
    assert res.rows == [0, 1, 2]


def test_confident_non_argmax_accepted_and_below_threshold_rejected():
    v = ConditionalVerifier("constant", tau=0.25)
    logits = logits_from_probs([[0.1, 0.3, 0.4, 0.2], [0.1, 0.1, 0.1, 0.7], [0.25] * 4])
    ctx = VerifyContext([], eos_ids=frozenset({EOS}))
    ok = v.verify(DraftTree.chain([1]), logits[:2], ctx)  # p=0.3 >= 0.25: accepted
    assert ok.rows == [0, 1] and ok.tokens == [1, 3]
    bad = v.verify(DraftTree.chain([3]), logits[:2], ctx)  # p=0.2 < 0.25: rejected
    assert bad.rows == [0] and bad.tokens == [2]


def test_eos_rule_rejects_draft_less_likely_than_eos():
    v = ConditionalVerifier("constant", tau=0.1)
    logits = logits_from_probs([[0.3, 0.2, 0.5, 0.0001], [0.25] * 4])
    ctx = VerifyContext([], eos_ids=frozenset({EOS}))
    res = v.verify(DraftTree.chain([1]), logits, ctx)  # p=0.2 >= 0.1 but p(EOS)=0.3
    assert res.rows == [0]
    no_eos = v.verify(DraftTree.chain([1]), logits, VerifyContext([]))
    assert no_eos.rows == [0, 1]


def test_longest_acceptable_path_wins_among_siblings():
    v = ConditionalVerifier("constant", tau=0.2)
    # root -> 1 (leaf) ; root -> 2 -> 3
    tree = DraftTree(tokens=[1, 2, 3], parents=[0, 0, 2])
    logits = logits_from_probs(
        [
            [0.01, 0.5, 0.3, 0.19],  # root: 1 argmax, 2 passes (0.3)
            [0.25] * 4,
            [0.01, 0.01, 0.01, 0.97],  # after 2: 3 is argmax
            [0.01, 0.9, 0.05, 0.04],
        ]
    )
    res = v.verify(tree, logits, VerifyContext([], eos_ids=frozenset({EOS})))
    assert res.rows == [0, 2, 3] and res.tokens == [2, 3, 1]


def test_never_accepts_less_than_greedy():
    torch.manual_seed(0)
    from alignspec.verifiers.greedy import GreedyVerifier

    for _ in range(50):
        tree = DraftTree(tokens=torch.randint(0, 6, (7,)).tolist(), parents=[0, 0, 1, 1, 2, 3, 5])
        logits = torch.randn(8, 6) * 2
        ctx = VerifyContext([], eos_ids=frozenset({EOS}))
        g = GreedyVerifier().verify(tree, logits, ctx)
        c = ConditionalVerifier("constant", tau=0.1).verify(tree, logits, ctx)
        assert len(c.rows) >= len(g.rows)


def test_kernel_rule_makes_the_same_decisions(monkeypatch):
    """The kernel's conditional_ok against the torch/numpy rule on random trees, with ties,
    EOS ids and thresholds near the probabilities that occur."""
    from alignspec.targets.native import cpu_kernel

    kernel = cpu_kernel.load()
    if kernel is None:
        pytest.skip("alignspec's CPU kernel does not build here")
    gen = torch.Generator().manual_seed(5)
    for trial in range(60):
        rows, vocab = 1 + trial % 6, 300 + trial
        logits = torch.randn(rows, vocab, generator=gen) * (1 + trial % 4)
        logits[0, 3] = logits[0].max()  # a tie for the argmax
        parents = [0] + [int(torch.randint(0, r, (1,), generator=gen)) for r in range(1, rows)]
        tokens = [int(t) for t in torch.randint(0, 8, (rows,), generator=gen)]
        tree = DraftTree(tokens=tokens, parents=parents)
        eos = frozenset({1}) if trial % 2 else frozenset()
        rule = ConditionalVerifier(tau=[0.01, 0.1, 0.3][trial % 3])
        monkeypatch.setattr(cpu_kernel, "loaded", lambda: None)
        want = rule.acceptable(tree, logits, eos)
        monkeypatch.setattr(cpu_kernel, "loaded", lambda: kernel)
        assert rule.acceptable(tree, logits, eos) == want


def test_kernel_rule_agrees_near_the_threshold(monkeypatch):
    """Drafts among each row's five likeliest tokens, on peaked rows, with thresholds up to
    1.0: the kernel skips a row's exp pass for a node whose p(x) is bounded below the
    threshold by exp(l_x - l_max) alone, which must not change any decision."""
    from alignspec.targets.native import cpu_kernel

    kernel = cpu_kernel.load()
    if kernel is None:
        pytest.skip("alignspec's CPU kernel does not build here")
    gen = torch.Generator().manual_seed(11)
    for trial in range(200):
        rows, vocab = 2 + trial % 5, 500
        logits = torch.randn(rows, vocab, generator=gen) * (2 + trial % 7)
        top = logits.topk(5, dim=-1).indices
        parents = [0] + [int(torch.randint(0, r, (1,), generator=gen)) for r in range(1, rows)]
        picks = torch.randint(0, 5, (rows,), generator=gen).tolist()
        tokens = [int(top[p, k]) for p, k in zip(parents, picks, strict=True)]
        tree = DraftTree(tokens=tokens, parents=parents)
        eos = frozenset({int(top[0, 1])}) if trial % 3 == 0 else frozenset()
        rule = ConditionalVerifier(tau=[0.05, 0.1, 0.3, 0.5, 0.7, 1.0][trial % 6])
        monkeypatch.setattr(cpu_kernel, "loaded", lambda: None)
        want = rule.acceptable(tree, logits, eos)
        monkeypatch.setattr(cpu_kernel, "loaded", lambda: kernel)
        assert rule.acceptable(tree, logits, eos) == want
