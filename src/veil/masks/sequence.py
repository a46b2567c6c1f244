"""Masks over 1D sequences: causal, sliding windows, padding, packed documents, prefix-LM, chunks.

True = may attend. ``qa`` below is the absolute query position ``q + (K - Q)`` (bottom-right alignment,
see :mod:`veil.masks.core`).
"""

from __future__ import annotations

import torch

from veil.masks.core import Context, Full, Mask, Tensor, value_range


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an int >= {minimum}, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value}")
    return value


def _check_lengths(name: str, lengths: object) -> Tensor:
    if isinstance(lengths, (list, tuple)):
        # no dtype= here: torch.tensor([1.5], dtype=torch.long) would silently truncate to 1
        lengths = torch.tensor(lengths) if len(lengths) else torch.zeros(0, dtype=torch.long)
    if not isinstance(lengths, torch.Tensor):
        raise TypeError(f"{name}: expected an int tensor of shape [B], got {type(lengths).__name__}")
    if lengths.dtype not in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8):
        raise TypeError(f"{name}: expected an integer tensor of shape [B], got dtype {lengths.dtype}")
    if lengths.dim() != 1:
        raise ValueError(f"{name}: expected shape [B], got {list(lengths.shape)}")
    span = value_range(lengths)
    if span is not None and span[0] < 0:
        raise ValueError(f"{name}: lengths must be >= 0, got min {span[0]}")
    # no copy: caches key on the tensor's identity and in-place version (Mask.cache_key), so a tensor changed
    # in place is seen as a new mask, and masks rebuilt from one tensor in every layer share their cache entries
    return lengths.to(torch.long)


def _check_device(name: str, t: Tensor, device: torch.device | None) -> None:
    if device is not None and t.device.type != device.type:
        raise ValueError(f"{name}: the mask's tensor is on {t.device}, the attention inputs on {device}")


def full() -> Mask:
    """Every query attends to every key."""
    return Full()


class Causal(Mask):
    kind = "causal"

    def predicate(self, ctx: Context, b, h, q, k):
        return k <= q + ctx.offset


def causal() -> Mask:
    """Keeps keys ``k <= qa`` with ``qa = q + (K - Q)`` (bottom-right aligned when ``K > Q``).

    With ``Q == K`` this is the lower triangle. With a KV cache (``K > Q``) the new queries see the
    whole cache and the earlier new tokens; SDPA's ``is_causal`` is top-left aligned and differs there.
    When ``Q > K`` the first ``Q - K`` query rows see no key (their output is 0).
    """
    return Causal()


class SlidingWindow(Mask):
    kind = "sliding_window"

    def __init__(self, window: int, causal: bool = True):
        self.window = _check_int("window", window, 1)
        self.causal = bool(causal)

    def predicate(self, ctx, b, h, q, k):
        qa = q + ctx.offset
        if self.causal:
            return (k <= qa) & (k > qa - self.window)
        return (k > qa - self.window) & (k < qa + self.window)

    def _key(self):
        return (self.window, self.causal)

    def __repr__(self):
        return f"sliding_window({self.window})" if self.causal else f"sliding_window({self.window}, causal=False)"


def sliding_window(window: int, causal: bool = True) -> Mask:
    """Keeps keys ``qa - window < k <= qa``: ``window`` keys including the query's own position.

    With ``causal=False`` the window is symmetric: ``|k - qa| < window`` (``2 * window - 1`` keys).
    ``window`` counts keys (Gemma / Mistral count so); libraries that keep ``window + 1`` keys differ.

    Raises:
        ValueError: ``window < 1``.
    """
    return SlidingWindow(window, causal)


class Sink(Mask):
    kind = "sink"

    def __init__(self, n: int):
        self.n = _check_int("n", n, 0)

    def predicate(self, ctx, b, h, q, k):
        return k < self.n

    def _key(self):
        return (self.n,)

    def __repr__(self):
        return f"sink({self.n})"


def sink(n: int) -> Mask:
    """Keeps the first ``n`` keys, ``k < n`` (absolute key positions): attention sinks.

    StreamingLLM's sink tokens beside a sliding window: ``(sink(4) | sliding_window(w)) & causal()``. With a KV
    cache the keys must keep their absolute positions: a ring buffer drops the first tokens (``DecoderLM`` gives
    its sink layers a static cache).

    Raises:
        ValueError: ``n < 0``.
    """
    return Sink(n)


class _Lengths(Mask):
    batch_dependent = True
    axis = "key"

    def __init__(self, lengths: Tensor, name: str):
        self.lengths = _check_lengths(name, lengths)
        self._name = name

    def tensors(self):
        return (self.lengths,)

    def validate(self, batch, heads, q_len, kv_len, device):
        n = kv_len if self.axis == "key" else q_len
        if self.lengths.shape[0] != batch:
            raise ValueError(f"{self._name}: expected shape [B]=[{batch}], got {list(self.lengths.shape)}")
        span = value_range(self.lengths)
        if span is not None and span[1] > n:
            raise ValueError(f"{self._name}: lengths must be <= the {self.axis} length {n}, got max {span[1]}")
        _check_device(self._name, self.lengths, device)

    def _key(self):
        return (self.lengths,)

    def __repr__(self):
        return f"{self.kind}({self.lengths.tolist()})"


