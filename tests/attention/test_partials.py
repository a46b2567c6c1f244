"""``attend(..., return_lse=True)`` on every backend and ``merge_partials`` over split keys, forward and backward."""

from __future__ import annotations

import math

import pytest
import torch

import veil
import veil.masks as M
from veil.attention import get_backend, merge_partials
from veil.attention.backends.flex import uncompiled
from veil.attention.registry import Call

GRID = (3, 2, 2)  # 12 tokens
L = 12


def _masks(b: int) -> dict[str, M.Mask | None]:
    lengths = torch.tensor([L, 5, 0][:b])
    return {
        "none": None,
        "causal": M.causal(),
        "sliding_window": M.sliding_window(4),
        "key_padding": M.key_padding(lengths),
        "query_padding": M.query_padding(torch.tensor([L, 3, 0][:b])),
        "document": M.document(torch.tensor([0] * 5 + [1] * 4 + [2] * 3)),
        "packed_causal": M.packed([7, 5]) & M.causal(),
        "prefix_lm": M.prefix_lm(4),
        "chunked_causal": M.chunked(5) & M.causal(),
        "spatial": M.spatial(GRID),
        "temporal": M.temporal(GRID),
        "frame_causal": M.frame_causal(GRID),
        "window_3d": M.window_3d(GRID, (1, 3, 1)),
        "tile_window": M.tile_window(GRID, (1, 2, 1), (1, 1, 1)),
        "or_not": M.sliding_window(2) | ~M.causal(),
    }


def _inputs(b=3, hq=4, hkv=2, q=L, k=L, d=8, dv=6, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=g, dtype=dtype).requires_grad_() for s in
            ((b, hq, q, d), (b, hkv, k, d), (b, hkv, k, dv))]


def _closed_form_lse(q, k, mask, scale, softcap=None):
    """log sum exp of the masked scores, by hand in float64; -inf on rows with no key."""
    g = q.shape[1] // k.shape[1]
    s = torch.einsum("bhqd,bhkd->bhqk", q.double(), k.double().repeat_interleave(g, 1)) * scale
    if softcap is not None:
        s = softcap * torch.tanh(s / softcap)
    if mask is not None:
        allowed = mask.to_bool(q.shape[0], q.shape[1], q.shape[2], k.shape[2])
        s = s.masked_fill(~allowed, -math.inf)
    return torch.logsumexp(s, -1)


def _weights(out, lse, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(out.shape, generator=g), torch.randn(lse.shape, generator=g)


def _loss(out, lse, w_out, w_lse):
    # a finite function of both outputs (rows with lse = -inf contribute through out only)
    return (out.float() * w_out).sum() + (torch.where(torch.isinf(lse), 0.0, lse) * w_lse).sum()


@pytest.mark.parametrize("backend", ["reference", "sdpa", "tiles", "varlen", "flex"])
def test_return_lse_on_every_backend_matches_the_closed_form_and_the_reference_gradients(backend):
    be = get_backend(backend)
    ran = 0
    for name, mask in _masks(3).items():
        needs_grad = backend != "flex"  # FlexAttention has no backward on CPU
        q, k, v = _inputs() if needs_grad else [t.detach() for t in _inputs()]
        call = Call(3, 4, 2, L, L, 8, torch.float32, torch.device("cpu"), needs_grad, mask, None)
        if be.why_not(call) is not None:
            continue
        ran += 1
        with uncompiled(), torch.set_grad_enabled(needs_grad):
            out, lse = veil.attend(q, k, v, mask, backend=backend, return_lse=True)
        want = _closed_form_lse(q.detach(), k.detach(), mask, 8 ** -0.5)
        assert lse.dtype == torch.float32 and lse.shape == (3, 4, L)
        assert torch.equal(torch.isinf(lse), torch.isinf(want)), name
        assert torch.allclose(lse[~torch.isinf(lse)].double(), want[~torch.isinf(want)], atol=1e-5), name
        ref_out, ref_lse = veil.attend(q, k, v, mask, backend="reference", return_lse=True)
        assert torch.allclose(out, ref_out, atol=1e-5), name
        if not needs_grad:
            continue
        w_out, w_lse = _weights(out, lse)
        grads = torch.autograd.grad(_loss(out, lse, w_out, w_lse), (q, k, v))
        want_grads = torch.autograd.grad(_loss(ref_out, ref_lse, w_out, w_lse), (q, k, v))
        for got_g, want_g in zip(grads, want_grads):
            assert torch.isfinite(got_g).all() and torch.allclose(got_g, want_g, atol=1e-5), name
    assert ran >= 2, f"{backend} ran on {ran} masks only"


def test_lse_with_softcap_and_rows_that_see_nothing():
    q, k, v = _inputs(b=2, q=5, k=7)
    mask = M.key_padding(torch.tensor([7, 0]))
    out, lse = veil.attend(q * 4, k * 4, v, mask, softcap=3.0, return_lse=True, backend="reference")
    want = _closed_form_lse(q.detach() * 4, k.detach() * 4, mask, 8 ** -0.5, softcap=3.0)
    assert torch.allclose(lse[0].double(), want[0], atol=1e-5)
    assert torch.isinf(lse[1]).all() and (lse[1] < 0).all() and torch.equal(out[1], torch.zeros_like(out[1]))
    # the generic path (backend out + veil's blocked lse) on the same call, gradients included
    out2, lse2 = veil.attend(q * 4, k * 4, v, mask, softcap=3.0, return_lse=True, backend="reference")
    w_out, w_lse = _weights(out, lse)
    from veil.attention.partials import logsumexp_scores
    lse3 = logsumexp_scores(q * 4, k * 4, v, mask, 8 ** -0.5, 3.0)
    assert torch.equal(torch.isinf(lse3), torch.isinf(lse)) and torch.allclose(lse3[0], lse[0], atol=1e-5)
    g1 = torch.autograd.grad((torch.where(torch.isinf(lse3), 0.0, lse3) * w_lse).sum(), (q, k))
    g2 = torch.autograd.grad((torch.where(torch.isinf(lse2), 0.0, lse2) * w_lse).sum(), (q, k))
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(g1, g2))


