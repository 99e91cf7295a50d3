"""The decoder forward: embeddings, N pre-norm blocks, final norm (the LM head is separate).

Weights come from an already-loaded transformers model. Q, K and V are fused into one matrix
(one weight read and one kernel instead of three) and so are the MLP's gate and up
projections. With plain weights (CUDA) the output and down projections, the norms and the
embedding share the transformers tensors, so only the fused matrices cost extra memory; on CPU
every projection and the LM head are held prepacked for oneDNN, a second copy of the weights
(+540 MB for SmolLM2-135M in fp32), and int8 adds half of that instead (the int8 codes and
oneDNN's packed copy of them). The forward takes explicit positions and a mask and writes its
K/V rows into a :class:`StaticKVCache` at a given slot, which is all a draft tree needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from alignspec.targets.native import cpu_kernel
from alignspec.targets.native.attention import attend, attend_causal, attend_exact
from alignspec.targets.native.kv_cache import StaticKVCache
from alignspec.targets.native.linear import Linear, make_linear
from alignspec.targets.native.quant import W8A8Linear, place_in_huge_pages
from alignspec.targets.native.rope import RopeTables
from alignspec.targets.native.spec import ModelSpec

#: rows of a prompt chunk per MLP slice (:meth:`Decoder._mlp`): on the AMX Xeon a 2,000-token
#: int8 prefill took 674 ms in slices of 256, 687 in 512, 699 in 128, 761 in one pass (one
#: process, same bits)
MLP_ROWS = 256


@dataclass
class Block:
    """One decoder layer's weights."""

    attn_norm: torch.Tensor
    qkv: Linear
    o: Linear
    mlp_norm: torch.Tensor
    gate_up: Linear
    down: Linear

    @property
    def nbytes(self) -> int:
        norms = (self.attn_norm.numel() + self.mlp_norm.numel()) * self.attn_norm.element_size()
        return norms + sum(lin.nbytes for lin in (self.qkv, self.o, self.gate_up, self.down))


def fused_bias(*modules: Any) -> torch.Tensor | None:
    """Concatenated biases of ``modules``, zeros where one has none; ``None`` if none has."""
    biases = [getattr(m, "bias", None) for m in modules]
    if all(b is None for b in biases):
        return None
    return torch.cat(
        [
            b.detach() if b is not None else m.weight.new_zeros(m.weight.shape[0])
            for m, b in zip(modules, biases, strict=True)
        ]
    )


def _bias(module: Any) -> torch.Tensor | None:
    return module.bias.detach() if getattr(module, "bias", None) is not None else None


def load_block(layer: Any, quantize: str | None, prepack: bool = True) -> Block:
    """Fuse one transformers decoder layer's projections into a :class:`Block`."""
    attn, mlp = layer.self_attn, layer.mlp
    qkv = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]).detach()
    gate_up = torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]).detach()
    return Block(
        attn_norm=layer.input_layernorm.weight.detach(),
        qkv=make_linear(
            qkv,
            fused_bias(attn.q_proj, attn.k_proj, attn.v_proj),
            quantize=quantize,
            prepack=prepack,
        ),
        o=make_linear(
            attn.o_proj.weight.detach(), _bias(attn.o_proj), quantize=quantize, prepack=prepack
        ),
        mlp_norm=layer.post_attention_layernorm.weight.detach(),
        gate_up=make_linear(
            gate_up, fused_bias(mlp.gate_proj, mlp.up_proj), quantize=quantize, prepack=prepack
        ),
        down=make_linear(
            mlp.down_proj.weight.detach(), _bias(mlp.down_proj), quantize=quantize, prepack=prepack
        ),
    )


