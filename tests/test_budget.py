"""The cost-aware draft budget: which nodes pay for their rows, calibration from observed
rounds, skipping a drafter that does not pay, and identity with plain decoding under it."""

from __future__ import annotations

from itertools import pairwise

import pytest

from alignspec.budget import (
    HISTORY_ROUNDS,
    MAX_LOSS_SKIP,
    MAX_SKIP,
    RATE_ROUNDS,
    Budget,
    RealizedRates,
    parse_budget,
)
from alignspec.cost import CostModel
from alignspec.drafters.base import Drafter, NoDrafter
from alignspec.drafters.prompt_lookup import PromptLookupConfig, PromptLookupDrafter
from alignspec.engine import Engine
from alignspec.errors import AlignspecError
from alignspec.stats import GenerationStats
from alignspec.targets.hf import HFTarget
from alignspec.tree import DraftTree
from alignspec.verifiers.greedy import GreedyVerifier

FLAT = CostModel(rows=[1, 64], seconds=[1.0, 1.0], key={})  # rows are free: keep everything
STEEP = CostModel(rows=[1, 2, 64], seconds=[1.0, 2.0, 64.0], key={})  # each row costs a step
#: measured after 100 and 2,100 cached tokens: rows cost far more after the long context
BY_CONTEXT = CostModel(
    rows=[1, 5], seconds=[1.0, 1.4], key={}, prefix=100, long_prefix=2100, long_seconds=[2.0, 8.0]
)


def wide_tree() -> DraftTree:
    # a chain 1-2-3 (scores 0.9, 0.8, 0.7) and a weak sibling 9 under the root (0.05)
    return DraftTree(tokens=[1, 2, 3, 9], parents=[0, 1, 2, 0], scores=[0.9, 0.8, 0.7, 0.05])


def test_flat_cost_keeps_every_node_and_steep_cost_keeps_none() -> None:
    assert len(Budget(cost=FLAT).select(wide_tree(), 0)) == 4
    assert len(Budget(cost=STEEP).select(wide_tree(), 0)) == 0


def test_moderate_cost_drops_the_weak_branch_and_keeps_a_valid_tree() -> None:
    cost = CostModel(rows=[1, 5], seconds=[1.0, 1.4], key={})
    budget = Budget(cost=cost)
    budget.calibration = lambda depth: 1.0  # type: ignore[method-assign]
    kept = budget.select(wide_tree(), 0)
    assert kept.tokens == [1, 2, 3] and kept.parents == [0, 1, 2]
    assert kept.scores == [0.9, 0.8, 0.7]


def test_a_long_context_makes_rows_dearer_and_trees_smaller() -> None:
    """The same tree and estimates: rows that pay after a short prompt do not after a long
    one, where every extra row attends to the whole context."""
    budget = Budget(cost=BY_CONTEXT)
    budget.calibration = lambda depth: 1.0  # type: ignore[method-assign]
    assert len(budget.select(wide_tree(), 100)) == 3
    assert len(budget.select(wide_tree(), 2100)) < 3


def test_a_drafting_step_is_worth_more_after_a_long_context() -> None:
    """A step that finds an accepted token saves one plain decoding step, which costs more
    after a long context."""
    budget = Budget(cost=BY_CONTEXT)
    budget.calibration = lambda depth: 1.0  # type: ignore[method-assign]
    assert not budget.worth_expanding(0.5, 2, 0.6, context=100)
    assert budget.worth_expanding(0.5, 2, 0.6, context=2100)


def test_a_fixed_limit_stops_drafting_steps_no_kept_node_could_come_from() -> None:
    budget = Budget(limit=3)
    assert budget.worth_expanding(0.01, 2, 1.0) and budget.worth_expanding(0.01, 3, 1.0)
    assert not budget.worth_expanding(0.99, 4, 0.0)
    assert Budget().worth_expanding(0.0, 50, 1.0)  # no limit and no cost curve: always


def test_fixed_limit_keeps_the_most_likely_nodes() -> None:
    kept = Budget(limit=2).select(wide_tree(), 0)
    assert kept.tokens == [1, 2] and kept.parents == [0, 1]


def test_calibration_learns_in_hindsight_from_cut_nodes_too() -> None:
    # a steep cost keeps nothing, yet the committed tokens show the chain 1-2-3 was right
    # every time: the calibration follows what was committed, and the weak sibling 9 stays
    # weak through its own score
    budget = Budget(cost=STEEP)
    prior = budget.estimates(wide_tree())
    for _ in range(20):
        start = 5
        tokens = list(range(start))
        assert len(budget.select(wide_tree(), start)) == 0
        budget.observe([*tokens, 1, 2])  # not deep enough yet: nothing learned
        budget.observe([*tokens, 1, 2, 3])
    learned = budget.estimates(wide_tree())
    assert not budget.pending
    assert learned[2] > 0.85 > prior[2] and learned[3] < 0.1


