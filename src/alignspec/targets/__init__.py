"""Target backends: run the model being accelerated over prompts and draft trees."""

from alignspec.targets.base import PrefillOutput, Target
from alignspec.targets.hf import HFTarget

__all__ = ["HFTarget", "PrefillOutput", "Target"]
