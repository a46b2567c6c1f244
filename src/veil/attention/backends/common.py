"""Dense kernels shared by the backends: math with fp32 softmax, and SDPA with a bool mask.

Both take q ``[..., Hq, Q, D]``, k/v ``[..., Hkv, K, D]`` and ``allowed``: a bool tensor broadcastable to
``[..., Hq, Q, K]`` (True = may attend) or None. A query row with no allowed key returns exactly 0 and
passes zero gradient (never NaN, never a uniform average).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

Tensor = torch.Tensor
_REDUCED = frozenset({torch.float16, torch.bfloat16})
# Up to this many (query, key) pairs per head, bf16 / fp16 attention on CPU runs as math (float32 scores):
# SDPA's CPU kernel in reduced precision ran forward + backward of 128 queries x 16-32 keys 5-7x slower than
# the math, and spatial blocks of 16 tokens 6x slower (2 threads, docs/benchmarks.md); at 256 x 256 both are even
_SMALL_PAIRS = 64 * 64


def _native_reduced() -> frozenset[torch.dtype]:
    """The reduced dtypes this CPU computes natively (AVX512-BF16 / AMX / AVX512-FP16), as oneDNN reports them."""
    try:
        ops = torch.ops.mkldnn
        return frozenset(dt for dt, ok in ((torch.bfloat16, ops._is_mkldnn_bf16_supported()),
                                           (torch.float16, ops._is_mkldnn_fp16_supported())) if ok)
    except (AttributeError, RuntimeError):  # a build without oneDNN: assume emulation
        return frozenset()


# On a CPU without them (e.g. AVX2 only), SDPA in bf16 / fp16 is emulated: forward + backward ran 3-7x slower than
# the same call in float32 at 64-1024 tokens (2 threads, docs/benchmarks.md), so those calls run in float32 and cast
# the output back (the kernel accumulates in float32 either way; the memory stays flat, no score tensor).
_CPU_NATIVE = _native_reduced()


def sdpa(q: Tensor, k: Tensor, v: Tensor, **kwargs) -> Tensor:
    """``F.scaled_dot_product_attention``, run in float32 for bf16 / fp16 on a CPU that lacks them natively."""
    if q.device.type == "cpu" and q.dtype in _REDUCED and q.dtype not in _CPU_NATIVE:
        mask = kwargs.get("attn_mask")
        if mask is not None and mask.dtype != torch.bool:
            kwargs["attn_mask"] = mask.float()
        return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), **kwargs).to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, **kwargs)


def math_attention(q: Tensor, k: Tensor, v: Tensor, allowed: Tensor | None, scale: float,
                   softcap: float | None) -> Tensor:
    """Eager attention; scores, softcap and softmax in float32 (the oracle's numerics)."""
    return math_attention_lse(q, k, v, allowed, scale, softcap, with_lse=False)[0]


def math_attention_lse(q: Tensor, k: Tensor, v: Tensor, allowed: Tensor | None, scale: float,
                       softcap: float | None, with_lse: bool = True) -> tuple[Tensor, Tensor | None]:
    """:func:`math_attention` and float32 ``lse [..., Hq, Q]``, the log softmax denominator (``-inf`` on a
    row with no key, with zero gradient there)."""
    hq, hkv = q.shape[-3], k.shape[-3]
    g = hq // hkv
    qf = q.float().unflatten(-3, (hkv, g))  # (..., Hkv, G, Q, D)
    kf = k.float().unsqueeze(-3)  # (..., Hkv, 1, K, D)
    vf = v.float().unsqueeze(-3)
    scores = torch.matmul(qf, kf.transpose(-1, -2)) * scale  # (..., Hkv, G, Q, K)
    if softcap is not None:
        scores = softcap * torch.tanh(scores / softcap)
    if allowed is not None:
        allowed = _group(allowed, hkv, g)
        scores = scores.masked_fill(~allowed, float("-inf"))
        row_any = allowed.any(-1, keepdim=True)
        # Rows with no key: softmax over zeros (finite), then zeroed: exact 0 and zero gradient.
        scores = torch.where(row_any, scores, torch.zeros((), device=scores.device))
        probs = torch.softmax(scores, dim=-1) * row_any
    else:
        row_any = None
        probs = torch.softmax(scores, dim=-1)
    out = torch.matmul(probs, vf)  # (..., Hkv, G, Q, Dv)
    lse = None
    if with_lse:
        lse = torch.logsumexp(scores, dim=-1)  # (..., Hkv, G, Q)
        if row_any is not None:
            lse = torch.where(row_any.squeeze(-1), lse, torch.full((), float("-inf"), device=lse.device))
        lse = lse.flatten(-3, -2)
    return out.flatten(-4, -3).to(q.dtype), lse


def _group(allowed: Tensor, hkv: int, g: int) -> Tensor:
    """Reshape a mask broadcastable to (..., Hq, Q, K) into (..., Hkv or 1, G or 1, Q, K)."""
    if allowed.dim() < 3 or allowed.shape[-3] == 1:
        return allowed.unsqueeze(-3)
    return allowed.unflatten(-3, (hkv, g))


def sdpa_attention(q: Tensor, k: Tensor, v: Tensor, allowed: Tensor | None, scale: float,
                   is_causal: bool = False) -> Tensor:
    """``F.scaled_dot_product_attention`` with exact handling of rows that see no key.

    Small problems in bf16 / fp16 on CPU run :func:`math_attention` instead (see ``_SMALL_PAIRS``), and larger ones
    run in float32 where the CPU lacks the dtype (see :func:`sdpa`)."""
    if (not is_causal and q.device.type == "cpu" and q.dtype in _REDUCED
            and q.shape[-2] * k.shape[-2] <= _SMALL_PAIRS):
        return math_attention(q, k, v, allowed, scale, None)
    gqa = q.shape[-3] != k.shape[-3]
    if allowed is None:
        return sdpa(q, k, v, scale=scale, is_causal=is_causal, enable_gqa=gqa)
    row_any = allowed.any(-1, keepdim=True)
    # Open every key to the empty rows (no NaN inside the kernel), then zero those rows: exact 0 out,
    # and since the zeroing multiplies by 0 the gradient through them is 0 too. Done for every mask, not only
    # when a row is empty: asking would read a flag back to the host at every call.
    out = sdpa(q, k, v, attn_mask=allowed | ~row_any, scale=scale, enable_gqa=gqa)
    return out * row_any.to(out.dtype)
