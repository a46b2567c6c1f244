"""The collectives sequence parallelism needs, on ``torch.distributed`` (gloo on CPU, nccl on CUDA).

- The layouts: a sequence of ``n`` tokens over ``p`` ranks. ``"contiguous"`` (default) cuts it into shards of
  ``c = ceil(n / p)`` tokens, shard ``i`` holding tokens ``[i*c, min(n, (i+1)*c))``. ``"zigzag"`` cuts it into
  ``2p`` chunks of ``ceil(n / 2p)`` and gives shard ``i`` chunks ``i`` and ``2p - 1 - i`` (one early, one late:
  under a causal mask every rank of a ring then does the same work). The last pieces may be short or empty;
  nothing is padded, so no mask has to hide padding and every result stays exact.
- :func:`shard` / :func:`gather`: cut a full tensor into this rank's shard, and put the shards back together.
- :class:`Topology`: the sequence-parallel group split into Ulysses groups (all-to-all over heads) and ring
  groups (keys and values passed around), ``ulysses * ring = size``.
- :func:`all_to_all`: one differentiable ``all_to_all_single`` with uneven splits (its backward is the
  reverse all-to-all). Each direction of a layer packs everything it moves into one collective: several
  collectives whose backward order autograd is free to choose pair up wrongly across ranks.
- :func:`agree`: one small all-gather that checks that every rank makes the same call, so that a rank with a
  bad input raises the same error as its peers instead of leaving them waiting in a collective.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
import torch.distributed as dist

from veil.masks import Mask

Tensor = torch.Tensor


LAYOUTS = ("contiguous", "zigzag")
Ranges = list[tuple[int, int]]


def check_layout(layout: str) -> str:
    if layout not in LAYOUTS:
        raise ValueError(f"layout: expected one of {LAYOUTS}, got {layout!r}")
    return layout


def _pieces(n: int, count: int) -> Ranges:
    c = -(-n // count) if count else 0
    return [(min(n, i * c), min(n, (i + 1) * c)) for i in range(count)]


def shard_ranges(n: int, parts: int, layout: str = "contiguous") -> list[Ranges]:
    """For each of ``parts`` shards of ``n`` tokens, the global ``[start, stop)`` ranges it holds, in the order
    the shard concatenates them (see the layouts in this module's docstring)."""
    check_layout(layout)
    if layout == "contiguous":
        return [[r] for r in _pieces(n, parts)]
    chunks = _pieces(n, 2 * parts)
    return [[chunks[i], chunks[2 * parts - 1 - i]] for i in range(parts)]


def shard_sizes(n: int, parts: int, layout: str = "contiguous") -> list[int]:
    """Token counts of the ``parts`` shards of ``n`` tokens."""
    return [sum(b - a for a, b in ranges) for ranges in shard_ranges(n, parts, layout)]


def local_offsets(ranges: Ranges) -> list[int]:
    """Where each global range starts in the tensor that concatenates them."""
    out, s = [], 0
    for a, b in ranges:
        out.append(s)
        s += b - a
    return out


def require_initialized(what: str) -> None:
    if not dist.is_available() or not dist.is_initialized():
        raise ValueError(
            f"{what}: torch.distributed is not initialised; launch with torchrun (which sets RANK, WORLD_SIZE, "
            "MASTER_ADDR, MASTER_PORT) and call veil.distributed.init() or "
            "torch.distributed.init_process_group() first"
        )


@dataclass(frozen=True)
class Topology:
    """A sequence-parallel group cut into ``ring`` consecutive Ulysses groups of ``ulysses`` ranks.

    Sequence shard ``index = ring_rank * ulysses + ulysses_rank`` lives on this rank: a Ulysses group holds
    consecutive shards, so after its all-to-all each member holds one contiguous super-shard (for a subset of
    the heads), and the ring passes super-shards around.
    """

    group: dist.ProcessGroup
    size: int
    index: int
    ulysses: int
    ring: int
    ulysses_group: dist.ProcessGroup | None
    ring_group: dist.ProcessGroup | None

    @property
    def ulysses_rank(self) -> int:
        return self.index % self.ulysses

    @property
    def ring_rank(self) -> int:
        return self.index // self.ulysses


_TOPOLOGIES: dict[tuple, Topology] = {}
_SENT = [0]  # bytes this process has sent to other ranks through all_to_all and exchange (for benchmarks)


def bytes_sent(reset: bool = False) -> int:
    """Bytes this process sent to other ranks through :func:`all_to_all` and :func:`exchange` so far (the
    sequence-parallel attention traffic; the small agreement gather is not counted); ``reset`` zeroes it."""
    n = _SENT[0]
    if reset:
        _SENT[0] = 0
    return n


def _subgroups(ranks: list[list[int]], me: int) -> dist.ProcessGroup | None:
    """The process group of the list holding ``me`` (created by its members only)."""
    for members in ranks:
        if me in members:
            if len(members) == 1:
                return None
            return dist.new_group(members, use_local_synchronization=True)
    raise AssertionError("unreachable: every rank is in one list")


def topology(group, ulysses: int | None, ring: int | None, heads: int) -> Topology:
    """Resolve ``group`` (a ProcessGroup, None for the world, or a 1D / 2D ``DeviceMesh`` with dims "ring" and
    "ulysses") and the degrees into a cached :class:`Topology`.

    With neither degree given: Ulysses over the whole group when ``heads`` divides by its size, else a ring.

    Raises:
        ValueError: degrees that do not multiply to the group size, or a bad ``group``.
    """
    mesh_groups = None
    if group is not None and type(group).__name__ == "DeviceMesh":
        names = tuple(group.mesh_dim_names or ())
        if group.ndim == 2 and set(names) == {"ring", "ulysses"}:
            mesh_groups = (group.get_group("ulysses"), group.get_group("ring"))
            mu, mr = group.size(names.index("ulysses")), group.size(names.index("ring"))
            if (ulysses is not None and ulysses != mu) or (ring is not None and ring != mr):
                raise ValueError(f"ulysses, ring: the mesh has ulysses={mu}, ring={mr}; got ulysses={ulysses}, "
                                 f"ring={ring}")
            ulysses, ring = mu, mr
            index = group.get_local_rank("ring") * mu + group.get_local_rank("ulysses")
            key = ("mesh", id(group))
            if key not in _TOPOLOGIES:
                # the whole mesh as one group (the agreement check and shard indices), in shard order
                ring_dim, uly_dim = names.index("ring"), names.index("ulysses")
                order = group.mesh.permute(ring_dim, uly_dim).flatten().tolist()
                if order == list(range(dist.get_world_size())):
                    whole = dist.group.WORLD
                else:
                    whole = dist.new_group(order, use_local_synchronization=True, sort_ranks=False)
                _TOPOLOGIES[key] = Topology(whole, mu * mr, index, mu, mr, mesh_groups[0] if mu > 1 else None,
                                            mesh_groups[1] if mr > 1 else None)
            return _TOPOLOGIES[key]
        if group.ndim != 1:
            raise ValueError(f"group: expected a ProcessGroup, None, a 1D DeviceMesh or a 2D DeviceMesh with dims "
                             f"('ring', 'ulysses'), got a DeviceMesh with dims {names}")
        group = group.get_group()
    if group is not None and not isinstance(group, dist.ProcessGroup):
        raise TypeError(f"group: expected a torch.distributed ProcessGroup, a DeviceMesh or None, got "
                        f"{type(group).__name__}")
    pg = group if group is not None else dist.group.WORLD
    size = dist.get_world_size(pg)
    for name, value in (("ulysses", ulysses), ("ring", ring)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name}: expected a positive int or None, got {value!r}")
    if ulysses is None and ring is None:
        ulysses, ring = (size, 1) if heads % size == 0 else (1, size)
    elif ulysses is None:
        ulysses = size // ring if size % ring == 0 else 0
    elif ring is None:
        ring = size // ulysses if size % ulysses == 0 else 0
    if ulysses * ring != size:
        raise ValueError(f"ulysses, ring: expected ulysses * ring == the group size {size}, got ulysses={ulysses}, "
                         f"ring={ring}")
    key = (id(pg), ulysses, ring)
    if key in _TOPOLOGIES:
        return _TOPOLOGIES[key]
    members = dist.get_process_group_ranks(pg)
    index = dist.get_rank(pg)
    me = members[index]
    uly = [[members[r * ulysses + u] for u in range(ulysses)] for r in range(ring)]
    rng = [[members[r * ulysses + u] for r in range(ring)] for u in range(ulysses)]
    # the Ulysses groups and ring groups are made by their own members (use_local_synchronization): a sequence
    # parallel group inside a larger data-parallel world needs no call from the other groups
    uly_pg = pg if ring == 1 else _subgroups(uly, me) if ulysses > 1 else None
    ring_pg = pg if ulysses == 1 else _subgroups(rng, me) if ring > 1 else None
    topo = Topology(pg, size, index, ulysses, ring, uly_pg if ulysses > 1 else None, ring_pg if ring > 1 else None)
    _TOPOLOGIES[key] = topo
    return topo


def group_index(group=None) -> tuple[int, int]:
    """``(index, size)``: which sequence shard this rank holds in ``group`` (ProcessGroup, DeviceMesh or None)."""
    require_initialized("group")
    if group is not None and type(group).__name__ == "DeviceMesh":
        names = tuple(group.mesh_dim_names or ())
        if group.ndim == 2 and set(names) == {"ring", "ulysses"}:
            u = group.size(names.index("ulysses"))
            return group.get_local_rank("ring") * u + group.get_local_rank("ulysses"), group.size()
        group = group.get_group()
    pg = group if group is not None else dist.group.WORLD
    return dist.get_rank(pg), dist.get_world_size(pg)


def _take(x: Tensor, dim: int, ranges: Ranges) -> Tensor:
    parts = [x.narrow(dim, a, b - a) for a, b in ranges]
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=dim)