def test_costly_drafter_is_skipped_after_worthless_rounds_then_probed_again() -> None:
    budget = Budget(cost=STEEP, draft_seconds=0.01)
    decisions = []
    for _ in range(12):
        if budget.should_draft():
            budget.select(wide_tree(), 0)
            decisions.append(True)
        else:
            decisions.append(False)
    assert decisions[:2] == [True, True]  # two worthless rounds, then back off 1, 2, 4 ...
    assert decisions[2] is False and decisions.count(False) >= 6 and True in decisions[3:]


def test_a_probe_that_does_not_pay_skips_again_at_once() -> None:
    """After a skip, one worthless round is enough to skip again (for twice as long)."""
    budget = Budget(cost=STEEP, draft_seconds=0.01)
    decisions = []
    for _ in range(16):
        drafted = budget.should_draft()
        decisions.append(drafted)
        if drafted:
            budget.select(wide_tree(), 0)
    # draft, draft, skip 1, probe, skip 2, probe, skip 4, probe, skip 8
    assert decisions == [True, True, False, True, False, False, True] + [False] * 4 + [
        True,
        *[False] * 4,
    ]


MODERATE = CostModel(rows=[1, 2, 64], seconds=[1.0, 1.05, 4.0], key={})


@pytest.mark.parametrize(("draft_seconds", "pays"), [(0.1, True), (0.2, False)])
def test_drafting_is_charged_twice_its_own_time(draft_seconds, pays) -> None:
    """A node accepted 30% of the time pays for its row and for 0.1 s of drafting counted
    twice, not for 0.2 s counted twice (1.3 / (1.05 + 0.4) < 1 / 1)."""
    budget = Budget(cost=MODERATE, draft_seconds=draft_seconds)
    budget.calibration = lambda depth: 1.0  # type: ignore[method-assign]
    tree = DraftTree(tokens=[1], parents=[0], scores=[0.3])
    for _ in range(4):
        assert budget.should_draft()  # the first rounds always draft
        assert len(budget.select(tree, 0)) == 1  # the row itself pays either way
        if not pays:
            break
    assert budget.empty_streak == (0 if pays else 1)


def realize_rounds(budget: Budget, rounds: int, plain_seconds: float) -> list[bool]:
    """Run ``rounds`` rounds of a costly drafter whose trees the estimates call worth it
    (flat cost): drafted ones commit 2 tokens in 1 s, plain ones 1 token in ``plain_seconds``.
    Returns which rounds drafted."""
    decisions = []
    for _ in range(rounds):
        drafted = budget.should_draft()
        decisions.append(drafted)
        if drafted:
            budget.select(wide_tree(), 0)
            budget.observe_round(True, 2, 1.0)
        else:
            budget.observe_round(False, 1, plain_seconds)
    return decisions


@pytest.mark.parametrize(("plain_seconds", "pays"), [(0.3, False), (0.6, True)])
def test_realized_rates_veto_drafting_that_is_slower_than_plain_rounds(plain_seconds, pays) -> None:
    """The estimates call every tree worth it (flat cost). Drafted rounds commit 2 tokens in
    1 s; after 4 of them the budget takes plain rounds to compare (the first, right after a
    drafting gap, not counted). Plain rounds of 1 token in 0.3 s beat drafting: the drafter is
    then skipped like one whose trees are not worth a row; in 0.6 s they do not."""
    budget = Budget(cost=FLAT, draft_seconds=0.01)
    decisions = realize_rounds(budget, 40, plain_seconds)
    assert decisions[:9] == [True] * 4 + [False] * 5
    after_gap = sum(a and not b for a, b in pairwise(decisions))
    assert budget.realized.rounds == [decisions.count(True), decisions.count(False) - after_gap]
    if pays:
        assert decisions[9:] == [True] * 31
    else:
        assert budget.realized.loss() and decisions[9:].count(True) <= 8


def test_realized_rates_carry_over_to_the_next_request() -> None:
    """A request hands on its realized rounds (at most HISTORY_ROUNDS of each kind, the rates
    kept) and the length its backoff reached; the next one, whose drafted rounds lost before,
    probes once and then skips that long, instead of learning the loss again, and the same
    request run twice decides alike (what was left of a skip does not carry over)."""
    history = RealizedRates()
    first = Budget(cost=FLAT, draft_seconds=0.01, history=history)
    realize_rounds(first, 80, 0.3)
    first.finish()
    assert max(history.rounds) <= HISTORY_ROUNDS and min(history.rounds) >= RATE_ROUNDS
    for kind in (0, 1):
        rate = first.realized.committed[kind] / first.realized.seconds[kind]
        assert history.committed[kind] / history.seconds[kind] == pytest.approx(rate)
    assert history.loss_skip == first.loss_skip > MAX_SKIP
    runs = []
    for _ in range(2):
        length = history.loss_skip
        second = Budget(cost=FLAT, draft_seconds=0.01, history=history)
        assert second.realized.loss()
        runs.append(realize_rounds(second, 20, 0.3))
        assert runs[-1] == [True] + [False] * 19
        assert second.skip_left == length - 19
        second.finish()
    fresh = Budget(cost=FLAT, draft_seconds=0.01, history=RealizedRates())
    assert realize_rounds(fresh, 4, 0.3) == [True] * 4  # nothing carried: learn as before


