"""``tiles``: local masks as dense attention over gathered key blocks; exact, differentiable, no Q x K tensor.

For a mask with a local conjunct (``sliding_window``, ``chunked``, ``spatial``, ``temporal``,
``frame_causal``, ``window_3d``, ``tile_window``) the queries are cut into blocks and each block is given
the keys its queries can see: a *plan* ``(q_index [nb, bq], kv_index [nb, bk], kv_valid)``. Keys are
gathered per block and dense SDPA runs on ``[nb, H, bq, bk]`` problems. Where the plan's key set is not
exactly the visible set (windows, borders, other conjuncts), the whole mask's predicate is evaluated on
the gathered pairs only, so the result is exact for any ``local & anything``. Blocks are processed in
groups so gathered keys never exceed a memory budget; with gradients each group is recomputed in the
backward pass (activation checkpointing), so the backward holds one group at a time.

Legend: B batch, H heads, nb blocks, bq queries per block, bk keys per block, D head dim.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections import OrderedDict
from dataclasses import dataclass, field

import torch
from torch.utils.checkpoint import checkpoint

from veil.attention.backends.common import math_attention, sdpa, sdpa_attention
from veil.attention.backends.workers import parallel_workers, run_jobs
from veil.attention.partials import CPU_FLASH, CPU_FLASH_BWD, fused_cpu
from veil.attention.registry import Backend, Call, register_backend
from veil.masks import (
    Causal,
    Chunked,
    Context,
    FrameCausal,
    Mask,
    Or,
    PerHead,
    Radial,
    Sink,
    SlidingWindow,
    Spatial,
    Temporal,
    TileWindow,
    Window3D,
    conjoin,
    conjuncts,
    tile_permutation,
)

Tensor = torch.Tensor
_FLOATS = frozenset({torch.float32, torch.float16, torch.bfloat16, torch.float64})
# Gathered k+v of one group of blocks stay under max(this, 2 x the size of k+v).
_GROUP_BYTES = 64 << 20
# Below this many pairs per block, batched matmuls beat per-block SDPA calls (e.g. temporal over 16 frames).
_TINY = 64 * 64


@dataclass
class Plan:
    """Blocks of queries and the keys each block may see (a superset of the visible keys).

    Attributes:
        q_index: ``[nb, bq]`` query indices per block, or None when block ``i`` is queries
            ``[i*bq, (i+1)*bq)`` (then ``nb * bq >= Q`` and the tail is padding).
        kv_index: ``[nb, bk]`` key indices per block (clamped into ``[0, K)`` where invalid).
        kv_valid: ``[nb, bk]`` bool, False for padding slots; None when all are valid.
        exact: True when every (query, key) pair of a block is visible under the local mask alone.
        local: the local mask the plan was made from.
    """

    q_index: Tensor | None
    kv_index: Tensor
    kv_valid: Tensor | None
    exact: bool
    local: Mask
    bq: int
    #: visibility of the gathered pairs per block group, kept when the mask is the local one alone (it then
    #: depends on nothing but the plan); keyed by (first block, last block, device)
    inner: dict = field(default_factory=dict)

    @property
    def num_blocks(self) -> int:
        return self.kv_index.shape[0]

    @property
    def bk(self) -> int:
        return self.kv_index.shape[1]

    def pairs(self) -> int:
        return self.num_blocks * self.bq * self.bk


def _block_size(window: int) -> int:
    # span = bq + window - 1: a smaller bq wastes less, a larger one runs SDPA more efficiently. Measured on
    # 2 CPU cores at 16k tokens, window 512 (CPU time, % of the ideal speed-up): bq 32: 68% (1 thread) / 53%
    # (2 threads); 64: 72% / 39%; 128: 62% / 37%; 256: 58% / 34%.
    return int(min(128, max(16, 2 ** round(math.log2(max(1, window) / 16)))))


def _plan_sliding(m: SlidingWindow, q_len: int, kv_len: int) -> Plan:
    off = kv_len - q_len
    w = m.window
    bq = min(_block_size(w), q_len)
    nb = -(-q_len // bq)
    span = bq + w - 1 if m.causal else bq + 2 * w - 2
    start = torch.arange(nb) * bq + off - w + 1  # first key of each block's union of windows
    idx = start[:, None] + torch.arange(span)[None, :]
    valid = (idx >= 0) & (idx < kv_len)
    return Plan(None, idx.clamp(0, kv_len - 1), None if bool(valid.all()) else valid, False, m, bq)


def _plan_chunked(m: Chunked, q_len: int, kv_len: int) -> Plan | None:
    if q_len != kv_len or q_len % m.size:
        return None
    nb = q_len // m.size
    idx = torch.arange(q_len).view(nb, m.size)
    return Plan(None, idx, None, True, m, m.size)


def _plan_spatial(m: Spatial, q_len: int, kv_len: int) -> Plan:
    t, h, w = m.grid
    idx = torch.arange(q_len).view(t, h * w)
    return Plan(None, idx, None, True, m, h * w)


def _plan_temporal(m: Temporal, q_len: int, kv_len: int) -> Plan:
    t, h, w = m.grid
    idx = torch.arange(q_len).view(t, h * w).t().contiguous()  # (HW, T): one block per position
    return Plan(idx, idx, None, True, m, t)


def _plan_frame_causal(m: FrameCausal, q_len: int, kv_len: int) -> Plan:
    t, h, w = m.grid
    hw = h * w
    idx = torch.arange(t * hw).expand(t, t * hw)
    valid = idx < (torch.arange(t)[:, None] + 1) * hw
    return Plan(None, idx.clamp(max=q_len - 1), valid, False, m, hw)


def _box_plan(grid, q_box, k_lo, k_hi, q_order: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Query tiles of ``q_box`` tokens and, per tile, the key box ``[lo, hi)`` (per axis, in tiles' coords)."""
    gt, gh, gw = grid
    bt, bh, bw = q_box
    nt, nh, nw = gt // bt, gh // bh, gw // bw
    ti, hi_, wi = torch.meshgrid(torch.arange(nt), torch.arange(nh), torch.arange(nw), indexing="ij")
    ti, hi_, wi = ti.reshape(-1), hi_.reshape(-1), wi.reshape(-1)
    # query indices of each tile, raster order inside the tile
    dt, dh, dw = torch.meshgrid(torch.arange(bt), torch.arange(bh), torch.arange(bw), indexing="ij")
    qt = (ti[:, None] * bt + dt.reshape(1, -1))
    qh = (hi_[:, None] * bh + dh.reshape(1, -1))
    qw = (wi[:, None] * bw + dw.reshape(1, -1))
    q_idx = (qt * gh + qh) * gw + qw
    lo = [f(ti, hi_, wi) for f in k_lo]
    hi = [f(ti, hi_, wi) for f in k_hi]
    ext = [int((h - l).max()) for l, h in zip(lo, hi)]
    et, eh, ew = torch.meshgrid(torch.arange(ext[0]), torch.arange(ext[1]), torch.arange(ext[2]), indexing="ij")
    kt = lo[0][:, None] + et.reshape(1, -1)
    kh = lo[1][:, None] + eh.reshape(1, -1)
    kw = lo[2][:, None] + ew.reshape(1, -1)
    valid = (kt < hi[0][:, None]) & (kh < hi[1][:, None]) & (kw < hi[2][:, None])
    k_idx = (kt.clamp(max=gt - 1) * gh + kh.clamp(max=gh - 1)) * gw + kw.clamp(max=gw - 1)
    return q_idx, k_idx, valid