def shard(x: Tensor, dim: int = 2, group=None, layout: str = "contiguous") -> Tensor:
    """This rank's shard of ``x`` along ``dim`` (see the layouts in this module's docstring)."""
    index, size = group_index(group)
    return _take(x, dim, shard_ranges(x.shape[dim], size, layout)[index])


class _Gather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dim, ranges, index, pg):
        ctx.args = (dim, ranges, index)
        sizes = [sum(b - a for a, b in r) for r in ranges]
        c = max(sizes)
        pad = list(x.shape)
        pad[dim] = c - x.shape[dim]
        padded = torch.cat([x, x.new_zeros(pad)], dim=dim).contiguous() if pad[dim] else x.contiguous()
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded, group=pg)
        pieces = []  # (global start, tensor) of every range of every rank, then in global order
        for part, rank_ranges in zip(parts, ranges):
            for (a, b), off in zip(rank_ranges, local_offsets(rank_ranges)):
                pieces.append((a, part.narrow(dim, off, b - a)))
        return torch.cat([t for _, t in sorted(pieces, key=lambda p: p[0])], dim=dim)

    @staticmethod
    def backward(ctx, grad):
        dim, ranges, index = ctx.args
        # every rank uses the gathered tensor the same way, so its gradient of this rank's rows is already here
        return _take(grad, dim, ranges[index]).contiguous(), None, None, None, None