def test_a_loss_found_again_doubles_the_skip() -> None:
    """Each probe that still finds drafting slower than plain rounds skips twice as long as
    the last skip, from MAX_SKIP up to MAX_LOSS_SKIP rounds; a round that pays resets it."""
    budget = Budget(cost=FLAT, draft_seconds=0.01)
    decisions = realize_rounds(budget, 2000, 0.3)
    drafted = [i for i, d in enumerate(decisions) if d]
    gaps = [b - a - 1 for a, b in pairwise(drafted) if b - a > 1]
    # plain rounds to compare (the first after a drafting gap not counted), then the first skip
    assert gaps[:2] == [RATE_ROUNDS + 1, MAX_SKIP]
    assert gaps[2:6] == [2 * MAX_SKIP, 4 * MAX_SKIP, 8 * MAX_SKIP, MAX_LOSS_SKIP]
    assert set(gaps[6:]) == {MAX_LOSS_SKIP}
    budget.realized = RealizedRates()  # no measured loss any more: the estimates decide
    budget.skip_left = 0
    assert budget.should_draft() and len(budget.select(wide_tree(), 0)) == 4
    assert budget.loss_skip == MAX_SKIP


def test_each_method_and_options_keep_their_own_realized_rates(tiny_bpe_llm) -> None:
    from alignspec.methods import get_method

    eagle2 = get_method("eagle2")
    deep, shallow = eagle2.make_options({}), eagle2.make_options({"depth": 0})
    a, b = tiny_bpe_llm.make_budget("auto", "sps"), tiny_bpe_llm.make_budget("auto", "sps")
    c = tiny_bpe_llm.make_budget("auto", "eagle2", deep)
    assert a.history is b.history and a.history is not c.history
    assert tiny_bpe_llm.make_budget("auto", "eagle2", eagle2.make_options({})) is not c
    assert tiny_bpe_llm.make_budget("auto", "eagle2", eagle2.make_options({})).history is c.history
    assert tiny_bpe_llm.make_budget("auto", "eagle2", shallow).history is not c.history
    assert tiny_bpe_llm.make_budget(4, "sps").history is None


def test_parse_budget() -> None:
    assert parse_budget("auto") is None and parse_budget(None) is None
    assert parse_budget("8") == 8 and parse_budget(3) == 3
    for bad in ("0", "-2", "many", 2.5, True):
        with pytest.raises(AlignspecError):
            parse_budget(bad)


class CountingDrafter(Drafter):
    """Wraps a drafter, counts its proposals and claims to be costly (as a model would be)."""

    costly = True

    def __init__(self, inner: Drafter) -> None:
        self.inner, self.calls = inner, 0

    def propose(self, tokens: list[int]) -> DraftTree:
        self.calls += 1
        return self.inner.propose(tokens)


PROMPT = [1, 10, 11, 12, 13, 14, 10, 11, 12, 20, 21, 22, 10, 11]


def generate(model, drafter: Drafter, budget: Budget | None) -> list[int]:
    engine = Engine(HFTarget(model), drafter, GreedyVerifier(), budget)
    out: list[int] = []
    stats = GenerationStats()
    for new in engine.generate(PROMPT, max_new_tokens=24, eos_ids=frozenset(), stats=stats):
        out.extend(new)
    return out


@pytest.mark.parametrize("cost", [FLAT, STEEP], ids=["flat", "steep"])
def test_budgeted_trees_stay_identical_to_plain_decoding(tiny_llama, cost) -> None:
    ref = generate(tiny_llama, NoDrafter(), None)
    tree = PromptLookupDrafter(PromptLookupConfig(tree=True, max_nodes=16))
    drafter = CountingDrafter(tree)
    assert generate(tiny_llama, drafter, Budget(cost=cost)) == ref
    assert generate(tiny_llama, PromptLookupDrafter(), Budget(limit=2)) == ref
    if cost is STEEP:
        assert drafter.calls < 23  # skipped most rounds: nothing was ever worth a row


def test_cheap_drafter_is_never_skipped() -> None:
    budget = Budget(cost=STEEP)  # no drafting time: declining a tree is free
    for _ in range(8):
        assert budget.should_draft()
        assert len(budget.select(wide_tree(), 0)) == 0