class Decoder:
    """Embeddings + blocks + final norm of a Llama/Mistral/Qwen2-family model."""

    def __init__(
        self,
        spec: ModelSpec,
        embed: torch.Tensor,
        blocks: list[Block],
        final_norm: torch.Tensor,
        *,
        exact_attention: bool = False,
        kv_bf16: bool = False,
    ) -> None:
        self.spec = spec
        #: decode and verify with attention whose rows come out bitwise alike however they
        #: are batched (the int8 model): alignspec's CPU kernel (``attend_rows``)
        #: where it builds, else :func:`attend_exact` with fp64 values
        self.exact_attention = exact_attention
        self.kernel = (
            cpu_kernel.load()
            if exact_attention and embed.device.type == "cpu" and embed.dtype == torch.float32
            else None
        )
        self.embed = embed
        self.blocks = blocks
        self.final_norm = final_norm
        self.dtype = embed.dtype
        self.device = embed.device
        self.rope = RopeTables(
            spec.inv_freq,
            spec.max_context,
            scaling=spec.rope_scaling,
            dtype=self.dtype,
            device=self.device,
        )
        self.scale = spec.head_dim**-0.5
        place_in_huge_pages(lin for b in blocks for lin in (b.qkv, b.o, b.gate_up, b.down))
        self.stack = self._make_stack()
        #: prompt chunks attend through the kernel's causal_attend (rows as if decoded alone)
        self.causal_kernel = self.kernel is not None and self.kernel.causal_attend_ok(spec.head_dim)
        #: where the kernel's AVX-512 attention runs and ``kv_bf16`` asks, the cache holds bf16
        #: keys and values: every decode step reads half the bytes (a one-row int8 step at 2,048
        #: cached tokens 12.3 -> 9.1 ms on a 2-core AMD EPYC), and the prompt's attention reads
        #: them as they are. Each is rounded once, when written; the rows' arithmetic after the
        #: loads is unchanged, so rows stay independent of each other.
        bf16_cache = kv_bf16 and self.causal_kernel
        self.cache_dtype = torch.bfloat16 if bf16_cache else self.dtype
        #: such a prompt chunk attends in bf16 where the CPU multiplies bf16 (torch's bf16
        #: SDPA's roundings): on AMX tiles, or with AVX512-BF16 dot products (a layer of 2,048
        #: rows 15-18 ms against 35 for causal_attend on a 2-core AMD EPYC); elsewhere through
        #: causal_attend, whose rows stay what decoding them alone gives
        self.prompt_bf16 = bf16_cache and self.kernel.causal_attend_bf16_ok(spec.head_dim)
        #: decode and verify rows on AMX tiles too (``lanes_amx.h``): the cache keeps its
        #: values transposed as well
        self.amx_rows = bf16_cache and self.kernel.attend_bf16_amx()
        #: where a bf16 cache sums its older values with bf16 probabilities (AMX tiles, or
        #: AVX512-BF16 pair products), no draft-tree row may sit deeper than this below the
        #: committed tokens (``None``: no limit)
        self.max_tree_depth = (self.kernel.attend_tree_depth() or None) if bf16_cache else None

    def _make_stack(self) -> Any:
        """The kernel's :class:`DecoderStack` (every layer in one call), where the kernel is
        built and every projection is its W8A8 product; else ``None`` (the Python loop)."""
        if self.kernel is None or not hasattr(self.kernel, "DecoderStack"):
            return None
        flat: list[torch.Tensor] = []
        empty = torch.empty(0)
        for block in self.blocks:
            flat += [block.attn_norm.contiguous(), block.mlp_norm.contiguous()]
            for lin in (block.qkv, block.o, block.gate_up, block.down):
                if not isinstance(lin, W8A8Linear) or lin.kernel is None:
                    return None
                bias = lin.bias if lin.bias is not None else empty
                flat += [lin.packed, lin.colsum, lin.scale, bias]
        s = self.spec
        return self.kernel.DecoderStack(
            flat,
            self.final_norm.contiguous(),
            s.num_heads,
            s.num_kv_heads,
            s.head_dim,
            s.rms_eps,
            self.scale,
        )

    @classmethod
    def from_hf(
        cls,
        model: Any,
        spec: ModelSpec,
        quantize: str | None = None,
        prepack: bool = True,
        kv_bf16: bool | None = None,
    ) -> Decoder:
        """``kv_bf16``: the int8 model keeps bf16 keys and values (None: on CPU, where the
        kernel's AVX-512 attention runs; see :attr:`cache_dtype`). On a 2-core Xeon with AMX
        the prompt's attention then runs on bf16 tiles (738 of 1,195 ms of a 2,000-token
        prefill was fp32 attention; the AMX kernel takes less than a quarter of that); without
        AMX it is the fp32 kernel over the rounded keys and values. The int8 model's outputs
        move by less than its own rounding of every projection's input to 8 bits, and every
        method shares the cache, so speculation stays lossless against int8 ``ar``; the fp32
        model keeps fp32 keys and values."""
        base = model.model
        embed = base.embed_tokens.weight.detach()
        blocks = [load_block(layer, quantize, prepack) for layer in base.layers]
        if kv_bf16 is None:
            kv_bf16 = embed.device.type == "cpu"
        return cls(
            spec,
            embed,
            blocks,
            base.norm.weight.detach(),
            exact_attention=quantize is not None,
            kv_bf16=quantize is not None and kv_bf16,
        )

    @property
    def nbytes(self) -> int:
        """Weight bytes read per forward (embedding rows excluded: only a few are gathered)."""
        norm = self.final_norm.numel() * self.final_norm.element_size()
        return sum(b.nbytes for b in self.blocks) + norm

    def new_cache(self) -> StaticKVCache:
        s = self.spec
        return StaticKVCache(
            num_layers=s.num_layers,
            num_kv_heads=s.num_kv_heads,
            head_dim=s.head_dim,
            max_context=s.max_context,
            dtype=self.cache_dtype,
            device=self.device,
            value_dtype=torch.float64 if self.exact_attention and self.kernel is None else None,
            transposed_values=self.amx_rows,
        )

    def forward(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        mask: torch.Tensor | None,
        cache: StaticKVCache,
        start: int,
        causal: bool = False,
    ) -> torch.Tensor:
        """Final-normed hidden states ``[rows, hidden]`` of ``tokens`` at ``positions``.

        Their K/V go to cache slots ``start .. start + rows - 1``; every row attends to slots
        ``< start + rows`` subject to ``mask`` (``[rows, start + rows]`` additive, or ``None``).
        ``causal``: the rows are a prompt chunk at consecutive positions ``start ..`` and
        ``mask`` is its causal mask, so attention may use the fused SDPA kernel.
        """
        s = self.spec
        rows = tokens.shape[0]
        heads, kv = s.num_heads, s.num_kv_heads
        exact = self.exact_attention and not causal
        cos, sin = self.rope.gather(positions)
        x = F.embedding(tokens, self.embed)
        h = self._norm(x, self.blocks[0].attn_norm)
        if exact and self.stack is not None:  # every layer in one kernel call
            cos, sin = cos.squeeze(1).contiguous(), sin.squeeze(1).contiguous()
            vt = (cache.values_t, cache.vt_blocks)
            out = self.stack.forward(x, h, cos, sin, cache.keys, cache.values, start, mask, *vt)
            if cache.values_t is not None:  # every layer transposed the committed blocks
                cache.vt_blocks = max(cache.vt_blocks, start // 32)
            return out
        for i, block in enumerate(self.blocks):
            qkv = block.qkv(h).view(rows, heads + 2 * kv, s.head_dim)
            att = self._attend(qkv, cos, sin, mask, cache, i, start, exact, causal)
            h = self._add_norm(x, block.o(att), block.mlp_norm)
            h = self._mlp(x, h, block, i)
        return h

    def _attend(
        self,
        qkv: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None,
        cache: StaticKVCache,
        i: int,
        start: int,
        exact: bool,
        causal: bool,
    ) -> torch.Tensor:
        """Layer ``i``'s attention: rotary and cache write (one kernel pass for a prompt chunk
        where the kernel is loaded, else torch), then the rule that fits."""
        heads, kv = self.spec.num_heads, self.spec.num_kv_heads
        if causal and self.kernel is not None:
            # a prompt chunk: rotary and cache write in one kernel pass, the same bits
            q = self.kernel.rope_write(
                qkv, cos[:, 0], sin[:, 0], cache.keys[i], cache.values[i], start, heads
            )
        else:
            qk = self.rope.apply(qkv[:, : heads + kv], cos, sin)
            cache.write(i, start, qk[:, heads:], qkv[:, heads + kv :])
            q = qk[:, :heads]
        keys, values = cache.layer(i, start + qkv.shape[0])
        if exact:
            return attend_exact(q, keys, values, mask, self.scale)
        if causal and self.prompt_bf16:
            return self.kernel.causal_attend_bf16(q, keys, values, start, self.scale)
        if causal and self.causal_kernel:
            return self.kernel.causal_attend(q, keys, values, start, self.scale)
        if causal:  # fp64 values (the int8 model) are rounded back, once per prompt chunk
            values = values.to(self.dtype)
            return attend_causal(q, keys, values, mask, self.scale, start)
        return attend(q, keys, values, mask, self.scale)

    def _mlp(self, x: torch.Tensor, h: torch.Tensor, block: Block, i: int) -> torch.Tensor:
        """Block ``i``'s MLP on the normed ``h`` added to ``x``, then the next norm.

        Through the kernel, a prompt chunk goes through in slices of :data:`MLP_ROWS` rows,
        so the gate/up output (12 KB a row for SmolLM2) and the SwiGLU product stay in the
        core's cache instead of a 25 MB round trip through memory per layer at 2,000 rows.
        Every kernel step is row by row, so the rows come out the same as in one pass. Each
        slice's output overwrites its input rows of ``h``, which nothing reads again (a new
        tensor per slice, copied out, was 2% of a 2,000-token int8 prefill). (The fp32 model
        through torch measured mixed: 7% faster at 2,000 rows, 7% slower at 300.)
        """
        after = self.blocks[i + 1].attn_norm if i + 1 < len(self.blocks) else self.final_norm
        rows = h.shape[0]
        if rows <= MLP_ROWS or self.kernel is None:
            return self._add_norm(x, block.down(self._gate_up_act(block.gate_up, h)), after)
        eps = self.spec.rms_eps
        for r0 in range(0, rows, MLP_ROWS):
            r = slice(r0, r0 + MLP_ROWS)
            delta = block.down(self._gate_up_act(block.gate_up, h[r]))
            self.kernel.add_rms_norm_into(x[r], delta, after, eps, h[r])
        return h

    def _gate_up_act(self, gate_up: Linear, h: torch.Tensor) -> torch.Tensor:
        """``silu(gate) * up`` of the fused projection of ``h``: in one kernel pass where it is
        the kernel's W8A8 product (a prompt slice on AMX never writes the [rows, 2I] product
        out; same bits as the two steps), else the product and then :meth:`_swiglu`."""
        if isinstance(gate_up, W8A8Linear) and gate_up.kernel is not None:
            return gate_up.kernel.gate_up_silu(
                h, gate_up.packed, gate_up.colsum, gate_up.scale, gate_up.bias,
                gate_up.out_features,
            )  # fmt: skip
        return self._swiglu(gate_up(h))

    def _swiglu(self, gu: torch.Tensor) -> torch.Tensor:
        """``silu(gate) * up`` of a fused gate/up projection."""
        if self.kernel is not None:
            return self.kernel.silu_mul(gu)
        return F.silu(gu[:, : self.spec.intermediate]) * gu[:, self.spec.intermediate :]

    def _norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if self.kernel is not None:  # one call instead of torch's half a dozen ops
            return self.kernel.rms_norm(x, weight, self.spec.rms_eps)
        return F.rms_norm(x, (self.spec.hidden,), weight, self.spec.rms_eps)

    def _add_norm(self, x: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """The residual ``x += delta`` (in place), then the next norm of ``x``."""
        if self.kernel is not None:
            return self.kernel.add_rms_norm_(x, delta, weight, self.spec.rms_eps)
        x.add_(delta)
        return self._norm(x, weight)