class KeyPadding(_Lengths):
    kind = "key_padding"
    axis = "key"

    def predicate(self, ctx, b, h, q, k):
        return k < self.lengths.to(ctx.device)[b]


class QueryPadding(_Lengths):
    kind = "query_padding"
    axis = "query"

    def predicate(self, ctx, b, h, q, k):
        return q < self.lengths.to(ctx.device)[b]


def key_padding(lengths: Tensor) -> Mask:
    """Keeps keys ``k < lengths[b]`` (right padding): sample ``b`` has ``lengths[b]`` valid keys.

    A sample with length 0 has no visible key: its output is exactly 0 (never NaN or a uniform average).

    Args:
        lengths: int tensor ``[B]``, each in ``[0, K]``.
    """
    return KeyPadding(lengths, "lengths")


def query_padding(lengths: Tensor) -> Mask:
    """Keeps query rows ``q < lengths[b]``; padded query rows see nothing and return exactly 0.

    Args:
        lengths: int tensor ``[B]``, each in ``[0, Q]``.
    """
    return QueryPadding(lengths, "lengths")


class KeyMask(Mask):
    kind = "key_mask"
    batch_dependent = True

    def __init__(self, keep: Tensor):
        if not isinstance(keep, torch.Tensor) or keep.dtype != torch.bool:
            got = keep.dtype if isinstance(keep, torch.Tensor) else type(keep).__name__
            raise TypeError(f"keep: expected a bool tensor [B, K] (True = key may be attended), got {got}")
        if keep.dim() != 2:
            raise ValueError(f"keep: expected shape [B, K], got {list(keep.shape)}")
        self.keep = keep  # not copied: see _check_lengths

    def tensors(self):
        return (self.keep,)

    def validate(self, batch, heads, q_len, kv_len, device):
        if tuple(self.keep.shape) != (batch, kv_len):
            raise ValueError(f"keep: expected shape [B, K]=[{batch}, {kv_len}], got {list(self.keep.shape)}")
        _check_device("keep", self.keep, device)

    def predicate(self, ctx, b, h, q, k):
        return self.keep.to(ctx.device)[b, k]

    def _key(self):
        return (self.keep,)

    def __repr__(self):
        return f"key_mask(<bool {list(self.keep.shape)}>)"


def key_mask(keep: Tensor) -> Mask:
    """Keeps key ``k`` of sample ``b`` where ``keep[b, k]`` is True (any padding pattern, e.g. left padding).

    Args:
        keep: bool tensor ``[B, K]``, True = the key may be attended.
    """
    return KeyMask(keep)


class Document(Mask):
    kind = "document"

    def __init__(self, q_ids: Tensor, kv_ids: Tensor | None = None):
        for name, t in (("ids", q_ids), ("kv_ids", kv_ids)):
            if t is None:
                continue
            if not isinstance(t, torch.Tensor) or t.dtype.is_floating_point or t.dtype == torch.bool:
                raise TypeError(f"{name}: expected an int tensor [L] or [B, L], got {getattr(t, 'dtype', type(t))}")
            if t.dim() not in (1, 2):
                raise ValueError(f"{name}: expected shape [L] or [B, L], got {list(t.shape)}")
        self.q_ids = q_ids.to(torch.long)  # not copied: see _check_lengths
        self.kv_ids = self.q_ids if kv_ids is None else kv_ids.to(torch.long)
        self.batch_dependent = self.q_ids.dim() == 2 or self.kv_ids.dim() == 2

    def tensors(self):
        return (self.q_ids, self.kv_ids)

    def validate(self, batch, heads, q_len, kv_len, device):
        for name, t, n in (("ids (queries)", self.q_ids, q_len), ("kv_ids", self.kv_ids, kv_len)):
            if t.shape[-1] != n:
                raise ValueError(f"{name}: expected length {n}, got shape {list(t.shape)}")
            if t.dim() == 2 and t.shape[0] != batch:
                raise ValueError(f"{name}: expected shape [B, L]=[{batch}, {n}], got {list(t.shape)}")
            _check_device(name, t, device)

    def _ids(self, t: Tensor, ctx: Context, b: Tensor, idx: Tensor) -> Tensor:
        t = t.to(ctx.device)
        return t[b, idx] if t.dim() == 2 else t[idx]

    def predicate(self, ctx, b, h, q, k):
        return self._ids(self.q_ids, ctx, b, q) == self._ids(self.kv_ids, ctx, b, k)

    def _key(self):
        return (self.q_ids, self.kv_ids)

    def __repr__(self):
        return f"document(<ids {list(self.q_ids.shape)}>)"


def document(ids: Tensor, kv_ids: Tensor | None = None) -> Mask:
    """Block-diagonal mask for packed sequences: keeps keys with ``kv_ids[k] == ids[q]``.

    Args:
        ids: int tensor ``[L]`` (shared by the batch) or ``[B, L]``: the document of each query.
        kv_ids: the document of each key, for cross-attention between two packed sequences; defaults
            to ``ids`` (self-attention).
    """
    return Document(ids, kv_ids)


