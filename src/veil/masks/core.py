"""The mask language: predicates with structure, composed with ``&``, ``|`` and ``~``.

Convention (one meaning per word): a mask is a predicate ``(b, h, q_idx, kv_idx) -> bool`` and
**True means the query may attend to the key**, as in FlexAttention's ``mask_mod``.

Positions. When the query and key lengths differ (``Q != K``), query ``i`` sits at absolute position
``i + (K - Q)``: queries are aligned to the *end* of the keys ("bottom-right"), which is what a KV
cache needs (the new tokens are the last ones). Every positional constructor (``causal``,
``sliding_window``, ``prefix_lm``, ``chunked``) uses that absolute query position. Padding, document and
video masks use plain indices.

Legend: B batch, H heads, Q query length, K key length.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch

Tensor = torch.Tensor
MaskMod = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]

# Gemma's fill: -0.7 x float32 max. The headroom means adding a score to it cannot overflow to -inf;
# two such fills summed would (we never sum fills: a bias is made from the whole predicate at once).
GEMMA_FILL = -2.3819763e38


@dataclass
class Context:
    """What a predicate needs at lowering time: the lengths and the device of the attention call."""

    q_len: int
    kv_len: int
    device: torch.device
    batch: int | None = None
    _tensors: dict[int, Tensor] = field(default_factory=dict)

    @property
    def offset(self) -> int:
        """Absolute position of query 0 (bottom-right alignment)."""
        return self.kv_len - self.q_len


class Mask:
    """Base class of every mask node. Use the constructors in :mod:`veil.masks`, not this class."""

    kind: str = "mask"
    #: True when the predicate depends on the batch index / head index.
    batch_dependent: bool = False
    head_dependent: bool = False

    # -- structure -------------------------------------------------------------------------------
    def children(self) -> tuple[Mask, ...]:
        return ()

    def tensors(self) -> tuple[Tensor, ...]:
        """Tensors this node holds (lengths, ids, flags): they must live on the attention's device."""
        return ()

    def leaves(self) -> list[Mask]:
        kids = self.children()
        if not kids:
            return [self]
        out: list[Mask] = []
        for kid in kids:
            out.extend(kid.leaves())
        return out

    def validate(self, batch: int, heads: int, q_len: int, kv_len: int, device: torch.device | None) -> None:
        """Raise ``ValueError`` when this mask cannot apply to an attention call of these sizes."""
        for kid in self.children():
            kid.validate(batch, heads, q_len, kv_len, device)

    # -- the predicate ---------------------------------------------------------------------------
    def predicate(self, ctx: Context, b: Tensor, h: Tensor, q: Tensor, k: Tensor) -> Tensor:
        """Evaluate on broadcastable integer index tensors; returns a bool tensor."""
        raise NotImplementedError

    def mask_mod(self, q_len: int, kv_len: int, device: torch.device | str = "cpu") -> MaskMod:
        """A FlexAttention-style ``mask_mod(b, h, q_idx, kv_idx)`` for these lengths."""
        ctx = Context(q_len, kv_len, torch.device(device))

        def mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
            return self.predicate(ctx, b, h, q_idx, kv_idx)

        return mod

    # -- lowerings -------------------------------------------------------------------------------
    def to_bool(
        self,
        batch: int,
        heads: int,
        q_len: int,
        kv_len: int,
        *,
        device: torch.device | str | None = None,
        q_range: tuple[int, int] | None = None,
        kv_range: tuple[int, int] | None = None,
    ) -> Tensor:
        """Dense bool mask of shape ``[B, H, Q, K]`` (True = may attend).

        Dimensions the mask does not depend on are broadcast views (``expand``), so a mask that does
        not depend on the batch or the head costs ``Q x K`` bytes. ``q_range``/``kv_range`` evaluate a
        sub-block ``[start, stop)`` of the full matrix (the lengths stay the full ones).
        """
        dev = torch.device(device) if device is not None else _tensor_device(self)
        self.validate(batch, heads, q_len, kv_len, dev)
        return self.evaluate(batch, heads, q_len, kv_len, dev, q_range, kv_range)

    def evaluate(self, batch: int, heads: int, q_len: int, kv_len: int, device: torch.device,
                 q_range: tuple[int, int] | None = None, kv_range: tuple[int, int] | None = None) -> Tensor:
        """:meth:`to_bool` without validation, for callers that validated the mask for these sizes once."""
        dev = device
        ctx = Context(q_len, kv_len, dev, batch=batch)
        q0, q1 = q_range if q_range is not None else (0, q_len)
        k0, k1 = kv_range if kv_range is not None else (0, kv_len)
        nb = batch if self.batch_dependent else 1
        nh = heads if self.head_dependent else 1
        b = torch.arange(nb, device=dev).view(nb, 1, 1, 1)
        h = torch.arange(nh, device=dev).view(1, nh, 1, 1)
        q = torch.arange(q0, q1, device=dev).view(1, 1, q1 - q0, 1)
        k = torch.arange(k0, k1, device=dev).view(1, 1, 1, k1 - k0)
        out = self.predicate(ctx, b, h, q, k)
        out = torch.broadcast_to(out, (nb, nh, q1 - q0, k1 - k0))
        return out.expand(batch, heads, q1 - q0, k1 - k0)

    def to_bias(
        self,
        batch: int,
        heads: int,
        q_len: int,
        kv_len: int,
        *,
        dtype: torch.dtype = torch.float32,
        fill: Literal["min", "gemma", "-inf"] | float = "min",
        device: torch.device | str | None = None,
    ) -> Tensor:
        """Additive bias ``[B, H, Q, K]``: 0 where attended, ``fill`` elsewhere.

        ``fill``: ``"min"`` = ``torch.finfo(dtype).min``; ``"gemma"`` = -2.3819763e38 (-0.7 x float32
        max, Gemma's value; only for dtypes that can hold it); ``"-inf"``; or a negative float. The bias
        is made from the whole predicate at once, so a composition never sums two fills.
        """
        value = fill_value(dtype, fill)
        allowed = self.to_bool(batch, heads, q_len, kv_len, device=device)
        zero = torch.zeros((), dtype=dtype, device=allowed.device)
        return torch.where(allowed, zero, torch.tensor(value, dtype=dtype, device=allowed.device))

    def density(self, batch: int = 1, heads: int = 1, q_len: int = 1, kv_len: int | None = None) -> float:
        """Fraction of (query, key) pairs that are attended, computed in row blocks (no Q x K tensor)."""
        kv_len = q_len if kv_len is None else kv_len
        nb = batch if self.batch_dependent else 1
        nh = heads if self.head_dependent else 1
        total = 0
        step = max(1, (1 << 22) // max(1, kv_len * nb * nh))
        for q0 in range(0, q_len, step):
            q1 = min(q_len, q0 + step)
            total += int(self.to_bool(nb, nh, q_len, kv_len, q_range=(q0, q1)).sum())
        return total / float(nb * nh * q_len * kv_len)

    def to_block_mask(self, batch: int, heads: int, q_len: int, kv_len: int, *, device="cpu", block_size=128):
        """FlexAttention ``BlockMask``, cached per mask, shape, device and block size."""
        from veil.masks.flex import block_mask_for

        return block_mask_for(self, batch, heads, q_len, kv_len, device=device, block_size=block_size)

    # -- composition -----------------------------------------------------------------------------
    def __and__(self, other: Mask) -> Mask:
        _check_mask(other, "&")
        if isinstance(self, Full):
            return other
        if isinstance(other, Full):
            return self
        return And(self, other)

    def __or__(self, other: Mask) -> Mask:
        _check_mask(other, "|")
        return Or(self, other)

    def __invert__(self) -> Mask:
        return Not(self)

    # Three views of a mask's identity, from ``_key()`` (structure, with the mask's tensors in place):
    # - ``==`` compares tensor values (a host copy: for people and tests, never on a hot path);
    # - ``hash`` uses the structure and the tensors' dtypes and shapes only (equal masks hash equal);
    # - :meth:`cache_key` uses the structure and the tensors' identities and versions: what the backends'
    #   plan, choice and block-mask caches key on, so a cache lookup never reads a tensor.
    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        return isinstance(other, Mask) and type(self) is type(other) and _same(self._key(), other._key())

    def __hash__(self) -> int:
        return hash((type(self).__name__, _map_tensors(self._key(), _tensor_shape)))

    def cache_key(self) -> tuple:
        """A hashable key of the structure and the tensors' identities (and in-place versions).

        Two calls with the same mask object, or with masks built from the same tensors, share it; a tensor
        changed in place gives a new key. It reads no tensor value (no host synchronisation).
        """
        return (type(self).__name__, _map_tensors(self._key(), TensorRef, lambda m: m.cache_key()))

    def _identity(self) -> tuple:
        """The structure with tensors read back by value (host copies)."""
        return _map_tensors(self._key(), tensor_key)

    def _key(self) -> tuple:
        """The structure: parameters, child masks and the tensors this node holds."""
        return ()

    def __repr__(self) -> str:
        return f"{self.kind}()"


def _check_mask(other: object, op: str) -> None:
    if not isinstance(other, Mask):
        raise TypeError(f"mask {op} other: expected a veil Mask, got {type(other).__name__}")


def _tensor_device(mask: Mask) -> torch.device:
    for leaf in mask.leaves():
        for t in leaf.tensors():
            return t.device
    return torch.device("cpu")


def tensor_key(t: Tensor) -> tuple:
    """A tensor by value (a host copy)."""
    return (str(t.dtype), tuple(t.shape), str(t.device), tuple(t.flatten().tolist()))


def _tensor_shape(t: Tensor) -> tuple:
    return (str(t.dtype), tuple(t.shape))


def _version(t: Tensor) -> int:
    # inference tensors (torch.inference_mode) keep no version counter: they are keyed by identity alone
    return -1 if t.is_inference() else t._version


class TensorRef:
    """A tensor by identity and in-place version, for cache keys: equal only to a ref of the same tensor at the
    same version. It holds the tensor, so its ``id`` cannot be reused while a cache keeps the key."""

    __slots__ = ("tensor", "version")

    def __init__(self, tensor: Tensor):
        self.tensor = tensor
        self.version = _version(tensor)

    def __hash__(self) -> int:
        return hash((id(self.tensor), self.version))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TensorRef) and other.tensor is self.tensor and other.version == self.version


