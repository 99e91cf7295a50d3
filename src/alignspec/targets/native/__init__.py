"""alignspec's own forward for Llama/Mistral/Qwen2-family models (see :class:`NativeTarget`).

It exists because a draft-tree verification through transformers costs ~2x a one-token step on
CPU, mostly per-op overhead and a GEMM path tuned for large batches; this forward fuses
projections, keeps a static KV cache compacted in place and splits the LM head, so verifying a
tree costs about what one decoding step costs.
"""

from alignspec.targets.native.spec import UnsupportedModelError, inspect_model
from alignspec.targets.native.target import NativeTarget

__all__ = ["NativeTarget", "UnsupportedModelError", "inspect_model"]
