import numpy as np
import pytest
import torch

from alignspec.drafters.aasd import AASDConfig, AASDDrafter, AlignmentTable, HiddenStates
from alignspec.errors import AlignspecError
from alignspec.targets.base import PrefillOutput, VerifyOutput
from alignspec.verifiers.base import VerifyResult

V = 50


def prefill_with_choices(choices: list[list[int]], m: int = 4) -> PrefillOutput:
    """A prefill whose LM head, asked lazily, says position t's top tokens are ``choices[t]``
    (probabilities falling). The "hidden state" of position t is just t, and every position
    the drafter asks for is logged in ``asked``."""
    ids = torch.full((len(choices), m), 49, dtype=torch.long)
    for t, c in enumerate(choices):
        ids[t, : len(c)] = torch.tensor(c)
    probs = torch.tensor([0.5, 0.3, 0.1, 0.05][:m]).repeat(len(choices), 1)
    asked: list[int] = []

    def topk_of(hidden: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = hidden[:, 0].long()
        asked.extend(rows.tolist())
        return ids[rows, :k], probs[rows, :k]

    hidden = torch.arange(len(choices), dtype=torch.float32)[:, None]
    out = PrefillOutput(logits=torch.zeros(V), hidden=hidden, topk_of=topk_of)
    out.asked = asked  # type: ignore[attr-defined]
    return out


#        0   1   2   3   4   5   6   7
PROMPT = [7, 8, 9, 10, 11, 12, 13, 14]


def drafter(**kw) -> AASDDrafter:
    """The paper's order: a row's top-m is computed when a draft first needs it."""
    kw.setdefault("align_lookup", "now")
    cfg = AASDConfig(min_ngram=2, draft_len=3, **kw)
    return AASDDrafter(cfg)


def logits_of(choices: list[list[int]], rows: list[int]) -> torch.Tensor:
    """Target logits whose top tokens at position ``t`` are ``choices[t]``, best first."""
    out = torch.full((len(rows), V), -10.0)
    for i, t in enumerate(rows):
        for j, tok in enumerate(choices[t]):
            out[i, tok] = 10.0 - j
    return out


def aligned_choices() -> list[list[int]]:
    # the target agrees with the context everywhere: position t predicts PROMPT[t+1]
    return [[PROMPT[t + 1] if t + 1 < len(PROMPT) else 1, 40] for t in range(len(PROMPT))]


def test_copies_context_after_longest_match_without_siblings_when_aligned():
    d = drafter()
    d.begin(PROMPT, prefill_with_choices(aligned_choices()))
    tree = d.propose([*PROMPT, 8, 9])  # key "8 9" occurs at 1..2 -> continue 10 11 12
    assert tree.tokens == [10, 11, 12] and tree.parents == [0, 1, 2]


def test_unaligned_copy_gets_target_top_tokens_as_leaf_siblings():
    choices = aligned_choices()
    choices[3] = [30, 31, 11]  # after "10" the target would say 30 or 31, not 11
    d = drafter()
    d.begin(PROMPT, prefill_with_choices(choices))
    tree = d.propose([*PROMPT, 8, 9])
    # 10 (aligned) -> 11 (unaligned) with siblings 30, 31 under 10; then 12 under 11
    assert tree.tokens[:4] == [10, 11, 30, 31]
    assert tree.parents[:4] == [0, 1, 1, 1]
    assert 12 in tree.tokens and tree.parents[tree.tokens.index(12)] == 2
    assert len(tree) == 5
    # a copy scores by its share of the matches (one match: 1.0), a sibling by the target's
    # probability at the source; a child never above its parent
    scores = dict(zip(tree.tokens, tree.scores, strict=True))
    assert scores[10] == scores[11] == 1.0 and scores[12] <= scores[11]
    assert 0.0 < scores[31] <= scores[30] < 1.0


def test_alignment_is_computed_lazily_for_copied_positions_only():
    pre = prefill_with_choices(aligned_choices())
    d = drafter()
    d.begin(PROMPT, pre)
    d.propose([*PROMPT, 8, 9])  # copies 10 11 12 from positions 3..5
    assert sorted(pre.asked) == [2, 3, 4]  # the distributions that predict positions 3..5
    d.propose([*PROMPT, 8, 9])
    assert sorted(pre.asked) == [2, 3, 4]  # cached: never computed twice
    assert d.lazy_rows == 3


@pytest.mark.parametrize(
    ("written", "min_yield", "stops"),
    [([10, 11], 0.1, True), ([10, 30], 0.1, False), ([10, 11], 0.0, False)],
)
def test_lookups_stop_once_siblings_are_rarely_what_the_target_wrote(written, min_yield, stops):
    """Each proposal after "8 9" holds the siblings 30 and 31 of the copy 11 (the target
    preferred them at the source); the request then goes on with ``written``. Eight siblings
    checked and none right: the request's lookups stop (a new source row is not asked for).
    One right in two, or ``align_min_yield`` 0: they go on."""
    choices = aligned_choices()
    choices[3] = [30, 31]
    pre = prefill_with_choices(choices)
    d = drafter(align_min_yield=min_yield)
    d.begin(PROMPT, pre)
    for _ in range(4):
        tree = d.propose([*PROMPT, 8, 9])
        assert {30, 31} <= set(tree.tokens)
        d.propose([*PROMPT, 8, 9, *written])  # checks the two siblings
    assert d.siblings_checked == 8
    assert d.siblings_right == (4 if written == [10, 30] else 0)
    assert 1 not in pre.asked
    d.propose([*PROMPT, 7, 8])  # copies 9 10 11 from positions 2..4: rows 1..3
    assert (1 not in pre.asked) == stops


def test_ahead_lookup_rides_on_the_next_verify_head_call(monkeypatch):
    """By default a row's top-m comes with the verify's LM-head call: the first draft from a
    source goes without siblings and costs no head call of its own, the next one has them
    (here with 3 rows riding per call; the default is 1)."""
    from alignspec.drafters import aasd as aasd_module

    monkeypatch.setattr(aasd_module, "PREFETCH_ROWS", 3)
    choices = aligned_choices()
    choices[3] = [30, 31, 11]
    pre = prefill_with_choices(choices)
    d = drafter(align_lookup="ahead")
    d.begin(PROMPT, pre)
    assert d.propose([*PROMPT, 8, 9]).tokens == [10, 11, 12]
    extra = d.extra_rows()
    assert extra is not None and pre.asked == []
    rows = extra.hidden[:, 0].long().tolist()
    assert set(rows) == {2, 3, 4}
    extra.receive(logits_of(choices, rows))
    assert d.lazy_rows == len(rows)
    tree = d.propose([*PROMPT, 8, 9])
    assert tree.tokens[:4] == [10, 11, 30, 31] and pre.asked == []


def test_ahead_lookup_keeps_generated_hidden_states_not_their_logits():
    from alignspec.rows import RowLogits

    pre = prefill_with_choices(aligned_choices())
    d = drafter(align_lookup="ahead")
    d.begin(PROMPT, pre)
    d.propose([*PROMPT, 8])  # root at position 8
    hidden = torch.tensor([[100.0], [101.0], [102.0]])
    head_calls: list[int] = []

    def head(h: torch.Tensor) -> torch.Tensor:
        head_calls.append(h.shape[0])
        return torch.zeros(h.shape[0], V)

    out = VerifyOutput(logits=RowLogits(hidden, head), hidden=hidden)
    d.update(VerifyResult(rows=[0, 2], tokens=[9, 6]), out)
    assert head_calls == [] and d.table.get(8) is None  # nothing computed yet
    assert torch.equal(d._hidden.rows([3, 8, 9]), torch.tensor([[3.0], [100.0], [102.0]]))


def test_no_alignment_switch_and_expand_limit():
    choices = aligned_choices()
    choices[3] = [30, 31, 32]
    d = drafter(alignment=False)
    assert not d.needs_hidden
    d.begin(PROMPT, prefill_with_choices(choices))
    assert d.propose([*PROMPT, 8, 9]).tokens == [10, 11, 12]
    d1 = drafter(expand=1)
    d1.begin(PROMPT, prefill_with_choices(choices))
    assert d1.propose([*PROMPT, 8, 9]).tokens.count(30) == 1
    assert 31 not in d1.propose([*PROMPT, 8, 9]).tokens


def test_siblings_continue_from_context():
    prompt = [7, 8, 9, 10, 11, 12, 30, 20, 21]  # "30" is followed by 20 21 in the context
    choices = [[prompt[t + 1] if t + 1 < len(prompt) else 1] for t in range(len(prompt))]
    choices[3] = [30, 11]  # after 10 the target prefers 30
    d = AASDDrafter(
        AASDConfig(
            min_ngram=1,
            max_ngram=4,
            draft_len=4,
            siblings="continue",
            expand=1,
            align_lookup="now",
        )
    )
    d.begin(prompt, prefill_with_choices(choices))
    tree = d.propose([*prompt, 8, 9])
    i30 = tree.tokens.index(30)
    child = tree.parents.index(i30 + 1)
    assert tree.tokens[child] == 20


def test_no_match_proposes_nothing_and_max_nodes_caps():
    d = drafter()
    d.begin(PROMPT, prefill_with_choices(aligned_choices()))
    assert len(d.propose([*PROMPT, 45, 46])) == 0
    d2 = drafter(max_nodes=2)
    d2.begin(PROMPT, prefill_with_choices(aligned_choices()))
    assert len(d2.propose([*PROMPT, 8, 9])) == 2


def test_update_records_generated_positions():
    d = drafter()
    d.begin(PROMPT, prefill_with_choices(aligned_choices()))
    d.propose([*PROMPT, 8])  # root at position 8
    logits = torch.full((3, V), -10.0)
    logits[0, 5] = 10.0
    logits[2, 6] = 10.0
    d.update(VerifyResult(rows=[0, 2], tokens=[9, 6]), VerifyOutput(logits=logits))
    assert d.table.get(8)[0][0] == 5 and d.table.get(9)[0][0] == 6
    assert d.table.get(10) is None


def test_alignment_table_is_top_m_only():
    table = AlignmentTable(m=2)
    table.set_from_logits(0, torch.randn(4096, 1000))
    assert table.ids.shape[1] == 2 and table.known[:4096].all()
    assert table.nbytes < 4096 * 2 * 8 * 3  # bytes of L x m, never L x V
    assert np.all(table.probs[:4096, 0] >= table.probs[:4096, 1])


def test_rows_filed_by_the_kernel_equal_the_array_path(monkeypatch):
    """A receiver writes the kernel's top-m into the table in place, across a
    growth of the table, exactly as top_probs + set_rows store them."""
    from alignspec.targets.native import cpu_kernel

    kernel = cpu_kernel.load()
    if kernel is None:
        pytest.skip("alignspec's CPU kernel does not build here")
    gen = torch.Generator().manual_seed(3)
    batches = [
        ([3], torch.randn(1, 5000, generator=gen)),
        ([700, 9], torch.randn(2, 5000, generator=gen)),
    ]
    fast, slow = AlignmentTable(m=4), AlignmentTable(m=4)
    for rows, logits in batches:
        monkeypatch.setattr(cpu_kernel, "loaded", lambda: kernel)
        fast.receiver(rows)(logits)
        slow.set_rows(rows, *kernel.top_probs(logits, 4))
    for t in (3, 9, 700):
        assert np.array_equal(fast.get(t)[0], slow.get(t)[0])
        assert np.array_equal(fast.get(t)[1], slow.get(t)[1])
    assert fast.get(4) is None and np.array_equal(fast.known, slow.known)
    monkeypatch.setattr(cpu_kernel, "loaded", lambda: None)
    plain = AlignmentTable(m=4)
    plain.receiver([5])(batches[0][1])
    assert plain.get(5)[0].tolist() == batches[0][1][0].topk(4).indices.tolist()


def test_bad_options_are_user_errors():
    for bad in (
        {"siblings": "x"},
        {"sample": "x"},
        {"verify": "x"},
        {"threshold": "x"},
        {"expand": 9},
        {"min_ngram": 5, "max_ngram": 2},
    ):
        with pytest.raises(AlignspecError):
            AASDConfig(**bad)


def test_alignment_tokens_skip_padding_and_the_copied_token():
    """topk takes the first valid ids; random draws among the valid ids only (never the -1
    padding of a partly known row); neither returns the copied token, and none come back
    where the copy is the target's own choice."""
    ids = np.array([5, 7, 9, -1])
    probs = np.array([0.5, 0.3, 0.2, 0.0], dtype=np.float32)
    topk = AASDDrafter(AASDConfig(expand=2))
    assert topk._alignment_tokens(9, (ids, probs)) == [(5, 0.5), (7, float(np.float32(0.3)))]
    assert topk._alignment_tokens(5, (ids, probs)) == []
    random = AASDDrafter(AASDConfig(expand=2, sample="random"), seed=3)
    seen = set()
    for _ in range(50):
        picked = random._alignment_tokens(7, (ids, probs))
        assert 1 <= len(picked) <= 2 and all(tok in (5, 9) for tok, _ in picked)
        seen.update(tok for tok, _ in picked)
    assert seen == {5, 9}
    short = (np.array([5, 8, -1, -1]), probs)
    assert random._alignment_tokens(3, short) == [(5, 0.5), (8, float(np.float32(0.3)))]


def test_kernel_tree_equals_the_python_build(monkeypatch):
    """aasd_tree (one kernel call) builds the tree _build builds and picks the rows _lookup
    picks, to the last bit of every score: random histories over a small vocabulary (many
    matches, shared prefixes, siblings that collide with copies) and random tables."""
    from alignspec.drafters import aasd as aasd_module
    from alignspec.targets.native import cpu_kernel

    kernel = cpu_kernel.load()
    if kernel is None:
        pytest.skip("alignspec's CPU kernel does not build here")
    rng = np.random.default_rng(11)
    checked = with_siblings = 0
    for trial in range(300):
        cfg = AASDConfig(
            min_ngram=int(rng.integers(1, 3)),
            draft_len=int(rng.integers(1, 8)),
            max_nodes=int(rng.integers(1, 30)),
            recency=float(rng.choice([1.0, 0.8, 0.5])),
            alignment=bool(trial % 4),
            expand=int(rng.integers(0, 5)),
            align_topm=4,
        )
        monkeypatch.setattr(aasd_module, "PREFETCH_ROWS", int(rng.integers(1, 4)))
        prompt = rng.integers(0, 6, size=int(rng.integers(2, 60))).tolist()
        history = prompt + rng.integers(0, 6, size=int(rng.integers(1, 10))).tolist()
        ids = torch.from_numpy(rng.integers(-1, 8, size=(len(prompt), 4)))
        probs = torch.from_numpy(rng.random((len(prompt), 4)).astype(np.float32))
        pre = PrefillOutput(
            logits=torch.zeros(V),
            hidden=torch.arange(len(prompt), dtype=torch.float32)[:, None],
            topk_of=lambda h, k, i=ids, p=probs: (i[h[:, 0].long(), :k], p[h[:, 0].long(), :k]),
        )
        known = [t for t in range(len(prompt)) if rng.random() < 0.6]
        trees, rows, siblings = [], [], []
        for loaded in (kernel, None):
            monkeypatch.setattr(cpu_kernel, "loaded", lambda loaded=loaded: loaded)
            d = AASDDrafter(cfg)
            d.begin(prompt, pre)
            if known:
                d.table.set_rows(known, ids[known], probs[known])
            trees.append(d.propose(history))
            ahead = d.extra_rows()
            rows.append(None if ahead is None else ahead.hidden[:, 0].long().tolist())
            siblings.append(d._sibling_paths)
        fast, slow = trees
        assert fast.tokens == slow.tokens and fast.parents == slow.parents
        assert fast.scores == slow.scores and rows[0] == rows[1]
        assert siblings[0] == siblings[1]
        with_siblings += bool(siblings[1])
        checked += len(slow) > 0 and any(s < 1.0 for s in slow.scores)
    assert checked > 100  # most cases build a real, branching tree
    assert with_siblings > 50


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_hidden_states_keep_prompt_then_accepted_rows(dtype):
    """The prompt's rows, then the accepted ones, in any dtype, across the buffer's growth."""
    prompt = torch.arange(12, dtype=dtype).reshape(6, 2)
    states = HiddenStates(prompt)
    expected = list(prompt)
    for step in range(150):
        verify = torch.full((4, 2), 100.0 + step, dtype=dtype) + torch.arange(4)[:, None]
        rows = [0, 2] if step % 2 else [1]
        states.add(verify, rows)
        expected.extend(verify[rows])
    assert len(states) == len(expected) == 6 + 75 * 3
    index = [0, 5, 6, 7, 100, len(expected) - 1]
    got = states.rows(index)
    assert got.dtype == dtype and torch.equal(got, torch.stack([expected[i] for i in index]))
    assert torch.equal(states.rows([1, 3]), prompt[[1, 3]])