def _map_tensors(obj, on_tensor, on_mask=None):
    if isinstance(obj, Tensor):
        return on_tensor(obj)
    if on_mask is not None and isinstance(obj, Mask):
        return on_mask(obj)
    if isinstance(obj, tuple):
        return tuple(_map_tensors(o, on_tensor, on_mask) for o in obj)
    return obj


def _same(a, b) -> bool:
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        return (isinstance(a, Tensor) and isinstance(b, Tensor) and a.dtype == b.dtype and a.shape == b.shape
                and a.device == b.device and bool(torch.equal(a, b)))
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


# id(tensor) -> (weakref to it, version, (min, max)); an entry leaves when its tensor dies. (Not a
# WeakKeyDictionary: it compares keys with ``==``, which for two refs of one tensor is an elementwise compare.)
_RANGES: dict[int, tuple[weakref.ref, int, tuple[int, int]]] = {}


def _forget(ident: int, ref: weakref.ref) -> None:
    hit = _RANGES.get(ident)
    if hit is not None and hit[0] is ref:
        del _RANGES[ident]


def value_range(t: Tensor) -> tuple[int, int] | None:
    """``(min, max)`` of an integer tensor, read from the host once per tensor and in-place version.

    Masks check their tensors' values (lengths within the sequence) with it, so a mask rebuilt from the same
    tensor in every layer and every call synchronises once. Returns None under ``torch.compile`` (value checks
    are skipped there: they would need the host) and for an empty tensor.
    """
    if torch.compiler.is_compiling() or t.numel() == 0:
        return None
    ident = id(t)
    hit = _RANGES.get(ident)
    if hit is not None and hit[0]() is t and hit[1] == _version(t):
        return hit[2]
    lo, hi = torch.aminmax(t.detach()) if t.dtype != torch.bool else (t.min(), t.max())
    got = (int(lo), int(hi))
    ref = weakref.ref(t, lambda r, ident=ident: _forget(ident, r))
    _RANGES[ident] = (ref, _version(t), got)
    return got


