"""Sampling settings: validation, the logits transform (bit-identical to transformers'
processors, per tree row for the repetition penalty), the token draw, and greedy decoding with a
repetition penalty through the engine (equal to transformers' ``generate`` and to every
drafter)."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import (
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from alignspec.cli import main
from alignspec.drafters.base import Drafter, NoDrafter
from alignspec.drafters.prompt_lookup import PromptLookupConfig, PromptLookupDrafter
from alignspec.engine import Engine
from alignspec.errors import AlignspecError
from alignspec.sampling import SamplingParams, sample_index, seen_mask
from alignspec.stats import GenerationStats
from alignspec.targets.hf import HFTarget
from alignspec.tree import DraftTree
from alignspec.verifiers.greedy import GreedyVerifier
from tests.stat_helpers import ALPHA, assert_matches, chi_square
from tests.test_engine import PROMPT, RandomDrafter

pytestmark = pytest.mark.usefixtures("single_thread")

# ---------------------------------------------------------------------- validation
BAD = [
    ({"temperature": -0.1}, "temperature"),
    ({"temperature": math.nan}, "temperature"),
    ({"temperature": math.inf}, "temperature"),
    ({"top_p": 0.0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"top_p": -0.2}, "top_p"),
    ({"top_k": -1}, "top_k"),
    ({"top_k": 2.5}, "top_k"),
    ({"repetition_penalty": 0.0}, "repetition_penalty"),
    ({"repetition_penalty": -1.2}, "repetition_penalty"),
    ({"seed": -3}, "seed"),
    ({"seed": "one"}, "seed"),
]


@pytest.mark.parametrize(("kwargs", "name"), BAD)
def test_bad_values_are_one_sentence_errors(kwargs, name):
    with pytest.raises(AlignspecError) as exc:
        SamplingParams(**kwargs)
    message = str(exc.value)
    assert message.startswith(name) and "\n" not in message


def test_good_values_and_greedy_flag():
    assert SamplingParams().greedy
    params = SamplingParams(temperature=0.7, top_k=5, top_p=0.9, seed=3, repetition_penalty=1.2)
    assert not params.greedy
    assert SamplingParams(temperature=1, top_p=1).top_p == 1  # ints are fine


CLI_BAD = [
    (["--temperature", "-1"], "temperature must be"),
    (["--top-p", "0"], "top_p must be in (0, 1]"),
    (["--top-p", "1.01"], "top_p must be in (0, 1]"),
    (["--top-k", "-5"], "top_k must be"),
    (["--repetition-penalty", "0"], "repetition_penalty must be"),
    (["--temperature", "0.8", "--method", "aasd"], "greedy-only"),
]


@pytest.mark.parametrize(("flags", "message"), CLI_BAD)
def test_cli_rejects_bad_sampling_before_loading(flags, message, capsys):
    # the model path does not exist: reaching the loader would give a different error
    assert main(["generate", "hi", "--model", "./no/such/model", *flags]) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert err.strip().count("\n") == 0


# ---------------------------------------------------------------------- transform
SETTINGS = [
    SamplingParams(temperature=1.0),
    SamplingParams(temperature=0.7, top_k=5),
    SamplingParams(temperature=1.3, top_p=0.8),
    SamplingParams(temperature=0.9, top_k=12, top_p=0.6, repetition_penalty=1.4),
    SamplingParams(temperature=1.0, top_k=100, top_p=0.95, repetition_penalty=0.8),
]


def transformers_chain(params: SamplingParams) -> LogitsProcessorList:
    """The processors ``generate(do_sample=True, ...)`` builds, in its order."""
    procs = LogitsProcessorList()
    if params.repetition_penalty != 1.0:
        procs.append(RepetitionPenaltyLogitsProcessor(float(params.repetition_penalty)))
    if params.temperature != 1.0:
        procs.append(TemperatureLogitsWarper(float(params.temperature)))
    if params.top_k:
        procs.append(TopKLogitsWarper(params.top_k))
    if params.top_p < 1.0:
        procs.append(TopPLogitsWarper(params.top_p))
    return procs


@pytest.mark.parametrize("params", SETTINGS, ids=str)
def test_transform_is_bit_identical_to_transformers(params):
    gen = torch.Generator().manual_seed(0)
    vocab = 50
    logits = torch.randn(6, vocab, generator=gen) * 3
    context = torch.randint(0, vocab, (6, 20), generator=gen)
    ours = torch.stack(
        [params.warp(params.penalize(logits[i : i + 1], context[i].tolist()))[0] for i in range(6)]
    )
    theirs = transformers_chain(params)(context, logits.clone())
    assert torch.equal(ours, theirs)
    probs = params.probs(params.penalize(logits[:1], context[0].tolist()))[0]
    assert torch.equal(probs, torch.softmax(theirs[0], dim=-1))


def test_each_tree_row_is_penalised_with_its_own_path():
    vocab = 40
    committed = [3, 5, 7, 5, 11]
    # root -> 20 -> 21 -> 3 ; root -> 22 -> 20 ; root -> 23
    tree = DraftTree(tokens=[20, 21, 3, 22, 20, 23], parents=[0, 1, 2, 0, 4, 0])
    logits = torch.randn(tree.num_rows, vocab, generator=torch.Generator().manual_seed(1)) * 2
    params = SamplingParams(repetition_penalty=1.7)
    ours = params.penalize(logits, committed, tree)
    proc = RepetitionPenaltyLogitsProcessor(1.7)
    for row in range(tree.num_rows):
        path = [tree.tokens[r - 1] for r in tree.path_to(row)[1:]]
        ids = torch.tensor([committed + path])
        assert torch.equal(ours[row], proc(ids, logits[row : row + 1].clone())[0]), row
    seen = seen_mask(committed, tree, vocab)
    assert seen[0].nonzero().flatten().tolist() == [3, 5, 7, 11]
    assert seen[3].nonzero().flatten().tolist() == [3, 5, 7, 11, 20, 21]
    assert not seen[6, 20] and seen[6, 23]


def test_neutral_penalty_returns_the_logits_untouched():
    logits = torch.randn(3, 10)
    assert SamplingParams(repetition_penalty=1.0).penalize(logits, [1, 2, 3]) is logits


def test_greedy_distribution_is_one_hot_at_argmax():
    logits = torch.tensor([[0.1, 2.0, -1.0], [3.0, 2.9, 0.0]])
    probs = SamplingParams().probs(logits)
    assert probs.tolist() == [[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]


# ---------------------------------------------------------------------- the draw
def test_sample_index_follows_the_weights_and_never_draws_zero_weight():
    weights = torch.tensor([0.0, 3.0, 0.0, 1.0, 0.5, 0.0, 2.5])  # unnormalised on purpose
    gen = torch.Generator().manual_seed(5)
    counts = torch.zeros(len(weights))
    for _ in range(20_000):
        counts[sample_index(weights, gen)] += 1
    assert counts[weights == 0].sum() == 0
    assert_matches(counts, weights, "inverse-CDF draw")


def test_the_goodness_of_fit_check_has_power():
    """A 2 % shift of mass between two cells over 20k samples must be caught."""
    exact = torch.tensor([0.4, 0.3, 0.2, 0.1])
    shifted = torch.tensor([0.42, 0.28, 0.2, 0.1])
    gen = torch.Generator().manual_seed(0)
    counts = torch.bincount(torch.multinomial(shifted, 20_000, True, generator=gen), minlength=4)
    assert chi_square(counts, exact)[0] < ALPHA
    fair = torch.bincount(torch.multinomial(exact, 20_000, True, generator=gen), minlength=4)
    assert chi_square(fair, exact)[0] > ALPHA


def test_seed_makes_draws_reproducible():
    params = SamplingParams(temperature=1.0, seed=1234)
    probs = torch.softmax(torch.randn(100), dim=-1)

    def draws(p: SamplingParams) -> list[int]:
        gen = p.make_generator()
        return [p.sample(probs, gen) for _ in range(30)]

    assert draws(params) == draws(params)
    assert draws(params) != draws(SamplingParams(temperature=1.0, seed=1235))
    assert SamplingParams(temperature=1.0).make_generator() is None  # global RNG without seed
    assert SamplingParams(seed=3).make_generator() is None  # greedy draws nothing


# ---------------------------------------------------------------------- greedy + penalty
def run_greedy(model, drafter: Drafter, sampling: SamplingParams, max_new: int = 30) -> list[int]:
    engine = Engine(HFTarget(model), drafter, GreedyVerifier())
    rounds = engine.generate(
        PROMPT,
        max_new_tokens=max_new,
        eos_ids=frozenset(),
        stats=GenerationStats(),
        sampling=sampling,
    )
    return [tok for new in rounds for tok in new]


def test_greedy_repetition_penalty_equals_transformers_generate(tiny_llama):
    sampling = SamplingParams(repetition_penalty=1.3)
    ours = run_greedy(tiny_llama, NoDrafter(), sampling)
    with torch.inference_mode():
        ref = tiny_llama.generate(
            torch.tensor([PROMPT]),
            max_new_tokens=30,
            do_sample=False,
            repetition_penalty=1.3,
            eos_token_id=None,
            pad_token_id=0,
        )[0, len(PROMPT) :].tolist()
    assert ours == ref
    assert ours != run_greedy(tiny_llama, NoDrafter(), SamplingParams())  # the penalty bites


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_greedy_repetition_penalty_is_lossless_for_trees(tiny_llama, seed):
    """Random trees put repeated tokens on their paths; only a per-row penalty over the
    committed tokens plus the row's own path reproduces plain greedy decoding."""
    sampling = SamplingParams(repetition_penalty=1.3)
    truth = run_greedy(tiny_llama, NoDrafter(), sampling)
    vocab = tiny_llama.config.vocab_size
    assert run_greedy(tiny_llama, RandomDrafter(vocab, seed), sampling) == truth
    for tree in (False, True):
        cfg = PromptLookupConfig(max_ngram=3, min_ngram=1, draft_len=6, tree=tree)
        assert run_greedy(tiny_llama, PromptLookupDrafter(cfg), sampling) == truth


class TruthDrafter(Drafter):
    """Drafts the true penalised-greedy continuation, so a wrong per-row penalty on the draft
    rows (rather than just on the bonus) is what the comparison exposes."""

    def __init__(self, truth: list[int], prompt_len: int) -> None:
        self.truth, self.n = truth, prompt_len

    def propose(self, tokens: list[int]) -> DraftTree:
        done = len(tokens) - self.n
        return DraftTree.chain(self.truth[done : done + 5])


def test_true_drafts_are_accepted_under_the_penalty(tiny_llama):
    sampling = SamplingParams(repetition_penalty=1.3)
    truth = run_greedy(tiny_llama, NoDrafter(), sampling)
    stats = GenerationStats()
    engine = Engine(HFTarget(tiny_llama), TruthDrafter(truth, len(PROMPT)), GreedyVerifier())
    rounds = engine.generate(
        PROMPT, max_new_tokens=30, eos_ids=frozenset(), stats=stats, sampling=sampling
    )
    assert [tok for new in rounds for tok in new] == truth
    assert stats.acceptance_rate == 1.0
