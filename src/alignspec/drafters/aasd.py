"""AASD drafting: retrieval from the context plus alignment sampling (Wang et al., EMNLP 2025).

Drafts are copied from earlier text: the longest suffix of the history (n from ``max_ngram``
down to ``min_ngram``) is looked up, the continuations of its occurrences are merged by
frequency into a trie. *Alignment sampling* then uses what the target already told us for free:
the prefill computed the target's next-token distribution at every prompt position, and every
verify forward does the same for generated positions. A copied token that is not the target's
own choice at its source position is rarely accepted, so the target's own top tokens there are
added as sibling branches. Only the top-m ids and probabilities per position are kept.

The table is filled lazily for the prompt: the prefill keeps the prompt's last hidden states
(``L x H``, a few MB), and the target's LM head runs only over the source positions a draft
actually copies from, once each, batched per round. Running it over every prompt position at
prefill (the paper's formulation) cost more than the prefill itself on long prompts.

A request stops its lookups once the siblings they produced were rarely the token the target
then wrote (``align_min_yield``): on SmolLM2-135M they never were, and the lookups cost 2-3%
of a round.

Departures from the paper's settings, each an option (README, methods.md §2): keys fall back
to a single token when no longer suffix matches (``min_ngram`` 1; the paper stops at 2, and
prompt lookup's reference goes to 1), and occurrences are weighted by recency
(``recency`` < 1: the k-th most recent match counts ``recency ** k``), so a continuation seen
just before wins over an old frequent one. Branches copy up to 20 tokens (``draft_len``; the
paper's 10): on Multi-News a fifth of aasd's rounds accepted all 10, so the cap cost tokens.
A copied node's score for the draft budget is the
square root of the weighted share of the matches that continue that way (times its parent's);
an alignment sibling's is its parent's times the target's probability of it at the source.
The target's probability of the *copied* token at its source is not used: it measures how
predictable the token was without the copy in context, and the text a model repeats from its
prompt was often unpredictable there (on Spec-Bench, 2 prompts per group, scoring copies by it
cut aasd-exact's tau from 1.74 to 1.63 and aasd's from 2.59 to 2.23).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from alignspec.drafters.base import Drafter
from alignspec.drafters.retrieval import History, continuation_trie, longest_suffix_matches
from alignspec.errors import AlignspecError
from alignspec.options import check_fields
from alignspec.rows import ExtraRows, RowLogits, row_index
from alignspec.targets.base import PrefillOutput, VerifyOutput, top_probs
from alignspec.targets.native import cpu_kernel
from alignspec.tree import DraftTree
from alignspec.verifiers.base import VerifyResult

SIBLING_MODES = ("leaf", "continue")
SAMPLE_MODES = ("topk", "random")
VERIFY_MODES = ("exact", "conditional")
THRESHOLD_FORMS = ("constant", "entropy")
#: prompt rows a round's LM-head call computes for the drafter (AASDDrafter._lookup): up to a
#: few rows the int8 head costs one read of its weights whatever the count, but not nothing:
#: on Spec-Bench (int8, one process) aasd decoded 2% faster with 1 row than with 3 (tau 2.53
#: and 2.51), aasd-exact 1% (tau 1.89 either way), and 3 rows beat 6 by 1-3%
PREFETCH_ROWS = 1
LOOKUP_MODES = ("ahead", "now")
#: alignment siblings a request checks against what the target wrote before its lookups may
#: stop (AASDConfig.align_min_yield)
YIELD_SAMPLE = 8


@dataclass
class AASDConfig:
    """Options of AASD (defaults from the paper where it states them, see methods.md §2)."""

    max_ngram: int = field(
        default=16, metadata={"help": "longest suffix n-gram to look up", "min": 1}
    )
    min_ngram: int = field(
        default=1, metadata={"help": "shortest suffix n-gram to look up (paper: 2)", "min": 1}
    )
    draft_len: int = field(
        default=20, metadata={"help": "tokens copied per branch (paper: 10)", "min": 1}
    )
    max_nodes: int = field(
        default=20, metadata={"help": "most draft nodes per tree (paper: 64)", "min": 1}
    )
    max_matches: int = field(default=16, metadata={"help": "most recent matches merged", "min": 1})
    recency: float = field(
        default=0.8,
        metadata={"help": "k-th most recent match weighs recency**k (paper: 1)", "min": 0.0},
    )
    alignment: bool = field(default=True, metadata={"help": "alignment sampling on/off"})
    align_topm: int = field(
        default=4, metadata={"help": "target top-m kept per position", "min": 1}
    )
    expand: int = field(
        default=2, metadata={"help": "target tokens added per unaligned slot", "min": 0}
    )
    align_lookup: str = field(
        default="ahead",
        metadata={
            "help": "a row's top-m: ahead (rides on a verify's LM-head call, used from the "
            "next round) | now (a head call of its own when a draft first needs it)",
            "choices": LOOKUP_MODES,
        },
    )
    align_min_yield: float = field(
        default=0.1,
        metadata={
            "help": "stop a request's alignment lookups once, after 8 siblings, fewer than this "
            "share of them were what the target wrote (0: never stop)",
            "min": 0.0,
            "max": 1.0,
        },
    )
    siblings: str = field(
        default="leaf",
        metadata={
            "help": "alignment siblings: leaf | continue (from context)",
            "choices": SIBLING_MODES,
        },
    )
    sample: str = field(
        default="topk",
        metadata={
            "help": "alignment tokens: topk | random (draw from top-m)",
            "choices": SAMPLE_MODES,
        },
    )
    verify: str = field(
        default="conditional",
        metadata={"help": "verification: exact | conditional", "choices": VERIFY_MODES},
    )
    threshold: str = field(
        default="constant",
        metadata={
            "help": "conditional threshold form: constant | entropy",
            "choices": THRESHOLD_FORMS,
        },
    )
    tau: float = field(default=0.1, metadata={"help": "constant threshold", "min": 0.0, "max": 1.0})
    alpha: float = field(
        default=0.1, metadata={"help": "entropy threshold: beta - alpha*H", "min": 0.0}
    )
    beta: float = field(
        default=0.1,
        metadata={"help": "entropy threshold: beta - alpha*H", "min": 0.0, "max": 1.0},
    )

    def __post_init__(self) -> None:
        check_fields(self, "AASD")
        if not 1 <= self.min_ngram <= self.max_ngram:
            raise AlignspecError("need 1 <= min_ngram <= max_ngram for AASD")
        if min(self.draft_len, self.max_nodes, self.max_matches, self.align_topm) < 1:
            raise AlignspecError("draft_len, max_nodes, max_matches and align_topm must be >= 1")
        if not 0 < self.recency <= 1:
            raise AlignspecError("recency must be in (0, 1]")
        if not 0 <= self.align_min_yield <= 1:
            raise AlignspecError("align_min_yield must be between 0 and 1")
        if not 0 <= self.expand <= self.align_topm:
            raise AlignspecError("expand must be between 0 and align_topm")
        if self.align_lookup not in LOOKUP_MODES:
            raise AlignspecError(f"align_lookup must be one of {', '.join(LOOKUP_MODES)}")
        if self.siblings not in SIBLING_MODES:
            raise AlignspecError(f"siblings must be one of {', '.join(SIBLING_MODES)}")
        if self.sample not in SAMPLE_MODES:
            raise AlignspecError(f"sample must be one of {', '.join(SAMPLE_MODES)}")
        if self.verify not in VERIFY_MODES:
            raise AlignspecError("verify must be 'exact' or 'conditional'")
        if self.threshold not in THRESHOLD_FORMS:
            raise AlignspecError("threshold must be 'constant' or 'entropy'")


def _numpy(x: torch.Tensor, m: int) -> np.ndarray:
    """The first ``m`` columns of ``x`` as an array (one call where ``x`` is on the CPU)."""
    if x.shape[1] != m:
        x = x[:, :m]
    return x.numpy() if x.device.type == "cpu" else x.cpu().numpy()


class AlignmentTable:
    """Top-m next-token ids/probabilities of the target after each position of the history.

    Row t holds the target's distribution for token t+1. Rows come from the prefill (prompt
    positions) and from verify forwards (accepted rows), so generated text is covered too.
    Storage is ``L x m`` (never ``L x V``) and grows geometrically.
    """

    def __init__(self, m: int) -> None:
        self.m = m
        self.ids = np.full((0, m), -1, dtype=np.int64)
        self.probs = np.zeros((0, m), dtype=np.float32)
        self.known = np.zeros(0, dtype=bool)
        self._views()

    def _views(self) -> None:
        """Tensors over the same memory, which the CPU kernel writes rows into."""
        self._tensors = tuple(torch.from_numpy(a) for a in (self.ids, self.probs, self.known))

    def _grow(self, size: int) -> None:
        if size <= len(self.known):
            return
        new = max(size, 2 * len(self.known), 256)
        ids = np.full((new, self.m), -1, dtype=np.int64)
        probs = np.zeros((new, self.m), dtype=np.float32)
        known = np.zeros(new, dtype=bool)
        n = len(self.known)
        ids[:n], probs[:n], known[:n] = self.ids, self.probs, self.known
        self.ids, self.probs, self.known = ids, probs, known
        self._views()

    def set(self, start: int, ids: torch.Tensor, probs: torch.Tensor) -> None:
        """Store rows ``start..start+len(ids)`` (top-m already computed, ``[n, >=m]``)."""
        n = ids.shape[0]
        self._grow(start + n)
        self.ids[start : start + n] = _numpy(ids, self.m)
        self.probs[start : start + n] = _numpy(probs.float(), self.m)
        self.known[start : start + n] = True

    def set_rows(self, rows: list[int], ids: torch.Tensor, probs: torch.Tensor) -> None:
        """Store top-m for the given (not necessarily contiguous) rows."""
        self._grow(max(rows) + 1)
        index = row_index(rows)
        self.ids[index] = _numpy(ids, self.m)
        self.probs[index] = _numpy(probs.float(), self.m)
        self.known[index] = True

    def receiver(self, rows: list[int]) -> Callable[[torch.Tensor], None]:
        """A function that files the top-m of ``logits`` ``[len(rows), V]`` at ``rows``, in
        one kernel call where alignspec's CPU kernel is loaded. Made before the forward that
        computes the logits: right after it, the checks and the growth of the table cost more
        than the kernel call (and :func:`top_probs` with :meth:`set_rows` 0.13 ms a round)."""
        self._grow(max(rows) + 1)
        kernel = cpu_kernel.loaded()

        def file(logits: torch.Tensor) -> None:
            if kernel is None or logits.device.type != "cpu" or logits.dtype != torch.float32:
                self.set_rows(rows, *top_probs(logits, self.m))
            else:
                kernel.top_probs_into(logits, *self._tensors, rows)

        return file

    def set_from_logits(self, start: int, logits: torch.Tensor) -> None:
        ids, probs = top_probs(logits, self.m)
        self.set(start, ids, probs)

    def get(self, t: int) -> tuple[np.ndarray, np.ndarray] | None:
        """Top-m (ids, probs) of the target's distribution for token ``t + 1``, if known."""
        if 0 <= t < len(self.known) and self.known[t]:
            return self.ids[t], self.probs[t]
        return None

    @property
    def nbytes(self) -> int:
        return self.ids.nbytes + self.probs.nbytes + self.known.nbytes