def fill_value(dtype: torch.dtype, fill: Literal["min", "gemma", "-inf"] | float) -> float:
    """The additive fill for masked entries in ``dtype``; see :meth:`Mask.to_bias`."""
    if not dtype.is_floating_point:
        raise TypeError(f"dtype: expected a floating dtype for a bias, got {dtype}")
    if fill == "min":
        return float(torch.finfo(dtype).min)
    if fill == "-inf":
        return float("-inf")
    if fill == "gemma":
        if torch.finfo(dtype).max < abs(GEMMA_FILL):
            raise ValueError(
                f"fill='gemma' (-2.3819763e38) does not fit in {dtype} (max {torch.finfo(dtype).max}); "
                "use fill='min'"
            )
        return GEMMA_FILL
    if isinstance(fill, (int, float)) and not isinstance(fill, bool):
        if fill >= 0:
            raise ValueError(f"fill: expected a negative number, 'min', 'gemma' or '-inf', got {fill}")
        return float(fill)
    raise ValueError(f"fill: expected 'min', 'gemma', '-inf' or a negative float, got {fill!r}")


class Full(Mask):
    """Every query attends to every key."""

    kind = "full"

    def predicate(self, ctx, b, h, q, k):
        return torch.ones((), dtype=torch.bool, device=ctx.device).expand(torch.broadcast_shapes(q.shape, k.shape))

    def tensors(self) -> tuple[Tensor, ...]:
        return ()


