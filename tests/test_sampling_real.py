"""Sampling on the embedded SmolLM2-135M-Instruct: speculative sampling follows plain sampling
on real logits, seeded runs repeat (CLI and API), greedy decoding with a repetition penalty
equals transformers' ``generate``, and every lossless path reduces to greedy at T = 0."""

from __future__ import annotations

import pytest
import torch

from alignspec.cli import main
from alignspec.drafters.prompt_lookup import PromptLookupConfig, PromptLookupDrafter
from alignspec.engine import Engine
from alignspec.errors import AlignspecError
from alignspec.sampling import SamplingParams
from alignspec.stats import GenerationStats
from alignspec.targets.hf import HFTarget
from alignspec.tree import DraftTree
from alignspec.verifiers.base import VerifyContext
from alignspec.verifiers.lossless import LosslessVerifier
from tests.stat_helpers import assert_matches

pytestmark = [pytest.mark.real, pytest.mark.usefixtures("single_thread")]

SEA = "Write one sentence about the sea."
EIFFEL = (
    "Summarize: The Eiffel Tower, completed in 1889 for the World's Fair in Paris, was first "
    "criticised by artists and is now the most visited paid monument in the world."
)


def cli_text(capsys, *flags: str) -> str:
    assert main(["generate", SEA, "--max-new-tokens", "12", *flags]) == 0
    return capsys.readouterr().out


def test_cli_sampling_is_reproducible_and_matches_the_api(real_llm, capsys):
    flags = ("--temperature", "0.8", "--top-p", "0.95", "--seed", "1", "--method", "pld")
    first = cli_text(capsys, *flags)
    assert first == cli_text(capsys, *flags)
    out = real_llm.generate(
        SEA, method="pld", max_new_tokens=12, temperature=0.8, top_p=0.95, seed=1
    )
    assert first == out.text + "\n"
    assert out.sampling == SamplingParams(temperature=0.8, top_p=0.95, seed=1)
    other = real_llm.generate(
        SEA, method="pld", max_new_tokens=12, temperature=0.8, top_p=0.95, seed=2
    )
    assert other.token_ids != out.token_ids  # the seed matters: this is really sampling


def test_api_refuses_bad_settings_before_generating(real_llm):
    with pytest.raises(AlignspecError, match="top_p"):
        real_llm.generate(SEA, top_p=0.0)
    with pytest.raises(AlignspecError, match="greedy-only"):
        real_llm.generate(SEA, method="aasd", temperature=0.7)


def test_greedy_with_repetition_penalty_equals_transformers(real_llm):
    out = real_llm.generate(SEA, max_new_tokens=24, repetition_penalty=1.3)
    assert out.token_ids != real_llm.generate(SEA, max_new_tokens=24).token_ids
    with torch.inference_mode():
        ref = real_llm.model.generate(
            torch.tensor([out.prompt_ids]),
            max_new_tokens=24,
            do_sample=False,
            repetition_penalty=1.3,
            pad_token_id=real_llm.tokenizer.eos_token_id,
        )[0, len(out.prompt_ids) :].tolist()
    assert out.token_ids == ref


@pytest.mark.parametrize("penalty", [1.0, 1.1])
def test_lossless_verifier_at_t0_is_greedy_exact_on_a_real_prompt(real_llm, penalty):
    ref = real_llm.generate(EIFFEL, max_new_tokens=32, repetition_penalty=penalty)
    sampling = SamplingParams(repetition_penalty=penalty)
    drafter = PromptLookupDrafter(PromptLookupConfig(tree=True))
    engine = Engine(real_llm.target, drafter, LosslessVerifier())
    stats = GenerationStats()
    rounds = engine.generate(
        ref.prompt_ids,
        max_new_tokens=32,
        eos_ids=real_llm.eos_ids,
        stats=stats,
        sampling=sampling,
    )
    assert [tok for new in rounds for tok in new] == ref.token_ids
    assert sum(r.accepted for r in stats.rounds) > 0  # drafts were verified, not just bonuses
    pld = real_llm.generate(EIFFEL, method="pld", max_new_tokens=32, repetition_penalty=penalty)
    assert pld.token_ids == ref.token_ids


