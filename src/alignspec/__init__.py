"""alignspec: speculative decoding that keeps what the model says.

``alignspec.load()`` returns an :class:`~alignspec.api.LLM`; ``generate``/``stream`` take a
method name from :data:`alignspec.methods.REGISTRY` (``ar``, ``pld``, ``pld-tree``, ...).
"""

from alignspec.api import LLM, Generation, GenerationOutput, generate, load
from alignspec.errors import AlignspecError
from alignspec.methods import REGISTRY as METHODS
from alignspec.sampling import SamplingParams

__all__ = [
    "LLM",
    "METHODS",
    "AlignspecError",
    "Generation",
    "GenerationOutput",
    "SamplingParams",
    "generate",
    "load",
]
__version__ = "0.1.0"
