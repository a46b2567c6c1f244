"""``varlen``: attention over the valid tokens only, for padded, packed and document masks.

The mask's conjuncts (:func:`veil.masks.conjuncts`) are split into *structure* (``key_padding``,
``query_padding``, one ``document`` / ``packed``) and a *residual* (everything else: ``causal``,
``sliding_window``, ``prefix_lm``, ``key_mask``, ...). The structure cuts the batch into segments
``(b, [q0, q1), [k0, k1))``: sample ``b``'s valid queries of one document against that document's valid
keys. Only the segments are computed; every other query row (padding, a document with no key, a sample
with 0 keys) is exactly 0 and passes zero gradient.

Inside a segment the residual is applied exactly, in full-tensor indices (so ``causal`` stays
bottom-right aligned to the *padded* lengths: key ``k`` is visible iff ``k <= q + (K - Q)``):

* no mask where it is all-true on the segment,
* SDPA's ``is_causal`` (top-left) where the residual is ``causal()`` and the segment starts on the
  diagonal (``q0 + K - Q == k0``),
* else a bool mask evaluated on the segment's ranges only (segment-sized, never ``Q x K``).

Segments with the same ``(q_len, k_len)`` and plan run as one batched call. With a softcap each group runs
:func:`~veil.attention.backends.common.math_attention`. On CUDA, when ``flash_attn`` is installed and the
residual is none or a ``causal()`` that flash-attn's own bottom-right alignment reproduces per segment,
the whole batch runs as one ``flash_attn_varlen_func`` call.

Legend: B batch, Hq query heads, Hkv key/value heads, Q query length, K key length, D head dim, n segments.
"""

from __future__ import annotations

from collections import OrderedDict, defaultdict
from dataclasses import dataclass

import torch

from veil.attention.backends.common import math_attention, sdpa_attention
from veil.attention.registry import Backend, Call, register_backend
from veil.masks import Causal, Document, Full, KeyPadding, Mask, QueryPadding, conjoin, conjuncts

Tensor = torch.Tensor
_FLOATS = frozenset({torch.float32, torch.float16, torch.bfloat16, torch.float64})

# optional: the CUDA varlen kernel (https://github.com/Dao-AILab/flash-attention), ``pip install veil[flash]``.
# Versions outside FLASH_ATTN_VERSIONS are not used (their varlen signature or numerics may differ).
FLASH_ATTN_VERSIONS = ((2, 6), (3, 0))  # [min, max)
try:
    import flash_attn
    from flash_attn import flash_attn_varlen_func
except ImportError:  # pragma: no cover - depends on the environment
    flash_attn = flash_attn_varlen_func = None


def _version_tuple(text: str) -> tuple[int, ...]:
    out = []
    for part in text.split(".")[:2]:
        digits = "".join(ch for ch in part if ch.isdigit())
        out.append(int(digits) if digits else 0)
    return tuple(out)


def flash_attn_status() -> str:
    """Whether the optional flash-attn kernel is used, and why not."""
    if flash_attn is None:
        return "not installed (pip install 'veil[flash]' on a CUDA machine)"
    version = getattr(flash_attn, "__version__", "0")
    lo, hi = FLASH_ATTN_VERSIONS
    if not lo <= _version_tuple(version) < hi:
        return (f"installed {version}, not used: veil supports flash-attn >= {'.'.join(map(str, lo))}, "
                f"< {'.'.join(map(str, hi))}")
    return f"installed {version}, used by the varlen backend on CUDA in fp16 / bf16"


if flash_attn is not None and not flash_attn_status().endswith("bf16"):  # pragma: no cover - environment
    flash_attn_varlen_func = None


@dataclass(frozen=True)
class Plan:
    """Segments of one call: ``segments[i] = (b, q0, q1, k0, k1)``, all non-empty; plus the residual mask."""

    segments: tuple[tuple[int, int, int, int, int], ...]
    residual: Mask

    @property
    def work(self) -> int:
        """Valid (query, key) pairs per head."""
        return sum((q1 - q0) * (k1 - k0) for _, q0, q1, k0, k1 in self.segments)


_PLANS: OrderedDict[tuple, tuple[Mask, Plan | str]] = OrderedDict()
_PLANS_SIZE = 64


