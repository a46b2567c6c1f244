"""Attention modules: self-attention (GQA, QK-norm, RoPE, KV cache) and cross-attention with per-sample context lengths.

Legend: B batch, L query tokens, S context tokens, K keys, N query heads, Nkv key/value heads, D head dim,
E model width (``dim``).

Both modules call :func:`veil.attend`; none computes a softmax. Masks are :mod:`veil.masks` predicates
(True = may attend), aligned bottom-right when the key length exceeds the query length.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from veil import masks as M
from veil.attention import attend
from veil.distributed import SequenceParallel
from veil.layers.cache import KVCache
from veil.layers.norms import QKNorm
from veil.layers.positions import RopeTable, RotaryEmbedding

Tensor = torch.Tensor
QKNormMode = Literal["head", "full"]


def _check_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected a positive int, got {value!r}")
    return value


def _check_x(name: str, x: object, dim: int) -> Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a tensor [B, L, {dim}], got {type(x).__name__}")
    if x.dim() != 3 or x.shape[-1] != dim:
        raise ValueError(f"{name}: expected [B, L, {dim}], got {list(x.shape)}")
    return x


def _and(mask: M.Mask | None, other: M.Mask) -> M.Mask:
    return other if mask is None else mask & other


class _Projections(nn.Module):
    """Shared parts of both modules: head bookkeeping, QK-norm, output projection, the attend call."""

    def __init__(self, dim: int, heads: int, kv_heads: int | None, head_dim: int | None, qk_norm: QKNormMode | None,
                 qk_norm_eps: float, qk_norm_unit_offset: bool, scale: float | None, softcap: float | None,
                 backend: str):
        super().__init__()
        self.dim = _check_int("dim", dim)
        self.heads = _check_int("heads", heads)
        self.kv_heads = heads if kv_heads is None else _check_int("kv_heads", kv_heads)
        if self.heads % self.kv_heads:
            raise ValueError(f"kv_heads: must divide heads={heads}, got {kv_heads}")
        if head_dim is None and dim % heads:
            raise ValueError(f"head_dim: dim={dim} is not divisible by heads={heads}; pass head_dim explicitly")
        self.head_dim = dim // heads if head_dim is None else _check_int("head_dim", head_dim)
        if qk_norm not in (None, "head", "full"):
            raise ValueError(f"qk_norm: expected None, 'head' or 'full', got {qk_norm!r}")
        self.scale = scale
        self.softcap = softcap
        self.backend = backend
        d = self.head_dim
        if qk_norm == "head":
            self.qk_norm: QKNorm | None = QKNorm(d, d, "head", qk_norm_eps, unit_offset=qk_norm_unit_offset)
        elif qk_norm == "full":
            self.qk_norm = QKNorm(self.heads * d, self.kv_heads * d, "full", qk_norm_eps,
                                  unit_offset=qk_norm_unit_offset)
        else:
            self.qk_norm = None

    def _heads(self, q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Projected ``[B, L, N*D]`` / ``[B, S, Nkv*D]`` -> normalised ``[B, N, L, D]`` / ``[B, Nkv, S, D]``."""
        if self.qk_norm is not None and self.qk_norm.mode == "full":
            q, k = self.qk_norm(q, k)
        q = q.unflatten(-1, (self.heads, self.head_dim))  # (B, L, N, D)
        k = k.unflatten(-1, (self.kv_heads, self.head_dim))  # (B, S, Nkv, D)
        v = v.unflatten(-1, (self.kv_heads, self.head_dim))
        if self.qk_norm is not None and self.qk_norm.mode == "head":
            q, k = self.qk_norm(q, k)
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, N, L, D), (B, Nkv, S, D)

    #: set by a model's ``enable_sequence_parallel``: the queries (and, for self-attention, the keys) are this
    #: rank's shard of the sequence and the masks are global (see :mod:`veil.distributed`)
    sequence_parallel: SequenceParallel | None = None
    _kv_sharded = True

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, mask: M.Mask | None, kv_sharded: bool | None = None) -> Tensor:
        if self.sequence_parallel is not None:
            kv_sharded = self._kv_sharded if kv_sharded is None else kv_sharded
            out = self.sequence_parallel.attend(q, k, v, mask, kv_sharded=kv_sharded, scale=self.scale,
                                                softcap=self.softcap, backend=self.backend)
        else:
            out = attend(q, k, v, mask, scale=self.scale, softcap=self.softcap, backend=self.backend)  # (B, N, L, D)
        return out.transpose(1, 2).flatten(2)  # (B, L, N*D)


