"""A mask seen through a block of its global matrix: the lowering that split attention rests on.

When the queries and keys of one attention problem are cut into pieces (ring attention, split-K decoding,
sequence parallelism), each piece must evaluate the *global* mask at its *global* positions. ``region``
does that: ``region(mask, q_start=a, kv_start=c, q_len=Q, kv_len=K)`` is the mask whose entry ``(i, j)`` is
the global mask's entry ``(a + i, c + j)`` of a ``Q x K`` problem (and head ``h`` is global head
``head_start + h``). Every backend can run it, and no lowering of it is larger than the block.

:func:`block_is_empty` says, from the mask's structure alone (no tensor is read, no host sync), whether a
block of the global matrix is certainly empty: a ring step can then skip the pair (causal, windows,
frame-causal, spatial). It is sound (never True for a block with a visible pair) and exact for those
structures; masks whose emptiness depends on tensor values (padding, documents) answer False.

Legend: B batch, H heads, Q query length, K key length (global unless said otherwise).
"""

from __future__ import annotations

import torch

from veil.masks.core import And, Context, Full, Mask, Not, Or, PerHead, Tensor
from veil.masks.sequence import Causal, Chunked, PrefixLM, Sink, SlidingWindow, _check_int
from veil.masks.video import FrameCausal, Spatial, TileWindow, Window3D


class Region(Mask):
    kind = "region"

    def __init__(self, inner: Mask, q_start: int, kv_start: int, q_len: int, kv_len: int, heads: int | None = None,
                 head_start: int = 0):
        if not isinstance(inner, Mask):
            raise TypeError(f"mask: expected a veil Mask, got {type(inner).__name__}")
        self.inner = inner
        self.q_start = _check_int("q_start", q_start, 0)
        self.kv_start = _check_int("kv_start", kv_start, 0)
        self.q_len = _check_int("q_len", q_len, 0)
        self.kv_len = _check_int("kv_len", kv_len, 0)
        self.head_start = _check_int("head_start", head_start, 0)
        self.heads = None if heads is None else _check_int("heads", heads, 1)
        if inner.head_dependent and self.heads is None:
            raise ValueError(f"heads: the mask {inner!r} depends on the head: give the global head count")
        self.batch_dependent = inner.batch_dependent
        self.head_dependent = inner.head_dependent

    def children(self):
        return (self.inner,)

    def validate(self, batch, heads, q_len, kv_len, device):
        if self.q_start + q_len > self.q_len or self.kv_start + kv_len > self.kv_len:
            raise ValueError(
                f"region: rows [{self.q_start}, {self.q_start + q_len}) x keys [{self.kv_start}, "
                f"{self.kv_start + kv_len}) lie outside the global {self.q_len} x {self.kv_len} mask"
            )
        total_heads = heads if self.heads is None else self.heads
        if self.head_start + heads > total_heads:
            raise ValueError(f"heads: heads [{self.head_start}, {self.head_start + heads}) lie outside the "
                             f"global {total_heads}")
        self.inner.validate(batch, total_heads, self.q_len, self.kv_len, device)

    def predicate(self, ctx, b, h, q, k):
        inner_ctx = Context(self.q_len, self.kv_len, ctx.device, batch=ctx.batch)
        return self.inner.predicate(inner_ctx, b, h + self.head_start, q + self.q_start, k + self.kv_start)

    def _key(self):
        return (self.inner, self.q_start, self.kv_start, self.q_len, self.kv_len, self.heads, self.head_start)

    def __repr__(self):
        heads = "" if self.heads is None else f", heads={self.heads}, head_start={self.head_start}"
        return (f"region({self.inner!r}, q_start={self.q_start}, kv_start={self.kv_start}, q_len={self.q_len}, "
                f"kv_len={self.kv_len}{heads})")


