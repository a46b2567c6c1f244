"""``flex``: FlexAttention (``torch.nn.attention.flex_attention``) with the mask's cached ``BlockMask``.

The mask is lowered once per shape to a ``BlockMask`` (:meth:`veil.masks.Mask.to_block_mask`, cached), so
fully masked blocks are skipped; the softcap is a ``score_mod``; GQA uses ``enable_gqa``. The call runs
through ``torch.compile(flex_attention)`` (compiled once per process and reused); :func:`uncompiled`
switches to FlexAttention's eager path, which materialises the scores (for tests of small shapes).

Rows that see no key: on CUDA FlexAttention reports them with a log-sum-exp of ``-inf``; their output is
multiplied by 0 there, so it is exactly 0 and passes zero gradient whatever the kernel does. On CPU (forward
only; compiled CPU flex cannot return the log-sum-exp) the kernel itself writes 0 there, which the tests pin.

Capabilities (torch 2.13): forward on CPU and CUDA, backward only on CUDA (CPU flex raises
``NotImplementedError`` in backward). ``auto`` picks it only on CUDA (its CPU cost is infinite): compiled
CPU kernels take seconds to build per shape and are not faster than SDPA there; ``backend="flex"`` still
runs on CPU.

Legend: B batch, Hq query heads, Hkv key/value heads, Q query length, K key length, D head dim.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import torch

from veil.attention.registry import Backend, Call, register_backend
from veil.masks import Mask

Tensor = torch.Tensor

_EAGER: contextvars.ContextVar[bool] = contextvars.ContextVar("veil_flex_eager", default=False)
_COMPILED: list = []  # the compiled flex_attention, built on first use


@contextlib.contextmanager
def uncompiled() -> Iterator[None]:
    """Within this context the ``flex`` backend calls FlexAttention eagerly (no ``torch.compile``)."""
    token = _EAGER.set(True)
    try:
        yield
    finally:
        _EAGER.reset(token)


def _kernel():
    from torch.nn.attention.flex_attention import flex_attention

    if _EAGER.get():
        return flex_attention
    if not _COMPILED:
        _COMPILED.append(torch.compile(flex_attention, dynamic=False))
    return _COMPILED[0]


def _softcap_mod(cap: float):
    def score_mod(score: Tensor, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        return cap * torch.tanh(score / cap)

    return score_mod


def flex_backend(q: Tensor, k: Tensor, v: Tensor, mask: Mask | None, scale: float, softcap: float | None) -> Tensor:
    """FlexAttention of q ``[B, Hq, Q, D]`` over k, v ``[B, Hkv, K, D]`` under ``mask``; ``[B, Hq, Q, Dv]``."""
    from torch.nn.attention.flex_attention import AuxRequest

    b, hq, q_len, _ = q.shape
    kv_len = k.shape[2]
    block_mask = None
    if mask is not None:
        block_mask = mask.to_block_mask(b, hq, q_len, kv_len, device=q.device)
    # CPU flex (torch 2.13) has no backward, and compiled it cannot return the log-sum-exp; its forward
    # already writes 0 to rows with no key (pinned by tests/attention/test_flex.py).
    want_lse = mask is not None and q.device.type != "cpu"
    res = _kernel()(
        q, k, v,
        score_mod=None if softcap is None else _softcap_mod(float(softcap)),
        block_mask=block_mask,
        scale=scale,
        enable_gqa=hq != k.shape[1],
        return_aux=AuxRequest(lse=True) if want_lse else None,
    )
    if not want_lse:
        return res
    out, aux = res
    seen = torch.isfinite(aux.lse).unsqueeze(-1)  # (B, Hq, Q, 1): False where the row has no key
    return out * seen.to(out.dtype)


def _supports(call: Call) -> str | None:
    if call.q_len == 0 or call.kv_len == 0:
        return "FlexAttention needs Q > 0 and K > 0"
    return None


def _cost(call: Call) -> float:
    if call.device.type != "cuda":
        return float("inf")  # CPU flex compiles per shape for seconds and is no faster than SDPA: on request only
    dense = call.batch * call.q_heads * call.q_len * call.kv_len * (call.head_dim + 8)
    if call.mask is None:
        return 1.05 * dense  # a maskless flex is a slightly slower flash kernel
    # Fully masked blocks are skipped, partial ones computed whole: pay for the blocks the BlockMask keeps
    # (it is cached, so the call that follows reuses it).
    bm = call.mask.to_block_mask(call.batch, call.q_heads, call.q_len, call.kv_len, device=call.device)
    return dense * (1.1 * (1.0 - bm.sparsity() / 100.0) + 0.05)


register_backend(Backend(
    name="flex",
    fn=flex_backend,
    devices=frozenset({"cpu", "cuda"}),
    dtypes=frozenset({torch.float32, torch.float16, torch.bfloat16}),
    grad_devices=frozenset({"cuda"}),
    supports=_supports,
    cost=_cost,
    doc="FlexAttention with a cached BlockMask (torch.compile); skips fully masked blocks; CUDA backward only",
))
