"""Verifiers: turn the target's logits over a draft tree into the accepted path and bonus token."""

from alignspec.verifiers.base import Verifier, VerifyContext, VerifyResult
from alignspec.verifiers.greedy import GreedyVerifier

__all__ = ["GreedyVerifier", "Verifier", "VerifyContext", "VerifyResult"]