class Attention(_Projections):
    """Multi-head self-attention with grouped-query heads, optional QK-norm, RoPE and a KV cache.

    Args:
        dim: model width E.
        heads: query heads N.
        kv_heads: key/value heads Nkv (divides N; default N; 1 = multi-query).
        head_dim: D (default ``dim // heads``; Gemma sets it independently).
        qk_norm: None, ``"head"`` (RMSNorm over each head's D, Gemma 3) or ``"full"`` (RMSNorm over the whole
            ``N * D`` projection before the split into heads, Wan 2.x).
        qk_norm_eps: eps of the QK RMSNorms.
        qk_norm_unit_offset: Gemma's ``1 + weight`` in the QK RMSNorms.
        bias: biases on the q/k/v projections (Wan: True; Gemma: False).
        out_bias: bias on the output projection (default ``bias``).
        scale: score scale (default ``1/sqrt(D)``; Gemma: ``query_pre_attn_scalar ** -0.5``).
        softcap: attention-logit softcap (Gemma 2: 50).
        backend: :func:`veil.attend` backend (``"auto"`` by default).
    """

    def __init__(self, dim: int, heads: int, kv_heads: int | None = None, head_dim: int | None = None, *,
                 qk_norm: QKNormMode | None = None, qk_norm_eps: float = 1e-6, qk_norm_unit_offset: bool = False,
                 bias: bool = False, out_bias: bool | None = None, scale: float | None = None,
                 softcap: float | None = None, backend: str = "auto"):
        super().__init__(dim, heads, kv_heads, head_dim, qk_norm, qk_norm_eps, qk_norm_unit_offset, scale, softcap,
                         backend)
        d = self.head_dim
        self.q_proj = nn.Linear(dim, self.heads * d, bias=bias)
        self.k_proj = nn.Linear(dim, self.kv_heads * d, bias=bias)
        self.v_proj = nn.Linear(dim, self.kv_heads * d, bias=bias)
        self.o_proj = nn.Linear(self.heads * d, dim, bias=bias if out_bias is None else out_bias)

    def forward(self, x: Tensor, mask: M.Mask | None = None, positions: Tensor | None = None,
                cache: KVCache | None = None, rope: RotaryEmbedding | RopeTable | None = None,
                key_valid: Tensor | None = None) -> Tensor:
        """Self-attention of ``x`` under ``mask``.

        Args:
            x: ``[B, L, E]``.
            mask: a :class:`veil.masks.Mask` over (the L queries, the keys attended): without a cache the
                keys are ``x``'s own tokens; with one they are the cache's view (chronological, the new tokens
                last), so ``causal()`` / ``sliding_window(w)`` stay exact (bottom-right alignment).
            positions: int ``[L]`` or ``[B, L]`` positions for a :class:`RotaryEmbedding` (default:
                ``cache.next_positions(L)``, or ``arange(L)`` without a cache). Ignored for a RopeTable.
            cache: a :class:`KVCache`; the new keys/values (after RoPE) are appended to it.
            rope: None, a :class:`RotaryEmbedding` (evaluated at ``positions``) or a precomputed
                :class:`RopeTable` for these L tokens (e.g. :class:`~veil.layers.positions.Rope3D`).
            key_valid: bool ``[B, L]``, False for padding tokens, which are then never attended (left padding in
                batched generation); stored in the cache when there is one.

        Returns:
            ``[B, L, E]``.
        """
        _check_x("x", x, self.dim)
        bsz, n, _ = x.shape
        q, k, v = self._heads(self.q_proj(x), self.k_proj(x), self.v_proj(x))  # (B, N, L, D), (B, Nkv, L, D)
        if rope is not None:
            table = rope
            if isinstance(rope, RotaryEmbedding):
                if positions is None:
                    positions = cache.next_positions(n) if cache is not None else torch.arange(n, device=x.device)
                table = rope(positions, dtype=q.dtype)
            elif not isinstance(rope, RopeTable):
                raise TypeError(f"rope: expected a RotaryEmbedding, a RopeTable or None, got {type(rope).__name__}")
            q, k = table.apply(q), table.apply(k)
        sp = self.sequence_parallel
        kv_sharded = None
        if cache is not None:
            if sp is not None:
                # sequence-parallel prefill: the cache keeps every token, so each rank gathers the chunk's keys
                # and values (one collective for both) and attends its queries to the whole cache view
                kv = sp.gather(torch.cat([k, v], dim=-1), dim=2)  # (B, Nkv, L, 2D)
                k, v = kv.split([k.shape[-1], v.shape[-1]], dim=-1)
                kv_sharded = False
            view = cache.update(k, v, key_valid)
            k, v = view.k.to(q.dtype), view.v.to(q.dtype)  # (B, Nkv, K, D)
            if view.query_positions is not None:  # a fixed-shape cache: keys in slot order, some slots empty
                mask = M.at_positions(mask, view.query_positions, view.positions) & M.key_mask(view.valid)
            elif view.has_padding:
                mask = _and(mask, M.key_mask(view.valid))
        elif key_valid is not None:
            # under sequence parallelism key_valid covers the whole sequence (the mask is global)
            if key_valid.dtype != torch.bool or key_valid.dim() != 2 or key_valid.shape[0] != bsz or (
                    sp is None and key_valid.shape[1] != n):
                raise ValueError(f"key_valid: expected a bool tensor [B, L] = [{bsz}, {n}], got "
                                 f"{key_valid.dtype} {list(key_valid.shape)}")
            mask = _and(mask, M.key_mask(key_valid))
        return self.o_proj(self._attend(q, k, v, mask, kv_sharded))