class _Combine(Mask):
    symbol = "?"

    def __init__(self, left: Mask, right: Mask):
        self.left, self.right = left, right
        self.batch_dependent = left.batch_dependent or right.batch_dependent
        self.head_dependent = left.head_dependent or right.head_dependent

    def children(self):
        return (self.left, self.right)

    def tensors(self):
        return ()

    def _key(self):
        return (self.left, self.right)

    def __repr__(self):
        # The parser reads ``a & b & c`` as ``(a & b) & c``: a right operand of the same operator keeps
        # its parentheses so that parse(repr(m)) == m.
        wrap_left = isinstance(self.left, _Combine) and self.left.symbol != self.symbol
        left = f"({self.left!r})" if wrap_left else repr(self.left)
        right = f"({self.right!r})" if isinstance(self.right, _Combine) else repr(self.right)
        return f"{left} {self.symbol} {right}"


class And(_Combine):
    """Both masks allow the pair."""

    kind = "and"
    symbol = "&"

    def predicate(self, ctx, b, h, q, k):
        return self.left.predicate(ctx, b, h, q, k) & self.right.predicate(ctx, b, h, q, k)


class Or(_Combine):
    """Either mask allows the pair."""

    kind = "or"
    symbol = "|"

    def predicate(self, ctx, b, h, q, k):
        return self.left.predicate(ctx, b, h, q, k) | self.right.predicate(ctx, b, h, q, k)


class Not(Mask):
    """The pairs the inner mask does not allow."""

    kind = "not"

    def __init__(self, inner: Mask):
        self.inner = inner
        self.batch_dependent = inner.batch_dependent
        self.head_dependent = inner.head_dependent

    def children(self):
        return (self.inner,)

    def tensors(self):
        return ()

    def predicate(self, ctx, b, h, q, k):
        return ~self.inner.predicate(ctx, b, h, q, k)

    def _key(self):
        return (self.inner,)

    def __repr__(self):
        inner = repr(self.inner)
        return f"~({inner})" if isinstance(self.inner, _Combine) else f"~{inner}"


def conjuncts(mask: Mask) -> list[Mask]:
    """Flatten a tree of ``&`` into its operands (``a & (b & c)`` -> ``[a, b, c]``)."""
    if isinstance(mask, And):
        return conjuncts(mask.left) + conjuncts(mask.right)
    return [mask]


def conjoin(parts: list[Mask]) -> Mask:
    """Inverse of :func:`conjuncts`; an empty list is ``full()``."""
    out: Mask = Full()
    for p in parts:
        out = out & p
    return out


class PerHead(Mask):
    """One mask per attention head (see :func:`per_head`)."""

    kind = "per_head"
    head_dependent = True

    def __init__(self, masks: tuple[Mask, ...]):
        self.masks = masks
        self.batch_dependent = any(m.batch_dependent for m in masks)

    def children(self):
        return self.masks

    def validate(self, batch, heads, q_len, kv_len, device):
        if heads != len(self.masks):
            raise ValueError(f"masks: per_head has {len(self.masks)} masks, the attention call has {heads} heads")
        super().validate(batch, heads, q_len, kv_len, device)

    def predicate(self, ctx, b, h, q, k):
        out = None
        for i, m in enumerate(self.masks):
            keep = m.predicate(ctx, b, h, q, k)
            out = keep if out is None else torch.where(h == i, keep, out)
        return out

    def groups(self) -> list[tuple[Mask, list[int]]]:
        """The distinct masks and the heads of each, in order of first appearance."""
        out: dict[Mask, list[int]] = {}
        for i, m in enumerate(self.masks):
            out.setdefault(m, []).append(i)
        return list(out.items())

    def _key(self):
        return self.masks

    def __repr__(self):
        return f"per_head([{', '.join(repr(m) for m in self.masks)}])"


def per_head(masks) -> Mask:
    """Head ``h`` keeps what ``masks[h]`` keeps: a mask that depends on the head, in one attention call.

    Sparse VideoGen's spatial and temporal heads are ``per_head([spatial(g)] * 6 + [temporal(g)] * 6)``. The
    list has one entry per query head (GQA: query heads; a key/value head serves heads of any masks).

    Raises:
        TypeError: an entry is not a Mask, or depends on the head itself.
        ValueError: an empty list; at lowering, a head count other than ``len(masks)``.
    """
    masks = tuple(masks) if isinstance(masks, (list, tuple)) else masks
    if not isinstance(masks, tuple) or not masks:
        raise ValueError(f"masks: expected a non-empty list of masks, one per head, got {masks!r}")
    for i, m in enumerate(masks):
        if not isinstance(m, Mask):
            raise TypeError(f"masks[{i}]: expected a veil Mask, got {type(m).__name__}")
        if m.head_dependent:
            raise TypeError(f"masks[{i}]: a per_head entry must not depend on the head itself, got {m!r}")
    return PerHead(masks)