class HiddenStates:
    """Hidden states of positions ``0 ..``: the prompt's (the prefill's, not copied), then the
    accepted rows of each verify in a growing buffer (capacity doubles)."""

    def __init__(self, prompt: torch.Tensor) -> None:
        self._prompt = prompt
        self._generated = prompt.new_empty((0, prompt.shape[1]))
        self._n = 0

    def __len__(self) -> int:
        return self._prompt.shape[0] + self._n

    def add(self, hidden: torch.Tensor, rows: list[int]) -> None:
        """Append rows ``rows`` of a verify's ``hidden``."""
        end = self._n + len(rows)
        if end > self._generated.shape[0]:
            grown = self._generated.new_empty((max(end, 256, 2 * self._n), hidden.shape[1]))
            grown[: self._n] = self._generated[: self._n]
            self._generated = grown
        self._generated[self._n : end] = hidden[row_index(rows)]
        self._n = end

    def rows(self, index: list[int]) -> torch.Tensor:
        """The states of positions ``index`` (sorted)."""
        size = self._prompt.shape[0]
        cut = bisect.bisect_left(index, size)
        part = self._prompt[row_index(index[:cut])]
        if cut == len(index):
            return part
        later = self._generated[row_index([r - size for r in index[cut:]])]
        return torch.cat([part, later])


