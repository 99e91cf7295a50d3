"""Per-round statistics and the field's standard metrics derived from them.

Names follow vLLM and Spec-Bench: mean accepted length ``tau`` counts the bonus token (so plain
decoding has tau = 1.0), acceptance rate is accepted draft tokens over proposed draft tokens.
The token produced by the prefill is counted in ``new_tokens`` but in no round.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RoundRecord:
    """One draft-and-verify round."""

    committed: int  # tokens committed this round (accepted drafts + bonus)
    proposed: int  # draft nodes proposed
    depth: int  # depth of the proposed tree (longest branch)
    draft_time: float
    verify_time: float

    @property
    def accepted(self) -> int:
        return self.committed - 1


@dataclass
class GenerationStats:
    """Counters for one generation; every derived metric is a property."""

    prompt_tokens: int = 0
    new_tokens: int = 0
    prefill_time: float = 0.0
    wall_time: float = 0.0
    rounds: list[RoundRecord] = field(default_factory=list)

    @property
    def num_rounds(self) -> int:
        return len(self.rounds)

    @property
    def accept_lengths(self) -> list[int]:
        return [r.committed for r in self.rounds]

    @property
    def tau(self) -> float:
        """Mean accepted length: committed tokens per round, bonus included."""
        return sum(self.accept_lengths) / self.num_rounds if self.rounds else 1.0

    @property
    def acceptance_rate(self) -> float:
        proposed = sum(r.proposed for r in self.rounds)
        return sum(r.accepted for r in self.rounds) / proposed if proposed else 0.0

    @property
    def draft_time(self) -> float:
        return sum(r.draft_time for r in self.rounds)

    @property
    def verify_time(self) -> float:
        return sum(r.verify_time for r in self.rounds)

    @property
    def tokens_per_s(self) -> float:
        """New tokens over wall time, prefill included (the Spec-Bench convention)."""
        return self.new_tokens / self.wall_time if self.wall_time > 0 else 0.0

    def summary(self) -> str:
        """The one-line summary the CLI prints to stderr."""
        return (
            f"new_tokens={self.new_tokens} tokens/s={self.tokens_per_s:.2f} tau={self.tau:.2f} "
            f"rounds={self.num_rounds} acceptance={self.acceptance_rate:.2f} "
            f"prefill={self.prefill_time:.2f}s wall={self.wall_time:.2f}s"
        )