def plan(mask: Mask | None, batch: int, q_len: int, kv_len: int) -> Plan | str:
    """The segments for ``mask`` at these sizes, or a string saying why varlen does not apply.

    Cached by the mask's structure and tensor identities (:meth:`veil.masks.Mask.cache_key`), so the ``auto``
    checks and the call that follows plan once, and a mask rebuilt from the same tensors reuses the plan.
    """
    if mask is None:
        return "no mask: nothing to skip"
    key = (mask.cache_key(), batch, q_len, kv_len)
    hit = _PLANS.get(key)
    if hit is not None:
        _PLANS.move_to_end(key)
        return hit[1]
    made = _make_plan(mask, batch, q_len, kv_len)
    _PLANS[key] = (mask, made)
    while len(_PLANS) > _PLANS_SIZE:
        _PLANS.popitem(last=False)
    return made


def _make_plan(mask: Mask, batch: int, q_len: int, kv_len: int) -> Plan | str:
    q_stop = [q_len] * batch
    k_stop = [kv_len] * batch
    doc: Document | None = None
    rest: list[Mask] = []
    for part in conjuncts(mask):
        if isinstance(part, KeyPadding):
            k_stop = [min(a, int(n)) for a, n in zip(k_stop, part.lengths.tolist())]
        elif isinstance(part, QueryPadding):
            q_stop = [min(a, int(n)) for a, n in zip(q_stop, part.lengths.tolist())]
        elif isinstance(part, Document) and doc is None:
            doc = part
        else:
            rest.append(part)  # a second document is exact as a residual too
    if doc is None and len(rest) == len(conjuncts(mask)):
        return "no key_padding, query_padding, packed or document conjunct"
    if doc is None:
        pairs = [[(b, 0, q_len, 0, kv_len)] for b in range(batch)]
    else:
        pairs = _document_pairs(doc, batch)
        if isinstance(pairs, str):
            return pairs
    segments = []
    for row in pairs:
        for b, q0, q1, k0, k1 in row:
            q1, k1 = min(q1, q_stop[b]), min(k1, k_stop[b])
            if q1 > q0 and k1 > k0:
                segments.append((b, q0, q1, k0, k1))
    return Plan(tuple(segments), conjoin(rest))


def _runs(ids: Tensor) -> list[list[tuple[int, int, int]]]:
    """Contiguous runs of equal ids per row of ``ids [R, L]``: ``[(id, start, stop), ...]`` per row."""
    rows, n = ids.shape
    if n == 0:
        return [[] for _ in range(rows)]
    change = torch.ones(rows, n, dtype=torch.bool, device=ids.device)
    change[:, 1:] = ids[:, 1:] != ids[:, :-1]
    r, start = change.nonzero(as_tuple=True)  # row-major: starts in order within each row
    stop = torch.empty_like(start)
    stop[:-1] = start[1:]
    last = torch.ones_like(r, dtype=torch.bool)
    last[:-1] = r[1:] != r[:-1]
    stop[last] = n
    out: list[list[tuple[int, int, int]]] = [[] for _ in range(rows)]
    for row, i, s, e in zip(r.tolist(), ids[r, start].tolist(), start.tolist(), stop.tolist()):
        out[row].append((i, s, e))
    return out


def _document_pairs(doc: Document, batch: int) -> list[list[tuple[int, int, int, int, int]]] | str:
    q_runs = _runs(doc.q_ids.reshape(-1, doc.q_ids.shape[-1]))
    kv_runs = q_runs if doc.kv_ids is doc.q_ids else _runs(doc.kv_ids.reshape(-1, doc.kv_ids.shape[-1]))
    out = []
    for b in range(batch):
        qr = q_runs[b if len(q_runs) > 1 else 0]
        kr = kv_runs[b if len(kv_runs) > 1 else 0]
        for side, runs in (("query", qr), ("key", kr)):
            seen = set()
            for i, _, _ in runs:
                if i in seen:
                    return f"document id {i} is not one contiguous run of the {side}s (sample {b})"
                seen.add(i)
        where = {i: (s, e) for i, s, e in kr}
        out.append([(b, s, e) + where[i] for i, s, e in qr if i in where])
    return out


