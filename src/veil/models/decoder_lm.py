"""A Gemma 2 / Gemma 3 style decoder-only language model on :mod:`veil.layers`, with a KV cache and generation.

Legend: B batch, L tokens of this call, K keys attended, E model width (``dim``), N query heads, Nkv key/value
heads, D head dim, V vocabulary, C condition width.

The block is Gemma's (https://arxiv.org/abs/2408.00118, https://arxiv.org/abs/2503.19786)::

    x = x + post_attn_norm(attention(attn_norm(x)))     # 4 RMSNorms per block, each with ``1 + weight``
    x = x + post_mlp_norm(geglu(mlp_norm(x)))

Local layers attend with ``causal() & sliding_window(w)``: query at absolute position ``qa`` sees keys
``qa - w < k <= qa`` (``w`` keys, itself included). Hugging Face's ``sliding_window = w`` means the same
set: its mask keeps ``kv_idx > q_idx - sliding_window`` on top of the causal mask (``masking_utils.
sliding_window_overlay``), so the value is copied unchanged. Global layers attend with ``causal()``. Left
padding (batched generation) enters as ``key_mask`` over the padded keys, through the attention module's
``key_valid``; each sample's RoPE positions start at its first real token, so a padded sample computes what
it computes alone.

Numerics follow HF: embeddings are scaled by ``sqrt(E)`` cast to the weights' dtype first (in bf16
``sqrt(3072)`` becomes 55.5); RMSNorms run in float32; the RoPE angles in float32; the final logits are
soft-capped as ``cap * tanh(logits / cap)``. No softmax is written here: attention is :func:`veil.attend`.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from veil import masks as M
from veil.layers import (
    Attention,
    GatedMLP,
    InAttentionCondition,
    KVCache,
    RMSNorm,
    RopeTable,
    RotaryEmbedding,
    SequenceParallelModel,
    use_sequence_parallel,
)
from veil.models.sampling import check_sampling, next_token

Tensor = torch.Tensor
LayerType = Literal["local", "global"]
Activation = Literal["gelu_tanh", "gelu", "silu"]
Placement = Literal["post_norm", "pre_norm"]


def gemma2_layer_types(depth: int) -> tuple[LayerType, ...]:
    """Gemma 2: local and global layers alternate, the first local (HF ``Gemma2Config.layer_types``)."""
    return tuple("local" if (i + 1) % 2 else "global" for i in range(depth))


def gemma3_layer_types(depth: int) -> tuple[LayerType, ...]:
    """Gemma 3: five local layers then one global (HF ``sliding_window_pattern = 6``)."""
    return tuple("local" if (i + 1) % 6 else "global" for i in range(depth))


def _positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected a positive int, got {value!r}")


def _positive_float(name: str, value: object, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name}: expected a positive number{' or None' if optional else ''}, got {value!r}")


@dataclass(kw_only=True)
class DecoderConfig:
    """Shape and features of a :class:`DecoderLM`.

    Attributes:
        vocab_size: V.
        dim: model width E (HF ``hidden_size``).
        depth: number of blocks.
        heads, kv_heads, head_dim: N, Nkv (divides N: grouped-query attention), D.
        hidden: feed-forward width of each of the gate / up projections (HF ``intermediate_size``).
        layer_types: ``"local"`` (sliding window) or ``"global"`` per block; None = all global.
        sliding_window: w of the local layers (keys ``qa - w < k <= qa``); required when a layer is local.
        attention_sinks: the local layers also keep the first ``attention_sinks`` tokens (StreamingLLM's sink
            tokens, https://arxiv.org/abs/2309.17453): ``(sink(n) | sliding_window(w)) & causal()``. Their KV
            caches are then static (a ring buffer would drop the sink tokens). 0: none (Gemma).
        attn_softcap: attention-logit softcap (Gemma 2: 50; Gemma 3: None).
        final_softcap: final-logit softcap (Gemma 2: 30; Gemma 3: None).
        query_pre_attn_scalar: scores are scaled by ``query_pre_attn_scalar ** -0.5`` (None: D).
        rope_base: RoPE base of the global layers (Gemma 2: 10k; Gemma 3: 1M).
        rope_base_local: RoPE base of the local layers (Gemma 3: 10k, HF ``rope_local_base_freq``).
        rope_scaling: linear RoPE scaling factor of the global layers (HF ``rope_type="linear"``: inverse
            frequencies divided by it; Gemma 3 4B and larger: 8). The local layers are never scaled.
        qk_norm: RMSNorm (``1 + weight``) over each head's queries and keys before RoPE (Gemma 3).
        norm_eps: eps of every RMSNorm.
        activation: of the gated feed-forward (Gemma: ``"gelu_tanh"``, i.e. GEGLU).
        cond_dim: width C of an in-attention condition (https://arxiv.org/abs/2105.04090); None = none.
        cond_placement: ``"post_norm"`` (added after each sub-layer's norm, the article) or ``"pre_norm"``
            (added to each sub-layer's input before its norm, x-transformers' ``in_attn_cond``).
        max_seq_len: default length of a cache made by :meth:`DecoderLM.new_cache`.
    """

    vocab_size: int
    dim: int
    depth: int
    heads: int
    kv_heads: int
    head_dim: int
    hidden: int
    layer_types: Sequence[LayerType] | None = None
    sliding_window: int | None = None
    attention_sinks: int = 0
    attn_softcap: float | None = None
    final_softcap: float | None = None
    query_pre_attn_scalar: float | None = None
    rope_base: float = 10000.0
    rope_base_local: float = 10000.0
    rope_scaling: float = 1.0
    qk_norm: bool = False
    norm_eps: float = 1e-6
    activation: Activation = "gelu_tanh"
    cond_dim: int | None = None
    cond_placement: Placement = "post_norm"
    max_seq_len: int = 8192

    def __post_init__(self):
        for name in ("vocab_size", "dim", "depth", "heads", "kv_heads", "head_dim", "hidden", "max_seq_len"):
            _positive_int(name, getattr(self, name))
        if self.heads % self.kv_heads:
            raise ValueError(f"kv_heads: must divide heads={self.heads}, got {self.kv_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim: expected an even int (RoPE pairs features), got {self.head_dim}")
        types = ("global",) * self.depth if self.layer_types is None else tuple(self.layer_types)
        if len(types) != self.depth or any(t not in ("local", "global") for t in types):
            raise ValueError(f"layer_types: expected {self.depth} entries, each 'local' or 'global', got "
                             f"{self.layer_types!r}")
        self.layer_types = types
        if self.sliding_window is not None:
            _positive_int("sliding_window", self.sliding_window)
        elif "local" in types:
            raise ValueError("sliding_window: expected a positive int since layer_types has local layers, got None")
        if isinstance(self.attention_sinks, bool) or not isinstance(self.attention_sinks, int) \
                or self.attention_sinks < 0:
            raise ValueError(f"attention_sinks: expected an int >= 0, got {self.attention_sinks!r}")
        _positive_float("attn_softcap", self.attn_softcap, optional=True)
        _positive_float("final_softcap", self.final_softcap, optional=True)
        _positive_float("query_pre_attn_scalar", self.query_pre_attn_scalar, optional=True)
        for name in ("rope_base", "rope_base_local"):
            base = getattr(self, name)
            if isinstance(base, bool) or not isinstance(base, (int, float)) or not base > 1:
                raise ValueError(f"{name}: expected a number > 1, got {base!r}")
        _positive_float("rope_scaling", self.rope_scaling)
        _positive_float("norm_eps", self.norm_eps)
        if self.activation not in ("gelu_tanh", "gelu", "silu"):
            raise ValueError(f"activation: expected 'gelu_tanh', 'gelu' or 'silu', got {self.activation!r}")
        if self.cond_dim is not None:
            _positive_int("cond_dim", self.cond_dim)
        if self.cond_placement not in ("post_norm", "pre_norm"):
            raise ValueError(f"cond_placement: expected 'post_norm' or 'pre_norm', got {self.cond_placement!r}")

    @property
    def scale(self) -> float:
        """The attention score scale ``query_pre_attn_scalar ** -0.5`` (default ``D ** -0.5``)."""
        return (self.head_dim if self.query_pre_attn_scalar is None else self.query_pre_attn_scalar) ** -0.5

    @classmethod
    def preset(cls, name: str, **overrides) -> DecoderConfig:
        """The preset ``name`` from :data:`DECODER_PRESETS`, with ``overrides`` replacing fields.

        Raises:
            ValueError: unknown preset name or invalid override.
        """
        if name not in DECODER_PRESETS:
            raise ValueError(f"name: expected one of {sorted(DECODER_PRESETS)}, got {name!r}")
        return dataclasses.replace(DECODER_PRESETS[name], **overrides)


DECODER_PRESETS: dict[str, DecoderConfig] = {
    # google/gemma-2-2b config.json (HF model card; also transformers' Gemma2Config defaults)
    "gemma2-2b": DecoderConfig(vocab_size=256000, dim=2304, depth=26, heads=8, kv_heads=4, head_dim=256, hidden=9216,
                               layer_types=gemma2_layer_types(26), sliding_window=4096, attn_softcap=50.0,
                               final_softcap=30.0, query_pre_attn_scalar=256, max_seq_len=8192),
    # google/gemma-2-9b config.json (HF model card)
    "gemma2-9b": DecoderConfig(vocab_size=256000, dim=3584, depth=42, heads=16, kv_heads=8, head_dim=256,
                               hidden=14336, layer_types=gemma2_layer_types(42), sliding_window=4096,
                               attn_softcap=50.0, final_softcap=30.0, query_pre_attn_scalar=256, max_seq_len=8192),
    # google/gemma-3-1b-pt config.json (HF model card): rope_theta 1M, rope_local_base_freq 10k, no rope scaling
    "gemma3-1b": DecoderConfig(vocab_size=262144, dim=1152, depth=26, heads=4, kv_heads=1, head_dim=256, hidden=6912,
                               layer_types=gemma3_layer_types(26), sliding_window=512, query_pre_attn_scalar=256,
                               rope_base=1e6, rope_base_local=1e4, qk_norm=True, max_seq_len=32768),
    # google/gemma-3-4b-pt config.json, text_config (HF model card): linear rope scaling 8 on global layers
    "gemma3-4b": DecoderConfig(vocab_size=262208, dim=2560, depth=34, heads=8, kv_heads=4, head_dim=256,
                               hidden=10240, layer_types=gemma3_layer_types(34), sliding_window=1024,
                               query_pre_attn_scalar=256, rope_base=1e6, rope_base_local=1e4, rope_scaling=8.0,
                               qk_norm=True, max_seq_len=131072),
    # tests: Gemma 2 features at toy size (window smaller than test sequences)
    "tiny-gemma2": DecoderConfig(vocab_size=128, dim=64, depth=4, heads=4, kv_heads=2, head_dim=16, hidden=128,
                                 layer_types=gemma2_layer_types(4), sliding_window=8, attn_softcap=50.0,
                                 final_softcap=30.0, query_pre_attn_scalar=16, max_seq_len=256),
    # tests: Gemma 3 features at toy size (5 local + 1 global)
    "tiny-gemma3": DecoderConfig(vocab_size=128, dim=64, depth=6, heads=4, kv_heads=2, head_dim=16, hidden=128,
                                 layer_types=gemma3_layer_types(6), sliding_window=8, query_pre_attn_scalar=16,
                                 rope_base=1e6, rope_base_local=1e4, rope_scaling=8.0, qk_norm=True, max_seq_len=256),
}


def _rotary(head_dim: int, base: float, scaling: float) -> RotaryEmbedding:
    rope = RotaryEmbedding(head_dim, base)
    if scaling != 1.0:
        rope.inv_freq.div_(scaling)  # HF "linear" rope: inv_freq / factor, in float32
    return rope


class DecoderBlock(nn.Module):
    """One Gemma block: pre- and post-norm around attention and around the gated MLP (4 RMSNorms).

    Args:
        config: the model's :class:`DecoderConfig`.
        layer_type: ``"local"`` (``causal() & sliding_window(w)``) or ``"global"`` (``causal()``).
    """

    def __init__(self, config: DecoderConfig, layer_type: LayerType):
        super().__init__()
        c = config
        self.layer_type = layer_type
        self.window = c.sliding_window if layer_type == "local" else None
        if self.window is None:
            self.mask = M.causal()
        elif c.attention_sinks:
            self.mask = (M.sink(c.attention_sinks) | M.sliding_window(self.window)) & M.causal()
        else:
            self.mask = M.causal() & M.sliding_window(self.window)
        # the KV cache's ring size: None (static) for global layers and for local layers with sinks
        self.cache_window = self.window if not c.attention_sinks else None

        def norm() -> RMSNorm:
            return RMSNorm(c.dim, c.norm_eps, unit_offset=True)

        self.attn_norm, self.attn_post_norm, self.mlp_norm, self.mlp_post_norm = norm(), norm(), norm(), norm()
        self.attn = Attention(c.dim, c.heads, c.kv_heads, c.head_dim, qk_norm="head" if c.qk_norm else None,
                              qk_norm_eps=c.norm_eps, qk_norm_unit_offset=True, scale=c.scale, softcap=c.attn_softcap)
        self.mlp = GatedMLP(c.dim, c.hidden, activation=c.activation)

    def forward(self, x: Tensor, rope: RopeTable, key_valid: Tensor | None = None, cache: KVCache | None = None,
                cond: tuple[InAttentionCondition, Tensor] | None = None) -> Tensor:
        """``x`` ``[B, L, E]`` -> ``[B, L, E]``.

        Args:
            x: the residual stream.
            rope: the RoPE table of these L tokens for this layer type.
            key_valid: bool ``[B, L]``, False for padding tokens (never attended).
            cache: this layer's :class:`KVCache` (its window must be this layer's).
            cond: (the model's :class:`InAttentionCondition`, the projected condition ``[B, 1, E]``), added to
                the input of both sub-layers (never to the residual stream).
        """
        h = self.attn_norm(x) if cond is None else cond[0](x, cond[1], self.attn_norm)
        x = x + self.attn_post_norm(self.attn(h, self.mask, cache=cache, rope=rope, key_valid=key_valid))
        h = self.mlp_norm(x) if cond is None else cond[0](x, cond[1], self.mlp_norm)
        return x + self.mlp_post_norm(self.mlp(h))


class LMCache(nn.Module):
    """The KV caches of every layer (ring buffers of ``window`` slots for local layers, static for global ones)
    and each sample's next RoPE position.

    Made by :meth:`DecoderLM.new_cache`. The local layers' buffers do not grow with ``max_len``.
    """

    def __init__(self, layers: Sequence[KVCache], batch: int, device: torch.device | str | None = None):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.register_buffer("next_position", torch.zeros(batch, dtype=torch.long, device=device), persistent=False)

    @property
    def length(self) -> int:
        """Tokens written so far (padding included)."""
        return self.layers[0].length

    @property
    def fixed_shapes(self) -> bool:
        """Every layer keeps the same shapes at every step (``new_cache(..., fixed_shapes=True)``)."""
        return all(layer.fixed_shapes for layer in self.layers)

    def reset(self) -> None:
        """Forget every token (buffers are kept)."""
        for layer in self.layers:
            layer.reset()
        self.next_position.zero_()

    def nbytes(self, kind: Literal["local", "global", "all"] = "all") -> int:
        """Bytes of the key/value buffers of the local (ring), global (static) or all layers."""
        total = 0
        for layer in self.layers:
            if kind == "all" or (kind == "local") == layer.is_ring:
                total += layer.k.numel() * layer.k.element_size() + layer.v.numel() * layer.v.element_size()
        return total


class DecoderLM(SequenceParallelModel, nn.Module):
    """Decoder-only language model (Gemma 2 / Gemma 3 architecture) with tied, ``sqrt(E)``-scaled embeddings.

    Args:
        config: a :class:`DecoderConfig` (see :data:`DECODER_PRESETS`).
    """

    def __init__(self, config: DecoderConfig):
        super().__init__()
        if not isinstance(config, DecoderConfig):
            raise TypeError(f"config: expected a DecoderConfig, got {type(config).__name__}")
        self.config = c = config
        self.embed = nn.Embedding(c.vocab_size, c.dim)
        self.layers = nn.ModuleList(DecoderBlock(c, t) for t in c.layer_types)
        self.norm = RMSNorm(c.dim, c.norm_eps, unit_offset=True)
        self.rope = nn.ModuleDict({"global": _rotary(c.head_dim, c.rope_base, c.rope_scaling),
                                   "local": _rotary(c.head_dim, c.rope_base_local, 1.0)})
        self.cond = None if c.cond_dim is None else InAttentionCondition(c.dim, c.cond_dim, c.cond_placement)
        nn.init.normal_(self.embed.weight, std=0.02)
        same = c.rope_base == c.rope_base_local and c.rope_scaling == 1.0
        # the RoPE table each layer type reads (its own, or the global one when the two are equal: Gemma 2)
        self._rope_sources = {t: "global" if same else t for t in sorted(set(c.layer_types), key="global".__ne__)}
        self._normalizers: dict[torch.dtype, float] = {}

    def _apply(self, fn, recurse=True):
        # RoPE frequencies stay float32 whatever dtype the model is cast to (``.to(torch.bfloat16)`` would round
        # them and shift every angle); HF computes its inv_freq in float32 too.
        super()._apply(fn, recurse)
        c = self.config
        for name, (base, scaling) in (("global", (c.rope_base, c.rope_scaling)), ("local", (c.rope_base_local, 1.0))):
            old = self.rope[name].inv_freq
            if old.dtype != torch.float32:
                self.rope[name].inv_freq = _rotary(c.head_dim, base, scaling).inv_freq.to(old.device)
        return self

    @classmethod
    def from_transformers(cls, model: nn.Module) -> DecoderLM:
        """A DecoderLM with the weights of a Hugging Face ``Gemma2ForCausalLM`` or ``Gemma3ForCausalLM``.

        See :func:`veil.models.convert_hf.from_transformers`.
        """
        from veil.models.convert_hf import from_transformers

        return from_transformers(model)

    # --- forward -------------------------------------------------------------------------------------------

    def _valid(self, input_ids: Tensor, attention_mask: Tensor | None) -> Tensor | None:
        if not isinstance(input_ids, torch.Tensor) or input_ids.dtype not in (torch.int32, torch.int64) \
                or input_ids.dim() != 2:
            got = f"{input_ids.dtype} {list(input_ids.shape)}" if isinstance(input_ids, torch.Tensor) else \
                type(input_ids).__name__
            raise ValueError(f"input_ids: expected an int tensor [B, L], got {got}")
        if attention_mask is None:
            return None
        if not isinstance(attention_mask, torch.Tensor) or tuple(attention_mask.shape) != tuple(input_ids.shape):
            got = list(attention_mask.shape) if isinstance(attention_mask, torch.Tensor) else type(attention_mask)
            raise ValueError(f"attention_mask: expected [B, L] = {list(input_ids.shape)} (1 = token, 0 = padding), "
                             f"got {got}")
        valid = attention_mask.to(device=input_ids.device, dtype=torch.bool)
        if torch.compiler.is_compiling():
            return valid  # asking whether every token is valid would read the mask back to the host
        return None if bool(valid.all()) else valid

    def _normalizer(self, dtype: torch.dtype) -> float:
        # HF multiplies by sqrt(E) as a tensor in the model dtype (bf16: sqrt(3072) -> 55.5); the same value as a
        # Python float gives the same product without building a tensor per call
        if dtype not in self._normalizers:
            self._normalizers[dtype] = float(torch.tensor(math.sqrt(self.config.dim), dtype=dtype))
        return self._normalizers[dtype]

    def _positions(self, valid: Tensor | None, n: int, cache: LMCache | None, device: torch.device) -> Tensor:
        # each sample's positions count its real tokens only: left padding does not shift RoPE
        if valid is None and n == 1 and cache is not None:
            return cache.next_position[:, None]  # (B, 1): a decode step
        if valid is None:
            rel = torch.arange(n, device=device)[None]  # (1, L)
        else:
            rel = (valid.long().cumsum(dim=1) - 1).clamp(min=0)  # (B, L)
        if cache is None:
            return rel if valid is not None else rel[0]
        return cache.next_position[:, None] + rel  # (B, L)

    # --- sequence parallelism (enable_sequence_parallel: SequenceParallelModel) ------------------------------
    # A forward without a cache runs every attention sequence-parallel (the logits are computed per shard and
    # gathered); a prefill into a cache shards the queries and gathers each layer's keys and values, so every
    # rank's cache holds the whole prompt; decoding steps (one token) run whole on every rank.
    def _sequence_parallel_heads(self) -> int:
        return self.config.heads

    def hidden_states(self, input_ids: Tensor, attention_mask: Tensor | None = None, *, cache: LMCache | None = None,
                      in_attn_cond: Tensor | None = None, gather: bool = True) -> Tensor:
        """Hidden states after the final norm.

        Args:
            input_ids: int ``[B, L]``.
            attention_mask: ``[B, L]``, 1/True = a token, 0/False = padding (never attended). With a cache the
                padding must be on the left of the first call (batched generation).
            cache: an :class:`LMCache` from :meth:`new_cache`; these L tokens are appended to it and attend to
                everything cached before them (prefill: many tokens; decode: one).
            in_attn_cond: the condition ``[B, C]`` when ``config.cond_dim`` is set.
            gather: under sequence parallelism, False returns this rank's rows ``[B, n, E]``.

        Returns:
            ``[B, L, E]``.

        Raises:
            ValueError: bad shapes, a missing or unexpected condition, or a cache of another batch size.
        """
        valid = self._valid(input_ids, attention_mask)
        bsz, n = input_ids.shape
        if cache is not None and (not isinstance(cache, LMCache) or len(cache.layers) != len(self.layers)
                                  or cache.next_position.shape[0] != bsz):
            raise ValueError(f"cache: expected an LMCache from new_cache(batch={bsz}), got {type(cache).__name__}")
        cond = None
        if self.cond is not None:
            if in_attn_cond is None:
                raise ValueError(f"in_attn_cond: expected [B, {self.config.cond_dim}] (config.cond_dim is set), "
                                 "got None")
            cond = (self.cond, self.cond.project(in_attn_cond))  # (B, 1, E)
        elif in_attn_cond is not None:
            raise ValueError("in_attn_cond: this model has no condition (config.cond_dim is None), got a tensor")
        x = self.embed(input_ids)
        x = x * self._normalizer(x.dtype)
        positions = self._positions(valid, n, cache, input_ids.device)
        # a decoding step (one token) runs whole on every rank; longer calls are split across the group
        sp = self.sequence_parallel if n > 1 else None
        if sp is not None:
            x, positions = sp.shard(x, 1), sp.shard(positions, positions.dim() - 1)  # this rank's tokens
        elif self.sequence_parallel is not None:
            use_sequence_parallel(self, None)
        tables = {}
        for kind, source in self._rope_sources.items():  # Gemma 2: one table serves both layer types
            tables[kind] = tables[source] if source in tables else self.rope[source](positions, dtype=x.dtype)
        caches = [None] * len(self.layers) if cache is None else cache.layers
        try:
            for layer, layer_cache in zip(self.layers, caches):
                x = layer(x, tables[layer.layer_type], valid, layer_cache, cond)
        finally:
            if sp is None and self.sequence_parallel is not None:
                use_sequence_parallel(self, self.sequence_parallel)
        if cache is not None:
            cache.next_position += n if valid is None else valid.sum(dim=1)
        h = self.norm(x)
        return sp.gather(h, n, dim=1) if sp is not None and gather else h

    def logits(self, hidden: Tensor) -> Tensor:
        """Tied output projection and final softcap: ``[..., E]`` -> ``[..., V]``."""
        out = nn.functional.linear(hidden, self.embed.weight)
        cap = self.config.final_softcap
        return out if cap is None else torch.tanh(out / cap) * cap

    @property
    def _is_compiled(self) -> bool:
        """Compiled with ``model.compile()`` (``nn.Module`` then calls its compiled graph)."""
        return getattr(self, "_compiled_call_impl", None) is not None

    def __call__(self, *args, **kwargs):
        """``nn.Module.__call__``, with one detour: a model compiled with ``model.compile()`` runs this call eagerly
        (hooks included), with a warning, when gradients are enabled for its parameters and the call writes a
        fixed-shape cache (``new_cache(..., fixed_shapes=True)``). Such a cache is updated in place, and AOT
        autograd cannot replay in-place writes of values with autograd history into a graph's inputs (PyTorch
        2.13 fails with a size mismatch in its mutation epilogue); eagerly the call is exact and differentiable.
        ``generate``, ``prefill`` and ``decode_step`` run without gradients and are unaffected."""
        if (self._is_compiled and torch.is_grad_enabled()
                and isinstance(kwargs.get("cache"), LMCache) and kwargs["cache"].fixed_shapes
                and any(p.requires_grad for p in self.parameters())):
            if not self.__dict__.get("_warned_grad_cache"):
                self.__dict__["_warned_grad_cache"] = True
                warnings.warn("cache: a compiled DecoderLM called with gradients on a fixed-shape cache runs eagerly "
                              "(its in-place cache writes cannot be compiled with autograd); call it under "
                              "torch.no_grad() or torch.inference_mode() to run the compiled graph",
                              RuntimeWarning, stacklevel=2)
            return self._call_impl(*args, **kwargs)
        return super().__call__(*args, **kwargs)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, *, cache: LMCache | None = None,
                in_attn_cond: Tensor | None = None, return_only_embed: bool = False,
                last_only: bool = False) -> Tensor:
        """Logits ``[B, L, V]``, or the hidden states ``[B, L, E]`` after the final norm with
        ``return_only_embed=True``; with ``last_only=True`` only the last position's logits ``[B, V]`` (prefill and
        decoding steps). Other arguments as :meth:`hidden_states`."""
        if last_only:
            h = self.hidden_states(input_ids, attention_mask, cache=cache, in_attn_cond=in_attn_cond)
            return self.logits(h[:, -1])
        sp = self.sequence_parallel if input_ids.shape[-1] > 1 else None
        # under sequence parallelism the logits are computed on this rank's rows and gathered: every weight's
        # gradient is then this rank's tokens' share (see veil.distributed.parallel)
        h = self.hidden_states(input_ids, attention_mask, cache=cache, in_attn_cond=in_attn_cond,
                               gather=return_only_embed or sp is None)
        if return_only_embed:
            return h
        out = self.logits(h)
        return sp.gather(out, input_ids.shape[-1], dim=1) if sp is not None else out

    # --- cached decoding -------------------------------------------------------------------------------------

    def new_cache(self, batch: int, max_len: int | None = None, *, dtype: torch.dtype | None = None,
                  device: torch.device | str | None = None, fixed_shapes: bool = False) -> LMCache:
        """An empty :class:`LMCache`: ``window`` slots per local layer, ``max_len`` per global layer.

        Args:
            batch: B.
            max_len: the most tokens (prompt, padding included, plus new ones); default ``config.max_seq_len``.
            dtype, device: of the buffers (default: the model's).
            fixed_shapes: every step sees the same shapes (:class:`veil.layers.KVCache`'s ``fixed_shapes``): what
                a compiled model decodes with.
        """
        c = self.config
        max_len = c.max_seq_len if max_len is None else max_len
        p = self.embed.weight
        dtype, device = dtype or p.dtype, device or p.device
        layers = [KVCache(batch, c.kv_heads, c.head_dim, max_len, window=layer.cache_window, dtype=dtype, device=device,
                          fixed_shapes=fixed_shapes) for layer in self.layers]
        return LMCache(layers, batch, device)

    @torch.no_grad()
    def prefill(self, input_ids: Tensor, attention_mask: Tensor | None, cache: LMCache,
                in_attn_cond: Tensor | None = None, *, chunk_size: int | None = None) -> Tensor:
        """Run the prompt through the model into ``cache``; returns the last position's logits ``[B, V]``.

        Args:
            input_ids, attention_mask, cache, in_attn_cond: as :meth:`hidden_states`.
            chunk_size: feed the prompt ``chunk_size`` tokens at a time (None: all at once). Exact, not an
                approximation: each chunk attends to the cache's view (the previous tokens a layer keeps, then
                the chunk), and masks align bottom-right, so every query sees the keys it would see in one pass.
                Activations and the local layers' score tiles then scale with the chunk, not the prompt.

        Raises:
            ValueError: ``chunk_size`` is not a positive int, or as :meth:`hidden_states`.
        """
        call = self._prefill_call(input_ids)
        if chunk_size is None:
            return call(input_ids, attention_mask, cache=cache, in_attn_cond=in_attn_cond, last_only=True)
        _positive_int("chunk_size", chunk_size)
        self._valid(input_ids, attention_mask)  # the whole prompt's shapes, before any chunk enters the cache
        for s in range(0, input_ids.shape[1], chunk_size) or [0]:
            part = None if attention_mask is None else attention_mask[:, s:s + chunk_size]
            out = call(input_ids[:, s:s + chunk_size], part, cache=cache, in_attn_cond=in_attn_cond, last_only=True)
        return out

    def _prefill_call(self, input_ids: Tensor):
        """The module call a prefill runs: the compiled graph of a model compiled with ``model.compile()``, except
        a prompt of several tokens on CPU, which runs eagerly (hooks included). Inside a compiled graph the
        fixed-shape cache's masks are evaluated at explicit positions and the ``tiles`` backend, whose sliding
        windows skip the masked blocks, is eager-only, so the local layers attend densely: an 8192-token prefill of a
        4-layer Gemma 3 model took 6.5 s compiled against 2.1 s eager on 2 CPU cores (docs/benchmarks.md). The
        decoding steps still run compiled. Call the model itself (``model(ids, cache=cache, last_only=True)``) to
        run a compiled prefill anyway."""
        if (self._is_compiled and input_ids.device.type == "cpu"
                and input_ids.dim() == 2 and input_ids.shape[1] > 1):
            return self._call_impl
        return self

    @torch.no_grad()
    def decode_step(self, tokens: Tensor, cache: LMCache, in_attn_cond: Tensor | None = None) -> Tensor:
        """Append one token per sample (int ``[B]``) to ``cache``; returns its logits ``[B, V]``."""
        return self(tokens[:, None], cache=cache, in_attn_cond=in_attn_cond, last_only=True)

    def generate(self, input_ids: Tensor, attention_mask: Tensor | None = None, *, max_new_tokens: int = 32,
                 do_sample: bool = False, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, generator: torch.Generator | None = None, seed: int | None = None,
                 eos_token_id: int | None = None, pad_token_id: int = 0,
                 in_attn_cond: Tensor | None = None) -> Tensor:
        """Extend each prompt by up to ``max_new_tokens`` tokens: a prefill, then one cached step per token.

        Args:
            input_ids: int ``[B, L]``, prompts left-padded to a common length.
            attention_mask: ``[B, L]``, 0 on the left padding (None: no padding).
            max_new_tokens: tokens to add.
            do_sample: sample (with ``temperature``, ``top_k``, ``top_p``; see :mod:`veil.models.sampling`)
                instead of greedy argmax.
            generator: random generator for sampling; or ``seed`` to make one.
            eos_token_id: a sample that produced it gets ``pad_token_id`` afterwards (and is fed it); generation
                stops when every sample has.
            pad_token_id: a token id of the vocabulary.
            in_attn_cond: the condition ``[B, C]`` when ``config.cond_dim`` is set.

        Returns:
            int64 ``[B, L + T]``: the prompts followed by ``T <= max_new_tokens`` new tokens.

        Raises:
            ValueError: bad arguments, or padding that is not on the left.

        The loop runs under ``torch.inference_mode()`` (no view or version-counter bookkeeping per op; measured
        x1.17-1.19 on small models against ``no_grad``); the result is returned as a normal tensor.
        """
        with torch.inference_mode():
            out = self._generate(input_ids, attention_mask, max_new_tokens, do_sample, temperature, top_k, top_p,
                                 generator, seed, eos_token_id, pad_token_id, in_attn_cond)
        return out.clone()  # outside inference mode: a tensor the caller may update in place

    def _generation_cache(self, batch: int, need: int) -> LMCache:
        """A new cache; for a compiled model (``model.compile()``) a fixed-shape one, reused between calls and
        sized up to a multiple of 256 slots, so that later calls do not recompile for a new cache object or size.
        A new batch size makes a new cache, and so its own decoding graph (and prefill graph, off CPU): dynamo's
        recompile limit (8 compiles of the forward by default) lets one compiled model serve about four batch sizes
        off CPU and about eight on CPU."""
        if not self._is_compiled:
            return self.new_cache(batch, need)
        size = min(self.config.max_seq_len, -(-need // 256) * 256) if need <= self.config.max_seq_len else need
        p = self.embed.weight
        key = (batch, size, p.dtype, p.device)
        kept = self.__dict__.get("_kept_cache")
        if kept is None or kept[0] != key:
            kept = (key, self.new_cache(batch, size, fixed_shapes=True))
            self.__dict__["_kept_cache"] = kept  # not a submodule: not in state_dict or .to() twice
        kept[1].reset()
        return kept[1]

    def _generate(self, input_ids, attention_mask, max_new_tokens, do_sample, temperature, top_k, top_p, generator,
                  seed, eos_token_id, pad_token_id, in_attn_cond) -> Tensor:
        _positive_int("max_new_tokens", max_new_tokens)
        check_sampling(temperature, top_k, top_p)
        if isinstance(pad_token_id, bool) or not isinstance(pad_token_id, int) \
                or not 0 <= pad_token_id < self.config.vocab_size:
            raise ValueError(f"pad_token_id: expected a token id in [0, {self.config.vocab_size}), got "
                             f"{pad_token_id!r}")
        valid = self._valid(input_ids, attention_mask)
        if valid is not None and bool((valid[:, 1:] < valid[:, :-1]).any()):
            raise ValueError("attention_mask: expected left padding (zeros, then ones, in every row), got a 0 after "
                             "a 1")
        if generator is None and seed is not None:
            generator = torch.Generator(device=input_ids.device).manual_seed(seed)
        bsz, n = input_ids.shape
        compiled = self._is_compiled
        cache = self._generation_cache(bsz, n + max_new_tokens)
        logits = self.prefill(input_ids, attention_mask, cache, in_attn_cond)
        done = torch.zeros(bsz, dtype=torch.bool, device=input_ids.device)
        out = [input_ids.long()]
        for step in range(max_new_tokens):
            tok = next_token(logits, do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p,
                             generator=generator)
            tok = torch.where(done, torch.full_like(tok, pad_token_id), tok)
            out.append(tok[:, None])
            if eos_token_id is not None:
                done |= tok == eos_token_id
                if bool(done.all()):
                    break
            if step + 1 < max_new_tokens:
                with self.warm_stance(compiled and step > 0):
                    logits = self.decode_step(tok, cache, in_attn_cond)
        return torch.cat(out, dim=1)

    @staticmethod
    def warm_stance(warm: bool = True):
        """For a compiled model's decoding steps after the first: evaluate only the guards that tell its cached
        graphs apart (``torch.compiler.set_stance(skip_guard_eval_unsafe=True)``).

        Every step has the shapes, dtypes, cache object and module state of the first one, which ran (and
        compiled if needed) under the default stance, so its graph's guards pass at each later step; evaluating
        them all is ~9% of a step at 8k context. A new batch size or cache recompiles at that first step."""
        return torch.compiler.set_stance("default", skip_guard_eval_unsafe=True) if warm else nullcontext()
