"""The option dataclasses check their own fields from their metadata (types, ranges, choices),
so the CLI, the API and the server refuse the same values with the same sentence."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from alignspec.drafters.aasd import AASDConfig
from alignspec.drafters.draft_model import DraftModelConfig
from alignspec.drafters.feature_head import FeatureHeadConfig
from alignspec.drafters.prompt_lookup import PromptLookupConfig
from alignspec.errors import AlignspecError
from alignspec.methods import REGISTRY
from alignspec.options import check_fields, describe, field_kind


def test_every_registered_option_has_a_checked_scalar_type():
    for method in REGISTRY.values():
        for f in dataclasses.fields(method.options):
            assert field_kind(f) is not None, (method.name, f.name)
            assert f.metadata.get("help"), (method.name, f.name)


def test_every_default_passes_its_own_check():
    for method in REGISTRY.values():
        if method.name == "sps":
            continue  # needs a draft model name
        method.make_options({})


@pytest.mark.parametrize(
    ("cls", "kwargs", "message"),
    [
        (PromptLookupConfig, {"draft_len": "x"}, "prompt lookup option draft_len"),
        (PromptLookupConfig, {"draft_len": True}, "got True"),
        (PromptLookupConfig, {"max_matches": 1.5}, "max_matches must be an integer >= 1"),
        (PromptLookupConfig, {"min_ngram": 4}, "min_ngram <= max_ngram"),
        (AASDConfig, {"tau": "big"}, "AASD option tau must be a finite number in [0.0, 1.0]"),
        (AASDConfig, {"tau": -5}, "got -5"),
        (AASDConfig, {"tau": math.nan}, "got nan"),
        (AASDConfig, {"beta": 1.5}, "beta must be a finite number in [0.0, 1.0]"),
        (AASDConfig, {"verify": "maybe"}, "verify must be one of exact, conditional"),
        (AASDConfig, {"threshold": 1}, "threshold must be one of constant, entropy"),
        (AASDConfig, {"alignment": 1}, "alignment must be true or false"),
        (AASDConfig, {"expand": 9}, "expand must be between 0 and align_topm"),
        (FeatureHeadConfig, {"head": 3}, "feature-head option head must be a string"),
        (FeatureHeadConfig, {"tree_top_k": 0}, "tree_top_k must be an integer >= 1"),
        (DraftModelConfig, {"draft_model": "m", "draft_len": False}, "sps option draft_len"),
    ],
)
def test_bad_values_are_one_sentence(cls, kwargs, message):
    with pytest.raises(AlignspecError) as exc:
        cls(**kwargs)
    assert message in str(exc.value)
    assert "\n" not in str(exc.value)


def test_values_are_normalised_to_the_declared_type():
    cfg = AASDConfig(tau=1, draft_len=np.int64(5))
    assert type(cfg.tau) is float and cfg.tau == 1.0
    assert type(cfg.draft_len) is int and cfg.draft_len == 5


def test_frozen_dataclasses_are_normalised_too():
    @dataclasses.dataclass(frozen=True)
    class Frozen:
        n: int = dataclasses.field(default=1, metadata={"min": 0})

        def __post_init__(self) -> None:
            check_fields(self, "frozen")

    assert type(Frozen(np.int16(3)).n) is int
    with pytest.raises(AlignspecError, match="frozen option n must be an integer >= 0"):
        Frozen(-1)


def test_describe_reads_the_metadata():
    assert describe(int, {"min": 1}) == "an integer >= 1"
    assert describe(float, {"min": 0.0, "max": 1.0}) == "a finite number in [0.0, 1.0]"
    assert describe(float, {"max": 2}) == "a finite number <= 2"
    assert describe(str, {"choices": ("a", "b")}) == "one of a, b"
    assert describe(bool, {}) == "true or false"