def _segment_how(residual: Mask, seg, batch: int, heads: int, q_len: int, kv_len: int,
                 device: torch.device) -> tuple[str, Tensor | None]:
    """``("none" | "is_causal" | "bool", mask [Hq or 1, qs, ks] or None)`` for one segment."""
    b, q0, q1, k0, k1 = seg
    if isinstance(residual, Full):
        return "none", None
    if isinstance(residual, Causal):
        delta = q0 + kv_len - q_len - k0  # local key j visible iff j <= i + delta
        if delta >= k1 - k0 - 1:
            return "none", None
        if delta == 0:
            return "is_causal", None
    allowed = residual.to_bool(batch, heads, q_len, kv_len, device=device, q_range=(q0, q1), kv_range=(k0, k1))
    allowed = allowed[b, : heads if residual.head_dependent else 1]  # (Hq or 1, qs, ks)
    if bool(allowed.all()):
        return "none", None
    return "bool", allowed


def varlen_attention(q: Tensor, k: Tensor, v: Tensor, mask: Mask, scale: float, softcap: float | None) -> Tensor:
    """Attention over the segments of ``mask``'s padding / document structure; see the module docstring.

    Args:
        q: ``[B, Hq, Q, D]``; k: ``[B, Hkv, K, D]``; v: ``[B, Hkv, K, Dv]`` (validated by ``veil.attend``).
        mask: a mask with a ``key_padding``, ``query_padding``, ``packed`` or ``document`` conjunct.
        scale: score scale. softcap: ``softcap * tanh(scores / softcap)`` before masking, or None.

    Returns:
        ``[B, Hq, Q, Dv]``; rows outside every segment are exactly 0 with zero gradient.

    Raises:
        ValueError: the mask has no such structure, or a document is not one contiguous run.
    """
    batch, hq, q_len, _ = q.shape
    kv_len = k.shape[2]
    p = plan(mask, batch, q_len, kv_len)
    if isinstance(p, str):
        raise ValueError(f"mask: the varlen backend needs padding or document structure: {p}")
    out = q.new_zeros(batch, hq, q_len, v.shape[-1])
    if not p.segments:
        # nothing is visible: still tie the zeros to the inputs (sums over empty slices are exactly 0, even for
        # inf inputs) so that backward works and gives q, k and v exactly zero gradients
        return out + (q[..., :0].sum() + k[..., :0].sum() + v[..., :0].sum())
    if _flash_ok(q, v, p, q_len, kv_len):
        return _flash(q, k, v, p, scale, softcap, out, causal=isinstance(p.residual, Causal))
    groups: dict[tuple, list] = defaultdict(list)
    for seg in p.segments:
        how, allowed = _segment_how(p.residual, seg, batch, hq, q_len, kv_len, q.device)
        groups[(seg[2] - seg[1], seg[4] - seg[3], how)].append((seg, allowed))
    for (qs, ks, how), items in groups.items():
        b = torch.tensor([s[0] for s, _ in items], device=q.device).view(-1, 1)  # (n, 1)
        qi = torch.tensor([s[1] for s, _ in items], device=q.device).view(-1, 1) + torch.arange(qs, device=q.device)
        ki = torch.tensor([s[3] for s, _ in items], device=q.device).view(-1, 1) + torch.arange(ks, device=q.device)
        qg = q[b, :, qi].transpose(1, 2)  # (n, Hq, qs, D)
        kg = k[b, :, ki].transpose(1, 2)  # (n, Hkv, ks, D)
        vg = v[b, :, ki].transpose(1, 2)  # (n, Hkv, ks, Dv)
        allowed = torch.stack([a for _, a in items]) if how == "bool" else None  # (n, Hq or 1, qs, ks)
        if softcap is not None:
            if how == "is_causal":
                allowed = torch.ones(qs, ks, dtype=torch.bool, device=q.device).tril()
            og = math_attention(qg, kg, vg, allowed, scale, softcap)
        else:
            og = sdpa_attention(qg, kg, vg, allowed, scale, is_causal=how == "is_causal")
        out[b, :, qi] = og.transpose(1, 2)  # rows of (n, qs) <- (n, qs, Hq, Dv)
    return out


