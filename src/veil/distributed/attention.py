"""Sequence-parallel attention whose masks stay exact: Ulysses, ring, and both at once.

Every rank holds a shard of the sequence (see :mod:`veil.distributed.comm` for the layouts: contiguous shards
of ``ceil(n / p)`` tokens, or zig-zag pairs of chunks; the last pieces short, nothing padded) and passes the
*global* mask. Each piece of
work evaluates the global mask at its global positions (:func:`veil.masks.region`), so every mask the
language can express (causal, windows, padding, documents, video masks, ...) gives, forward and backward, the
result of one process up to float rounding, for any sequence length.

- Ulysses (``ulysses=U``): one all-to-all turns ``[B, H, n/U, D]`` sequence shards into ``[B, H/U, n, D]`` head
  shards (q, k and v packed into one collective), one exact ``veil.attend`` runs over the whole sequence on
  its heads (the fastest backend for the mask: ``tiles`` for video windows, ...), and one all-to-all turns the
  output back. Query heads must divide by ``U``; key/value heads that do not (GQA / MQA with fewer KV heads
  than ``U``) are replicated to the ranks that need them.
- Ring (``ring=R``): keys and values travel around the ring (``batch_isend_irecv``, the next step's transfer
  overlapping this step's work); each step computes this rank's queries against one key shard
  (:func:`veil.attention.partial_attention`) and merges the partial results by their log-sum-exp. Steps
  whose block the mask's structure shows empty (causal above the diagonal, windows, frame-causal, spatial
  across frames) are skipped; the zig-zag layout spreads what is left evenly under causal masks. The backward
  runs its own ring: key/value gradients travel with the keys and arrive home.
- Hybrid: ``ulysses * ring`` = the group size (Ulysses inside consecutive ranks, a ring across them).
- Cross-attention to replicated text (``kv_sharded=False``): no communication at all, each rank attends its
  queries to the whole text under its rows of the mask (padded text stays masked).

Legend: B batch, Hq query heads, Hkv key/value heads, n this rank's tokens, N global tokens, D head dim.
"""

from __future__ import annotations

from typing import Any

import torch

from veil.attention import attend as local_attend
from veil.attention import merge_partials, partial_attention, partial_grads
from veil.attention.api import validate
from veil.distributed.comm import (
    LAYOUTS,
    Topology,
    agree,
    all_to_all,
    check_layout,
    dtype_code,
    exchange,
    fingerprint,
    global_rank,
    local_offsets,
    require_initialized,
    shard_ranges,
    shard_sizes,
    topology,
)
from veil.masks import Mask, block_is_empty, region

Tensor = torch.Tensor