class AASDDrafter(Drafter):
    """Context retrieval + alignment sampling; pair with exact or conditional verification."""

    def __init__(self, config: AASDConfig | None = None, seed: int = 0) -> None:
        self.config = config or AASDConfig()
        self.needs_hidden = self.config.alignment
        self.table = AlignmentTable(self.config.align_topm)
        self.rng = np.random.default_rng(seed)
        self._root_pos = 0
        self._hidden: HiddenStates | None = None
        self._topk_of = None
        #: positions whose top-m the LM head computed lazily (for the bench and tests)
        self.lazy_rows = 0
        self._ahead: ExtraRows | None = None
        self._shares_head = self.config.align_lookup == "ahead"
        self._history = History()
        self._reset_yield()

    def _reset_yield(self) -> None:
        #: alignment siblings checked against the committed text, and how many it matched
        self.siblings_checked = 0
        self.siblings_right = 0
        #: (request length at the proposal, the sibling's path from the root)
        self._sibling_paths: list[tuple[int, list[int]]] = []
        self._looking_up = self.config.alignment

    def begin(self, prompt: list[int], prefill: PrefillOutput) -> None:
        self.table = AlignmentTable(self.config.align_topm)
        self._root_pos = len(prompt)  # the prefill's token is the first round's root
        alignment = self.config.alignment and prefill.hidden is not None
        self._hidden = HiddenStates(prefill.hidden) if alignment else None
        self._topk_of = prefill.topk_of
        self.lazy_rows = 0
        self._ahead = None
        self._shares_head = self.config.align_lookup == "ahead"
        self._history = History()
        self._reset_yield()

    def update(self, result: VerifyResult, out: VerifyOutput) -> None:
        """Keep what the target saw after the root and every accepted node (until the
        request's lookups stop: nothing reads it then).

        Where its LM-head call takes extra rows, that is the rows' hidden states: their top-m
        is computed, like a prompt row's, once a draft copies from there (most never are).
        Elsewhere it is their top-m, from logits the verifier has already computed.
        """
        if self._looking_up:
            logits = RowLogits.wrap(out.logits)
            self._shares_head = (
                self.config.align_lookup == "ahead"
                and logits.takes_extra_rows
                and out.hidden is not None
            )
            if not self._shares_head:
                self.table.set_from_logits(self._root_pos, logits.rows(result.rows))
            elif self._hidden is not None and out.hidden is not None:
                self._hidden.add(out.hidden, result.rows)
        self._root_pos += len(result.tokens)

    def _known_rows(self) -> int:
        """Positions ``0 ..`` whose hidden state is kept (prompt, then generated)."""
        return 0 if self._hidden is None else len(self._hidden)

    def _unknown(self, positions: Iterable[int]) -> list[int]:
        """The positions among ``positions`` (order kept) with a kept hidden state and no
        top-m yet."""
        size = self._known_rows()
        return [p for p in dict.fromkeys(positions) if 0 <= p < size and self.table.get(p) is None]

    def _lookup(self, needed: list[int], source: int) -> None:
        """Arrange the top-m of the rows this round's drafts look up (``needed``, best draft
        first) and of those after ``source``, the best draft's source.

        ``align_lookup="ahead"``, where the verify's LM-head call takes extra rows
        (:meth:`extra_rows`): they ride along with it, at most :data:`PREFETCH_ROWS`. A copy
        that runs on starts next round where this one's accepted tokens end, and a row first
        needed now is needed again next round. At a few rows that call costs one read of the
        head's weights whatever the count, where a call of the drafter's own costs another
        (2-3 ms of a 17 ms int8 round, measured). This round's drafts go without those rows'
        alignment: the frequency ratio alone ranks them. Otherwise (``"now"``, or a backend
        whose logits come whole) every row in ``needed`` is computed now, in one call.
        """
        hidden = self._hidden
        if hidden is None or self._topk_of is None or not self._looking_up:
            return
        if not self._shares_head:
            rows = sorted(self._unknown(needed))
            if rows:
                ids, probs = self._topk_of(hidden.rows(rows), self.config.align_topm)
                self.table.set_rows(rows, ids, probs)
                self.lazy_rows += len(rows)
            return
        ahead = range(source, source + 2 * self.config.draft_len)
        rows = sorted(self._unknown([*needed, *ahead])[:PREFETCH_ROWS])
        self._set_aside(rows, hidden)

    def _set_aside(self, rows: list[int], hidden: HiddenStates) -> None:
        """Make ``rows`` this round's :meth:`extra_rows` (none if empty): their states are
        gathered and their filing prepared now, not after the forward, when every call costs
        more."""
        if not rows:
            self._ahead = None
            return
        file = self.table.receiver(rows)

        def receive(logits: torch.Tensor) -> None:
            file(logits)
            self.lazy_rows += len(rows)

        self._ahead = ExtraRows(hidden.rows(rows), receive)

    def extra_rows(self) -> ExtraRows | None:
        """The rows :meth:`_lookup` set aside, for this round's LM-head call."""
        ahead, self._ahead = self._ahead, None
        return ahead if self._shares_head else None

    # ------------------------------------------------------------------ drafting
    def propose(self, tokens: list[int]) -> DraftTree:
        cfg = self.config
        if self._sibling_paths:
            self._check_siblings(tokens)
        history = self._history.view(tokens)
        n, starts = longest_suffix_matches(
            history, cfg.max_ngram, cfg.min_ngram, limit=cfg.max_matches
        )
        if n == 0:
            return DraftTree()
        kernel = cpu_kernel.loaded()
        if kernel is not None and self._kernel_builds():
            tree, siblings = self._build_in_kernel(kernel, history, starts)
        else:
            tree, siblings = self._build(history, starts)
        if siblings and self._looking_up:
            for node in siblings:
                path = [tree.tokens[r - 1] for r in tree.path_to(node)[1:]]
                self._sibling_paths.append((len(tokens), path))
        return tree

    def _check_siblings(self, tokens: list[int]) -> None:
        """Check the siblings whose depth the committed ``tokens`` now cover, and stop this
        request's lookups once they are right too rarely to pay for them.

        A lookup costs a row of the LM head and the bookkeeping around it, 2-3% of a round on
        the int8 model; what it can buy is a sibling that is the token the target writes. On
        SmolLM2-135M none of 175 was (6 Spec-Bench prompts, aasd and aasd-exact, int8):
        a token the model copies from its prompt is judged in a context that holds the copy,
        where the target's choice at the source, made without it, rarely returns.
        """
        waiting = []
        for start, path in self._sibling_paths:
            if len(tokens) - start < len(path):
                waiting.append((start, path))
                continue
            self.siblings_checked += 1
            self.siblings_right += tokens[start : start + len(path)] == path
        self._sibling_paths = waiting
        floor = self.config.align_min_yield * self.siblings_checked
        if self.siblings_checked >= YIELD_SAMPLE and self.siblings_right < floor:
            self._looking_up = False
            self._sibling_paths = []

    def _total_weight(self, matches: int) -> float:
        """The summed weights of ``matches`` matches (the k-th most recent weighs recency**k):
        what a first-level copy's share is taken of."""
        return float(sum(self.config.recency**k for k in range(matches)))

    def _kernel_builds(self) -> bool:
        """Whether the CPU kernel's twin of :meth:`_build` applies: top-k siblings at the
        leaves, and no alignment row computed before the tree is built."""
        cfg = self.config
        return (
            cfg.sample == "topk"
            and cfg.siblings == "leaf"
            and (not cfg.alignment or self._shares_head)
        )

    def _build_in_kernel(
        self, kernel: Any, history: np.ndarray, starts: np.ndarray
    ) -> tuple[DraftTree, list[int]]:
        """:meth:`_build` and :meth:`_lookup`'s choice of rows in one kernel call (same tree,
        same rows, same siblings: the tests hold the two to it)."""
        cfg = self.config
        total = self._total_weight(len(starts))
        hidden = self._hidden if self._topk_of is not None and self._looking_up else None
        tokens, parents, scores, rows, siblings = kernel.aasd_tree(
            history,
            starts,
            cfg.draft_len,
            cfg.recency,
            total,
            cfg.max_nodes,
            self.table.ids,
            self.table.probs,
            self.table.known,
            cfg.alignment,
            cfg.expand,
            self._known_rows(),
            PREFETCH_ROWS if hidden is not None else 0,
        )
        if hidden is not None:
            self._set_aside(rows, hidden)
        return DraftTree(tokens=tokens, parents=parents, scores=scores), siblings

    def _build(self, history: np.ndarray, starts: np.ndarray) -> tuple[DraftTree, list[int]]:
        """Weighted frequency trie of the continuations, with alignment siblings after
        unaligned nodes; and the siblings' nodes.

        Each trie node remembers one source position (its most recent occurrence) so its
        alignment can be looked up; siblings share the node's parent, which is already placed.
        """
        cfg = self.config
        # every node the tree takes, and every candidate skipped as an alignment sibling
        # already there, stands for one of its max_nodes nodes
        cands = continuation_trie(
            history, starts, cfg.draft_len, cfg.recency, limit=2 * cfg.max_nodes
        )
        total = self._total_weight(len(starts))
        if cfg.alignment:
            self._lookup([src - 1 for src in cands.sources[: cfg.max_nodes]], cands.sources[0])
        trie = _TrieBuilder(cfg.max_nodes)
        # candidate rank -> tree node; a parent ranks first, so it is placed unless the tree
        # filled up, which ends the loop
        placed: dict[int, int] = {-1: 0}
        siblings: list[int] = []
        for r, tok in enumerate(cands.tokens):
            if trie.full:
                break
            cp = cands.parents[r]
            parent = placed[cp]
            parent_score = trie.score(parent)
            ratio = cands.weights[r] / (cands.weights[cp] if cp >= 0 else total)
            node = trie.add(parent, tok, parent_score * math.sqrt(ratio))
            if node is None:  # an alignment sibling holds it already, or the tree is full
                sibling = trie.find(parent, tok)
                if sibling is not None:
                    placed[r] = sibling
                continue
            placed[r] = node
            dist = self.table.get(cands.sources[r] - 1) if cfg.alignment else None
            if dist is None:
                continue
            for sib_tok, p in self._alignment_tokens(tok, dist):
                sibling = trie.add(parent, sib_tok, parent_score * p)
                if sibling is None:
                    continue
                siblings.append(sibling)
                if cfg.siblings == "continue":
                    self._continue(history, sibling, trie)
        return trie.tree(), siblings

    def _alignment_tokens(
        self, copied: int, dist: tuple[np.ndarray, np.ndarray]
    ) -> list[tuple[int, float]]:
        """The target's own tokens (with their probabilities at the source position) where
        ``copied`` is not its choice; none where it is (the target itself writes it there).
        Plain lists: this runs for most nodes of every tree, and numpy's per-call cost on
        four-entry rows was most of a round's drafting time."""
        cfg = self.config
        ids, probs = dist[0].tolist(), dist[1].tolist()
        if ids[0] == copied:
            return []
        valid = [k for k, i in enumerate(ids) if i >= 0]
        if cfg.sample == "topk" or len(valid) <= cfg.expand:
            picked = valid[: cfg.expand]
        else:
            p = np.asarray([probs[k] for k in valid])
            chosen = self.rng.choice(len(valid), size=cfg.expand, replace=False, p=p / p.sum())
            picked = [valid[c] for c in chosen]
        return [(ids[k], probs[k]) for k in picked if ids[k] != copied]

    def _continue(self, history: np.ndarray, node: int, trie: _TrieBuilder) -> None:
        """Extend an alignment sibling with what follows it in the context, if anything."""
        cfg = self.config
        path = trie.path(node)
        query = np.concatenate([history, np.asarray(path, dtype=np.int64)])
        n, starts = longest_suffix_matches(query, cfg.max_ngram, cfg.min_ngram, limit=1)
        if n == 0:
            return
        score = trie.score(node)
        for tok in query[starts[-1] : starts[-1] + cfg.draft_len - len(path)].tolist():
            added = trie.add(node, tok, score)
            if added is None:
                return
            node = added