SPLITS = [[0, 6, 12], [0, 0, 5, 5, 12], [0, 3, 6, 9, 12], [0, 1, 11, 12]]


@pytest.mark.parametrize("name", list(_masks(3)))
def test_merged_partials_over_split_keys_equal_one_call(name):
    mask = _masks(3)[name]
    q, k, v = _inputs(dtype=torch.float64)
    want_out, want_lse = veil.attend(q, k, v, mask, backend="reference", return_lse=True)
    w_out, w_lse = _weights(want_out, want_lse)
    want_grads = torch.autograd.grad(_loss(want_out, want_lse, w_out, w_lse), (q, k, v))
    for cuts in SPLITS:
        outs, lses = [], []
        for c0, c1 in zip(cuts[:-1], cuts[1:]):
            part = M.region(mask, q_start=0, kv_start=c0, q_len=L, kv_len=L)
            backend = "sdpa" if c1 > c0 else "reference"
            o, s = veil.attend(q, k[:, :, c0:c1], v[:, :, c0:c1], part, backend=backend, return_lse=True)
            outs.append(o)
            lses.append(s)
        out, lse = merge_partials(outs, lses)
        assert torch.allclose(out, want_out, atol=1e-6), (name, cuts)
        assert torch.equal(torch.isinf(lse), torch.isinf(want_lse)), (name, cuts)
        fin = ~torch.isinf(lse)
        assert torch.allclose(lse[fin], want_lse[fin], atol=1e-6), (name, cuts)
        empty = torch.isinf(lse)
        assert torch.equal(out[empty], torch.zeros_like(out[empty]))
        grads = torch.autograd.grad(_loss(out, lse, w_out, w_lse), (q, k, v))
        for got_g, want_g in zip(grads, want_grads):
            assert torch.isfinite(got_g).all() and torch.allclose(got_g, want_g, atol=1e-6), (name, cuts)


def test_merge_partials_errors():
    o, s = torch.zeros(1, 2, 3, 4), torch.zeros(1, 2, 3)
    with pytest.raises(ValueError, match="same non-zero number"):
        merge_partials([o], [s, s])
    with pytest.raises(ValueError, match=r"lses\[1\]: expected shape \[1, 2, 3\]"):
        merge_partials([o, o], [s, torch.zeros(1, 2, 4)])
    with pytest.raises(ValueError, match=r"outs\[1\]"):
        merge_partials([o, torch.zeros(1, 2, 3, 5)], [s, s])
    with pytest.raises(TypeError, match="sequences"):
        merge_partials(o, s)


@pytest.mark.parametrize("name", ["none", "causal", "key_padding", "query_padding", "packed_causal", "window_3d",
                                  "or_not"])
def test_fused_cpu_kernel_and_the_row_blocked_math_agree(name, monkeypatch):
    # float32, equal q / v head dims: partial_attention / partial_grads take PyTorch's fused CPU kernel; the same
    # calls with the kernel hidden take veil's row-blocked math
    from veil.attention import partials

    mask = _masks(3)[name]
    region = M.region(mask, q_start=0, kv_start=4, q_len=L, kv_len=L) if mask is not None else None
    q, k, v = (t.detach() for t in _inputs(dv=8))
    k, v = k[:, :, 4:], v[:, :, 4:]  # a key block: some rows see none of it
    assert partials.fused_cpu(q, v, None)
    got = partials.partial_attention(q, k, v, region, 0.3)
    g = torch.Generator().manual_seed(5)
    dout = torch.randn(got[0].shape, generator=g)
    got_grads = partials.partial_grads(q, k, v, region, 0.3, None, got[0], got[1], dout, None)
    monkeypatch.setattr(partials, "CPU_FLASH", None)
    assert not partials.fused_cpu(q, v, None)
    want = partials.partial_attention(q, k, v, region, 0.3)
    want_grads = partials.partial_grads(q, k, v, region, 0.3, None, want[0], want[1], dout, None)
    assert torch.allclose(got[0], want[0], atol=1e-6)
    assert torch.equal(torch.isinf(got[1]), torch.isinf(want[1]))
    assert torch.allclose(got[1][~torch.isinf(got[1])], want[1][~torch.isinf(want[1])], atol=1e-5)
    for a, b in zip(got_grads, want_grads):
        assert a.shape == b.shape and torch.isfinite(a).all() and torch.allclose(a, b, atol=1e-5)