def test_sps_with_the_model_as_its_own_draft(real_llm):
    """Greedy sps equals ar and accepts every draft; sampled sps is seeded and accepts every
    draft too (q = p exactly, so min(1, p/q) = 1)."""
    ref = real_llm.generate(SEA, max_new_tokens=16)
    out = real_llm.generate(SEA, method="sps", draft_model="default", max_new_tokens=16)
    assert out.token_ids == ref.token_ids and out.stats.acceptance_rate == 1.0
    kwargs = {"method": "sps", "draft_model": "default", "temperature": 0.9, "seed": 4}
    sampled = real_llm.generate(SEA, max_new_tokens=16, **kwargs)
    assert sampled.token_ids == real_llm.generate(SEA, max_new_tokens=16, **kwargs).token_ids
    assert sampled.stats.acceptance_rate == 1.0


def test_first_two_tokens_follow_plain_sampling_on_real_logits(real_llm):
    """Verifier level on the real model, 5,000 rounds per kind of draft. Point-mass drafts: a
    tree of three siblings (the 2nd, 1st and 4th choice), each with its likeliest child, scored
    by one real tree forward with the prompt's last token as root. Draft-model drafts: one
    token drawn from a flatter q (temperature 1.6, top-6 over the same logits: a stand-in
    draft model). When a round commits one token the second is plain sampling, as the next
    round's bonus would be. Top-4 sampling keeps 16 cells, compared with the exact
    p1(a) p2(b | a) from plain forwards (chi-square, p >= 1e-4, see tests/stat_helpers.py)."""
    sampling = SamplingParams(temperature=1.0, top_k=4)
    ids = real_llm.encode("Name a colour.")
    with torch.inference_mode():
        logits1 = real_llm.model(torch.tensor([ids])).logits[0, -1].float()
        p1 = sampling.distribution(logits1[None], ids)[0]
        support = p1.nonzero().flatten().tolist()
        batch = torch.tensor([[*ids, a] for a in support])
        logits2 = dict(zip(support, real_llm.model(batch).logits[:, -1].float(), strict=True))
    exact = torch.zeros(len(support), p1.shape[0], dtype=torch.float64)
    for i, a in enumerate(support):
        exact[i] = p1[a].double() * sampling.distribution(logits2[a][None], [*ids, a])[0]

    order = p1.argsort(descending=True).tolist()
    tokens, parents = [], []
    for a in (order[1], order[0], order[3]):
        tokens += [a, int(logits2[a].argmax())]
        parents += [0, len(tokens) - 1]
    tree = DraftTree(tokens=tokens, parents=parents)
    target = HFTarget(real_llm.model)
    target.prefill(ids[:-1])
    tree_logits = target.verify(ids[-1], tree).logits  # the real tree forward

    q1 = SamplingParams(temperature=1.6, top_k=6).distribution(logits1[None], ids)[0]
    q_trees: dict[int, tuple[DraftTree, torch.Tensor]] = {}

    def point_mass(gen: torch.Generator) -> tuple[DraftTree, torch.Tensor]:
        return tree, tree_logits

    def from_q(gen: torch.Generator) -> tuple[DraftTree, torch.Tensor]:
        a = sampling.sample(q1, gen)
        if a not in q_trees:  # a row below a token p rules out is never used: any logits do
            rows = torch.stack([logits1, logits2.get(a, logits1)])
            q_trees[a] = (DraftTree(tokens=[a], parents=[0], draft_probs=q1[None]), rows)
        return q_trees[a]

    verifier = LosslessVerifier()
    gen = torch.Generator().manual_seed(0)
    for draft in (point_mass, from_q):
        counts = torch.zeros_like(exact)
        with torch.inference_mode():
            for _ in range(5_000):
                drafted, logits = draft(gen)
                ctx = VerifyContext(committed=ids, generator=gen, sampling=sampling)
                out = verifier.verify(drafted, logits, ctx).tokens
                if len(out) == 1:  # the next round samples the second token
                    ctx = VerifyContext(committed=[*ids, out[0]], generator=gen, sampling=sampling)
                    out += verifier.verify(DraftTree(), logits2[out[0]][None], ctx).tokens
                counts[support.index(out[0]), out[1]] += 1
        assert_matches(counts, exact, f"real model, {draft.__name__} drafts")