def seqlens_to_ids(seqlens: Tensor | list[int], name: str = "seqlens") -> Tensor:
    """``[3, 2]`` -> ``[0, 0, 0, 1, 1]``."""
    seqlens = _check_lengths(name, seqlens)
    return torch.repeat_interleave(torch.arange(seqlens.numel(), device=seqlens.device), seqlens)


class Packed(Document):
    kind = "packed"

    def __init__(self, seqlens: Tensor, kv_seqlens: Tensor | None = None):
        self.seqlens = _check_lengths("seqlens", seqlens)
        self.kv_seqlens = self.seqlens if kv_seqlens is None else _check_lengths("kv_seqlens", kv_seqlens)
        if self.kv_seqlens.numel() != self.seqlens.numel():
            raise ValueError(
                f"kv_seqlens: expected {self.seqlens.numel()} sequences like seqlens, got {self.kv_seqlens.numel()}"
            )
        super().__init__(seqlens_to_ids(self.seqlens), seqlens_to_ids(self.kv_seqlens, "kv_seqlens"))

    def validate(self, batch, heads, q_len, kv_len, device):
        # name the user's argument (seqlens), not the ids derived from it
        kv_name = "seqlens (used for the keys too)" if self.kv_seqlens is self.seqlens else "kv_seqlens"
        for name, ids, lengths, n, what in (("seqlens", self.q_ids, self.seqlens, q_len, "Q"),
                                            (kv_name, self.kv_ids, self.kv_seqlens, kv_len, "K")):
            if ids.shape[-1] != n:  # the ids are the lengths expanded: their count is the lengths' sum, no host read
                raise ValueError(f"{name}: expected lengths summing to {what}={n}, got {lengths.tolist()}")
        super().validate(batch, heads, q_len, kv_len, device)

    def __repr__(self):
        if self.kv_seqlens is self.seqlens:
            return f"packed({self.seqlens.tolist()})"
        return f"packed({self.seqlens.tolist()}, {self.kv_seqlens.tolist()})"


def packed(seqlens: Tensor | list[int], kv_seqlens: Tensor | list[int] | None = None) -> Mask:
    """Block-diagonal mask for sequences packed end to end: sequence ``i`` has ``seqlens[i]`` tokens.

    Query ``q`` of sequence ``i`` keeps exactly the keys of sequence ``i``. With ``kv_seqlens`` the keys
    are packed with their own lengths (PixArt-style cross-attention: B*N video tokens against the
    concatenated text of each sample). The lengths must sum to ``Q`` (and ``K``).
    """
    return Packed(seqlens, kv_seqlens)


class PrefixLM(Mask):
    kind = "prefix_lm"

    def __init__(self, prefix_len: int | Tensor):
        if isinstance(prefix_len, torch.Tensor):
            self.prefix = _check_lengths("prefix_len", prefix_len)
            self.batch_dependent = True
        else:
            self.prefix = _check_int("prefix_len", prefix_len, 0)

    def tensors(self):
        return (self.prefix,) if isinstance(self.prefix, torch.Tensor) else ()

    def validate(self, batch, heads, q_len, kv_len, device):
        if isinstance(self.prefix, torch.Tensor):
            if self.prefix.shape[0] != batch:
                raise ValueError(f"prefix_len: expected shape [B]=[{batch}], got {list(self.prefix.shape)}")
            _check_device("prefix_len", self.prefix, device)

    def predicate(self, ctx, b, h, q, k):
        p = self.prefix.to(ctx.device)[b] if isinstance(self.prefix, torch.Tensor) else self.prefix
        return (k <= q + ctx.offset) | (k < p)

    def _key(self):
        return (self.prefix,)

    def __repr__(self):
        p = self.prefix.tolist() if isinstance(self.prefix, torch.Tensor) else self.prefix
        return f"prefix_lm({p})"


def prefix_lm(prefix_len: int | Tensor) -> Mask:
    """Keeps keys ``k < prefix_len`` (bidirectional prefix) or ``k <= qa`` (causal after it).

    Args:
        prefix_len: an int, or an int tensor ``[B]`` for one prefix length per sample.
    """
    return PrefixLM(prefix_len)


class Chunked(Mask):
    kind = "chunked"

    def __init__(self, size: int):
        self.size = _check_int("size", size, 1)

    def predicate(self, ctx, b, h, q, k):
        return torch.div(q + ctx.offset, self.size, rounding_mode="floor") == torch.div(
            k, self.size, rounding_mode="floor"
        )

    def _key(self):
        return (self.size,)

    def __repr__(self):
        return f"chunked({self.size})"


def chunked(size: int) -> Mask:
    """Keeps keys in the query's chunk: ``k // size == qa // size`` (bidirectional inside a chunk).

    Combine with ``causal()`` for Llama-4-style chunked causal attention.
    """
    return Chunked(size)
