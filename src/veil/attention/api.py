"""``veil.attend``: the one attention call every module makes.

Legend: B batch, Hq query heads, Hkv key/value heads (Hq divisible by Hkv: GQA / MQA), Q query length,
K key length, D head dim, Dv value head dim.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

import torch

from veil.attention.partials import logsumexp_scores
from veil.attention.registry import (
    _REGISTRY,
    Backend,
    Call,
    _ensure_loaded,
    active_backend,
    get_backend,
    registry_version,
)
from veil.masks import Mask

Tensor = torch.Tensor


def attend(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Mask | None = None,
    *,
    scale: float | None = None,
    softcap: float | None = None,
    backend: str = "auto",
    return_lse: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Attention of ``q`` over ``k, v`` under ``mask`` (True = may attend), on the chosen backend.

    Args:
        q: ``[B, Hq, Q, D]``.
        k: ``[B, Hkv, K, D]``; ``Hq`` must be divisible by ``Hkv``.
        v: ``[B, Hkv, K, Dv]``.
        mask: a :class:`veil.masks.Mask`, or None for full attention. Queries are aligned to the end of
            the keys when ``Q != K`` (see :mod:`veil.masks.core`).
        scale: score scale, default ``1 / sqrt(D)``.
        softcap: if set, scores become ``softcap * tanh(scores / softcap)`` before masking (Gemma 2).
        backend: a registered backend name or ``"auto"`` (the fastest exact backend for this call;
            :func:`explain` says which and why). ``veil.use_backend(name)`` sets the default for ``"auto"``.
        return_lse: also return the log-sum-exp of each row's scores, for merging results over disjoint key
            sets with :func:`veil.attention.merge_partials` (ring attention, split-K decoding). The reference
            backend computes it in its own pass; every other backend computes ``out`` as usual and veil's
            row-blocked float32 kernel adds ``lse`` (one more pass over the scores, no ``Q x K`` tensor).

    Returns:
        ``[B, Hq, Q, Dv]`` in q's dtype. A query row that sees no key is exactly 0. With ``return_lse``:
        ``(out, lse)``, lse float32 ``[B, Hq, Q]``, the natural log of the row's softmax denominator (after
        scale and softcap), ``-inf`` for a row that sees no key. Both carry gradients.

    Raises:
        TypeError: an input is not a floating tensor, or ``mask`` is not a Mask.
        ValueError: shapes, heads, dtypes or devices disagree, or the mask does not fit the shapes.
    """
    scale = validate(q, k, v, mask, scale, softcap)
    chosen = select(Call.of(q, k, v, mask, softcap), backend)
    if not return_lse:
        return chosen.fn(q, k, v, mask, scale, softcap)
    if chosen.lse_fn is not None:
        return chosen.lse_fn(q, k, v, mask, scale, softcap)
    return chosen.fn(q, k, v, mask, scale, softcap), logsumexp_scores(q, k, v, mask, scale, softcap)