def _divisor(n: int, target: int) -> int:
    """The largest divisor of ``n`` that is at most ``max(1, target)``."""
    return max(d for d in range(1, n + 1) if n % d == 0 and d <= max(1, target))


def _plan_window_3d(m: Window3D, q_len: int, kv_len: int) -> Plan:
    grid = m.grid
    # query tiles of ~32 tokens in one frame, divisors of the grid: a key box is the query box grown by the
    # window, so small boxes waste less. Measured at 16x32x32, window (3, 9, 9), 1 thread, CPU time: boxes
    # (1, 4, 8) 14% of the ideal speed-up, (1, 8, 8) 12.5%, (1, 8, 16) 11.4%, (1, 4, 4) 7.7%.
    bw = _divisor(grid[2], 8)
    bh = _divisor(grid[1], max(1, 32 // bw))
    q_box = (1, bh, bw)

    def bounds(axis: int):
        w, d, n, box = m.window[axis], m.dilation[axis], grid[axis], q_box[axis]
        r = w // 2
        if m.border == "shift" and d == 1:  # the window start clamp(c - r, 0, n - w) grows with c: tight bounds
            def lo(c):
                return (c * box - r).clamp(min=0, max=max(n - w, 0))

            def hi(c):
                return ((c * box + box - 1 - r).clamp(min=0, max=max(n - w, 0)) + w).clamp(max=n)
            return lo, hi
        # clip: |c_k - c_q| <= r d; shift with dilation: the window may sit up to (w - 1) d on one side
        reach = r * d if m.border == "clip" else (w - 1) * d
        return (lambda c: (c * box - reach).clamp(min=0)), (lambda c: (c * box + box + reach).clamp(max=n))

    (lt, ht), (lh, hh), (lw, hw) = bounds(0), bounds(1), bounds(2)
    lo = [lambda ti, hi_, wi: lt(ti), lambda ti, hi_, wi: lh(hi_), lambda ti, hi_, wi: lw(wi)]
    hi = [lambda ti, hi_, wi: ht(ti), lambda ti, hi_, wi: hh(hi_), lambda ti, hi_, wi: hw(wi)]
    q_idx, k_idx, valid = _box_plan(grid, q_box, lo, hi)
    return Plan(q_idx, k_idx, valid, False, m, q_idx.shape[1])


def _plan_radial(m: Radial, q_len: int, kv_len: int) -> Plan:
    """Blocks of ``bq`` tokens inside one frame; per key frame, the band around the block (a whole frame when near,
    a sink, or wider than the frame), nothing for the frames the mask thins out."""
    t, h, w = m.grid
    per_frame = h * w
    bq = _divisor(per_frame, 64)
    chunks = per_frame // bq
    s0 = torch.arange(chunks) * bq  # (chunks,) first spatial index of each block
    q_idx, k_idx, k_ok = [], [], []
    widths, frames = m._widths.tolist(), m._frames.tolist()
    for tq in range(t):
        parts, oks = [], []
        for tk in range(t):
            dist = abs(tq - tk)
            if tk < m.sink_frames:
                lo, hi = torch.zeros(chunks, dtype=torch.long), torch.full((chunks,), per_frame)
            elif frames[dist]:
                lo = (s0 - widths[dist]).clamp(min=0)
                hi = (s0 + bq + widths[dist]).clamp(max=per_frame)
            else:
                continue
            span = int((hi - lo).max())
            idx = lo[:, None] + torch.arange(span)[None]  # (chunks, span)
            oks.append(idx < hi[:, None])
            parts.append(tk * per_frame + idx.clamp(max=per_frame - 1))
        q_idx.append(tq * per_frame + s0[:, None] + torch.arange(bq)[None])
        k_idx.append(torch.cat(parts, dim=1))
        k_ok.append(torch.cat(oks, dim=1))
    bk = max(x.shape[1] for x in k_idx)  # frames differ in how many bands they see: pad to the widest

    def pad(x: Tensor, value) -> Tensor:
        return torch.nn.functional.pad(x, (0, bk - x.shape[1]), value=value)
    kv_valid = torch.cat([pad(x, False) for x in k_ok])
    return Plan(torch.cat(q_idx), torch.cat([pad(x, 0) for x in k_idx]), kv_valid, False, m, bq)


def _plan_sink_window(m: Or, q_len: int, kv_len: int) -> Plan | None:
    """``sink(n) | sliding_window(w)`` (either order): the window's blocks with the sink keys in front, each sink
    key once (marked invalid where the block's window already holds it)."""
    kinds = {type(m.left): m.left, type(m.right): m.right}
    snk, win = kinds.get(Sink), kinds.get(SlidingWindow)
    if snk is None or win is None or not win.causal:
        return None
    plan = _plan_sliding(win, q_len, kv_len)
    n = min(snk.n, kv_len)
    nb = plan.num_blocks
    start = torch.arange(nb) * plan.bq + (kv_len - q_len) - win.window + 1  # each block's first window key
    sink_idx = torch.arange(n).expand(nb, n)
    sink_ok = sink_idx < start[:, None]
    win_ok = plan.kv_valid if plan.kv_valid is not None else torch.ones_like(plan.kv_index, dtype=torch.bool)
    return Plan(None, torch.cat([sink_idx, plan.kv_index], dim=1), torch.cat([sink_ok, win_ok], dim=1), False, m,
                plan.bq)


def _plan_tile_window(m: TileWindow, q_len: int, kv_len: int) -> Plan:
    tile = m.tile
    lo, hi = [], []
    for axis in range(3):
        def start(ti, hi_, wi, axis=axis):
            c = (ti, hi_, wi)[axis]
            return m.window_start(c, axis) * tile[axis]

        def stop(ti, hi_, wi, axis=axis):
            c = (ti, hi_, wi)[axis]
            return (m.window_start(c, axis) + m.window[axis]) * tile[axis]

        lo.append(start)
        hi.append(stop)
    q_idx, k_idx, valid = _box_plan(m.grid, tile, lo, hi)
    if m.order == "tile":
        # the mask's indices are tile-order positions: map raster indices through the inverse permutation
        inv = torch.argsort(tile_permutation(m.grid, tile))
        q_idx, k_idx = inv[q_idx], inv[k_idx]
        # tile t's tokens are contiguous and in order: queries need no gather
        if torch.equal(q_idx, torch.arange(q_len).view_as(q_idx)):
            q_idx = None
    return Plan(q_idx, k_idx, None, True, m, tile[0] * tile[1] * tile[2])


_PLANNERS = {
    SlidingWindow: _plan_sliding,
    Chunked: _plan_chunked,
    Spatial: _plan_spatial,
    Temporal: _plan_temporal,
    FrameCausal: _plan_frame_causal,
    Window3D: _plan_window_3d,
    TileWindow: _plan_tile_window,
    Radial: _plan_radial,
    Or: _plan_sink_window,
}
_PLAN_CACHE: OrderedDict[tuple, Plan | None] = OrderedDict()


def plan_for(mask: Mask | None, q_len: int, kv_len: int) -> Plan | None:
    """The cheapest plan over the mask's local conjuncts, or None when the mask has none.

    A plan depends only on the local conjuncts (which hold no tensors), whether other conjuncts exist, and the
    lengths, so it is cached under those: padding masks that change at every decoding step share one plan.
    """
    if mask is None:
        return None
    parts = conjuncts(mask)
    local = tuple(p for p in parts if type(p) in _PLANNERS)
    if not local:
        return None
    key = (tuple(p.cache_key() for p in local), len(parts) > len(local), q_len, kv_len)
    if key in _PLAN_CACHE:
        _PLAN_CACHE.move_to_end(key)
        return _PLAN_CACHE[key]
    best: Plan | None = None
    for part in local:
        p = _PLANNERS[type(part)](part, q_len, kv_len)
        if p is not None and (best is None or p.pairs() < best.pairs()):
            best = p
    if best is not None and best.exact and len(parts) > 1:
        best = Plan(best.q_index, best.kv_index, best.kv_valid, False, best.local, best.bq)
    _PLAN_CACHE[key] = best
    while len(_PLAN_CACHE) > 128:
        _PLAN_CACHE.popitem(last=False)
    return best


def _inner_mask(mask: Mask, plan: Plan, q_idx: Tensor, kv_idx: Tensor, kv_valid: Tensor | None,
                batch: int, heads: int, q_len: int, kv_len: int, device) -> Tensor | None:
    """Visibility of the gathered pairs: ``[nb, 1, bq, bk]`` or ``[B, nb, H|1, bq, bk]`` (batch-dependent)."""
    if plan.exact and kv_valid is None:
        return None
    ctx = Context(q_len, kv_len, device, batch=batch)
    qi = q_idx[None, :, None, :, None]  # (1, nb, 1, bq, 1)
    ki = kv_idx[None, :, None, None, :]  # (1, nb, 1, 1, bk)
    nb_ = batch if mask.batch_dependent else 1
    nh = heads if mask.head_dependent else 1
    b = torch.arange(nb_, device=device).view(nb_, 1, 1, 1, 1)
    h = torch.arange(nh, device=device).view(1, 1, nh, 1, 1)
    allowed = plan.local.predicate(ctx, b, h, qi, ki) if plan.exact else mask.predicate(ctx, b, h, qi, ki)
    if kv_valid is not None:
        allowed = allowed & kv_valid[None, :, None, None, :]
    return allowed


def _group_attention(q, k, v, q_idx, kv_idx, allowed, scale, softcap, contiguous_q):
    """Attention for one group of blocks. q ``[B, H, Q, D]``; returns ``[B, nb, bq, H, Dv]``."""
    b, h, _, d = q.shape
    nb, bq = q_idx.shape
    bk = kv_idx.shape[1]
    hkv = k.shape[1]
    if contiguous_q:
        qg = q[:, :, q_idx[0, 0]: q_idx[0, 0] + nb * bq].transpose(1, 2).reshape(b * nb, bq, h, d)
    else:
        qg = q.transpose(1, 2).index_select(1, q_idx.reshape(-1)).view(b * nb, bq, h, d)
    kg = k.transpose(1, 2).index_select(1, kv_idx.reshape(-1)).view(b * nb, bk, hkv, d)
    vg = v.transpose(1, 2).index_select(1, kv_idx.reshape(-1)).view(b * nb, bk, hkv, v.shape[-1])
    qg, kg, vg = qg.transpose(1, 2), kg.transpose(1, 2), vg.transpose(1, 2)  # (B*nb, H, bq|bk, D)
    if allowed is not None:
        # (1|B, nb, 1|H, bq, bk) -> (B*nb, 1|H, bq, bk)
        allowed = allowed.expand(b, *allowed.shape[1:]).reshape(b * nb, *allowed.shape[2:])
    if softcap is not None or bq * bk <= _TINY:
        out = math_attention(qg, kg, vg, allowed, scale, softcap)
    else:
        out = sdpa_attention(qg, kg, vg, allowed, scale)
    return out.transpose(1, 2).reshape(b, nb, bq, h, -1)  # (B, nb, bq, H, Dv)


def _sliding_fast(q, k, v, m: SlidingWindow, scale: float, bq: int):
    """``sliding_window`` alone, without gathers for interior blocks.

    Block ``i`` holds queries ``[i*bq, (i+1)*bq)`` and keys ``[start_i, start_i + span)``. Blocks whose keys all
    exist ("clean") read them as overlapping strided views of k and v and share one additive band bias
    ``[bq, span]``; the few edge blocks (keys before 0 or past K) gather theirs and get their own bool mask.
    With gradients, :class:`_SlidingWindowFn` recomputes each group of blocks in the backward and adds its
    gradients straight into dq, dk, dv (autograd through the strided views and slices would zero-fill a
    full-size gradient per group).
    """
    q_len = q.shape[2]
    nb = -(-q_len // bq)
    pad = nb * bq - q_len
    if pad:
        q = torch.nn.functional.pad(q, (0, 0, 0, pad))  # padded rows are dropped at the end
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        if fused_cpu(q, v, None):
            # float32 on the CPU: the fused kernel's lse is kept and its backward skips the recompute (8k tokens,
            # window 512, 2 cores: forward + backward 671 -> ~505 ms)
            out = _SinkWindowFn.apply(q, k, v, 0, m, False, scale, bq, q_len)
        else:
            out = _SlidingWindowFn.apply(q, k, v, m, scale, bq, q_len)
    else:
        out = _sliding_blocks(q, k, v, m, scale, bq, q_len, None)
    return out[:, :, :q_len] if pad else out  # (B, H, Q, Dv)


class _SlidingWindowFn(torch.autograd.Function):
    """Sliding-window attention over block groups, recomputed group by group in the backward."""

    @staticmethod
    def forward(ctx, q, k, v, m, scale, bq, q_len):
        ctx.save_for_backward(q, k, v)
        ctx.m, ctx.scale, ctx.bq, ctx.q_len = m, scale, bq, q_len
        return _sliding_blocks(q, k, v, m, scale, bq, q_len, None)

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v = ctx.saved_tensors
        grads = (grad_out, torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v))
        _sliding_blocks(q, k, v, ctx.m, ctx.scale, ctx.bq, ctx.q_len, grads)
        return grads[1], grads[2], grads[3], None, None, None, None


def _sliding_blocks(q, k, v, m: SlidingWindow, scale: float, bq: int, q_len: int, grads, lse=None, final=None):
    """Forward (``grads`` None: returns the output) or backward (``grads = (grad_out, dq, dk, dv)``: adds
    each group's gradients into dq, dk, dv) of :func:`_sliding_fast`; q is padded to whole blocks, ``q_len``
    is its length before padding (queries align to the end of the keys by it).

    Flash mode (float32 on the CPU, for :func:`_sink_window_fast`): the forward also writes each row's
    log-sum-exp into ``lse`` (B, H, Q); ``final = (out, lse)`` makes the backward take the gradients of the
    window's keys from PyTorch's fused kernel given the rows' final output and log-sum-exp over a larger key set
    (the window is then one part of a split softmax), instead of recomputing the window's own attention.
    """
    b, h, qp_len, d = q.shape
    kv_len, w, dv_ = k.shape[2], m.window, v.shape[-1]
    nb = qp_len // bq
    span = bq + w - 1 if m.causal else bq + 2 * w - 2
    first = kv_len - q_len - w + 1  # key index of slot 0 of block 0
    dev = q.device
    r = torch.arange(bq, device=dev)[:, None]
    j = torch.arange(span, device=dev)[None, :]
    diff = r + w - 1 - j  # absolute query position minus absolute key position
    band = (diff >= 0) & (diff < w) if m.causal else (diff > -w) & (diff < w)  # (bq, span)
    # every row of the band sees >= 1 key: an additive bias (0 / -inf) of one block, broadcast over blocks and
    # heads, which SDPA reads as it is (a bool mask would be expanded and converted at every call)
    band_bias = torch.zeros(band.shape, dtype=q.dtype, device=dev).masked_fill(~band, float("-inf"))[None, None]
    starts = [first + i * bq for i in range(nb)]
    clean = [s0 >= 0 and s0 + span <= kv_len for s0 in starts]
    gqa = h != k.shape[1]
    # blocks per SDPA call: bounds the memory of one call's gathered keys and, in the backward, of its gradients
    per_block = 2 * k.shape[1] * span * d * k.element_size()
    # Forward: the clean blocks' keys are views (nothing gathered), so one call takes them all: fewer, larger SDPA
    # calls keep both threads busy (sliding_window(512) at 16k tokens, 2 cores: 48% -> 56% of the ideal speed-up
    # on 2 threads, 59% -> 65% on 1). Backward: each call's key gradients are materialised, so groups stay bounded.
    group = nb if grads is None else max(1, (k[0].numel() + v[0].numel()) * k.element_size() // per_block)
    out = q.new_empty(b, h, qp_len, dv_) if grads is None else None
    hkv = k.shape[1]
    rep = h // hkv
    # the fused kernel takes no GQA: a key head's query heads become rows of one problem, the band tiled to match
    band_rows = band_bias.repeat(1, 1, rep, 1) if rep > 1 else band_bias

    def flash_blocks(qs, ks, vs, i, i1, lo):
        """Blocks as the fused kernel's (n, Hkv, rep*bq, D) problems: (qb, kb, vb, bias, seen, idx)."""
        qb = qs.unflatten(1, (i1 - i, bq)).transpose(0, 1)  # (n, H, bq, D)
        if rep > 1:
            qb = qb.unflatten(1, (hkv, rep)).flatten(2, 3)
        if clean[i]:
            kb = ks.unfold(1, span, bq).permute(1, 0, 3, 2)
            vb = vs.unfold(1, span, bq).permute(1, 0, 3, 2)
            idx = ((torch.arange(i1 - i, device=dev) * bq)[:, None] + j).reshape(-1)
            return qb, kb, vb, band_rows, None, idx
        key_abs = torch.tensor(starts[i:i1], device=dev)[:, None] + j  # (n, span)
        valid = (key_abs >= 0) & (key_abs < kv_len)
        idx = (key_abs.clamp(0, kv_len - 1) - lo).reshape(-1)
        kb = ks.index_select(1, idx).unflatten(1, (i1 - i, span)).transpose(0, 1)
        vb = vs.index_select(1, idx).unflatten(1, (i1 - i, span)).transpose(0, 1)
        allowed = band[None] & valid[:, None, :]  # (n, bq, span)
        bias = torch.zeros(allowed.shape, dtype=q.dtype, device=dev).masked_fill(~allowed, float("-inf"))[:, None]
        return qb, kb, vb, bias.repeat(1, 1, rep, 1) if rep > 1 else bias, allowed.any(-1), idx

    def unrows(x, i, i1):
        """(n, Hkv, rep*bq, ...) -> (H, n*bq, ...): the blocks' rows back in the queries' layout."""
        if rep > 1:
            x = x.unflatten(2, (rep, bq)).flatten(1, 2)
        return x.transpose(0, 1).flatten(1, 2)

    def as_rows(x, i, i1):
        """(H, n*bq, ...) -> (n, Hkv, rep*bq, ...), the layout of :func:`flash_blocks`' queries."""
        x = x.unflatten(1, (i1 - i, bq)).transpose(0, 1)
        return x.unflatten(1, (hkv, rep)).flatten(2, 3) if rep > 1 else x

    def flash_piece(qs, ks, vs, i, i1, lo):
        qb, kb, vb, bias, seen, _ = flash_blocks(qs, ks, vs, i, i1, lo)
        ob, lb = CPU_FLASH(qb, kb, vb, 0.0, False, attn_mask=bias, scale=scale)
        ob, lb = unrows(ob, i, i1), unrows(lb, i, i1)  # (H, n*bq, Dv), (H, n*bq)
        if seen is not None:  # rows with no key in the window (only before the first key): out 0, lse -inf
            seen = seen.reshape(1, -1)
            ob = ob * seen.unsqueeze(-1)
            lb = torch.where(seen, lb, torch.full((), float("-inf"), device=dev))
        return ob, lb

    def piece(qs, ks, vs, i, i1, lo):
        """Attention of queries ``qs`` (H, n*bq, D) over keys ``ks`` (Hkv, L, D) starting at key ``lo``."""
        qb = qs.unflatten(1, (i1 - i, bq)).transpose(0, 1)  # (n, H, bq, D)
        if clean[i]:
            kb = ks.unfold(1, span, bq).permute(1, 0, 3, 2)  # (n, Hkv, span, D): overlapping views
            vb = vs.unfold(1, span, bq).permute(1, 0, 3, 2)
            ob = sdpa(qb, kb, vb, attn_mask=band_bias, scale=scale, enable_gqa=gqa)
        else:
            key_abs = torch.tensor(starts[i:i1], device=dev)[:, None] + j  # (n, span)
            valid = (key_abs >= 0) & (key_abs < kv_len)
            idx = (key_abs.clamp(0, kv_len - 1) - lo).reshape(-1)
            kb = ks.index_select(1, idx).unflatten(1, (i1 - i, span)).transpose(0, 1)  # (n, Hkv, span, D)
            vb = vs.index_select(1, idx).unflatten(1, (i1 - i, span)).transpose(0, 1)
            ob = sdpa_attention(qb, kb, vb, (band[None] & valid[:, None, :])[:, None], scale)
        return ob.transpose(0, 1).flatten(1, 2)  # (H, n*bq, Dv)

    spans = []  # (sample, first block, end block): runs of blocks alike in cleanliness, at most `group` long
    for bi in range(b):
        i = 0
        while i < nb:
            i1 = i
            while i1 < nb and i1 - i < group and clean[i1] == clean[i]:
                i1 += 1
            spans.append((bi, i, i1))
            i = i1

    def keys(i: int, i1: int) -> tuple[int, int, slice]:
        return max(0, starts[i]), min(kv_len, starts[i1 - 1] + span), slice(i * bq, i1 * bq)

    if grads is None:
        # the forward writes disjoint rows of `out`: on CPU the runs are cut into one share per torch thread, each
        # computed single-threaded in its own worker (PyTorch's kernel scales poorly over these small blocks)
        workers = parallel_workers(q.device, b * h * nb * bq * span * d)
        if workers > 1:
            per = -(-b * nb // workers)
            spans = [(bi, j, min(j + per, i1)) for bi, i, i1 in spans for j in range(i, i1, per)]

        def job(bi: int, i: int, i1: int) -> None:
            lo, hi, rows = keys(i, i1)
            if lse is None:
                out[bi, :, rows] = piece(q[bi, :, rows], k[bi, :, lo:hi], v[bi, :, lo:hi], i, i1, lo)
            else:
                out[bi, :, rows], lse[bi, :, rows] = flash_piece(q[bi, :, rows], k[bi, :, lo:hi], v[bi, :, lo:hi],
                                                                 i, i1, lo)
        run_jobs([functools.partial(job, *s) for s in spans], workers)
        return out
    grad_out, dq, dk, dv = grads
    if final is not None:
        f_out, f_lse = final
        # a row with no key anywhere (lse -inf) has every key masked here too: its probabilities are exp(-inf) = 0
        safe = torch.where(torch.isinf(f_lse), torch.zeros((), device=dev), f_lse)
        for bi, i, i1 in spans:
            lo, hi, rows = keys(i, i1)
            qb, kb, vb, bias, _, idx = flash_blocks(q[bi, :, rows], k[bi, :, lo:hi], v[bi, :, lo:hi], i, i1, lo)
            gq, gk, gv = CPU_FLASH_BWD(as_rows(grad_out[bi, :, rows], i, i1).contiguous(), qb, kb, vb,
                                        as_rows(f_out[bi, :, rows], i, i1).contiguous(),
                                        as_rows(safe[bi, :, rows], i, i1).contiguous(), 0.0, False,
                                        attn_mask=bias, scale=scale)
            dq[bi, :, rows] += unrows(gq, i, i1)
            # the blocks' keys overlap: add each block's key gradients at their positions
            dk[bi, :, lo:hi].index_add_(1, idx, gk.transpose(0, 1).flatten(1, 2))
            dv[bi, :, lo:hi].index_add_(1, idx, gv.transpose(0, 1).flatten(1, 2))
        return out
    for bi, i, i1 in spans:
        lo, hi, rows = keys(i, i1)
        with torch.enable_grad():
            qs, ks, vs = (t.detach().requires_grad_() for t in (q[bi, :, rows], k[bi, :, lo:hi], v[bi, :, lo:hi]))
            o = piece(qs, ks, vs, i, i1, lo)
            gq, gk, gv = torch.autograd.grad(o, (qs, ks, vs), grad_out[bi, :, rows])
        dq[bi, :, rows] += gq
        dk[bi, :, lo:hi] += gk
        dv[bi, :, lo:hi] += gv
    return out


def sink_window_parts(mask: Mask | None, q_len: int, kv_len: int) -> tuple[int, SlidingWindow, bool] | None:
    """``(n, window, causal)`` when the mask is ``sink(n) | sliding_window(w)``, alone or ``& causal()`` (either
    order), with a causal window and ``q_len <= kv_len``: the masks :func:`_sink_window_fast` runs."""
    if mask is None or q_len > kv_len:
        return None
    parts = conjuncts(mask)
    ors = [p for p in parts if isinstance(p, Or)]
    rest = [p for p in parts if not isinstance(p, Or)]
    if len(ors) != 1 or len(rest) > 1 or (rest and not isinstance(rest[0], Causal)):
        return None
    kinds = {type(ors[0].left): ors[0].left, type(ors[0].right): ors[0].right}
    snk, win = kinds.get(Sink), kinds.get(SlidingWindow)
    if snk is None or win is None or not win.causal:
        return None
    return min(snk.n, kv_len), win, bool(rest)


def _sink_scores(q, k, n: int, win: SlidingWindow, causal: bool, scale: float, q_len: int, kv_len: int):
    """Scores of every (padded) query over the sink keys that its window does not hold: ``[B, H, Qp, n]`` float32,
    -inf where not visible, and the sink keys with their heads repeated to the query heads."""
    rep = q.shape[1] // k.shape[1]
    ks = k[:, :, :n]
    ks = ks.repeat_interleave(rep, dim=1) if rep > 1 else ks
    s = torch.matmul(q, ks.transpose(-1, -2)) * scale
    qa = torch.arange(q.shape[2], device=q.device)[:, None] + (kv_len - q_len)
    j = torch.arange(n, device=q.device)[None, :]
    seen = ~((j > qa - win.window) & (j <= qa))  # the window's keys are counted by the window part
    if causal:
        seen = seen & (j <= qa)
    return s.masked_fill(~seen, float("-inf")), ks


def _merge_sink(out_w: Tensor, lse_w: Tensor, s: Tensor, vs: Tensor) -> tuple[Tensor, Tensor]:
    """The window's (out, lse) and the sink keys' scores merged into the rows' final (out, lse)."""
    lse = torch.logaddexp(lse_w, torch.logsumexp(s, dim=-1))  # -inf only on rows that see no key at all
    safe = torch.where(torch.isinf(lse), torch.zeros((), device=lse.device), lse)
    out = out_w * torch.exp(lse_w - safe).unsqueeze(-1) + torch.matmul(torch.exp(s - safe.unsqueeze(-1)), vs)
    return out, lse


def _sink_window_forward(q, k, v, n, win, causal, scale, bq, q_len):
    b, h, qp_len, _ = q.shape
    lse_w = torch.empty(b, h, qp_len, dtype=torch.float32, device=q.device)
    out_w = _sliding_blocks(q, k, v, win, scale, bq, q_len, None, lse=lse_w)
    if n == 0:
        return out_w, lse_w, None, None, None
    s, ks = _sink_scores(q, k, n, win, causal, scale, q_len, k.shape[2])
    rep = h // k.shape[1]
    vs = v[:, :, :n].repeat_interleave(rep, dim=1) if rep > 1 else v[:, :, :n]
    out, lse = _merge_sink(out_w, lse_w, s, vs)
    return out, lse, s, ks, vs


class _SinkWindowFn(torch.autograd.Function):
    """``sink(n) | sliding_window(w)`` (n may be 0: the window alone): the window through its strided blocks, the
    n sink keys as a second part of the softmax, merged by log-sum-exp. The forward keeps the rows' out and lse,
    so the backward takes each part's gradients from them without recomputing the forward (the fused kernel's
    backward, given the final out / lse, is exact for each part of a split softmax)."""

    @staticmethod
    def forward(ctx, q, k, v, n, win, causal, scale, bq, q_len):
        out, lse, _, _, _ = _sink_window_forward(q, k, v, n, win, causal, scale, bq, q_len)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.args = (n, win, causal, scale, bq, q_len)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse = ctx.saved_tensors
        n, win, causal, scale, bq, q_len = ctx.args
        grad_out = grad_out.contiguous()
        dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
        _sliding_blocks(q, k, v, win, scale, bq, q_len, (grad_out, dq, dk, dv), final=(out, lse))
        if n == 0:
            return dq, dk, dv, None, None, None, None, None, None
        # the sink part: P = exp(S - lse) over the final lse, dS = P (dO v^T - rowsum(dO out))
        s, ks = _sink_scores(q, k, n, win, causal, scale, q_len, k.shape[2])
        rep = q.shape[1] // k.shape[1]
        vs = v[:, :, :n].repeat_interleave(rep, dim=1) if rep > 1 else v[:, :, :n]
        safe = torch.where(torch.isinf(lse), torch.zeros((), device=lse.device), lse)
        p = torch.exp(s - safe.unsqueeze(-1))  # (B, H, Qp, n); 0 where not visible
        ds = p * (torch.matmul(grad_out, vs.transpose(-1, -2)) - (grad_out * out).sum(-1, keepdim=True))
        dq += torch.matmul(ds, ks) * scale
        dks = torch.matmul(ds.transpose(-1, -2), q) * scale  # (B, H, n, D)
        dvs = torch.matmul(p.transpose(-1, -2), grad_out)
        if rep > 1:  # query heads' gradients summed into their key / value head
            dks, dvs = dks.unflatten(1, (-1, rep)).sum(2), dvs.unflatten(1, (-1, rep)).sum(2)
        dk[:, :, :n] += dks
        dv[:, :, :n] += dvs
        return dq, dk, dv, None, None, None, None, None, None


def _sink_window_fast(q, k, v, n: int, win: SlidingWindow, causal: bool, scale: float):
    """``(sink(n) | sliding_window(w)) [& causal()]`` on float32 CPU tensors: the sliding window's strided blocks
    (no gather for interior blocks) plus a ``Q x n`` part for the sink keys outside each query's window, merged
    exactly by log-sum-exp. The general path would gather every block's keys with the sinks in front."""
    q_len = q.shape[2]
    bq = min(_block_size(win.window), q_len)
    nb = -(-q_len // bq)
    pad = nb * bq - q_len
    if pad:
        q = torch.nn.functional.pad(q, (0, 0, 0, pad))  # padded rows are dropped at the end
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        out = _SinkWindowFn.apply(q, k, v, n, win, causal, scale, bq, q_len)
    else:
        out = _sink_window_forward(q, k, v, n, win, causal, scale, bq, q_len)[0]
    return out[:, :, :q_len] if pad else out


def _fold_spatial(m: Spatial, x: Tensor) -> tuple[Tensor, object]:
    b, t, hw = x.shape[0], m.grid[0], m.grid[1] * m.grid[2]
    folded = x.unflatten(2, (t, hw)).transpose(1, 2).flatten(0, 1)  # (B T, H, HW, D)
    return folded, lambda o: o.unflatten(0, (b, t)).transpose(1, 2).flatten(2, 3)  # (B, H, Q, Dv)


def _fold_temporal(m: Temporal, x: Tensor) -> tuple[Tensor, object]:
    b, t, hw = x.shape[0], m.grid[0], m.grid[1] * m.grid[2]
    folded = x.unflatten(2, (t, hw)).permute(0, 3, 1, 2, 4).flatten(0, 1)  # (B HW, H, T, D)
    return folded, lambda o: o.unflatten(0, (b, hw)).permute(0, 2, 3, 1, 4).flatten(2, 3)  # (B, H, Q, Dv)


def _fold_chunked(m: Chunked, x: Tensor) -> tuple[Tensor, object]:
    b = x.shape[0]
    folded = x.unflatten(2, (-1, m.size)).transpose(1, 2).flatten(0, 1)  # (B n, H, size, D)
    return folded, lambda o: o.unflatten(0, (b, -1)).transpose(1, 2).flatten(2, 3)  # (B, H, Q, Dv)


# Masks whose blocks are regular strided views of the sequence: no gather, no mask, one SDPA call for the batch.
_FOLDS = {Spatial: _fold_spatial, Temporal: _fold_temporal, Chunked: _fold_chunked}


def _fold_attention(q, k, v, mask, fold, scale, softcap):
    """Attention inside blocks that are strided views (frames, positions across frames, chunks): the blocks of
    every sample become the batch of one call."""
    qb, unfold = fold(mask, q)  # (B nb, H, bq, D)
    kb, _ = fold(mask, k)
    vb, _ = fold(mask, v)
    if softcap is not None:
        ob = math_attention(qb, kb, vb, None, scale, softcap)
    else:
        ob = sdpa_attention(qb, kb, vb, None, scale)
    return unfold(ob)  # (B, H, Q, Dv)


def head_groups(mask: Mask | None) -> list[tuple[Mask, list[int]]] | None:
    """For a mask with one ``per_head`` conjunct: each distinct per-head mask (with the other conjuncts) and its
    heads; None otherwise."""
    parts = conjuncts(mask) if mask is not None else []
    found = [p for p in parts if isinstance(p, PerHead)]
    if len(found) != 1:
        return None
    rest = [p for p in parts if p is not found[0]]
    return [(conjoin([*rest, m]), heads) for m, heads in found[0].groups()]


def _per_head_attention(q, k, v, groups, scale, softcap, group_bytes):
    """Each group of heads with its own mask: one tiles call per distinct mask (GQA: each query head with its
    key/value head), then the heads back in order."""
    g = q.shape[1] // k.shape[1]
    outs, order = [], []
    for sub, heads in groups:
        idx = torch.tensor(heads, device=q.device)
        kv = torch.div(idx, g, rounding_mode="floor")
        outs.append(tiles_attention(q.index_select(1, idx), k.index_select(1, kv), v.index_select(1, kv), sub,
                                    scale, softcap, group_bytes=group_bytes))
        order.extend(heads)
    inv = torch.argsort(torch.tensor(order, device=q.device))
    return torch.cat(outs, dim=1).index_select(1, inv)  # (B, H, Q, Dv)


def _foldable(mask: Mask | None, q_len: int, kv_len: int) -> bool:
    """Frame-wise masks whose blocks are strided views: no host plan, so they trace under torch.compile."""
    if type(mask) in (Spatial, Temporal):
        return True
    return type(mask) is Chunked and q_len == kv_len and q_len % mask.size == 0


_EAGER_ONLY = ("eager only under torch.compile except spatial, temporal and chunked masks alone (views, no plan): "
               "its block plans are built and cached on the host")


def tiles_attention(q, k, v, mask, scale, softcap, *, group_bytes: int | None = None):
    """The backend function; ``group_bytes`` overrides the per-group memory budget (tests)."""
    b, h, q_len, _ = q.shape
    kv_len = k.shape[2]
    groups = head_groups(mask)
    if groups is not None:
        return _per_head_attention(q, k, v, groups, scale, softcap, group_bytes)
    if torch.compiler.is_compiling():  # _supports let only frame-wise masks through
        return _fold_attention(q, k, v, mask, _FOLDS[type(mask)], scale, softcap)
    plan = plan_for(mask, q_len, kv_len)
    if plan is None:
        raise ValueError(f"mask: backend 'tiles' needs a local mask (sliding_window, spatial, ...), got {mask!r}")
    if isinstance(mask, SlidingWindow) and softcap is None:
        return _sliding_fast(q, k, v, mask, scale, plan.bq)
    sink_window = sink_window_parts(mask, q_len, kv_len) if fused_cpu(q, v, softcap) else None
    if sink_window is not None:
        return _sink_window_fast(q, k, v, *sink_window, scale)
    fold = _FOLDS.get(type(mask))
    if fold is not None and plan.exact:
        return _fold_attention(q, k, v, mask, fold, scale, softcap)
    dev = q.device
    contiguous_q = plan.q_index is None
    nb, bq = plan.num_blocks, plan.bq
    if contiguous_q:
        pad = nb * bq - q_len
        if pad:
            # pad the queries once so every block is full; padded rows are dropped at the end
            q = torch.cat([q, q.new_zeros(b, h, pad, q.shape[-1])], dim=2)
        q_index = torch.arange(nb * bq, device=dev).view(nb, bq)
        q_pred_index = q_index.clamp(max=q_len - 1)
    else:
        q_index = q_pred_index = plan.q_index.to(dev)
    kv_index = plan.kv_index.to(dev)
    kv_valid = plan.kv_valid.to(dev) if plan.kv_valid is not None else None

    per_block = 2 * b * k.shape[1] * plan.bk * k.shape[-1] * k.element_size()
    budget = group_bytes
    if budget is None:
        budget = max(_GROUP_BYTES, 2 * (k.numel() + v.numel()) * k.element_size())
    group = max(1, min(nb, budget // max(1, per_block)))
    grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    workers = 1 if grad else parallel_workers(dev, b * h * nb * bq * plan.bk * q.shape[-1])
    if workers > 1:
        # the groups go to single-threaded workers (as for the sliding window's blocks), `workers` groups in flight
        # at once: each gets 1/workers of the budget, so peak memory stays that of one group in the calling thread
        group = max(1, min(group // workers, -(-nb // workers)))
    reuse = mask == plan.local and not mask.batch_dependent and not mask.head_dependent
    bounds = [(g0, min(nb, g0 + group)) for g0 in range(0, nb, group)]
    outs: list[Tensor | None] = [None] * len(bounds)

    def run_group(j: int) -> None:
        g0, g1 = bounds[j]
        allowed = plan.inner.get((g0, g1, str(dev))) if reuse else None
        if allowed is None:
            allowed = _inner_mask(mask, plan, q_pred_index[g0:g1], kv_index[g0:g1],
                                  None if kv_valid is None else kv_valid[g0:g1], b, h, q_len, kv_len, dev)
            if reuse and allowed is not None:
                plan.inner[(g0, g1, str(dev))] = allowed
        args = (q, k, v, q_index[g0:g1], kv_index[g0:g1], allowed, scale, softcap, contiguous_q)
        if grad and group < nb:
            outs[j] = checkpoint(_group_attention, *args, use_reentrant=False)
        else:
            outs[j] = _group_attention(*args)

    run_jobs([functools.partial(run_group, j) for j in range(len(bounds))], workers)
    out = torch.cat(outs, dim=1) if len(outs) > 1 else outs[0]  # (B, nb, bq, H, Dv)
    out = out.reshape(b, nb * bq, h, -1)
    if contiguous_q:
        out = out[:, :q_len]
    else:
        # blocks hold each query exactly once: put rows back in query order
        inv = torch.empty(q_len, dtype=torch.long, device=dev)
        inv[q_index.reshape(-1)] = torch.arange(q_len, device=dev)
        out = out.index_select(1, inv)
    return out.transpose(1, 2)  # (B, H, Q, Dv)


def _supports(call: Call) -> str | None:
    groups = head_groups(call.mask)
    if torch.compiler.is_compiling():
        parts = [sub for sub, _ in groups] if groups is not None else [call.mask]
        return None if all(_foldable(m, call.q_len, call.kv_len) for m in parts) else _EAGER_ONLY
    if groups is not None:
        if all(plan_for(sub, call.q_len, call.kv_len) is not None for sub, _ in groups):
            return None
        return "per_head: every head's mask needs a local part"
    if plan_for(call.mask, call.q_len, call.kv_len) is None:
        return "needs a local mask (sliding_window, chunked, spatial, temporal, frame_causal, window_3d, tile_window)"
    return None


def _cost(call: Call) -> float:
    groups = head_groups(call.mask)
    if groups is not None:
        return sum(_cost(dataclasses.replace(call, q_heads=len(heads), kv_heads=len(heads), mask=sub))
                   for sub, heads in groups)
    if torch.compiler.is_compiling():  # a frame-wise mask (see _supports): blocks of one frame / position / chunk
        m = call.mask
        block = {Spatial: lambda: m.grid[1] * m.grid[2], Temporal: lambda: m.grid[0]}.get(type(m), lambda: m.size)()
        overhead = 1.25 if call.softcap is None else 3.0
        return overhead * call.q_len * block * call.batch * call.q_heads * (call.head_dim + 8)
    sink_window = sink_window_parts(call.mask, call.q_len, call.kv_len)
    if (sink_window is not None and call.softcap is None and call.device.type == "cpu"
            and call.dtype == torch.float32 and CPU_FLASH is not None):
        # _sink_window_fast: the window's strided blocks, then Q x n sink scores and the merge of two outputs
        n, win, _ = sink_window
        rows = call.batch * call.q_heads * call.q_len
        return _cost(dataclasses.replace(call, mask=win)) + rows * (n * (call.head_dim + 8) + 4 * call.head_dim)
    plan = plan_for(call.mask, call.q_len, call.kv_len)
    per_pair = call.batch * call.q_heads * (call.head_dim + 8)
    # small dense problems run a little less efficiently than one large one; gathers are memory traffic
    overhead = 1.25 if call.softcap is None else 3.0
    # Per key element a block reads: 8 where the blocks are views (sliding_window's interior blocks, folds). Where
    # they are gathered (every other block), 96: fitted by least squares to forward and forward + backward times
    # of window_3d on 8x4x4 to 8x16x16 grids at batch 1-8 (2 cores), it covers the index_select, its scatter in
    # the backward and the per-block work of SDPA on short query blocks. With it auto keeps sdpa where a window
    # covers a third of a small grid (8x4x4: tiles took 1.2-1.6x sdpa's time) and tiles where it skips most
    # pairs (8x16x16: 0.12-0.29x). The same weight accounts for radial bands of thousands of gathered keys per
    # block: at 16x32x32 it predicts tiles / sdpa at 1.29 and 0.96 for the default and a narrow radial mask,
    # measured 1.33 and 1.01.
    viewed = plan.num_blocks if type(call.mask) in _FOLDS and plan.exact else 0
    if isinstance(call.mask, SlidingWindow) and call.softcap is None:
        # _sliding_fast gathers only the edge blocks, whose windows reach past the first or last key
        viewed = plan.num_blocks - (0 if plan.kv_valid is None else int((~plan.kv_valid).any(1).sum()))
    per_key = 8 * viewed + 96 * (plan.num_blocks - viewed)
    gather = call.batch * call.kv_heads * plan.bk * call.head_dim * per_key
    return overhead * plan.pairs() * per_pair + gather + 2e5 * plan.num_blocks / max(1, plan.bq)


register_backend(Backend(
    name="tiles",
    fn=tiles_attention,
    devices=frozenset({"cpu", "cuda", "mps"}),
    dtypes=_FLOATS,
    grad_devices=frozenset({"cpu", "cuda", "mps"}),
    supports=_supports,
    cost=_cost,
    doc="local masks: dense SDPA over gathered key blocks; exact, differentiable, no Q x K tensor",
))
