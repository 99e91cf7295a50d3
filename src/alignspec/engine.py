"""The round loop: prefill, then draft -> one tree forward -> accept -> compact the cache.

Plain decoding (``ar``) is this same loop with an empty draft each round, so every method
shares one code path for stopping, streaming, sampling and statistics. The engine works in
tokens; text, chat templates and stop strings live in :mod:`alignspec.api`.

Sampling settings travel with the request: the engine applies the repetition penalty to every
row's logits (each row conditions on the committed tokens plus its own draft path) before the
verifier sees them, and hands the verifier and the drafter the request's settings and its one
random generator, so a seeded run draws the same numbers in the same order every time.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from alignspec.budget import Budget
from alignspec.drafters.base import Drafter
from alignspec.errors import AlignspecError
from alignspec.rows import RowLogits
from alignspec.sampling import SamplingParams
from alignspec.stats import GenerationStats, RoundRecord
from alignspec.targets.base import Target
from alignspec.tree import DraftTree
from alignspec.verifiers.base import Verifier, VerifyContext


@dataclass
class Engine:
    """Binds a target, a drafter and a verifier; ``budget`` (per request) sizes the trees.

    Without a budget every tree is verified whole, as the drafter proposed it.
    """

    target: Target
    drafter: Drafter
    verifier: Verifier
    budget: Budget | None = None

    def generate(
        self,
        prompt: list[int],
        *,
        max_new_tokens: int,
        eos_ids: frozenset[int],
        stats: GenerationStats,
        generator: torch.Generator | None = None,
        sampling: SamplingParams | None = None,
    ) -> Iterator[list[int]]:
        """Yield the tokens committed by each round (the prefill's token first).

        Stops after an EOS token (which is yielded, as transformers' ``generate`` returns it)
        or exactly at ``max_new_tokens``. ``stats`` is filled in as rounds complete, and its
        wall time is final once the iterator is exhausted or closed. ``sampling`` defaults to
        greedy; ``generator`` defaults to one seeded from ``sampling.seed`` (or torch's global
        generator when there is no seed).
        """
        sampling = sampling or SamplingParams()
        if not sampling.greedy and not self.verifier.samples:
            raise AlignspecError(
                f"the '{self.verifier.name}' verifier is greedy-only; use temperature 0 with it"
            )
        if generator is None:
            generator = sampling.make_generator(self.target.device)
        start = time.perf_counter()
        stats.prompt_tokens = len(prompt)
        tokens = list(prompt)
        ctx = VerifyContext(
            committed=tokens, eos_ids=eos_ids, generator=generator, sampling=sampling
        )
        self.drafter.set_sampling(sampling, generator)
        self.drafter.set_budget(self.budget)
        want_hidden = self.drafter.needs_hidden
        try:
            with torch.inference_mode():
                pre = self.target.prefill(prompt, want_hidden=want_hidden)
                logits = sampling.penalize(pre.logits[None], tokens)
                first = self.verifier.verify(DraftTree(), logits, ctx).tokens
                self.drafter.begin(prompt, pre)
                stats.prefill_time = time.perf_counter() - start
                done = self._commit(first, tokens, max_new_tokens, eos_ids, stats)
                yield tokens[len(prompt) :]
                while not done:
                    t0 = time.perf_counter()
                    tree, drafted = self._draft(tokens, max_new_tokens - stats.new_tokens)
                    t1 = time.perf_counter()
                    out = self.target.verify(tokens[-1], tree, want_hidden=want_hidden)
                    t_fwd = time.perf_counter()
                    logits = RowLogits.wrap(out.logits)
                    extra = self.drafter.extra_rows()
                    if extra is not None:
                        logits.attach(extra)
                    logits.transform = sampling.row_penalty(
                        tokens, tree, self.target.vocab_size, logits.device
                    )
                    result = self.verifier.verify(tree, logits, ctx)
                    self.target.commit(result.rows)
                    t2 = time.perf_counter()
                    self.drafter.update(result, out)
                    before = len(tokens)
                    done = self._commit(result.tokens, tokens, max_new_tokens, eos_ids, stats)
                    if self.budget is not None:
                        self.budget.observe(tokens)
                        if self.drafter.costly:
                            self.budget.observe_round(
                                drafted, len(result.tokens), time.perf_counter() - t0
                            )
                    stats.rounds.append(
                        RoundRecord(
                            committed=len(result.tokens),
                            proposed=len(tree),
                            depth=tree.max_depth() if len(tree) else 0,
                            draft_time=t1 - t0,
                            verify_time=t2 - t1,
                            forward_time=t_fwd - t1 + logits.head_seconds,
                            round_time=time.perf_counter() - t0,
                        )
                    )
                    yield tokens[before:]
        finally:
            stats.wall_time = time.perf_counter() - start
            if self.budget is not None:
                self.budget.finish()

    def _draft(self, tokens: list[int], remaining: int) -> tuple[DraftTree, bool]:
        """This round's tree (the drafter's proposal, cut to the tokens left and the budget)
        and whether the drafter ran."""
        if self.budget is not None and not self.budget.should_draft():
            return DraftTree(), False
        start = time.perf_counter()
        tree = self.drafter.propose(tokens)
        if self.budget is not None and self.drafter.costly:
            self.budget.observe_draft_time(time.perf_counter() - start)
        deepest = remaining - 1
        if self.target.max_tree_depth is not None:
            deepest = min(deepest, self.target.max_tree_depth)
        if len(tree) and tree.max_depth() > deepest:
            tree = tree.truncated(deepest)
        if self.budget is not None:
            tree = self.budget.select(tree, len(tokens))
        return tree, True

    @staticmethod
    def _commit(
        new: list[int],
        tokens: list[int],
        max_new_tokens: int,
        eos_ids: frozenset[int],
        stats: GenerationStats,
    ) -> bool:
        """Append ``new`` up to EOS / the token budget; return whether generation is done."""
        for tok in new:
            tokens.append(tok)
            stats.new_tokens += 1
            if tok in eos_ids or stats.new_tokens >= max_new_tokens:
                return True
        return False
