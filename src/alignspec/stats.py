"""The speculation counters and every figure derived from them: the one definition of each.

Counters follow vLLM's ``SpecDecodingStats`` (methods.md §1, "Metrics"):

- ``num_rounds``: target forwards after the prefill (plain decoding: one per token after the
  first);
- ``num_drafts``: rounds that proposed at least one draft token;
- ``num_draft_tokens``: proposed draft nodes (for a tree every node, not only one branch);
- ``num_accepted_tokens``: accepted draft tokens, the bonus token excluded;
- ``num_accepted_tokens_per_pos[k]``: rounds whose accepted path reached depth ``k + 1``;
- ``num_committed_tokens``: tokens committed by rounds (accepted drafts plus bonus tokens).

The derived figures are properties of :class:`SpecCounters`, and the CLI's stats line, the
API's ``GenerationOutput.stats``, the bench's tables and ``results.json`` and the server's
``/metrics`` all read them from here. The token produced by the prefill is in
``GenerationStats.new_tokens`` but in no round. A figure with nothing to count is NaN (shown
as ``n/a``), never a made-up 0 or 1.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class SpecCounters:
    """Speculation counters, addable across rounds, requests and prompts."""

    num_rounds: int = 0
    num_drafts: int = 0
    num_draft_tokens: int = 0
    num_accepted_tokens: int = 0
    num_accepted_tokens_per_pos: list[int] = field(default_factory=list)
    num_committed_tokens: int = 0

    def observe(self, committed: int, proposed: int) -> None:
        """Count one round that committed ``committed`` tokens out of ``proposed`` draft nodes.

        The accepted draft path is ``committed - 1`` deep (the last token is the bonus).
        """
        accepted = committed - 1
        if committed < 1 or proposed < 0 or accepted > proposed:
            raise ValueError(f"a round cannot commit {committed} tokens from {proposed} drafts")
        self.num_rounds += 1
        self.num_committed_tokens += committed
        if proposed:
            self.num_drafts += 1
            self.num_draft_tokens += proposed
        self.num_accepted_tokens += accepted
        per_pos = self.num_accepted_tokens_per_pos
        if len(per_pos) < accepted:
            per_pos.extend([0] * (accepted - len(per_pos)))
        for k in range(accepted):
            per_pos[k] += 1

    def __iadd__(self, other: SpecCounters) -> SpecCounters:
        self.num_rounds += other.num_rounds
        self.num_drafts += other.num_drafts
        self.num_draft_tokens += other.num_draft_tokens
        self.num_accepted_tokens += other.num_accepted_tokens
        self.num_committed_tokens += other.num_committed_tokens
        mine, theirs = self.num_accepted_tokens_per_pos, other.num_accepted_tokens_per_pos
        if len(mine) < len(theirs):
            mine.extend([0] * (len(theirs) - len(mine)))
        for k, n in enumerate(theirs):
            mine[k] += n
        return self

    @classmethod
    def from_rounds(cls, committed: Sequence[int], proposed: Sequence[int]) -> SpecCounters:
        """Counters of rounds given as per-round committed tokens and proposed draft nodes."""
        if len(committed) != len(proposed):
            raise ValueError("committed and proposed counts must have one entry per round")
        counters = cls()
        for c, p in zip(committed, proposed, strict=True):
            counters.observe(c, p)
        return counters

    @classmethod
    def total(cls, parts: Iterable[SpecCounters]) -> SpecCounters:
        out = cls()
        for part in parts:
            out += part
        return out

    # ----------------------------------------------------------------- derived figures
    @property
    def tau(self) -> float:
        """Spec-Bench's mean accepted tokens: committed tokens per round, bonus included.

        1.00 for plain decoding; rounds that drafted nothing count (with 1 token each), which
        is why this, not the mean acceptance length, predicts speed.
        """
        return _ratio(self.num_committed_tokens, self.num_rounds)

    @property
    def mean_acceptance_length(self) -> float:
        """vLLM's mean acceptance length: 1 + accepted / drafts (draftless rounds left out)."""
        if not self.num_drafts:
            return math.nan
        return 1.0 + self.num_accepted_tokens / self.num_drafts

    @property
    def acceptance_rate(self) -> float:
        """Accepted draft tokens / proposed draft tokens.

        For trees the denominator is every proposed node, so a tree with siblings can never
        reach 1.0 even when its best branch is accepted whole.
        """
        return _ratio(self.num_accepted_tokens, self.num_draft_tokens)

    @property
    def per_position_acceptance(self) -> list[float]:
        """vLLM's per-position acceptance: entry k is the share of drafting rounds whose
        accepted path reached depth k + 1 (``num_accepted_tokens_per_pos[k] / num_drafts``).

        It is cumulative: entry k can never exceed entry k - 1.
        """
        if not self.num_drafts:
            return []
        return [n / self.num_drafts for n in self.num_accepted_tokens_per_pos]

    @property
    def conditional_acceptance(self) -> list[float]:
        """Entry k: the share of rounds that, having accepted depth k, also accepted depth k + 1
        (``per_pos[k] / per_pos[k - 1]``; entry 0 is ``per_pos[0] / num_drafts``)."""
        out: list[float] = []
        previous = self.num_drafts
        for n in self.num_accepted_tokens_per_pos:
            out.append(_ratio(n, previous))
            previous = n
        return out

    @property
    def draft_tokens_per_round(self) -> float:
        """Proposed draft nodes per round (the rows a verify forward spends beyond the root)."""
        return _ratio(self.num_draft_tokens, self.num_rounds)

    @property
    def rows_per_round(self) -> float:
        """Rows per verify forward: the root plus the draft tokens (1.00 for plain decoding)."""
        return 1.0 + self.draft_tokens_per_round

    def figures(self) -> dict[str, Any]:
        """Every counter and derived figure, named as above (for JSON and reports)."""
        return {
            "num_rounds": self.num_rounds,
            "num_drafts": self.num_drafts,
            "num_draft_tokens": self.num_draft_tokens,
            "num_accepted_tokens": self.num_accepted_tokens,
            "num_accepted_tokens_per_pos": list(self.num_accepted_tokens_per_pos),
            "num_committed_tokens": self.num_committed_tokens,
            "tau": self.tau,
            "mean_acceptance_length": self.mean_acceptance_length,
            "acceptance_rate": self.acceptance_rate,
            "per_position_acceptance": self.per_position_acceptance,
            "conditional_acceptance": self.conditional_acceptance,
            "draft_tokens_per_round": self.draft_tokens_per_round,
            "rows_per_round": self.rows_per_round,
        }