class _TrieBuilder:
    """Adds nodes to a draft tree (parents first), up to ``max_nodes`` nodes; node 0 is the
    root, and a node is found by its parent and token."""

    def __init__(self, max_nodes: int) -> None:
        self.max_nodes = max_nodes
        self.index: dict[tuple[int, int], int] = {}
        self.tokens: list[int] = []
        self.parents: list[int] = []
        self.scores: list[float] = []

    @property
    def full(self) -> bool:
        return len(self.tokens) >= self.max_nodes

    def score(self, node: int) -> float:
        """The score of ``node`` (1.0 for the root)."""
        return 1.0 if node == 0 else self.scores[node - 1]

    def find(self, parent: int, token: int) -> int | None:
        return self.index.get((parent, token))

    def path(self, node: int) -> list[int]:
        """The tokens from the root down to ``node``."""
        out = []
        while node:
            out.append(self.tokens[node - 1])
            node = self.parents[node - 1]
        return out[::-1]

    def add(self, parent: int, token: int, score: float) -> int | None:
        """Add ``token`` under ``parent``; None if present already or the tree is full."""
        if (parent, token) in self.index or self.full:
            return None
        self.tokens.append(token)
        self.parents.append(parent)
        self.scores.append(min(score, self.score(parent)))
        self.index[(parent, token)] = len(self.tokens)
        return len(self.tokens)

    def tree(self) -> DraftTree:
        return DraftTree(tokens=self.tokens, parents=self.parents, scores=self.scores)