def region(mask: Mask | None, *, q_start: int, kv_start: int, q_len: int, kv_len: int, heads: int | None = None,
           head_start: int = 0) -> Mask:
    """The global ``mask`` of a ``q_len x kv_len`` problem, seen from the block at ``(q_start, kv_start)``.

    Entry ``(i, j)`` of the result (head ``h``) is entry ``(q_start + i, kv_start + j)`` (head
    ``head_start + h``) of ``mask``; positional masks keep their global alignment (``Q != K`` aligns the
    global queries to the end of the global keys). ``None`` or ``full()`` stays ``full()``.

    Args:
        mask: the global mask.
        q_start, kv_start: the block's first global query and key.
        q_len, kv_len: the global lengths.
        heads, head_start: the global head count and the block's first head (needed when the mask depends
            on the head).

    Raises:
        TypeError, ValueError: a bad argument (named); at lowering, a block outside the global matrix.
    """
    if mask is None or isinstance(mask, Full):
        return Full()
    if not mask.head_dependent:  # the head offset cannot change the predicate
        heads, head_start = None, 0
    return Region(mask, q_start, kv_start, q_len, kv_len, heads, head_start)


class AtPositions(Mask):
    kind = "at_positions"

    def __init__(self, inner: Mask, q_positions: Tensor, kv_positions: Tensor):
        if not isinstance(inner, Mask):
            raise TypeError(f"mask: expected a veil Mask, got {type(inner).__name__}")
        for name, t in (("q_positions", q_positions), ("kv_positions", kv_positions)):
            if not isinstance(t, torch.Tensor) or t.dtype.is_floating_point or t.dtype == torch.bool or t.dim() != 1:
                got = f"{t.dtype} {list(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
                raise TypeError(f"{name}: expected an int tensor [L], got {got}")
        self.inner, self.q_positions, self.kv_positions = inner, q_positions, kv_positions
        self.batch_dependent = inner.batch_dependent
        self.head_dependent = inner.head_dependent

    def children(self):
        return (self.inner,)

    def tensors(self):
        return (self.q_positions, self.kv_positions)

    def validate(self, batch, heads, q_len, kv_len, device):
        if self.q_positions.shape[0] != q_len or self.kv_positions.shape[0] != kv_len:
            raise ValueError(f"q_positions, kv_positions: expected [Q] = [{q_len}] and [K] = [{kv_len}], got "
                             f"{list(self.q_positions.shape)} and {list(self.kv_positions.shape)}")
        for name, t in (("q_positions", self.q_positions), ("kv_positions", self.kv_positions)):
            if device is not None and t.device.type != device.type:
                raise ValueError(f"{name}: the mask's tensor is on {t.device}, the attention inputs on {device}")
        self.inner.validate(batch, heads, kv_len, kv_len, device)

    def predicate(self, ctx, b, h, q, k):
        qp = self.q_positions.to(ctx.device)[q]
        kp = self.kv_positions.to(ctx.device)[k]
        inner_ctx = Context(ctx.kv_len, ctx.kv_len, ctx.device, batch=ctx.batch)  # equal lengths: no offset
        return self.inner.predicate(inner_ctx, b, h, qp, kp) & (kp >= 0)

    def _key(self):
        return (self.inner, self.q_positions, self.kv_positions)

    def __repr__(self):
        return f"at_positions({self.inner!r}, <{list(self.q_positions.shape)}>, <{list(self.kv_positions.shape)}>)"


def at_positions(mask: Mask | None, q_positions: Tensor, kv_positions: Tensor) -> Mask:
    """``mask`` evaluated at explicit absolute positions: query ``i`` is at ``q_positions[i]``, key ``j`` at
    ``kv_positions[j]``; keys at a negative position (an empty cache slot) are never attended.

    Positional masks compare the positions themselves (no bottom-right offset): ``causal()`` keeps
    ``kv_positions[j] <= q_positions[i]`` and ``sliding_window(w)`` keeps
    ``q_positions[i] - w < kv_positions[j] <= q_positions[i]``. This is how a fixed-shape KV cache (keys in slot
    order, the same shapes at every decoding step) keeps its masks exact.

    Args:
        mask: the mask over positions (None: every key at a position >= 0).
        q_positions: int ``[Q]``.
        kv_positions: int ``[K]`` (-1 for an empty slot).
    """
    return AtPositions(Full() if mask is None else mask, q_positions, kv_positions)