def attend(q: Tensor, k: Tensor, v: Tensor, mask: Mask | None = None, *, group: Any = None,
           ulysses: int | None = None, ring: int | None = None, kv_sharded: bool = True,
           scale: float | None = None, softcap: float | None = None, backend: str = "auto",
           lengths: tuple[int, int] | None = None, check: bool = True, layout: str = "contiguous") -> Tensor:
    """Attention over a sequence split across the ranks of ``group``; returns this rank's rows of the output.

    Args:
        q: ``[B, Hq, n, D]``, this rank's shard of the queries (with the default layout shard ``i`` of the group
            holds rows ``[i*c, min(N, (i+1)*c))``, ``c = ceil(N / size)``; :func:`veil.distributed.shard` cuts it).
        k, v: ``[B, Hkv, m, D]`` / ``[B, Hkv, m, Dv]``: this rank's shards of the keys and values (same layout,
            their own global length), or with ``kv_sharded=False`` the whole keys and values, the same on every
            rank (e.g. text for cross-attention).
        mask: the *global* mask (as for one process over the whole sequence), or None.
        group: a ProcessGroup (default: the world), a 1D DeviceMesh, or a 2D DeviceMesh with dims
            ``("ring", "ulysses")``.
        ulysses, ring: the degrees, ``ulysses * ring == size``; give one and the other follows. Default: Ulysses
            when ``Hq`` divides by the group size, else a ring.
        kv_sharded: False when k and v are whole on every rank (no communication is needed).
        scale, softcap, backend: as in :func:`veil.attend` (``backend`` runs the Ulysses and replicated-KV paths;
            ring steps use :func:`veil.attention.partial_attention`).
        lengths: the global ``(query, key)`` lengths, when the caller knows them.
        layout: how the sequence is cut: ``"contiguous"``, or ``"zigzag"`` (each rank holds one early and one late
            chunk, which balances a ring under causal masks; see :mod:`veil.distributed.comm`). The keys follow
            the same layout.
        check: compare shapes, dtypes and masks across the ranks first (one small all-gather and a host sync per
            call). ``check=False`` with ``lengths`` skips it: each rank then checks only its own shard against the
            layout, and a rank whose call differs from its peers' is no longer caught before the collectives.

    Returns:
        ``[B, Hq, n, Dv]``: this rank's rows of the attention over the whole sequence.

    Raises:
        ValueError, TypeError: no initialised process group, degrees that do not fit the group or the heads,
            shards that do not follow the layout, ranks that disagree on shapes, dtypes or the mask, or a mask
            that does not fit the global shapes. Every rank of the group raises (a shared check precedes any
            other collective), so none is left waiting.
    """
    require_initialized("attend")
    if not isinstance(kv_sharded, bool):
        raise TypeError(f"kv_sharded: expected a bool, got {type(kv_sharded).__name__}")
    heads = q.shape[1] if isinstance(q, torch.Tensor) and q.dim() == 4 else 0
    topo = topology(group, ulysses, ring, heads)
    pg = topo.group
    error = None
    try:
        scale = validate(q, k, v, None, scale, softcap)
        if mask is not None and not isinstance(mask, Mask):
            raise TypeError(f"mask: expected a veil.masks.Mask or None, got {type(mask).__name__}")
    except (TypeError, ValueError) as e:
        error = f"{type(e).__name__}: {e}"
        mask = None
    shapes = (tuple(q.shape), tuple(k.shape), tuple(v.shape)) if error is None else ((0,) * 4,) * 3
    (b, hq, n, d), (_, hkv, m, _), (_, _, _, dv) = shapes
    fields = {"batch": b, "query heads": hq, "key/value heads": hkv, "head dim": d, "value head dim": dv,
              "dtype": dtype_code(q.dtype) if error is None else 0, "mask": fingerprint(mask),
              "layout": LAYOUTS.index(check_layout(layout)), "local_q": n, "local_kv": m}
    if not kv_sharded:
        fields["key/value length (replicated keys must be whole on every rank)"] = m
    if lengths is not None and (not isinstance(lengths, tuple) or len(lengths) != 2 or
                                not all(isinstance(x, int) and x >= 0 for x in lengths)):
        raise ValueError(f"lengths: expected (query length, key length) as two ints >= 0, got {lengths!r}")
    if check or lengths is None:
        rows = agree(pg, fields, error, q.device)
        q_sizes = [r[list(fields).index("local_q")] for r in rows]
        kv_sizes = [r[list(fields).index("local_kv")] for r in rows] if kv_sharded else None
        n_total = sum(q_sizes)
        m_total = sum(kv_sizes) if kv_sharded else m
        if lengths is not None and lengths != (n_total, m_total):
            raise ValueError(f"lengths: the shards add up to {(n_total, m_total)}, got {lengths}")
    else:
        if error is not None:
            raise ValueError(error)
        n_total, m_total = lengths
        q_sizes = shard_sizes(n_total, topo.size, layout)
        kv_sizes = shard_sizes(m_total, topo.size, layout) if kv_sharded else None
        if q_sizes[topo.index] != n or (kv_sharded and kv_sizes[topo.index] != m) or (not kv_sharded and
                                                                                      m != m_total):
            raise ValueError(f"q, k: this rank (shard {topo.index}) holds {n} queries and {m} keys; global lengths "
                             f"{lengths} over {topo.size} ranks give it {q_sizes[topo.index]} and "
                             f"{kv_sizes[topo.index] if kv_sharded else m_total}")
    # from here on every rank holds the same facts, so every check below fails on all ranks alike
    for name, sizes, total in (("q", q_sizes, n_total), ("k", kv_sizes, m_total)):
        if sizes is not None and sizes != shard_sizes(total, topo.size, layout):
            raise ValueError(f"{name}: the ranks hold {sizes} rows (group order); a global length of {total} over "
                             f"{topo.size} ranks in the {layout!r} layout is sharded as "
                             f"{shard_sizes(total, topo.size, layout)}: use veil.distributed.shard")
    if mask is not None:
        mask.validate(b, hq, n_total, m_total, q.device)
    q_ranges = shard_ranges(n_total, topo.size, layout)
    if not kv_sharded:  # each of this rank's query ranges against the whole keys
        outs = [local_attend(q.narrow(2, off, hi - lo), k, v,
                             _view(mask, lo, 0, n_total, m_total, hq, 0, (hi - lo, m)),
                             scale=scale, softcap=softcap, backend=backend)
                for (lo, hi), off in zip(q_ranges[topo.index], local_offsets(q_ranges[topo.index]))]
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
    if hq % topo.ulysses:
        raise ValueError(f"q: {hq} query heads do not divide by the Ulysses degree {topo.ulysses}; use ring= for the "
                         "rest of the group (ulysses * ring == size), or a head count that divides")
    k_ranges = shard_ranges(m_total, topo.size, layout)
    u = topo.ulysses
    # what each ring member holds after its Ulysses all-to-all: its group's ranges, in rank order
    q_members = [sum(q_ranges[r * u:(r + 1) * u], []) for r in range(topo.ring)]
    k_members = [sum(k_ranges[r * u:(r + 1) * u], []) for r in range(topo.ring)]
    me = topo.ring_rank
    if u > 1:
        q, k, v, _ = _seq_to_heads(q, k, v, topo, q_sizes[me * u:(me + 1) * u], kv_sizes[me * u:(me + 1) * u])
    h0 = topo.ulysses_rank * (hq // u)
    if topo.ring == 1:  # the whole sequence for these heads: one attend, in natural order
        q_perm, k_perm = _natural(q_members[0], q.device), _natural(k_members[0], q.device)
        if q_perm is not None:
            q = q.index_select(2, q_perm)
        if k_perm is not None:
            k, v = k.index_select(2, k_perm), v.index_select(2, k_perm)
        out = local_attend(q, k, v, _view(mask, 0, 0, n_total, m_total, hq, h0, (q.shape[2], k.shape[2])),
                           scale=scale, softcap=softcap, backend=backend)
        if q_perm is not None:
            out = out.index_select(2, torch.argsort(q_perm))
    else:
        out = _Ring.apply(q, k, v, mask, scale, softcap, topo, q_members, k_members, n_total, m_total, hq, h0)
    if u > 1:
        out = _heads_to_seq(out, topo, q_sizes[me * u:(me + 1) * u])
    return out


def _natural(ranges: list[tuple[int, int]], device: torch.device) -> Tensor | None:
    """The permutation that puts a concatenation of ``ranges`` in global order (None when it already is)."""
    if all(ranges[i][1] <= ranges[i + 1][0] or ranges[i + 1][0] == ranges[i + 1][1] for i in range(len(ranges) - 1)):
        return None
    order = sorted(range(len(ranges)), key=lambda i: ranges[i][0])
    offsets = local_offsets(ranges)
    return torch.cat([torch.arange(offsets[i], offsets[i] + ranges[i][1] - ranges[i][0], device=device)
                      for i in order])


def _view(mask: Mask | None, q_start: int, kv_start: int, q_len: int, kv_len: int, heads: int,
          head_start: int, block: tuple[int, int]) -> Mask | None:
    """The global mask as seen by a block of ``block`` = (rows, keys); the mask itself when the block is the
    whole problem (backends then see its structure: tiles for video windows, varlen for documents, ...)."""
    if mask is None:
        return None
    whole = q_start == 0 and kv_start == 0 and block == (q_len, kv_len)
    if whole and (head_start == 0 or not mask.head_dependent):
        return mask
    return region(mask, q_start=q_start, kv_start=kv_start, q_len=q_len, kv_len=kv_len, heads=heads,
                  head_start=head_start)


def _kv_heads_for(rank: int, hl: int, hq: int, hkv: int) -> list[int]:
    """The key/value heads rank ``rank`` of a Ulysses group needs for its query heads, deduplicated when each is
    shared by the same number of them (else one per query head)."""
    g = hq // hkv
    need = [(rank * hl + i) // g for i in range(hl)]
    unique = sorted(set(need))
    if hl % len(unique) == 0 and need == [h for h in unique for _ in range(hl // len(unique))]:
        return unique
    return need


def _seq_to_heads(q, k, v, topo: Topology, q_sizes: list[int], k_sizes: list[int]):
    """Sequence shards -> head shards over the Ulysses group, q, k and v in one all-to-all."""
    u, me = topo.ulysses, topo.ulysses_rank
    b, hq, _, d = q.shape
    hkv, dv = k.shape[1], v.shape[3]
    hl = hq // u
    kv_heads = [_kv_heads_for(j, hl, hq, hkv) for j in range(u)]
    pieces, send = [], []
    for j in range(u):
        idx = torch.tensor(kv_heads[j], device=q.device)
        parts = [q[:, j * hl:(j + 1) * hl], k.index_select(1, idx), v.index_select(1, idx)]
        pieces += [p.reshape(-1) for p in parts]
        send.append(sum(p.numel() for p in parts))
    nk = len(kv_heads[me])
    recv = [b * hl * qs * d + b * nk * ks * (d + dv) for qs, ks in zip(q_sizes, k_sizes)]
    flat = all_to_all(torch.cat(pieces), send, recv, topo.ulysses_group)
    qs_, ks_, vs_ = [], [], []
    for j, chunk in enumerate(flat.split(recv)):
        a, bq = b * hl * q_sizes[j] * d, b * nk * k_sizes[j] * d
        qs_.append(chunk[:a].view(b, hl, q_sizes[j], d))
        ks_.append(chunk[a:a + bq].view(b, nk, k_sizes[j], d))
        vs_.append(chunk[a + bq:].view(b, nk, k_sizes[j], dv))
    return torch.cat(qs_, 2), torch.cat(ks_, 2), torch.cat(vs_, 2), kv_heads[me]  # (B, H/U, N_group, D)


def _heads_to_seq(out: Tensor, topo: Topology, q_sizes: list[int]) -> Tensor:
    """Head shards -> sequence shards over the Ulysses group (the inverse of :func:`_seq_to_heads` for out)."""
    u, me = topo.ulysses, topo.ulysses_rank
    b, hl, _, dv = out.shape
    pieces = [p.reshape(-1) for p in out.split(q_sizes, dim=2)]
    send = [b * hl * s * dv for s in q_sizes]
    recv = [b * hl * q_sizes[me] * dv] * u
    flat = all_to_all(torch.cat(pieces), send, recv, topo.ulysses_group)
    return torch.cat([c.view(b, hl, q_sizes[me], dv) for c in flat.split(recv)], dim=1)  # (B, Hq, n, Dv)


class _Ring(torch.autograd.Function):
    """Ring attention; the backward runs a second ring carrying dk, dv home.

    Member ``j`` of the ring holds the queries and keys of the global ranges ``q_members[j]`` / ``k_members[j]``
    (one range for the contiguous layout, two per rank for zig-zag, concatenated in that order). Each step works
    on every (query range, key range) pair whose block the mask leaves non-empty.
    """

    @staticmethod
    def forward(ctx, q, k, v, mask, scale, softcap, topo: Topology, q_members, k_members, n_total, m_total, heads,
                h0):
        r, me, nxt, prv = _ring_peers(topo)
        b, hkv, _, d = k.shape
        dv = v.shape[3]
        k_sizes = [sum(hi - lo for lo, hi in ranges) for ranges in k_members]
        buf = _pack(k, v)
        out = q.new_zeros(*q.shape[:3], dv)
        lse = torch.full(q.shape[:3], float("-inf"), device=q.device)
        for step in range(r):
            src = (me - step) % r
            reqs, nbuf = [], None
            if step < r - 1:
                nbuf = buf.new_empty(b * hkv * k_sizes[(me - step - 1) % r] * (d + dv))
                reqs = exchange([buf], nxt, [nbuf], prv)
            ks, vs = _unpack(buf, b, hkv, k_sizes[src], d, dv)
            for (qa, qb), qo, (ka, kb), ko in _blocks(mask, q_members[me], k_members[src], n_total, m_total):
                blk = _view(mask, qa, ka, n_total, m_total, heads, h0, (qb - qa, kb - ka))
                rows, keys = slice(qo, qo + qb - qa), slice(ko, ko + kb - ka)
                o, s_ = partial_attention(q[:, :, rows], ks[:, :, keys], vs[:, :, keys], blk, scale, softcap)
                out[:, :, rows], lse[:, :, rows] = merge_partials([out[:, :, rows], o], [lse[:, :, rows], s_])
            for req in reqs:
                req.wait()
            if nbuf is not None:
                buf = nbuf
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.args = (mask, scale, softcap, topo, q_members, k_members, n_total, m_total, heads, h0)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse = ctx.saved_tensors
        mask, scale, softcap, topo, q_members, k_members, n_total, m_total, heads, h0 = ctx.args
        r, me, nxt, prv = _ring_peers(topo)
        b, hkv, _, d = k.shape
        dv = v.shape[3]
        k_sizes = [sum(hi - lo for lo, hi in ranges) for ranges in k_members]
        grad_out = grad_out.contiguous()
        dq = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
        buf = _pack(k, v)
        acc = torch.zeros(buf.shape, dtype=torch.float32, device=buf.device)  # the held block's dk, dv so far
        for step in range(r):
            src = (me - step) % r
            ks, vs = _unpack(buf, b, hkv, k_sizes[src], d, dv)
            dks, dvs = _unpack(acc, b, hkv, k_sizes[src], d, dv)  # views: adding to them adds to acc
            for (qa, qb), qo, (ka, kb), ko in _blocks(mask, q_members[me], k_members[src], n_total, m_total):
                blk = _view(mask, qa, ka, n_total, m_total, heads, h0, (qb - qa, kb - ka))
                rows, keys = slice(qo, qo + qb - qa), slice(ko, ko + kb - ka)
                gq, gk, gv = partial_grads(q[:, :, rows], ks[:, :, keys], vs[:, :, keys], blk, scale, softcap,
                                           out[:, :, rows], lse[:, :, rows], grad_out[:, :, rows], None)
                dq[:, :, rows] += gq
                dks[:, :, keys] += gk
                dvs[:, :, keys] += gv
            # pass the block and its gradient on; after the last step only the gradient moves, to its owner
            nacc = acc.new_empty(b * hkv * k_sizes[(me - step - 1) % r] * (d + dv))
            nbuf = buf.new_empty(nacc.numel()) if step < r - 1 else None
            if nbuf is not None:
                reqs = exchange([acc, buf], nxt, [nacc, nbuf], prv)
            else:
                reqs = exchange([acc], nxt, [nacc], prv)
            for req in reqs:
                req.wait()
            acc = nacc
            if nbuf is not None:
                buf = nbuf
        dk, dv_ = _unpack(acc, b, hkv, k_sizes[me], d, dv)
        return (dq.to(q.dtype), dk.to(k.dtype), dv_.to(v.dtype)) + (None,) * 10


def _blocks(mask, q_ranges, k_ranges, n_total, m_total):
    """The (query range, its local offset, key range, its local offset) pairs whose block is not empty."""
    q_offs, k_offs = local_offsets(q_ranges), local_offsets(k_ranges)
    return [(qr, qo, kr, ko) for qr, qo in zip(q_ranges, q_offs) for kr, ko in zip(k_ranges, k_offs)
            if not block_is_empty(mask, qr, kr, n_total, m_total)]


def _ring_peers(topo: Topology) -> tuple[int, int, int, int]:
    """(ring size, this member's ring rank, the next and the previous member's global ranks)."""
    r, me = topo.ring, topo.ring_rank
    return r, me, global_rank(topo.ring_group, (me + 1) % r), global_rank(topo.ring_group, (me - 1) % r)


def _pack(k: Tensor, v: Tensor) -> Tensor:
    return torch.cat([k.reshape(-1), v.reshape(-1)])


def _unpack(buf: Tensor, b: int, h: int, n: int, d: int, dv: int) -> tuple[Tensor, Tensor]:
    a = b * h * n * d
    return buf[:a].view(b, h, n, d), buf[a:a + b * h * n * dv].view(b, h, n, dv)


def ring_blocks(mask: Mask | None, n_total: int, m_total: int, size: int, layout: str = "contiguous") -> list[int]:
    """Blocks of (query range, key range) pairs each rank of a ring of ``size`` computes (the others are empty
    under ``mask``'s structure): the ring's work per rank, whose spread is its load imbalance. With the contiguous
    layout a causal mask gives rank ``i`` ``i + 1`` blocks; the zig-zag layout evens that out."""
    qs, ks = shard_ranges(n_total, size, layout), shard_ranges(m_total, size, layout)
    return [sum(not block_is_empty(mask, qr, kr, n_total, m_total) for j in range(size) for qr in qs[i]
                for kr in ks[j]) for i in range(size)]


def ring_skips(mask: Mask | None, n_total: int, m_total: int, size: int, layout: str = "contiguous") -> float:
    """Fraction of the (query range, key range) blocks a ring skips for this mask, length and layout."""
    per_rank = len(shard_ranges(n_total, size, layout)[0]) * len(shard_ranges(m_total, size, layout)[0])
    return 1.0 - sum(ring_blocks(mask, n_total, m_total, size, layout)) / float(size * size * per_rank)