def gather(x: Tensor, dim: int = 2, group=None, *, total: int | None = None, layout: str = "contiguous") -> Tensor:
    """Put every rank's shard back in order along ``dim``: the full tensor, on every rank.

    The backward keeps this rank's rows of the incoming gradient: it is meant for the replicated use in which
    every rank of the group computes the same thing from the gathered tensor (then that gradient is already
    the full gradient of this rank's rows; nothing is summed over ranks).

    Args:
        total: the full length along ``dim`` (default: found with one small all-gather of the shard lengths).
        layout: how the shards were cut (:func:`shard`'s ``layout``).
    """
    index, size = group_index(group)
    if group is not None and type(group).__name__ == "DeviceMesh":
        if group.ndim != 1:
            raise ValueError("group: gather over a 2D mesh needs its flattened group; pass a ProcessGroup")
        group = group.get_group()
    pg = group if group is not None else dist.group.WORLD
    if size == 1:
        return x
    if total is None:  # ask every rank for its length (one small collective)
        mine = torch.tensor([x.shape[dim]], dtype=torch.int64, device=x.device if x.is_cuda else "cpu")
        parts = [torch.empty_like(mine) for _ in range(size)]
        dist.all_gather(parts, mine, group=pg)
        total = int(sum(int(p) for p in parts))
    ranges = shard_ranges(total, size, layout)
    expected = sum(b - a for a, b in ranges[index])
    if x.shape[dim] != expected:
        raise ValueError(f"x: expected this rank's shard of {expected} along dim {dim} (total {total} over {size} "
                         f"ranks, layout {layout!r}), got {x.shape[dim]}")
    return _Gather.apply(x, dim, ranges, index, pg)


