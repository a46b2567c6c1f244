"""What ``auto`` picks on CUDA, run against the reference backend (skipped without a CUDA device).

Every path ``auto`` can choose on a GPU is exercised here, forward and backward, in the dtypes models use:
softcapped Gemma 2 layers, padded half-precision cross-attention, local and video masks, the new sparse patterns,
and a compiled model. ``veil bench gpu`` runs this file (``-m cuda``) and the quick GPU benchmarks.
"""

from __future__ import annotations

import pytest
import torch

import veil
from veil import masks as M

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

G = (4, 8, 8)  # 256 video tokens


def _cuda(t):
    return t.cuda() if isinstance(t, torch.Tensor) else t


CASES = {
    # name: (Q, K, mask builder (on CUDA), softcap, dtype)
    "gemma2_global_softcap_bf16": (128, 128, lambda: M.causal(), 50.0, torch.bfloat16),
    "gemma2_local_softcap_bf16": (128, 128, lambda: M.causal() & M.sliding_window(32), 50.0, torch.bfloat16),
    "gemma2_decode_softcap": (1, 200, lambda: M.causal() & M.sliding_window(32), 50.0, torch.float32),
    "padded_text_cross_bf16": (256, 77, lambda: M.key_padding(torch.tensor([77, 12, 0]).cuda()), None,
                               torch.bfloat16),
    "padded_text_cross_fp16": (256, 77, lambda: M.key_padding(torch.tensor([5, 77, 30]).cuda()), None,
                               torch.float16),
    "window_3d_bf16": (256, 256, lambda: M.window_3d(G, (3, 3, 3)), None, torch.bfloat16),
    "spatial_temporal_heads": (256, 256, lambda: M.per_head([M.spatial(G), M.temporal(G)] * 2), None,
                               torch.bfloat16),
    "radial": (256, 256, lambda: M.radial(G, sink_frames=1), None, torch.float32),
    "sink_window": (300, 300, lambda: (M.sink(4) | M.sliding_window(64)) & M.causal(), None, torch.bfloat16),
    "packed": (96, 96, lambda: M.packed(torch.tensor([40, 0, 56]).cuda()), None, torch.bfloat16),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_auto_on_cuda_matches_reference_forward_and_backward(name):
    q_len, kv_len, build, softcap, dtype = CASES[name]
    mask = build()
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 4, n, 64, generator=g).cuda().to(dtype).requires_grad_()
               for n in (q_len, kv_len, kv_len))
    w = torch.randn(3, 4, q_len, 64, generator=g).cuda().to(dtype)
    results = []
    for backend in ("auto", "reference"):
        out = veil.attend(q, k, v, mask, softcap=softcap, backend=backend)
        results.append((out, torch.autograd.grad((out.float() * w.float()).sum(), (q, k, v))))
    (out, grads), (ref, ref_grads) = results
    tol = 2e-2 if dtype != torch.float32 else 1e-4
    torch.testing.assert_close(out.float(), ref.float(), atol=tol, rtol=tol)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got.float(), want.float(), atol=tol * 4, rtol=tol * 4)
    chosen = veil.explain(q.detach(), k.detach(), v.detach(), mask, softcap=softcap).backend
    assert chosen in veil.attention.list_backends()


def test_compiled_wan_on_cuda_equals_eager():
    from veil.models import WanConfig, WanDiT
    from veil.models.wan_config import AttentionPattern as P

    torch.manual_seed(0)
    model = WanDiT(WanConfig.preset("tiny", num_layers=2, attention=[P(kind="window_3d", window=(3, 3, 3)),
                                                                     "full"])).cuda()
    x, ctx = torch.randn(2, 4, 4, 8, 8, device="cuda"), torch.randn(2, 7, 16, device="cuda")
    t, lengths = torch.tensor([500.0, 30.0], device="cuda"), torch.tensor([3, 0], device="cuda")
    with torch.no_grad():
        want = model(x, t, ctx, lengths)
        got = torch.compile(model, fullgraph=True)(x, t, ctx, lengths)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
