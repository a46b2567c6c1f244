"""``reference``: eager math with a float32 softmax. The oracle every other backend is tested against.

It materialises the full ``[B, H, Q, K]`` score tensor: use it for tests and small shapes.
"""

from __future__ import annotations

import torch

from veil.attention.backends.common import math_attention, math_attention_lse
from veil.attention.registry import Backend, Call, register_backend

_FLOATS = frozenset({torch.float32, torch.float16, torch.bfloat16, torch.float64})


def _allowed(q, k, mask):
    if mask is None:
        return None
    b, h, qn, kn = q.shape[0], q.shape[1], q.shape[2], k.shape[2]
    allowed = mask.to_bool(b, h, qn, kn, device=q.device)
    # keep the broadcast dims small: to_bool returns an expanded view
    return allowed[: b if mask.batch_dependent else 1, : h if mask.head_dependent else 1]


def reference_attention(q, k, v, mask, scale, softcap):
    return math_attention(q, k, v, _allowed(q, k, mask), scale, softcap)


def reference_attention_lse(q, k, v, mask, scale, softcap):
    return math_attention_lse(q, k, v, _allowed(q, k, mask), scale, softcap)


def _cost(call: Call) -> float:
    # Three passes over a materialised fp32 score tensor: never the fastest, always available.
    return 4.0 * call.batch * call.q_heads * call.q_len * call.kv_len * (call.head_dim + 8)


register_backend(Backend(
    name="reference",
    fn=reference_attention,
    lse_fn=reference_attention_lse,
    devices=frozenset({"cpu", "cuda", "mps"}),
    dtypes=_FLOATS,
    grad_devices=frozenset({"cpu", "cuda", "mps"}),
    supports=lambda call: None,
    cost=_cost,
    doc="eager math, fp32 softmax; the oracle (materialises B x H x Q x K scores)",
))
