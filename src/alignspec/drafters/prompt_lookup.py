"""Prompt lookup decoding (PLD): copy what followed the last n tokens earlier in the text.

Chain mode copies ``draft_len`` tokens after the most recent occurrence of the longest
matching suffix (n from ``max_ngram`` down to ``min_ngram``). Tree mode merges the
continuations of every occurrence of that suffix by frequency, so two competing continuations
are verified in the same forward.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from alignspec.drafters.base import Drafter
from alignspec.drafters.retrieval import History, frequency_trie, longest_suffix_matches
from alignspec.targets.base import PrefillOutput
from alignspec.tree import DraftTree


@dataclass
class PromptLookupConfig:
    """Options of prompt lookup (defaults follow the PLD reference implementation)."""

    max_ngram: int = field(
        default=3, metadata={"help": "longest suffix n-gram to look up", "min": 1}
    )
    min_ngram: int = field(
        default=1, metadata={"help": "shortest suffix n-gram to look up", "min": 1}
    )
    draft_len: int = field(default=10, metadata={"help": "tokens copied per branch", "min": 1})
    tree: bool = field(default=False, metadata={"help": "merge every match into a draft tree"})
    max_nodes: int = field(default=32, metadata={"help": "tree mode: most draft nodes", "min": 1})
    max_matches: int = field(
        default=32, metadata={"help": "tree mode: most recent matches used", "min": 1}
    )

    def __post_init__(self) -> None:
        from alignspec.errors import AlignspecError
        from alignspec.options import check_fields

        check_fields(self, "prompt lookup")
        if not 1 <= self.min_ngram <= self.max_ngram:
            raise AlignspecError("need 1 <= min_ngram <= max_ngram for prompt lookup")
        if self.draft_len < 1 or self.max_nodes < 1 or self.max_matches < 1:
            raise AlignspecError("draft_len, max_nodes and max_matches must be at least 1")


class PromptLookupDrafter(Drafter):
    """Drafts by copying from the prompt and the output so far."""

    def __init__(self, config: PromptLookupConfig | None = None) -> None:
        self.config = config or PromptLookupConfig()
        self._history = History()

    def begin(self, prompt: list[int], prefill: PrefillOutput) -> None:
        self._history = History()

    def propose(self, tokens: list[int]) -> DraftTree:
        cfg = self.config
        history = self._history.view(tokens)
        limit = cfg.max_matches if cfg.tree else 1
        n, starts = longest_suffix_matches(history, cfg.max_ngram, cfg.min_ngram, limit=limit)
        if n == 0:
            return DraftTree()
        if not cfg.tree:
            return DraftTree.chain(history[starts[-1] : starts[-1] + cfg.draft_len].tolist())
        return frequency_trie(history, starts, cfg.draft_len, cfg.max_nodes)
