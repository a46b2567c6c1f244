"""Partial attention results: ``(out, lse)`` over a subset of the keys, and their exact merge.

Attention over keys ``K = K1 + K2 + ...`` (disjoint sets) is a softmax-weighted mix of the attention over each
set: with ``lse_i`` the natural log of set ``i``'s softmax denominator,

    lse = log(sum_i exp(lse_i)),    out = sum_i exp(lse_i - lse) * out_i.

Ring attention (keys arrive one shard at a time) and split-K decoding rest on this. A row that sees no key of
a set has ``lse_i = -inf`` and ``out_i = 0``: it adds nothing, and a row that sees no key at all stays exactly
0 with ``lse = -inf`` (never NaN).

The kernels here work in row blocks in float32 (the reference's numerics): no ``Q x K`` tensor is made, only
``rows x K`` per block. For float32 on the CPU (equal q / v head dims, no softcap) they call PyTorch's fused CPU
attention kernel and its backward, which return and take the log-sum-exp; otherwise they compute the scores
themselves. :func:`partial_grads` is the backward of a partial result given the *final* ``out``
and ``lse`` of its rows, which is what ring attention's backward needs: with ``P = exp(S - lse)`` the
gradient of the block is exact whatever the other blocks were.

Legend: B batch, Hq query heads, Hkv key/value heads (G = Hq / Hkv), Q query length, K key length, D head dim,
Dv value head dim.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from veil.masks import Mask

Tensor = torch.Tensor

# fp32 scores of one row block (and their softmax / gradient) stay under this many bytes
_BLOCK_BYTES = 32 << 20


def _rows_per_block(batch: int, heads: int, kv_len: int) -> int:
    return max(1, _BLOCK_BYTES // (4 * 3 * max(1, batch * heads * kv_len)))


def _allowed(mask: Mask | None, batch: int, heads: int, q_len: int, kv_len: int, q0: int, q1: int,
             hkv: int, g: int, device: torch.device) -> Tensor | None:
    """The mask of rows [q0, q1) as (B or 1, Hkv or 1, G or 1, rows, K) bool."""
    if mask is None:
        return None
    a = mask.evaluate(batch, heads, q_len, kv_len, device, q_range=(q0, q1))
    a = a[: batch if mask.batch_dependent else 1, : heads if mask.head_dependent else 1]
    return a.unflatten(1, (hkv, g)) if mask.head_dependent else a.unsqueeze(1)


def _scores(qf: Tensor, kf: Tensor, allowed: Tensor | None, scale: float, softcap: float | None):
    """fp32 scores (B, Hkv, G, rows, K) with -inf where masked, and tanh(raw / softcap) for the backward."""
    s = torch.matmul(qf, kf.transpose(-1, -2)) * scale
    t = None
    if softcap is not None:
        t = torch.tanh(s / softcap)
        s = softcap * t
    if allowed is not None:
        s = s.masked_fill(~allowed, float("-inf"))
    return s, t


def _row_blocks(q: Tensor, kf: Tensor, mask: Mask | None, scale: float, softcap: float | None, kn: int):
    """For each block of rows ``[q0, q1)``: ``(q0, q1, qf, s, t)`` with ``qf`` the float32 queries
    ``(B, Hkv, G, rows, D)`` and ``s``, ``t`` as :func:`_scores` (``kf``: float32 keys ``(B, Hkv, 1, K, D)``)."""
    b, hq, qn, _ = q.shape
    hkv = kf.shape[1]
    g = hq // hkv
    step = _rows_per_block(b, hq, kn)
    for q0 in range(0, qn, step):
        q1 = min(qn, q0 + step)
        qf = q[:, :, q0:q1].float().unflatten(1, (hkv, g))  # (B, Hkv, G, rows, D)
        s, t = _scores(qf, kf, _allowed(mask, b, hq, qn, kn, q0, q1, hkv, g, q.device), scale, softcap)
        yield q0, q1, qf, s, t


def _finite(lse: Tensor) -> Tensor:
    return torch.where(torch.isinf(lse), torch.zeros((), device=lse.device), lse)


# PyTorch's fused CPU attention kernel returns the log-sum-exp, and its backward takes a given out and lse:
# exactly what a partial result over one key set needs (the ring's steps). Used for float32 on the CPU with equal
# q / v head dims and no softcap; everything else runs the row-blocked math below.
CPU_FLASH = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
CPU_FLASH_BWD = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)


def fused_cpu(q: Tensor, v: Tensor, softcap: float | None) -> bool:
    return (CPU_FLASH is not None and CPU_FLASH_BWD is not None and q.device.type == "cpu"
            and q.dtype == torch.float32 and v.dtype == torch.float32 and q.shape[-1] == v.shape[-1]
            and softcap is None)


def _bias_rows(mask: Mask | None, b: int, hq: int, qn: int, kn: int, q0: int, q1: int,
               device: torch.device) -> tuple[Tensor | None, Tensor | None]:
    """The additive float32 mask of rows [q0, q1) (-inf where masked) and which rows see a key."""
    if mask is None:
        return None, None
    a = mask.evaluate(b, hq, qn, kn, device, q_range=(q0, q1))
    a = a[: b if mask.batch_dependent else 1, : hq if mask.head_dependent else 1]
    bias = torch.zeros(a.shape, dtype=torch.float32, device=device).masked_fill_(~a, float("-inf"))
    return bias, a.any(-1)


def _expand_kv(t: Tensor, g: int) -> Tensor:
    return t if g == 1 else t.repeat_interleave(g, dim=1)  # (B, Hq, K, D): the fused kernel takes no GQA


def _fused_forward(q, k, v, mask, scale, out, lse) -> None:
    b, hq, qn, _ = q.shape
    kn = k.shape[2]
    g = hq // k.shape[1]
    ke, ve = _expand_kv(k, g), _expand_kv(v, g)
    step = _rows_per_block(b, hq, kn)
    for q0 in range(0, qn, step):
        q1 = min(qn, q0 + step)
        bias, seen = _bias_rows(mask, b, hq, qn, kn, q0, q1, q.device)
        o, s = CPU_FLASH(q[:, :, q0:q1], ke, ve, 0.0, False, attn_mask=bias, scale=scale)
        if seen is not None:  # rows with no key: the kernel writes 0 to out; their lse is -inf
            o = o * seen.unsqueeze(-1)
            s = torch.where(seen, s, torch.full((), float("-inf"), device=s.device))
        out[:, :, q0:q1] = o
        lse[:, :, q0:q1] = s


def _fused_grads(q, k, v, mask, scale, out, lse, grad_out) -> tuple[Tensor, Tensor, Tensor]:
    b, hq, qn, _ = q.shape
    hkv, kn = k.shape[1], k.shape[2]
    g = hq // hkv
    ke, ve = _expand_kv(k, g), _expand_kv(v, g)
    dq = torch.empty_like(q)
    dk = torch.zeros(b, hq, kn, k.shape[-1], dtype=torch.float32, device=q.device)
    dv = torch.zeros(b, hq, kn, v.shape[-1], dtype=torch.float32, device=q.device)
    # a row with no key anywhere (lse -inf) has every key masked here too: its probabilities are exp(-inf) = 0
    safe_lse = torch.where(torch.isinf(lse), torch.zeros((), device=lse.device), lse.float())
    step = _rows_per_block(b, hq, kn)
    for q0 in range(0, qn, step):
        q1 = min(qn, q0 + step)
        bias, _ = _bias_rows(mask, b, hq, qn, kn, q0, q1, q.device)
        gq, gk, gv = CPU_FLASH_BWD(grad_out[:, :, q0:q1].contiguous(), q[:, :, q0:q1], ke, ve,
                                    out[:, :, q0:q1].contiguous(), safe_lse[:, :, q0:q1].contiguous(), 0.0, False,
                                    attn_mask=bias, scale=scale)
        dq[:, :, q0:q1] = gq
        dk += gk
        dv += gv
    if g > 1:  # the expanded heads' gradients summed back into their shared key/value heads
        dk, dv = dk.unflatten(1, (hkv, g)).sum(2), dv.unflatten(1, (hkv, g)).sum(2)
    return dq, dk.to(k.dtype), dv.to(v.dtype)


def partial_attention(q: Tensor, k: Tensor, v: Tensor, mask: Mask | None, scale: float,
                      softcap: float | None = None) -> tuple[Tensor, Tensor]:
    """``(out, lse)`` of ``q`` over ``k, v`` under ``mask`` (validated by the caller), without autograd.

    Returns:
        out ``[B, Hq, Q, Dv]`` in q's dtype (0 on rows that see no key), lse float32 ``[B, Hq, Q]``
        (``-inf`` there).
    """
    b, hq, qn, _ = q.shape
    kn = k.shape[2]
    out = q.new_empty(b, hq, qn, v.shape[-1])
    lse = torch.empty(b, hq, qn, dtype=torch.float32, device=q.device)
    if qn == 0:
        return out, lse
    if kn and fused_cpu(q, v, softcap):
        with torch.no_grad():
            _fused_forward(q, k, v, mask, scale, out, lse)
        return out, lse
    with torch.no_grad():
        kf, vf = k.float().unsqueeze(2), v.float().unsqueeze(2)  # (B, Hkv, 1, K, D)
        for q0, q1, _, s, _ in _row_blocks(q, kf, mask, scale, softcap, kn):
            block_lse = torch.logsumexp(s, dim=-1)  # -inf on rows with no key
            p = torch.exp(s - _finite(block_lse).unsqueeze(-1))  # 0 where masked
            out[:, :, q0:q1] = torch.matmul(p, vf).flatten(1, 2).to(out.dtype)
            lse[:, :, q0:q1] = block_lse.flatten(1, 2)
    return out, lse


def partial_grads(q: Tensor, k: Tensor, v: Tensor, mask: Mask | None, scale: float, softcap: float | None,
                  out: Tensor | None, lse: Tensor, grad_out: Tensor | None,
                  grad_lse: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of a partial attention given the final ``out`` / ``lse`` of these rows and their gradients.

    With ``P = exp(S - lse)`` (``lse`` the rows' final log-denominator, over all key sets) the gradients of
    this key set are ``dS = P * (dO v^T - rowsum(dO * out) + grad_lse)``, ``dq = scale * dS k``,
    ``dk = scale * dS^T q``, ``dv = P^T dO``: exact for each set of a split softmax. ``grad_out=None``
    means no gradient reaches ``out`` (then ``out`` may be None); ``grad_lse=None`` none reaches ``lse``.

    Returns:
        dq, dk, dv in the dtypes of q, k, v.
    """
    b, hq, qn, _ = q.shape
    hkv, kn = k.shape[1], k.shape[2]
    g = hq // hkv
    if grad_out is not None and grad_lse is None and qn and kn and fused_cpu(q, v, softcap):
        with torch.no_grad():
            return _fused_grads(q, k, v, mask, scale, out, lse, grad_out)
    dq = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
    dk = torch.zeros(k.shape, dtype=torch.float32, device=q.device)
    dv = torch.zeros(v.shape, dtype=torch.float32, device=q.device)
    with torch.no_grad():
        kf, vf = k.float().unsqueeze(2), v.float().unsqueeze(2)  # (B, Hkv, 1, K, D)
        for q0, q1, qf, s, t in _row_blocks(q, kf, mask, scale, softcap, kn):
            row_lse = lse[:, :, q0:q1].float().unflatten(1, (hkv, g))
            p = torch.exp(s - _finite(row_lse).unsqueeze(-1))  # (B, Hkv, G, rows, K); 0 where masked / empty
            p = torch.where(torch.isinf(row_lse).unsqueeze(-1), torch.zeros((), device=p.device), p)
            if grad_out is not None:
                do = grad_out[:, :, q0:q1].float().unflatten(1, (hkv, g))
                o = out[:, :, q0:q1].float().unflatten(1, (hkv, g))
                delta = (do * o).sum(-1, keepdim=True)
                dp = torch.matmul(do, vf.transpose(-1, -2))
                if grad_lse is not None:
                    delta = delta - grad_lse[:, :, q0:q1].float().unflatten(1, (hkv, g)).unsqueeze(-1)
                ds = p * (dp - delta)
                dv += torch.matmul(p.transpose(-1, -2), do).sum(2)
            elif grad_lse is not None:
                ds = p * grad_lse[:, :, q0:q1].float().unflatten(1, (hkv, g)).unsqueeze(-1)
            else:
                continue
            if t is not None:
                ds = ds * (1 - t * t)  # d(softcap * tanh(x / softcap)) / dx
            dq[:, :, q0:q1] = (torch.matmul(ds, kf) * scale).flatten(1, 2)
            dk += (torch.matmul(ds.transpose(-1, -2), qf) * scale).sum(2)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


