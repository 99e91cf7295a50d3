"""The per-round draft budget: keep the part of a draft tree that pays for its rows.

methods.md §1 ("Cost-aware draft budget"): if node i's whole root path is accepted with
probability a_i, a verified tree S commits 1 + sum(a_i) tokens in expectation at the price of
one forward over |S| + 1 rows, c(|S| + 1), plus the drafting time. Nodes are taken in
decreasing a_i (a child never beats its parent, so every prefix of that order is a valid tree)
and one scan finds the size with the most expected tokens per second. The empty tree, plain
decoding, is always a candidate.

Estimates: a drafter's ``tree.scores`` (frequency share for retrieval, the target's own
probability for alignment siblings, cumulative draft probability for feature heads and draft
models, 1.0 where it knows nothing) times a per-depth calibration learned from this request:
``g(d) = (proposed nodes at depth d whose path was committed) / (their score mass)``, with a
small prior. The calibration learns in hindsight from every proposed node, not only the
verified ones: once the request has committed as many tokens past a round as its tree was
deep, a node counts as accepted if its path is what was committed. Learning only from the
nodes that were kept never corrects a pessimistic estimate (measured on Spec-Bench with aasd:
rounds cut to 1-2 nodes, predicted to accept 0.31 tokens, accepted 0.76). Splitting the
calibration by score band as well was measured too (pld-tree, aasd-exact, aasd), and lost.

When several rounds in a row find nothing worth a row, the budget tells the engine to skip a
costly drafter (a model) for a while (1, 2, 4, ... rounds, then probe again; a probe that does
not pay either skips again at once), so a drafter whose proposals do not pay costs about one
probe in many rounds instead of a draft every round. Whether drafting pays is judged on twice the
drafting time (:data:`DRAFT_GAP_FACTOR`): the forward after a drafting gap runs slower.
A costly drafter is also judged on what its rounds realize: once a request has
:data:`RATE_ROUNDS` drafted rounds and as many plain ones (plain rounds are taken on purpose
when there are none yet; one right after a drafted round is not counted), drafting counts as
not paying while the drafted rounds commit fewer tokens per second, drafting included, than
the plain ones, and the drafter is then skipped :data:`MAX_SKIP` rounds, twice as many after
each further probe that finds the loss (up to :data:`MAX_LOSS_SKIP`). Those rates and the
backoff's length carry over from one request to the next (:class:`RealizedRates`), which then
starts with one probe round: on the int8 model (AMD EPYC, Spec-Bench rag) a head that never
paid still drafted 4 probe rounds per 128-token request at 32 rounds a skip, 4.6% of its
rounds, each 1.6x a plain round's time. The estimates above
price a draft by the cost curve and the drafting time; the realized rates also see what they
miss (the slower forward after a drafting gap, a machine whose one-row step runs faster than
the curve).
A cheap drafter is never skipped: declining its tree already costs nothing, and a skipped
round can neither commit a draft nor teach the estimates anything. With cheap
drafters (retrieval) every decision depends only on the request's tokens and the cached cost
curve, never on live timings, so lossy methods stay reproducible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from alignspec.cost import CostModel
from alignspec.errors import AlignspecError
from alignspec.tree import DraftTree

#: prior probability that a draft path reaches depth d is PRIOR_REACH ** d, worth PRIOR_WEIGHT
#: nodes: optimistic enough that a new request drafts and learns, gone after a few rounds
PRIOR_REACH = 0.6
PRIOR_WEIGHT = 2.0
#: depths beyond MAX_DEPTH share the last depth's calibration
MAX_DEPTH = 8
#: consecutive empty selections before the drafter is skipped; most rounds skipped at once
EMPTY_ROUNDS_TO_SKIP = 2
MAX_SKIP = 32
#: most rounds skipped at once after probes that keep measuring a loss (doubling from MAX_SKIP)
MAX_LOSS_SKIP = 512
#: a costly drafter's round is charged this multiple of its drafting time: the forward after
#: a drafting gap runs slower (measured on the int8 model with eagle2's drafter replaced: a
#: 0.5 ms absorb slowed the next forward by 0.5 ms, a 1.2 ms busy wait by 0.6 ms, a full
#: 3.1 ms draft by 1.2 ms)
DRAFT_GAP_FACTOR = 2.0
#: drafted and plain rounds a request needs before their realized rates can veto drafting
RATE_ROUNDS = 4
#: rounds of each kind a method's history keeps (older ones weigh in proportionally less)
HISTORY_ROUNDS = 32


def parse_budget(value: str | int | None) -> int | None:
    """``"auto"`` (or None) -> None (cost-aware), ``N`` -> at most N draft nodes, no cost model."""
    if value is None or value == "auto":
        return None
    bad = AlignspecError(f"budget must be 'auto' or a positive integer, not {value!r}")
    if isinstance(value, (bool, float)):
        raise bad
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise bad from None
    if n < 1:
        raise bad
    return n


@dataclass
class RealizedRates:
    """A costly drafter's realized rounds, [drafted, plain]: how many, the tokens they committed
    and their seconds (drafting included). One per request in its :class:`Budget`, and one per
    method in :class:`~alignspec.api.LLM` that hands the last request's on to the next (at most
    :data:`HISTORY_ROUNDS` of each kind), where they count as :data:`RATE_ROUNDS` rounds of each
    kind: a drafter that did not pay on this machine is skipped from a request's first rounds
    instead of after a dozen. The method's copy also carries the length the backoff reached
    (``loss_skip``), so the next request, after one probe round, continues it. Not the rounds
    still to skip: a request's decisions would then depend on where the last one stopped, and
    the same seeded request run twice would draft in different rounds and draw other tokens."""

    rounds: list[float] = field(default_factory=lambda: [0.0, 0.0])
    committed: list[float] = field(default_factory=lambda: [0.0, 0.0])
    seconds: list[float] = field(default_factory=lambda: [0.0, 0.0])
    #: the backoff after a measured loss: the next loss skip's length
    loss_skip: int = MAX_SKIP

    def add(self, drafted: bool, committed: int, seconds: float) -> None:
        kind = 0 if drafted else 1
        self.rounds[kind] += 1
        self.committed[kind] += committed
        self.seconds[kind] += seconds

    def loss(self) -> bool:
        """Whether drafted rounds committed fewer tokens per second than plain ones (False
        until each kind has :data:`RATE_ROUNDS` rounds)."""
        if min(self.rounds) < RATE_ROUNDS:
            return False
        return self.committed[0] / self.seconds[0] < self.committed[1] / self.seconds[1]

    def scaled(self, most: float) -> RealizedRates:
        """The same rates with each kind weighted as at most ``most`` rounds."""
        out = RealizedRates()
        for kind in (0, 1):
            keep = min(1.0, most / max(self.rounds[kind], 1.0))
            out.rounds[kind] = self.rounds[kind] * keep
            out.committed[kind] = self.committed[kind] * keep
            out.seconds[kind] = self.seconds[kind] * keep
        return out


@dataclass
class Budget:
    """Sizes one request's trees. ``cost=None`` with ``limit=N``: keep the N best nodes."""

    cost: CostModel | None = None
    limit: int | None = None
    #: per-round drafting seconds to charge (only for costly drafters; 0 keeps it deterministic)
    draft_seconds: float = 0.0
    #: per depth: proposed nodes whose path was committed, and their score mass (hindsight)
    hits: list[float] = field(default_factory=lambda: [0.0] * MAX_DEPTH)
    mass: list[float] = field(default_factory=lambda: [0.0] * MAX_DEPTH)
    #: proposed trees waiting for enough committed tokens: (tree, request length at proposal,
    #: every row's depth); the depths are kept because AASD's 20-deep trees wait up to ten
    #: rounds, and recomputing them every round cost more than the rest of this bookkeeping
    pending: list[tuple[DraftTree, int, list[int]]] = field(default_factory=list)
    empty_streak: int = 0
    skip_left: int = 0
    skip_next: int = 1
    loss_skip: int = MAX_SKIP
    rows_kept: list[int] = field(default_factory=list)
    #: this request's realized rounds (a costly drafter's), started from :attr:`history`
    realized: RealizedRates = field(default_factory=RealizedRates)
    _last_drafted: bool = False
    #: earlier requests' realized rounds (read at the start, updated by :meth:`finish`)
    history: RealizedRates | None = None

    def __post_init__(self) -> None:
        if self.history is None:
            return
        if min(self.history.rounds) >= RATE_ROUNDS:
            self.realized = self.history.scaled(RATE_ROUNDS)
        self.loss_skip = self.history.loss_skip
        if self.realized.loss():  # the first round is a probe
            self.empty_streak = EMPTY_ROUNDS_TO_SKIP - 1

    # ------------------------------------------------------------------ estimates
    def calibration(self, depth: int) -> float:
        """g(depth): committed nodes / proposed score mass at that depth, prior folded in."""
        d = min(depth, MAX_DEPTH) - 1
        prior = PRIOR_REACH**depth
        return (self.hits[d] + PRIOR_WEIGHT * prior) / (self.mass[d] + PRIOR_WEIGHT)

    def estimates(self, tree: DraftTree, depths: list[int] | None = None) -> list[float]:
        """a_i for every draft node: score x g(depth), capped by the parent's estimate
        (``depths``: the tree's :meth:`~DraftTree.depths`, when the caller has them)."""
        depths = depths if depths is not None else tree.depths()
        scores = tree.scores if tree.scores is not None else [1.0] * len(tree)
        g = {d: self.calibration(d) for d in set(depths[1:])}
        a: list[float] = []
        for i, (score, parent) in enumerate(zip(scores, tree.parents, strict=True)):
            value = min(1.0, max(0.0, float(score)) * g[depths[i + 1]])
            a.append(min(value, a[parent - 1]) if parent else value)
        return a

    # ------------------------------------------------------------------ decisions
    def should_draft(self) -> bool:
        """False while a costly drafter is skipped after rounds that found nothing worth it,
        and for a few plain rounds once drafted rounds have been realized but no plain one."""
        if self.limit is not None or self.draft_seconds == 0.0:
            return True
        if self.skip_left > 0:
            self.skip_left -= 1
            return False
        if self.realized.rounds[0] >= RATE_ROUNDS and self.realized.rounds[1] == 0:
            # plain rounds to compare with: the first follows a drafting gap and is not counted
            self.skip_left = RATE_ROUNDS
            return False
        return True

    def select(self, tree: DraftTree, committed: int) -> DraftTree:
        """The root-closed subtree with the most expected committed tokens per second.

        ``committed`` is the request's length when ``tree`` was proposed (the context the
        verify attends to, which the cost curve is read at); the whole tree is remembered so
        :meth:`observe` can learn from the nodes that were cut too.

        The drafting time of this round is spent already, so the size is chosen on the
        verify cost alone; whether drafting pays at all (charged :attr:`draft_seconds` times
        :data:`DRAFT_GAP_FACTOR`, against plain decoding's one-row forward) decides whether
        the next rounds draft.
        """
        if not len(tree):
            return tree
        depths = tree.depths()
        a = self.estimates(tree, depths)
        if self.cost is not None:
            self.pending.append((tree, committed, depths))
        order = sorted(range(len(tree)), key=lambda i: (-a[i], i))
        if self.limit is not None:
            keep = order[: self.limit]
            worth = True
        else:
            assert self.cost is not None
            # plain floats: numpy's per-call cost was most of this scan's time
            times = self.cost.curve(len(tree) + 1, committed)
            charge = self.draft_seconds * DRAFT_GAP_FACTOR
            best, best_rate, best_charged, mass = 0, 1.0 / times[0], -math.inf, 0.0
            for size, node in enumerate(order, start=1):
                mass += a[node]
                gain = 1.0 + mass
                if gain / times[size] > best_rate:
                    best, best_rate = size, gain / times[size]
                best_charged = max(best_charged, gain / (times[size] + charge))
            keep = order[:best]
            worth = best_charged > 1.0 / times[0]
        self._record_selection(len(keep), worth)
        if len(keep) == len(tree):
            return tree
        return tree.subtree([i + 1 for i in keep])

    def _record_selection(self, kept: int, worth: bool) -> None:
        self.rows_kept.append(kept + 1)
        loss = self.realized.loss()
        if worth and not loss:
            self.empty_streak, self.skip_next, self.loss_skip = 0, 1, MAX_SKIP
            return
        self.empty_streak += 1
        if self.empty_streak >= EMPTY_ROUNDS_TO_SKIP:
            if loss:  # measured, not a guess that later rounds may revise: back off further
                self.skip_left = self.loss_skip
                self.loss_skip = min(2 * self.loss_skip, MAX_LOSS_SKIP)
            else:
                self.skip_left = self.skip_next
            self.skip_next = min(2 * self.skip_left, MAX_SKIP)
            # the round after a skip is a probe: if it does not pay either, skip again
            self.empty_streak = EMPTY_ROUNDS_TO_SKIP - 1

    def observe(self, tokens: list[int]) -> None:
        """Learn from the proposed trees whose depth the committed ``tokens`` now cover."""
        waiting = []
        hits, mass = [0.0] * MAX_DEPTH, [0.0] * MAX_DEPTH  # summed in floats, added once
        for entry in self.pending:
            tree, start, depths = entry
            if len(tokens) - start < max(depths):
                waiting.append(entry)
                continue
            scores = tree.scores if tree.scores is not None else [1.0] * len(tree)
            matched = [True]
            for node, (token, parent) in enumerate(zip(tree.tokens, tree.parents, strict=True)):
                d = depths[node + 1]
                matched.append(matched[parent] and tokens[start + d - 1] == token)
                row = min(d, MAX_DEPTH) - 1
                mass[row] += min(1.0, max(0.0, float(scores[node])))
                hits[row] += matched[-1]
        self.mass = [m + dm for m, dm in zip(self.mass, mass, strict=True)]
        self.hits = [h + dh for h, dh in zip(self.hits, hits, strict=True)]
        self.pending = waiting

    def observe_round(self, drafted: bool, committed: int, seconds: float) -> None:
        """A costly drafter's round as realized: whether it drafted, the tokens it committed
        and its seconds, drafting included."""
        after_gap, self._last_drafted = self._last_drafted, drafted
        if not drafted and after_gap:
            return  # the forward after a drafting gap runs slower: not a plain round's rate
        self.realized.add(drafted, committed, seconds)

    def finish(self) -> None:
        """Hand this request's realized rounds (its starting point included) and the length
        its backoff reached to the next."""
        if self.history is None:
            return
        if any(self.realized.rounds):
            kept = self.realized.scaled(HISTORY_ROUNDS)
            self.history.rounds, self.history.committed = kept.rounds, kept.committed
            self.history.seconds = kept.seconds
        self.history.loss_skip = self.loss_skip

    def observe_draft_time(self, seconds: float) -> None:
        """A costly drafter's round: keep a running mean of what drafting costs."""
        if self.draft_seconds == 0.0:
            self.draft_seconds = seconds
        else:
            self.draft_seconds += 0.25 * (seconds - self.draft_seconds)

    def worth_expanding(
        self, score: float, depth: int, step_seconds: float, context: int | None = None
    ) -> bool:
        """Whether a node of raw ``score`` at ``depth`` is worth one more drafting step.

        A step that finds an accepted token saves about one plain decoding step, c(1) at the
        request's ``context`` length. Under a fixed limit of N nodes no node deeper than N can
        be kept (a valid subtree of N nodes holds no longer path), so deeper steps are skipped:
        fspad at ``--budget 4`` drafted 4 steps a round where 3 can be used, at about 0.6 ms
        each against a 5-6 ms target step (int8, 2-core AMD EPYC).
        """
        if self.limit is not None:
            return depth <= self.limit
        if self.cost is None:
            return True
        if math.isnan(score):
            return False
        gain = min(1.0, max(0.0, score) * self.calibration(depth))
        return gain * self.cost.verify(1, context) > step_seconds