def validate(q, k, v, mask, scale, softcap) -> float:
    """Check an attention call; returns the scale to use."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
        if not t.dtype.is_floating_point:
            raise TypeError(f"{name}: expected a floating-point tensor, got {t.dtype}")
        if t.dim() != 4:
            raise ValueError(f"{name}: expected 4 dims [B, H, L, D], got shape {list(t.shape)}")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"k, v: expected q's dtype {q.dtype}, got k {k.dtype}, v {v.dtype}")
    if k.device != q.device or v.device != q.device:
        raise ValueError(f"k, v: expected q's device {q.device}, got k {k.device}, v {v.device}")
    b, hq, _, d = q.shape
    if k.shape[0] != b or v.shape[0] != b:
        raise ValueError(f"k, v: expected batch {b} like q, got k {list(k.shape)}, v {list(v.shape)}")
    if k.shape[3] != d:
        raise ValueError(f"k: expected head dim {d} like q {list(q.shape)}, got {list(k.shape)}")
    if v.shape[1] != k.shape[1] or v.shape[2] != k.shape[2]:
        raise ValueError(f"v: expected [B, Hkv, K, Dv] = [{b}, {k.shape[1]}, {k.shape[2]}, Dv], got {list(v.shape)}")
    if k.shape[1] == 0 or hq % k.shape[1]:
        raise ValueError(f"k: query heads {hq} must be divisible by key/value heads, got {k.shape[1]}")
    if mask is not None:
        if not isinstance(mask, Mask):
            raise TypeError(
                f"mask: expected a veil.masks.Mask or None, got {type(mask).__name__} "
                "(build one with veil.masks, e.g. veil.masks.key_mask(bool_tensor))"
            )
        mask.validate(b, hq, q.shape[2], k.shape[2], q.device)
    if softcap is not None and (isinstance(softcap, bool) or not isinstance(softcap, (int, float)) or softcap <= 0):
        raise ValueError(f"softcap: expected a positive float or None, got {softcap!r}")
    if scale is None:
        return 1.0 / math.sqrt(d)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0:
        raise ValueError(f"scale: expected a positive float or None, got {scale!r}")
    return float(scale)


# auto's choice per call signature (shapes, dtype, device, grad mode, mask, softcap): costs are pure
# functions of it, so decoding loops pay one dict lookup instead of costing every backend at each step.
_CHOICES: OrderedDict[tuple, Backend] = OrderedDict()


@dataclass
class Choice:
    """What ``auto`` picked for a call, and why each backend was or was not a candidate."""

    backend: str
    reasons: dict[str, str]

    def __str__(self) -> str:
        lines = [f"chosen: {self.backend}"]
        lines += [f"  {name:<10} {why}" for name, why in sorted(self.reasons.items())]
        return "\n".join(lines)


def _rank(call: Call, order: bool = True) -> tuple[list[tuple[float, Backend]], dict[str, str]]:
    """The backends that can run ``call`` with their costs (cheapest first when ``order``), and why each is or is
    not one."""
    _ensure_loaded()
    ok: list[tuple[float, Backend]] = []
    reasons: dict[str, str] = {}
    for be in _REGISTRY.values():
        why = be.why_not(call)
        if why is not None:
            reasons[be.name] = f"no: {why}"
        elif not be.auto:
            reasons[be.name] = "no: only on request"
        else:
            c = be.cost(call)
            ok.append((c, be))
            if not torch.compiler.is_compiling():  # traced with dynamic shapes the cost is symbolic: no text
                reasons[be.name] = f"cost {c:.3g}"
    if order:
        ok.sort(key=lambda t: t[0])
    return ok, reasons


def select(call: Call, backend: str = "auto") -> Backend:
    """The backend that will run ``call``."""
    if not isinstance(backend, str):
        raise TypeError(f"backend: expected a backend name or 'auto', got {type(backend).__name__}")
    if backend == "auto":
        backend = active_backend() or "auto"
    if backend != "auto":
        be = get_backend(backend)
        why = be.why_not(call)
        if why is not None:
            raise ValueError(f"backend: {backend!r} cannot run this call ({why})")
        return be
    if torch.compiler.is_compiling():
        # traced once per graph: rank by structure (the costs read no tensor) and bake the choice into the graph.
        # With dynamic shapes the costs are symbolic floats, which dynamo cannot sort: the cheapest is found by
        # comparisons, each of which becomes a guard on the shapes
        ranked, reasons = _rank(call, order=False)
        if not ranked:
            detail = "; ".join(f"{name}: {why}" for name, why in sorted(reasons.items()))
            raise ValueError(f"backend: no registered backend can run this call under torch.compile ({detail})")
        best_cost, best = ranked[0]
        for c, be in ranked[1:]:
            if c < best_cost:
                best_cost, best = c, be
        return best
    key = (registry_version(), call.key())
    hit = _CHOICES.get(key)
    if hit is not None:
        _CHOICES.move_to_end(key)
        return hit
    ranked, reasons = _rank(call)
    if not ranked:
        detail = "; ".join(f"{name}: {why}" for name, why in sorted(reasons.items()))
        raise ValueError(f"backend: no registered backend can run this call ({detail})")
    _CHOICES[key] = ranked[0][1]
    while len(_CHOICES) > 512:
        _CHOICES.popitem(last=False)
    return ranked[0][1]


def explain(q: Tensor, k: Tensor, v: Tensor, mask: Mask | None = None, *, softcap: float | None = None,
            backend: str = "auto") -> Choice:
    """Which backend ``attend`` would run for these inputs, with each backend's cost or reason it was skipped."""
    validate(q, k, v, mask, None, softcap)
    call = Call.of(q, k, v, mask, softcap)
    _, reasons = _rank(call)
    return Choice(select(call, backend).name, reasons)