def _flash_ok(q: Tensor, v: Tensor, p: Plan, q_len: int, kv_len: int) -> bool:
    """flash-attn applies: CUDA, half precision, and a residual it reproduces exactly on every segment."""
    if flash_attn_varlen_func is None or q.device.type != "cuda" or q.dtype not in (torch.float16, torch.bfloat16):
        return False
    if v.shape[-1] != q.shape[-1]:
        return False
    if isinstance(p.residual, Full):
        return True
    # flash-attn's causal is bottom-right per segment: local j <= i + (ks - qs); ours is j <= i + delta.
    return isinstance(p.residual, Causal) and all(
        q0 + kv_len - q_len - k0 == (k1 - k0) - (q1 - q0) and k1 - k0 >= q1 - q0 for _, q0, q1, k0, k1 in p.segments
    )


def _flash(q, k, v, p: Plan, scale, softcap, out, *, causal: bool) -> Tensor:  # pragma: no cover - needs CUDA
    dev = q.device
    seg = torch.tensor(p.segments, device=dev)  # (n, 5): b, q0, q1, k0, k1
    qn, kn = seg[:, 2] - seg[:, 1], seg[:, 4] - seg[:, 3]
    zero = torch.zeros(1, dtype=torch.int32, device=dev)
    cu_q = torch.cat([zero, qn.cumsum(0).int()])
    cu_k = torch.cat([zero, kn.cumsum(0).int()])
    qb = torch.repeat_interleave(seg[:, 0], qn)  # (total_q,)
    qi = torch.repeat_interleave(seg[:, 1] - cu_q[:-1], qn) + torch.arange(int(cu_q[-1]), device=dev)
    kb = torch.repeat_interleave(seg[:, 0], kn)
    ki = torch.repeat_interleave(seg[:, 3] - cu_k[:-1], kn) + torch.arange(int(cu_k[-1]), device=dev)
    o = flash_attn_varlen_func(
        q[qb, :, qi], k[kb, :, ki], v[kb, :, ki],  # (total, H, D)
        cu_q, cu_k, int(qn.max()), int(kn.max()),
        softmax_scale=scale, causal=causal, **({} if softcap is None else {"softcap": softcap}),
    )
    out[qb, :, qi] = o
    return out


def _supports(call: Call) -> str | None:
    p = plan(call.mask, call.batch, call.q_len, call.kv_len)
    return p if isinstance(p, str) else None


# Per batched call: launch, index building, gather and scatter, in the units of the sdpa backend's cost
# (multiply-adds): about a 64 x 64 x 64 head's worth of work.
_CALL_OVERHEAD = 3.0e5


def _cost(call: Call) -> float:
    """Valid pairs at SDPA's masked rate, plus the gather / scatter of the valid tokens and a per-call overhead.

    Measured on CPU (B=4, H=4, L=512, D=64): with no padding varlen and the masked sdpa take about the same
    time, and varlen's time falls with the valid work; so it is costed at sdpa's masked rate (1.3 per
    pair), and the overhead makes ``auto`` keep sdpa unless padding removes a real share of the work.
    """
    p = plan(call.mask, call.batch, call.q_len, call.kv_len)
    if isinstance(p, str):
        return float("inf")
    shapes = {(q1 - q0, k1 - k0) for _, q0, q1, k0, k1 in p.segments}
    factor = 1.3 if isinstance(p.residual, (Full, Causal)) else 1.5  # other residuals: a bool mask per segment
    tokens = sum((q1 - q0) + (k1 - k0) for _, q0, q1, k0, k1 in p.segments)
    work = factor * p.work * call.q_heads * (call.head_dim + 8)
    return work + 4.0 * tokens * call.q_heads * call.head_dim + _CALL_OVERHEAD * (1 + len(shapes))


register_backend(Backend(
    name="varlen",
    fn=varlen_attention,
    devices=frozenset({"cpu", "cuda", "mps"}),
    dtypes=_FLOATS,
    grad_devices=frozenset({"cpu", "cuda", "mps"}),
    supports=_supports,
    cost=_cost,
    doc="computes only the valid tokens of padded / packed / document masks (flash-attn varlen or packed SDPA)",
    eager_only="its segments are read from the lengths' values on the host",
))