class CrossAttention(_Projections):
    """Cross-attention: queries from ``x``, keys and values from a padded batch of contexts.

    Contract: padded context tokens are never attended; each sample's result equals its result with its own
    context alone, unpadded; a sample with no context token gets exactly 0 (the output bias is not added
    either: cross-attention to nothing contributes nothing).

    Args:
        dim: model width E (queries and output).
        context_dim: context width (default ``dim``).
        heads, kv_heads, head_dim, qk_norm, qk_norm_eps, qk_norm_unit_offset, bias, out_bias, scale, softcap,
        backend: as :class:`Attention`.
    """

    _kv_sharded = False  # the context is whole on every rank under sequence parallelism

    def __init__(self, dim: int, context_dim: int | None = None, heads: int = 8, kv_heads: int | None = None,
                 head_dim: int | None = None, *, qk_norm: QKNormMode | None = None, qk_norm_eps: float = 1e-6,
                 qk_norm_unit_offset: bool = False, bias: bool = False, out_bias: bool | None = None,
                 scale: float | None = None, softcap: float | None = None, backend: str = "auto"):
        super().__init__(dim, heads, kv_heads, head_dim, qk_norm, qk_norm_eps, qk_norm_unit_offset, scale, softcap,
                         backend)
        self.context_dim = dim if context_dim is None else _check_int("context_dim", context_dim)
        d = self.head_dim
        self.q_proj = nn.Linear(dim, self.heads * d, bias=bias)
        self.k_proj = nn.Linear(self.context_dim, self.kv_heads * d, bias=bias)
        self.v_proj = nn.Linear(self.context_dim, self.kv_heads * d, bias=bias)
        self.o_proj = nn.Linear(self.heads * d, dim, bias=bias if out_bias is None else out_bias)

    def forward(self, x: Tensor, context: Tensor, context_lengths: Tensor | None = None,
                context_mask: Tensor | None = None) -> Tensor:
        """Attend from ``x`` to ``context``.

        Args:
            x: ``[B, L, E]``.
            context: ``[B, S, context_dim]``, right-padded (with ``context_lengths``) or padded anywhere
                (with ``context_mask``).
            context_lengths: int ``[B]``: sample ``b`` has ``context_lengths[b]`` valid tokens (0 allowed).
            context_mask: bool ``[B, S]``, True = a valid context token. Both may be given (they are combined).

        Returns:
            ``[B, L, E]``; rows of samples with no valid context token are exactly 0.
        """
        _check_x("x", x, self.dim)
        _check_x("context", context, self.context_dim)
        bsz, s = context.shape[0], context.shape[1]
        if bsz != x.shape[0]:
            raise ValueError(f"context: expected batch {x.shape[0]} like x, got {list(context.shape)}")
        mask: M.Mask | None = None
        has_any: Tensor | None = None
        if context_lengths is not None:
            mask = M.key_padding(context_lengths)
            span = M.value_range(mask.lengths)  # read once per tensor (None under torch.compile)
            if tuple(mask.lengths.shape) != (bsz,) or (span is not None and span[1] > s):
                raise ValueError(f"context_lengths: expected shape [B] = [{bsz}] with values in [0, S={s}], got "
                                 f"{mask.lengths.tolist()}")
            has_any = mask.lengths.to(x.device) > 0
        if context_mask is not None:
            if context_mask.dtype != torch.bool or tuple(context_mask.shape) != (bsz, s):
                raise ValueError(f"context_mask: expected a bool tensor [B, S] = [{bsz}, {s}], got "
                                 f"{context_mask.dtype} {list(context_mask.shape)}")
            mask = _and(mask, M.key_mask(context_mask))
            valid = context_mask
            if context_lengths is not None:
                valid = valid & (torch.arange(s, device=valid.device) < context_lengths.to(valid.device)[:, None])
            has_any = valid.any(dim=1).to(x.device)
        q, k, v = self._heads(self.q_proj(x), self.k_proj(context), self.v_proj(context))
        out = self.o_proj(self._attend(q, k, v, mask))  # (B, L, E)
        if has_any is not None:
            out = out.masked_fill(~has_any.view(bsz, 1, 1), 0.0)
        return out