def _ratio(num: float, den: float) -> float:
    return num / den if den else math.nan


def fmt(value: float, digits: int = 2) -> str:
    """A figure for a table or a stats line: ``n/a`` for NaN."""
    return "n/a" if math.isnan(value) else f"{value:.{digits}f}"


@dataclass
class RoundRecord:
    """One draft-and-verify round."""

    committed: int  # tokens committed this round (accepted drafts + bonus)
    proposed: int  # draft nodes proposed (after the budget: the rows verified beyond the root)
    depth: int  # depth of the proposed tree (longest branch)
    draft_time: float  # drafting and budget selection
    verify_time: float  # the target forward, the acceptance rule and the cache commit
    forward_time: float = 0.0  # the target forward alone (decoder, and the LM head rows read)
    round_time: float = 0.0  # the whole round, bookkeeping included

    @property
    def overhead(self) -> float:
        """Engine time that is neither drafting nor the forward (masks, verifier, bookkeeping)."""
        return max(0.0, self.round_time - self.draft_time - self.forward_time)

    @property
    def accepted(self) -> int:
        return self.committed - 1


@dataclass
class GenerationStats:
    """One generation: its timings, its rounds, and the counters derived from them."""

    prompt_tokens: int = 0
    new_tokens: int = 0
    prefill_time: float = 0.0
    wall_time: float = 0.0
    rounds: list[RoundRecord] = field(default_factory=list)

    @property
    def counters(self) -> SpecCounters:
        return SpecCounters.from_rounds(
            [r.committed for r in self.rounds], [r.proposed for r in self.rounds]
        )

    @property
    def num_rounds(self) -> int:
        return len(self.rounds)

    @property
    def accept_lengths(self) -> list[int]:
        """Committed tokens per round (bonus included): the distribution tau is the mean of."""
        return [r.committed for r in self.rounds]

    @property
    def tau(self) -> float:
        return self.counters.tau

    @property
    def acceptance_rate(self) -> float:
        return self.counters.acceptance_rate

    @property
    def mean_acceptance_length(self) -> float:
        return self.counters.mean_acceptance_length

    @property
    def draft_time(self) -> float:
        return sum(r.draft_time for r in self.rounds)

    @property
    def overhead_per_round(self) -> float:
        """Mean engine overhead per round in seconds (see :attr:`RoundRecord.overhead`)."""
        if not self.rounds:
            return math.nan
        return sum(r.overhead for r in self.rounds) / len(self.rounds)

    @property
    def verify_time(self) -> float:
        return sum(r.verify_time for r in self.rounds)

    @property
    def tokens_per_s(self) -> float:
        """New tokens over wall time, prefill included (the Spec-Bench convention)."""
        return self.new_tokens / self.wall_time if self.wall_time > 0 else 0.0

    def summary(self) -> str:
        """The one-line summary the CLI prints to stderr."""
        c = self.counters
        return (
            f"new_tokens={self.new_tokens} tokens/s={self.tokens_per_s:.2f} tau={fmt(c.tau)} "
            f"rounds={c.num_rounds} acceptance={fmt(c.acceptance_rate)} "
            f"mean_acceptance_length={fmt(c.mean_acceptance_length)} "
            f"prefill={self.prefill_time:.2f}s wall={self.wall_time:.2f}s"
        )
