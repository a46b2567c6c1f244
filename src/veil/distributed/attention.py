"""Sequence-parallel attention whose masks stay exact: Ulysses, ring, and both at once.

Every rank holds a contiguous shard of the sequence (see :mod:`veil.distributed.comm` for the layout: shards
of ``ceil(n / p)`` tokens, the last ones short, nothing padded) and passes the *global* mask. Each piece of
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
  across frames) are skipped. The backward runs its own ring: key/value gradients travel with the keys and arrive home.
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
    Topology,
    agree,
    all_to_all,
    dtype_code,
    exchange,
    fingerprint,
    global_rank,
    require_initialized,
    shard_sizes,
    shard_starts,
    topology,
)
from veil.masks import Mask, block_is_empty, region

Tensor = torch.Tensor


def attend(q: Tensor, k: Tensor, v: Tensor, mask: Mask | None = None, *, group: Any = None,
           ulysses: int | None = None, ring: int | None = None, kv_sharded: bool = True,
           scale: float | None = None, softcap: float | None = None, backend: str = "auto",
           lengths: tuple[int, int] | None = None, check: bool = True) -> Tensor:
    """Attention over a sequence split across the ranks of ``group``; returns this rank's rows of the output.

    Args:
        q: ``[B, Hq, n, D]``, this rank's contiguous shard of the queries (shard ``i`` of the group holds rows
            ``[i*c, min(N, (i+1)*c))``, ``c = ceil(N / size)``; :func:`veil.distributed.shard` cuts it).
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
              "local_q": n, "local_kv": m}
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
        q_sizes = shard_sizes(n_total, topo.size)
        kv_sizes = shard_sizes(m_total, topo.size) if kv_sharded else None
        if q_sizes[topo.index] != n or (kv_sharded and kv_sizes[topo.index] != m) or (not kv_sharded and
                                                                                      m != m_total):
            raise ValueError(f"q, k: this rank (shard {topo.index}) holds {n} queries and {m} keys; global lengths "
                             f"{lengths} over {topo.size} ranks give it {q_sizes[topo.index]} and "
                             f"{kv_sizes[topo.index] if kv_sharded else m_total}")
    # from here on every rank holds the same facts, so every check below fails on all ranks alike
    for name, sizes, total in (("q", q_sizes, n_total), ("k", kv_sizes, m_total)):
        if sizes is not None and sizes != shard_sizes(total, topo.size):
            raise ValueError(f"{name}: the ranks hold {sizes} rows (group order); a global length of {total} over "
                             f"{topo.size} ranks is sharded as {shard_sizes(total, topo.size)} (contiguous shards of "
                             "ceil(N / size), the last ones short): use veil.distributed.shard")
    if mask is not None:
        mask.validate(b, hq, n_total, m_total, q.device)
    start = shard_starts(q_sizes)[topo.index]
    if not kv_sharded:
        return local_attend(q, k, v, _view(mask, start, 0, n_total, m_total, hq, 0, (n, m)), scale=scale,
                            softcap=softcap, backend=backend)
    if hq % topo.ulysses:
        raise ValueError(f"q: {hq} query heads do not divide by the Ulysses degree {topo.ulysses}; use ring= for the "
                         "rest of the group (ulysses * ring == size), or a head count that divides")
    u_groups = [q_sizes[r * topo.ulysses:(r + 1) * topo.ulysses] for r in range(topo.ring)]
    k_groups = [kv_sizes[r * topo.ulysses:(r + 1) * topo.ulysses] for r in range(topo.ring)]
    if topo.ulysses > 1:
        q, k, v, kv_heads = _seq_to_heads(q, k, v, topo, u_groups[topo.ring_rank], k_groups[topo.ring_rank])
    h0 = topo.ulysses_rank * (hq // topo.ulysses)
    if topo.ring == 1:
        out = local_attend(q, k, v, _view(mask, 0, 0, n_total, m_total, hq, h0, (q.shape[2], k.shape[2])),
                           scale=scale, softcap=softcap, backend=backend)
    else:
        q_super = [sum(s) for s in u_groups]
        k_super = [sum(s) for s in k_groups]
        out = _Ring.apply(q, k, v, mask, scale, softcap, topo, q_super, k_super, n_total, m_total, hq, h0)
    if topo.ulysses > 1:
        out = _heads_to_seq(out, topo, u_groups[topo.ring_rank])
    return out


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
    """Ring attention over super-shards; the backward runs a second ring carrying dk, dv home."""

    @staticmethod
    def forward(ctx, q, k, v, mask, scale, softcap, topo: Topology, q_sizes, k_sizes, n_total, m_total, heads, h0):
        r, me, nxt, prv, q_range, k_ranges = _ring_plan(topo, q_sizes, k_sizes)
        b, hkv, _, d = k.shape
        dv = v.shape[3]
        buf = _pack(k, v)
        out = lse = None
        for step in range(r):
            src = (me - step) % r
            reqs, nbuf = [], None
            if step < r - 1:
                nsrc = (me - step - 1) % r
                nbuf = buf.new_empty(b * hkv * k_sizes[nsrc] * (d + dv))
                reqs = exchange([buf], nxt, [nbuf], prv)
            k_range = k_ranges[src]
            if not block_is_empty(mask, q_range, k_range, n_total, m_total):
                ks, vs = _unpack(buf, b, hkv, k_sizes[src], d, dv)
                blk = _block_mask(mask, q_range[0], k_range[0], n_total, m_total, heads, h0)
                o, s = partial_attention(q, ks, vs, blk, scale, softcap)
                out, lse = (o, s) if out is None else merge_partials([out, o], [lse, s])
            for req in reqs:
                req.wait()
            if nbuf is not None:
                buf = nbuf
        if out is None:  # every block empty: rows that see no key are exactly 0
            out = q.new_zeros(*q.shape[:3], dv)
            lse = torch.full(q.shape[:3], float("-inf"), device=q.device)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.args = (mask, scale, softcap, topo, q_sizes, k_sizes, n_total, m_total, heads, h0)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse = ctx.saved_tensors
        mask, scale, softcap, topo, q_sizes, k_sizes, n_total, m_total, heads, h0 = ctx.args
        r, me, nxt, prv, q_range, k_ranges = _ring_plan(topo, q_sizes, k_sizes)
        b, hkv, _, d = k.shape
        dv = v.shape[3]
        grad_out = grad_out.contiguous()
        dq = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
        buf = _pack(k, v)
        acc = torch.zeros(buf.shape, dtype=torch.float32, device=buf.device)  # this block's dk, dv so far
        for step in range(r):
            src = (me - step) % r
            k_range = k_ranges[src]
            if not block_is_empty(mask, q_range, k_range, n_total, m_total):
                ks, vs = _unpack(buf, b, hkv, k_sizes[src], d, dv)
                blk = _block_mask(mask, q_range[0], k_range[0], n_total, m_total, heads, h0)
                gq, gk, gv = partial_grads(q, ks, vs, blk, scale, softcap, out, lse, grad_out, None)
                dq += gq
                acc += _pack(gk.float(), gv.float())
            # pass the block and its gradient on; after the last step only the gradient moves, to its owner
            nsrc = (me - step - 1) % r
            nacc = acc.new_empty(b * hkv * k_sizes[nsrc] * (d + dv))
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


def _ring_plan(topo: Topology, q_sizes: list[int], k_sizes: list[int]):
    """This rank's place in the ring: (size, ring rank, next and previous global ranks, its query range, every
    key super-shard's range)."""
    r, me = topo.ring, topo.ring_rank
    q_starts, k_starts = shard_starts(q_sizes), shard_starts(k_sizes)
    nxt = global_rank(topo.ring_group, (me + 1) % r)
    prv = global_rank(topo.ring_group, (me - 1) % r)
    k_ranges = [(s, s + n) for s, n in zip(k_starts, k_sizes)]
    return r, me, nxt, prv, (q_starts[me], q_starts[me] + q_sizes[me]), k_ranges


def _pack(k: Tensor, v: Tensor) -> Tensor:
    return torch.cat([k.reshape(-1), v.reshape(-1)])


def _unpack(buf: Tensor, b: int, h: int, n: int, d: int, dv: int) -> tuple[Tensor, Tensor]:
    a = b * h * n * d
    return buf[:a].view(b, h, n, d), buf[a:a + b * h * n * dv].view(b, h, n, dv)


def _block_mask(mask, q_start, k_start, n_total, m_total, heads, h0):
    # the global mask was validated once by attend; region() only shifts its positions
    if mask is None:
        return None
    return region(mask, q_start=q_start, kv_start=k_start, q_len=n_total, kv_len=m_total, heads=heads,
                  head_start=h0)


def ring_blocks(mask: Mask | None, n_total: int, m_total: int, size: int) -> list[int]:
    """Key blocks each rank of a ring of ``size`` computes (the others are empty under ``mask``'s structure): the
    ring's work per rank, whose spread is its load imbalance (causal: rank ``i`` computes ``i + 1`` blocks)."""
    qs, ks = shard_sizes(n_total, size), shard_sizes(m_total, size)
    q0, k0 = shard_starts(qs), shard_starts(ks)
    return [sum(not block_is_empty(mask, (q0[i], q0[i] + qs[i]), (k0[j], k0[j] + ks[j]), n_total, m_total)
                for j in range(size)) for i in range(size)]


def ring_skips(mask: Mask | None, n_total: int, m_total: int, size: int) -> float:
    """Fraction of the ``size x size`` (query shard, key shard) blocks a ring skips for this mask and length."""
    return 1.0 - sum(ring_blocks(mask, n_total, m_total, size)) / float(size * size)