def use_sequence_parallel(module: nn.Module, parallel: SequenceParallel | None) -> None:
    """Route every attention module inside ``module`` through ``parallel`` (None: back to one process)."""
    if parallel is not None and not isinstance(parallel, SequenceParallel):
        raise TypeError(f"parallel: expected a veil.distributed.SequenceParallel or None, got "
                        f"{type(parallel).__name__}")
    for m in module.modules():
        if isinstance(m, _Projections):
            m.sequence_parallel = parallel


class SequenceParallelModel:
    """``enable_sequence_parallel`` / ``disable_sequence_parallel`` for a model whose forward shards its tokens
    when ``self.sequence_parallel`` is set (WanDiT, LatteDiT, DecoderLM; see :mod:`veil.distributed.parallel`).

    A model provides ``_sequence_parallel_heads()`` (its attention heads) and may refuse with
    ``_sequence_parallel_refusal()`` (a reason, or None).
    """

    sequence_parallel: SequenceParallel | None = None

    def _sequence_parallel_heads(self) -> int:
        raise NotImplementedError

    def _sequence_parallel_refusal(self) -> str | None:
        return None

    def enable_sequence_parallel(self, group=None, *, ulysses: int | None = None, ring: int | None = None,
                                 layout: str = "contiguous"):
        """Split the tokens across the ranks of ``group`` (a ProcessGroup, None for the world, or a DeviceMesh),
        ``ulysses`` / ``ring`` ways, in the ``"contiguous"`` or ``"zigzag"`` layout (:class:`SequenceParallel`).

        Call it on every rank, then call the model with the same full inputs on every rank: each rank returns the
        full output, equal to one process's. Returns ``self``.

        Raises:
            ValueError: no process group, heads that do not divide by ``ulysses``, or what the model refuses.
        """
        sp = SequenceParallel(group, ulysses, ring, layout)
        sp.check_heads(self._sequence_parallel_heads())
        why = self._sequence_parallel_refusal()
        if why is not None:
            raise ValueError(why)
        self.sequence_parallel = sp
        use_sequence_parallel(self, sp)
        return self

    def disable_sequence_parallel(self):
        """Back to one process: every rank computes the whole sequence. Returns ``self``."""
        self.sequence_parallel = None
        use_sequence_parallel(self, None)
        return self
