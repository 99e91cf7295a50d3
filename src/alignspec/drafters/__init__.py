"""Drafters: propose a draft tree of likely next tokens for the target to verify."""

from alignspec.drafters.base import Drafter, NoDrafter
from alignspec.drafters.prompt_lookup import PromptLookupDrafter

__all__ = ["Drafter", "NoDrafter", "PromptLookupDrafter"]
