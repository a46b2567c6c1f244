"""Key/value caches for autoregressive decoding: static (global layers) and ring buffer (sliding-window layers).

Legend: B batch, Hkv key/value heads, S cache slots, L new tokens, K keys returned to attention, D head dim.

Contract with the attention layer. :meth:`KVCache.update` takes the new keys/values, stores them, and
returns the keys to attend over **in chronological order** (oldest first, the new tokens last), their
absolute positions and a per-sample validity. veil masks align queries bottom-right (query ``i`` sits at
absolute position ``i + K - Q``), and the returned keys are consecutive absolute positions ending at the
last new token, so ``causal()`` and ``sliding_window(w)`` written for these shapes are exact, even after
the ring buffer wraps. Left padding is carried in ``valid`` (``[B, K]``, False = a pad token): the layer
adds ``veil.masks.key_mask(valid)``.

With ``fixed_shapes=True`` (for ``torch.compile``) the token count lives in a tensor and every update returns
the same shapes whatever the count: the whole buffer in slot order, each slot's absolute position (-1 when
empty) and the new tokens' positions (``CacheView.query_positions``); the layer then evaluates its mask at those
positions (:func:`veil.masks.at_positions`). A compiled decoding loop then runs one graph for every step, at the
price of attending over every slot (empty ones masked) rather than the tokens written so far. Outside
``torch.compile``, an update of several tokens (an eager prefill) returns the chronological view of a growing
cache instead, over the same buffers and slots: its masks stay structured (a sliding window keeps its block-sparse
paths) where ``at_positions`` masks would be evaluated densely.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

Tensor = torch.Tensor


class CacheView(NamedTuple):
    """What attention sees after an update.

    Attributes:
        k, v: ``[B, Hkv, K, D]`` in chronological order, the ``L`` new tokens last.
        positions: ``[K]`` absolute positions of those keys (consecutive).
        valid: ``[B, K]`` bool, False for keys written as padding; a tensor of its own (later updates do not
            change it). ``k`` and ``v`` may be views of the buffers: use them before the next update.
        has_padding: False when every key ever written was valid (the layer may skip the key mask).
        query_positions: None when the keys are chronological and consecutive, ending at the last new token
            (bottom-right masks are exact). A fixed-shape cache returns the ``[L]`` absolute positions of the new
            tokens here, and ``positions`` then holds each key's absolute position in slot order, -1 for an empty
            slot: the layer must evaluate its mask at those positions (:func:`veil.masks.at_positions`).
    """

    k: Tensor
    v: Tensor
    positions: Tensor
    valid: Tensor
    has_padding: bool
    query_positions: Tensor | None = None


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value!r}")
    return value


class KVCache(nn.Module):
    """Preallocated key/value buffers for one attention layer (registered, so ``.to()`` moves them).

    With ``window=None`` the cache is static: ``max_len`` slots, token ``p`` in slot ``p``. With a
    ``window`` it is a ring buffer of ``window`` slots, token ``p`` in slot ``p % window``: memory stays
    O(window) however long the generation runs, and a sliding-window layer (which keeps keys
    ``qa - window < k <= qa``) never needs an older key.

    Args:
        batch: B.
        kv_heads: Hkv.
        head_dim: D (keys and values).
        max_len: the longest sequence the cache will see (static mode: the number of slots; ring mode:
            only checked).
        window: ring buffer size, or None for a static cache.
        dtype, device: of the buffers.
        fixed_shapes: keep the token count in a tensor and return the same shapes at every update (see the module
            docstring): for decoding under ``torch.compile`` without a recompile per token.

    Raises:
        ValueError: a size is not a positive int.
    """

    def __init__(self, batch: int, kv_heads: int, head_dim: int, max_len: int, *, window: int | None = None,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None,
                 fixed_shapes: bool = False):
        super().__init__()
        self.fixed_shapes = bool(fixed_shapes)
        self.batch = _check_int("batch", batch, 1)
        _check_int("kv_heads", kv_heads, 1)
        _check_int("head_dim", head_dim, 1)
        self.max_len = _check_int("max_len", max_len, 1)
        self.window = None if window is None else _check_int("window", window, 1)
        slots = max_len if window is None else min(window, max_len)
        self.slots = slots
        self.register_buffer("k", torch.zeros(batch, kv_heads, slots, head_dim, dtype=dtype, device=device),
                             persistent=False)
        self.register_buffer("v", torch.zeros(batch, kv_heads, slots, head_dim, dtype=dtype, device=device),
                             persistent=False)
        self.register_buffer("valid", torch.zeros(batch, slots, dtype=torch.bool, device=device), persistent=False)
        # fixed shapes: the tokens written so far, as a tensor (a Python int would be a guard, and a recompile,
        # per token under torch.compile)
        self.register_buffer("filled", torch.zeros((), dtype=torch.long, device=device), persistent=False)
        self._length = 0
        self.has_padding = False

    @property
    def length(self) -> int:
        """Tokens written so far (a fixed-shape cache reads its counter back from the device)."""
        return int(self.filled) if self.fixed_shapes else self._length

    def next_positions(self, n: int) -> Tensor:
        """int64 ``[n]``: the absolute positions the next ``n`` tokens will take (no host read)."""
        base = self.filled if self.fixed_shapes else self._length
        return base + torch.arange(n, device=self.k.device)

    @property
    def is_ring(self) -> bool:
        return self.window is not None

    @property
    def slot_positions(self) -> Tensor:
        """``[S]`` absolute position of the token in each slot (-1: empty), from ``length`` alone: slot ``i``
        holds the latest ``p < length`` with ``p % S == i`` (static: ``p == i``). Not stored, so an update
        writes no positions."""
        return self._slot_positions(self.filled if self.fixed_shapes else self._length)

    def _slot_positions(self, length: int | Tensor) -> Tensor:
        i = torch.arange(self.slots, device=self.k.device)
        last = length - 1 - i  # (S,)
        return torch.where(last >= 0, i + self.slots * last.div(self.slots, rounding_mode="floor"), -1)

    def reset(self) -> None:
        """Forget every token (buffers are kept)."""
        self._length = 0
        self.has_padding = False
        self.valid.zero_()
        self.filled.zero_()

    def _runs(self, start: int, count: int) -> list[tuple[int, int]]:
        """Slot ranges ``[a, b)`` holding tokens ``start .. start + count - 1``, oldest first (at most two: the ring
        wraps once). Plain slices, so reading and writing them copies no index tensor (a decode step's hot path)."""
        if count <= 0:
            return []
        a = start % self.slots
        first = min(count, self.slots - a)
        return [(a, a + first)] + ([(0, count - first)] if count > first else [])

    def update(self, k: Tensor, v: Tensor, valid: Tensor | None = None) -> CacheView:
        """Append ``L`` new tokens and return the keys attention should see.

        Args:
            k, v: ``[B, Hkv, L, D]``, already rotated (RoPE is applied before caching).
            valid: ``[B, L]`` bool, False for padding tokens (left padding in batched generation); None = all
                valid. A given ``valid`` costs one host sync (to track ``has_padding``): pass None on decode
                steps that add no padding.

        Returns:
            a :class:`CacheView`. Static cache: every token so far. Ring: the cached window (up to ``window``
            older tokens) followed by the ``L`` new ones, so a prefill longer than the window still attends
            exactly; only the last ``window`` tokens are kept afterwards.

        Raises:
            ValueError: shapes disagree with the buffers, or the static cache would overflow ``max_len``.
        """
        b, h, n_new, d = k.shape if k.dim() == 4 else (None,) * 4
        if k.dim() != 4 or (b, h, d) != (self.batch, self.k.shape[1], self.k.shape[3]) or v.shape != k.shape:
            raise ValueError(f"k, v: expected [B, Hkv, L, D] = [{self.batch}, {self.k.shape[1]}, L, {self.k.shape[3]}]"
                             f", got k {list(k.shape)}, v {list(v.shape)}")
        if valid is not None:
            if valid.dtype != torch.bool or tuple(valid.shape) != (b, n_new):
                raise ValueError(f"valid: expected a bool tensor [B, L] = [{b}, {n_new}], got "
                                 f"{valid.dtype} {list(valid.shape)}")
        if self.fixed_shapes and (n_new == 1 or torch.compiler.is_compiling()):
            return self._update_fixed(k, v, valid)
        if self.fixed_shapes:
            # several tokens outside torch.compile (an eager prefill): the same buffers and slots, but the view of
            # a growing cache (chronological, exact under bottom-right masks, so local masks keep their fast
            # paths); two host reads: the token count, and whether the kept tokens hold padding (untracked by the
            # fixed-shape updates)
            self._length = int(self.filled)
            # the kept tokens fill slots [0, n_old): every slot once a ring has wrapped
            self.has_padding = not bool(self.valid[:, :min(self._length, self.slots)].all())
        if valid is not None:
            self.has_padding = self.has_padding or not bool(valid.all())
        if self._length + n_new > self.max_len:
            raise ValueError(f"k: the cache holds at most max_len={self.max_len} tokens, got {self._length} cached "
                             f"+ {n_new} new")
        kbuf, vbuf, vld = self.k, self.v, self.valid  # one module attribute lookup each (decode's hot path)
        k, v = k.to(kbuf.dtype), v.to(vbuf.dtype)
        start, end = self._length, self._length + n_new
        if end <= self.slots:  # static, or a ring that has not wrapped yet: token p in slot p, written in place
            kbuf[:, :, start:end] = k
            vbuf[:, :, start:end] = v
            vld[:, start:end] = True if valid is None else valid
            self._length = end
            if self.fixed_shapes:
                self.filled.fill_(end)
            # valid is copied, not a view: a mask built from it is hashed by value (the tiles backend's plan cache),
            # and later writes (a ring wrapping, reset) would change it under that key
            return CacheView(kbuf[:, :, :end], vbuf[:, :, :end], torch.arange(end, device=kbuf.device),
                             vld[:, :end].clone(), self.has_padding)
        if valid is None:
            valid = torch.ones(b, n_new, dtype=torch.bool, device=k.device)
        n_old = min(start, self.slots)
        old = self._runs(start - n_old, n_old)  # the cached tokens, oldest first
        out = CacheView(
            torch.cat([kbuf[:, :, a:z] for a, z in old] + [k], dim=2),  # (B, Hkv, n_old + L, D)
            torch.cat([vbuf[:, :, a:z] for a, z in old] + [v], dim=2),
            torch.arange(start - n_old, end, device=kbuf.device),
            torch.cat([vld[:, a:z] for a, z in old] + [valid], dim=1),
            self.has_padding,
        )
        keep = min(n_new, self.slots)  # only the last `slots` new tokens survive
        i = n_new - keep
        for a, z in self._runs(start + i, keep):
            j = i + z - a
            kbuf[:, :, a:z] = k[:, :, i:j]
            vbuf[:, :, a:z] = v[:, :, i:j]
            vld[:, a:z] = valid[:, i:j]
            i = j
        self._length = end
        if self.fixed_shapes:
            self.filled.fill_(end)
        return out

    def _update_fixed(self, k: Tensor, v: Tensor, valid: Tensor | None) -> CacheView:
        # Same shapes at every call: no Python int changes, no host read. The static cache and a ring's single new
        # token write first and attend over the buffer (the ring then holds exactly the window); a ring given
        # several tokens attends over the old buffer followed by the new tokens, then writes (a new token may
        # overwrite a slot an earlier query of the chunk still needs). Overflowing a static cache fails in
        # index_copy_ (positions past max_len are out of range).
        b, n_new = k.shape[0], k.shape[2]
        kbuf, vbuf, vld = self.k, self.v, self.valid
        k, v = k.to(kbuf.dtype), v.to(vbuf.dtype)
        if valid is None:
            valid = torch.ones(b, n_new, dtype=torch.bool, device=kbuf.device)
        start = self.filled.clone()
        new_pos = start + torch.arange(n_new, device=kbuf.device)  # (L,)
        keep = min(n_new, self.slots)  # only the last `slots` new tokens survive in a ring
        slots = new_pos[n_new - keep:] % self.slots if self.is_ring else new_pos
        ks, vs, vals = k[:, :, n_new - keep:], v[:, :, n_new - keep:], valid[:, n_new - keep:]
        if self.is_ring and n_new > 1:
            view = CacheView(torch.cat([kbuf, k], dim=2), torch.cat([vbuf, v], dim=2),  # (B, Hkv, S + L, D)
                             torch.cat([self._slot_positions(start), new_pos]), torch.cat([vld, valid], dim=1),
                             True, new_pos)  # (cat copies: the writes below do not reach the view)
        else:
            view = None
        kbuf.index_copy_(2, slots, ks)
        vbuf.index_copy_(2, slots, vs)
        vld.index_copy_(1, slots, vals)
        self.filled += n_new
        if view is None:
            view = CacheView(kbuf, vbuf, self._slot_positions(self.filled), vld.clone(), True, new_pos)
        return view

    def extra_repr(self) -> str:
        kind = f"ring window={self.window}" if self.is_ring else f"static max_len={self.max_len}"
        return f"{kind}, batch={self.batch}, kv_heads={self.k.shape[1]}, head_dim={self.k.shape[3]}"
