"""``sdpa``: ``F.scaled_dot_product_attention``.

``is_causal`` is used only where it is exact (``causal()`` with ``Q == K``; SDPA aligns it top-left), a
single decoding query under ``causal()`` needs no mask at all, and every other mask is lowered to a
broadcastable bool tensor ``[B or 1, H or 1, Q, K]``.
"""

from __future__ import annotations

import torch

from veil.attention.backends.common import sdpa_attention
from veil.attention.registry import Backend, Call, register_backend
from veil.masks import And, Causal, Full, SlidingWindow

_FLOATS = frozenset({torch.float32, torch.float16, torch.bfloat16, torch.float64})


def _all_visible(mask, q_len: int, kv_len: int) -> bool:
    """True when the mask's structure alone shows every key visible to every query (no tensor is read)."""
    if isinstance(mask, Full):
        return True
    if isinstance(mask, And):
        return _all_visible(mask.left, q_len, kv_len) and _all_visible(mask.right, q_len, kv_len)
    if q_len != 1:
        return False
    # one query at the last position (bottom-right): causal sees every key, a causal window the last `window`
    if isinstance(mask, Causal):
        return True
    return isinstance(mask, SlidingWindow) and mask.causal and kv_len <= mask.window


def plan(mask, q_len: int, kv_len: int) -> str:
    """How SDPA will run this mask: ``"none"``, ``"is_causal"`` or ``"bool"``."""
    if mask is None or _all_visible(mask, q_len, kv_len):
        return "none"
    if isinstance(mask, Causal) and q_len == kv_len:
        return "is_causal"
    return "bool"


def sdpa_backend(q, k, v, mask, scale, softcap):
    how = plan(mask, q.shape[2], k.shape[2])
    if how == "none":
        return sdpa_attention(q, k, v, None, scale)
    if how == "is_causal":
        return sdpa_attention(q, k, v, None, scale, is_causal=True)
    b, h = q.shape[0], q.shape[1]
    allowed = mask.to_bool(b, h, q.shape[2], k.shape[2], device=q.device)
    allowed = allowed[: b if mask.batch_dependent else 1, : h if mask.head_dependent else 1]
    return sdpa_attention(q, k, v, allowed, scale)


def _supports(call: Call) -> str | None:
    if call.softcap is not None:
        return "SDPA has no logit softcap"
    return None


def _cost(call: Call) -> float:
    dense = call.batch * call.q_heads * call.q_len * call.kv_len * (call.head_dim + 8)
    how = plan(call.mask, call.q_len, call.kv_len)
    if how == "is_causal":
        return 0.6 * dense  # the flash kernels skip the upper triangle's blocks
    if how == "bool":
        # computes every masked block anyway, and builds the Q x K mask once per call whatever the batch (~100
        # units per pair, fitted with tiles' gather cost: 4 ms of a 1024-token call at batch 1 on 2 cores)
        return 1.3 * dense + 100 * call.q_len * call.kv_len
    return dense


register_backend(Backend(
    name="sdpa",
    fn=sdpa_backend,
    devices=frozenset({"cpu", "cuda", "mps"}),
    dtypes=_FLOATS,
    grad_devices=frozenset({"cpu", "cuda", "mps"}),
    supports=_supports,
    cost=_cost,
    doc="torch SDPA; is_causal where exact, a Q x K bool mask otherwise",
))