class _LogSumExp(torch.autograd.Function):
    """The rows' log softmax denominator, with its gradient into q and k (blocked)."""

    @staticmethod
    def forward(ctx, q, k, v, mask, scale, softcap):
        _, lse = partial_attention(q, k, v[..., :0], mask, scale, softcap)
        ctx.save_for_backward(q, k, v, lse)
        ctx.args = (mask, scale, softcap)
        return lse

    @staticmethod
    def backward(ctx, grad_lse):
        q, k, v, lse = ctx.saved_tensors
        mask, scale, softcap = ctx.args
        dq, dk, _ = partial_grads(q, k, v[..., :0], mask, scale, softcap, None, lse, None, grad_lse)
        return dq, dk, None, None, None, None


def logsumexp_scores(q: Tensor, k: Tensor, v: Tensor, mask: Mask | None, scale: float,
                     softcap: float | None) -> Tensor:
    """float32 ``[B, Hq, Q]``: log of each row's softmax denominator (``-inf`` for a row with no key), with
    gradients into q and k. Row-blocked: no ``Q x K`` tensor."""
    return _LogSumExp.apply(q, k, v, mask, scale, softcap)


def merge_partials(outs: Sequence[Tensor], lses: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Combine attention results over disjoint key sets into the result over their union, with gradients.

    Args:
        outs: ``[B, Hq, Q, Dv]`` each, the attention over one key set (0 on rows that see none of it).
        lses: float ``[B, Hq, Q]`` each, the log softmax denominators (``-inf`` on those rows).

    Returns:
        ``(out, lse)``: out in ``outs[0]``'s dtype, lse float32. A row empty in every set gets out exactly 0
        and lse ``-inf``, and passes zero gradient.

    Raises:
        TypeError, ValueError: empty or mismatched lists, shapes that disagree.
    """
    if not isinstance(outs, (list, tuple)) or not isinstance(lses, (list, tuple)):
        raise TypeError(f"outs, lses: expected sequences of tensors, got {type(outs).__name__}, "
                        f"{type(lses).__name__}")
    if len(outs) == 0 or len(outs) != len(lses):
        raise ValueError(f"outs, lses: expected the same non-zero number of results, got {len(outs)} and {len(lses)}")
    shape = tuple(outs[0].shape)
    for i, (o, s) in enumerate(zip(outs, lses)):
        if not isinstance(o, torch.Tensor) or not isinstance(s, torch.Tensor):
            raise TypeError(f"outs[{i}], lses[{i}]: expected tensors")
        if o.dim() != 4 or tuple(o.shape) != shape:
            raise ValueError(f"outs[{i}]: expected shape {list(shape)} like outs[0], got {list(o.shape)}")
        if tuple(s.shape) != shape[:3]:
            raise ValueError(f"lses[{i}]: expected shape {list(shape[:3])} (the out's [B, Hq, Q]), got "
                             f"{list(s.shape)}")
    stacked = torch.stack([s.float() for s in lses])  # (n, B, Hq, Q)
    top = _finite(stacked.amax(0)).detach()  # the result does not depend on it: no gradient through the max
    w = torch.exp(stacked - top)  # 0 where a set is empty
    total = w.sum(0)
    seen = total > 0
    safe = torch.where(seen, total, torch.ones((), device=total.device))
    lse = torch.where(seen, top + torch.log(safe), torch.full((), float("-inf"), device=total.device))
    weights = (w / safe).unsqueeze(-1)  # (n, B, Hq, Q, 1)
    out = sum(weights[i] * outs[i].float() for i in range(len(outs)))
    return out.to(outs[0].dtype), lse
