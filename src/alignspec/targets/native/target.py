"""The native :class:`Target`: the compact decoder, its static KV cache and the LM head.

Per round the engine pays for exactly one decoder forward over the tree rows and one LM head
over those rows; a prefill computes logits only for the last prompt position unless the
drafter asks for per-position top-m (then in row chunks, never ``L x V`` at once).
"""

from __future__ import annotations

from typing import Any

import torch

from alignspec.errors import AlignspecError
from alignspec.rows import RowLogits
from alignspec.targets.base import PrefillOutput, Target, VerifyOutput, topk_next_tokens
from alignspec.targets.native import cpu_kernel
from alignspec.targets.native.attention import build_mask, causal_allowed, tree_mask
from alignspec.targets.native.head import VocabHead
from alignspec.targets.native.model import Decoder
from alignspec.targets.native.spec import inspect_model
from alignspec.tree import DraftTree

#: prompt tokens per prefill forward. The fused attention never holds the [heads, chunk, end]
#: scores, so the chunk only bounds the [chunk, intermediate] MLP activations (100 MB at 8192
#: for SmolLM2); a prompt in one chunk attends with ``is_causal``, which skips the masked half.
#: Measured, 2000 tokens on a loaded Xeon, 1 thread: 89 tok/s with 512-row chunks and the old
#: attention, 108 with SDPA, 187 with SDPA in one chunk (int8: 183, 215, 303)
PREFILL_CHUNK = 8192
#: prompt rows per LM-head call when a drafter wants top-m at every prompt position
TOPK_ROWS = 256
QUANTIZE = (None, "int8")


class NativeTarget(Target):
    """A Llama/Mistral/Qwen2-family model run by alignspec's own forward."""

    def __init__(self, decoder: Decoder, head: VocabHead, *, quantize: str | None = None) -> None:
        self.decoder = decoder
        self.head = head
        self.quantize = quantize
        self.device = decoder.device
        self.vocab_size = head.vocab_size
        self.max_context = decoder.spec.max_context
        self.max_tree_depth = decoder.max_tree_depth
        self.cache = decoder.new_cache()
        self._forward = decoder.forward

    @classmethod
    def from_hf(
        cls,
        model: Any,
        quantize: str | None = None,
        *,
        compile: bool = False,
        prepack: bool = True,
        head_chunk: int | None = None,
        kv_bf16: bool | None = None,
    ) -> NativeTarget:
        """Build from a loaded transformers model (its weights are fused or repacked, never
        reloaded from disk). Raises
        :class:`~alignspec.targets.native.spec.UnsupportedModelError` for an architecture the
        native forward does not implement. ``prepack`` and ``head_chunk`` exist so the
        benchmark can measure the alternatives (see :mod:`~alignspec.targets.native.linear`
        and :mod:`~alignspec.targets.native.head`); ``kv_bf16`` as in
        :meth:`Decoder.from_hf`."""
        if quantize not in QUANTIZE:
            raise AlignspecError(f"unknown quantization '{quantize}'; use none or int8")
        spec = inspect_model(model)
        prepack = prepack and not compile  # dynamo cannot trace oneDNN's opaque packed weights
        decoder = Decoder.from_hf(model, spec, quantize, prepack, kv_bf16)
        lm = model.get_output_embeddings()
        bias = lm.bias.detach() if getattr(lm, "bias", None) is not None else None
        head = VocabHead(
            lm.weight.detach(), bias, quantize=quantize, prepack=prepack, chunk=head_chunk
        )
        target = cls(decoder, head, quantize=quantize)
        if compile:
            from alignspec.targets.native.compiled import compiled_forward

            target._forward = compiled_forward(decoder)
        return target

    @property
    def weight_bytes(self) -> int:
        """Bytes of weights one forward reads (decoder blocks + LM head)."""
        return self.decoder.nbytes + self.head.nbytes

    @property
    def kernels(self) -> str:
        """Which compiled CPU kernels run the int8 forward (part of the cost fingerprint)."""
        if self.decoder.kernel is None:
            return "torch"
        return f"alignspec-{self.decoder.kernel.isa()}-{cpu_kernel.build_key()}"

    @property
    def cache_len(self) -> int:
        return self.cache.length

    def reset(self) -> None:
        self.cache.reset()

    def _run(
        self,
        ids: list[int],
        positions: torch.Tensor,
        mask: torch.Tensor | None,
        causal: bool = False,
    ):
        """One forward writing its rows at the cache's first free slot under the additive
        ``mask`` (``causal``: a prompt chunk, see :meth:`Decoder.forward`)."""
        start = self.cache.length
        self.cache.reserve(start + len(ids))
        tokens = torch.tensor(ids, dtype=torch.long, device=self.device)
        return self._forward(tokens, positions, mask, self.cache, start, causal)

    @torch.inference_mode()
    def prefill(self, ids: list[int], *, topk: int = 0, want_hidden: bool = False) -> PrefillOutput:
        if not ids:
            raise AlignspecError("the prompt is empty")
        self.reset()
        hiddens: list[torch.Tensor] = []
        tops: list[tuple[torch.Tensor, torch.Tensor]] = []
        for start in range(0, len(ids), PREFILL_CHUNK):
            chunk = ids[start : start + PREFILL_CHUNK]
            positions = torch.arange(start, start + len(chunk), device=self.device)
            multi = len(chunk) > 1
            allowed = causal_allowed(start, len(chunk), self.device) if multi and start else None
            mask = build_mask(allowed, self.decoder.dtype, self.device)
            hidden = self._run(chunk, positions, mask, causal=multi)
            self.cache.commit(list(range(len(chunk))))
            if want_hidden:
                hiddens.append(hidden)
            if topk:
                tops.append(topk_next_tokens(hidden, self.head, topk, TOPK_ROWS))
            last = hidden[-1:]
        return PrefillOutput(
            logits=self.head(last)[0],
            topk_ids=torch.cat([i for i, _ in tops]) if topk else None,
            topk_probs=torch.cat([p for _, p in tops]) if topk else None,
            hidden=torch.cat(hiddens) if want_hidden else None,
            topk_of=self.topk_of,
        )

    @torch.inference_mode()
    def topk_of(self, hidden: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-``k`` next-token ids and probabilities for rows of this model's hidden states."""
        return topk_next_tokens(hidden, self.head, k, TOPK_ROWS)

    @torch.inference_mode()
    def verify(self, root: int, tree: DraftTree, *, want_hidden: bool = False) -> VerifyOutput:
        prefix = self.cache.length
        positions = tree.position_ids(prefix, device=self.device)
        mask = None
        if len(tree):
            mask = tree_mask(prefix, tree.ancestor_mask(), self.decoder.dtype, self.device)
        hidden = self._run(tree.row_tokens(root), positions, mask)
        logits = RowLogits(hidden, self.head, tree)
        return VerifyOutput(logits=logits, hidden=hidden if want_hidden else None)

    def commit(self, rows: list[int]) -> None:
        self.cache.commit(rows)