class _AllToAll(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, send, recv, pg):
        ctx.args = (send, recv, pg)
        _SENT[0] += (sum(send) - send[dist.get_rank(pg)]) * x.element_size()
        out = x.new_empty(sum(recv))
        dist.all_to_all_single(out, x.contiguous(), output_split_sizes=recv, input_split_sizes=send, group=pg)
        return out

    @staticmethod
    def backward(ctx, grad):
        send, recv, pg = ctx.args
        _SENT[0] += (sum(recv) - recv[dist.get_rank(pg)]) * grad.element_size()
        out = grad.new_empty(sum(send))
        dist.all_to_all_single(out, grad.contiguous(), output_split_sizes=send, input_split_sizes=recv, group=pg)
        return out, None, None, None


def all_to_all(x: Tensor, send: list[int], recv: list[int], group: dist.ProcessGroup) -> Tensor:
    """Differentiable ``all_to_all_single`` of a flat tensor: ``send[j]`` elements go to rank ``j``, ``recv[j]``
    come from it."""
    return _AllToAll.apply(x.reshape(-1), list(send), list(recv), group)


def global_rank(pg: dist.ProcessGroup, index: int) -> int:
    return dist.get_global_rank(pg, index)


def exchange(send: list[Tensor], to: int, recv: list[Tensor], frm: int) -> list:
    """Start sending ``send`` to global rank ``to`` and receiving ``recv`` from ``frm``, in one batch, in list
    order on both sides; empty tensors are skipped (both sides know the sizes). Returns the requests."""
    ops = [dist.P2POp(dist.isend, t, to) for t in send if t.numel()]
    _SENT[0] += sum(t.numel() * t.element_size() for t in send)
    ops += [dist.P2POp(dist.irecv, t, frm) for t in recv if t.numel()]
    return dist.batch_isend_irecv(ops) if ops else []


def fingerprint(mask: Mask | None) -> int:
    """A 63-bit digest of a mask's structure and tensor values, equal in every process (unlike ``hash``)."""
    if mask is None:
        return 0
    cached = mask.__dict__.get("_fingerprint")
    if cached is None:
        cached = int.from_bytes(hashlib.sha1(_describe(mask).encode()).digest()[:8], "little") >> 1
        mask.__dict__["_fingerprint"] = cached
    return cached


def _describe(obj) -> str:
    if isinstance(obj, Mask):
        return f"{type(obj).__name__}({_describe(obj._identity())})"
    if isinstance(obj, tuple):
        return "(" + ",".join(_describe(o) for o in obj) + ")"
    return repr(obj)


_DTYPES = {torch.float32: 1, torch.float16: 2, torch.bfloat16: 3, torch.float64: 4}


def agree(pg: dist.ProcessGroup, fields: dict[str, int], error: str | None, device: torch.device) -> list[list[int]]:
    """All-gather ``fields`` (ints) and an error flag; raise the same ``ValueError`` on every rank when any rank
    had an error or the ranks disagree on a field whose name starts without ``local_``.

    Returns:
        One list of the field values per rank (in group order).
    """
    names = list(fields)
    mine = torch.tensor([int(fields[n]) for n in names] + [1 if error else 0], dtype=torch.int64)
    if device.type == "cuda":  # nccl moves CUDA tensors only
        mine = mine.to(device)
    parts = [torch.empty_like(mine) for _ in range(dist.get_world_size(pg))]
    dist.all_gather(parts, mine, group=pg)
    rows = [p.tolist() for p in parts]
    if any(r[-1] for r in rows):
        messages: list = [None] * len(rows)
        dist.all_gather_object(messages, error, group=pg)
        first = next((i, m) for i, m in enumerate(messages) if m)
        raise ValueError(f"rank {first[0]} of the group: {first[1]}")
    for j, name in enumerate(names):
        if name.startswith("local_"):
            continue
        values = [r[j] for r in rows]
        if len(set(values)) > 1:
            what = "the mask (a different mask or different mask tensors)" if name == "mask" else name
            raise ValueError(f"ranks disagree on {what}: {values} (rank order of the group); every rank must make "
                             "the same call with its own shard")
    return [r[:-1] for r in rows]


def dtype_code(dtype: torch.dtype) -> int:
    return _DTYPES.get(dtype, 99)