def block_is_empty(mask: Mask | None, q_range: tuple[int, int], kv_range: tuple[int, int], q_len: int,
                   kv_len: int) -> bool:
    """True when the mask's structure shows no visible pair in rows ``q_range`` x keys ``kv_range``.

    Sound for every mask (a tensor-valued mask answers False); exact for causal, sliding windows, chunks,
    prefix-LM with an int prefix, spatial, frame-causal, window_3d along time, and ``&`` / ``|`` of them.
    An empty range is empty.
    """
    (q0, q1), (k0, k1) = q_range, kv_range
    if q1 <= q0 or k1 <= k0:
        return True
    if mask is None:
        return False
    off = kv_len - q_len
    a0, a1 = q0 + off, q1 - 1 + off  # absolute positions of the first and last query
    if isinstance(mask, And):
        return (block_is_empty(mask.left, q_range, kv_range, q_len, kv_len)
                or block_is_empty(mask.right, q_range, kv_range, q_len, kv_len))
    if isinstance(mask, Or):
        return (block_is_empty(mask.left, q_range, kv_range, q_len, kv_len)
                and block_is_empty(mask.right, q_range, kv_range, q_len, kv_len))
    if isinstance(mask, Region):
        return block_is_empty(mask.inner, (q0 + mask.q_start, q1 + mask.q_start),
                              (k0 + mask.kv_start, k1 + mask.kv_start), mask.q_len, mask.kv_len)
    if isinstance(mask, Causal):
        return k0 > a1
    if isinstance(mask, SlidingWindow):
        w = mask.window
        if mask.causal:
            return k0 > a1 or k1 - 1 <= a0 - w
        return k0 >= a1 + w or k1 - 1 <= a0 - w
    if isinstance(mask, Chunked):
        return k0 // mask.size > a1 // mask.size or (k1 - 1) // mask.size < a0 // mask.size
    if isinstance(mask, PrefixLM) and not isinstance(mask.prefix, torch.Tensor):
        return k0 > a1 and k0 >= mask.prefix
    if isinstance(mask, (Spatial, FrameCausal, Window3D, TileWindow)):
        hw = mask.grid[1] * mask.grid[2]
        tq0, tq1, tk0, tk1 = q0 // hw, (q1 - 1) // hw, k0 // hw, (k1 - 1) // hw
        if isinstance(mask, Spatial):
            return tk0 > tq1 or tk1 < tq0
        if isinstance(mask, FrameCausal):
            return tk0 > tq1
        if isinstance(mask, Window3D):
            w, d = mask.window[0], mask.dilation[0]
            r = (w // 2) * d if mask.border == "clip" else (w - 1) * d  # a shifted window may sit to one side
            return tk0 > tq1 + r or tk1 < tq0 - r
        if mask.order == "raster":  # tile_window: the union of the windows along time
            tt, n, nt = mask.tile[0], mask.window[0], mask.tiles[0]
            lo = min(max(tq0 // tt - n // 2, 0), nt - n)
            hi = min(max(tq1 // tt - n // 2, 0), nt - n) + n - 1
            return tk0 // tt > hi or tk1 // tt < lo
        return False
    if isinstance(mask, Sink):
        return k0 >= mask.n
    if isinstance(mask, PerHead):
        return all(block_is_empty(m, q_range, kv_range, q_len, kv_len) for m in mask.masks)
    if isinstance(mask, Not) and isinstance(mask.inner, Full):
        return True
    return False
