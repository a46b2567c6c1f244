"""Norms against HF Gemma's RMSNorm, torch's RMSNorm / layer_norm, and hand-computed QK-norm."""

import pytest
import torch
from transformers.models.gemma3.modeling_gemma3 import Gemma3RMSNorm

from veil.layers import LayerNorm, QKNorm, RMSNorm


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rmsnorm_unit_offset_matches_hf_gemma(dtype):
    torch.manual_seed(0)
    ours, theirs = RMSNorm(16, eps=1e-6, unit_offset=True), Gemma3RMSNorm(16, eps=1e-6)
    w = torch.randn(16)
    with torch.no_grad():
        ours.weight.copy_(w)
        theirs.weight.copy_(w)
    x = (torch.randn(2, 5, 16) * 3).to(dtype)
    out = ours(x)
    assert out.dtype == dtype
    torch.testing.assert_close(out, theirs(x), rtol=0, atol=0)
    # a fresh Gemma norm is a plain normalisation (1 + 0)
    fresh = RMSNorm(16, unit_offset=True)(x.float())
    torch.testing.assert_close(fresh, x.float() / x.float().pow(2).mean(-1, keepdim=True).add(1e-6).sqrt())


def test_rmsnorm_plain_matches_torch():
    torch.manual_seed(0)
    ours, theirs = RMSNorm(12, eps=1e-5), torch.nn.RMSNorm(12, eps=1e-5)
    with torch.no_grad():
        w = torch.randn(12)
        ours.weight.copy_(w)
        theirs.weight.copy_(w)
    x = torch.randn(3, 4, 12)
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-6, atol=1e-6)
    no_affine = RMSNorm(12, eps=1e-5, affine=False)
    assert no_affine.weight is None
    torch.testing.assert_close(no_affine(x), torch.nn.functional.rms_norm(x, (12,), eps=1e-5), rtol=1e-6, atol=1e-6)


def test_layernorm_fp32_with_and_without_affine():
    torch.manual_seed(0)
    x = (torch.randn(2, 3, 8) * 5 + 2).to(torch.bfloat16)
    plain = LayerNorm(8, affine=False)
    assert plain.weight is None and plain.bias is None
    want = torch.nn.functional.layer_norm(x.float(), (8,), eps=1e-6).to(torch.bfloat16)
    torch.testing.assert_close(plain(x), want, rtol=0, atol=0)
    affine = LayerNorm(8, eps=1e-5)
    with torch.no_grad():
        affine.weight.copy_(torch.arange(8.0))
        affine.bias.fill_(0.5)
    mu, var = x.float().mean(-1, keepdim=True), x.float().var(-1, unbiased=False, keepdim=True)
    want = ((x.float() - mu) / (var + 1e-5).sqrt() * torch.arange(8.0) + 0.5).to(torch.bfloat16)
    torch.testing.assert_close(affine(x), want, rtol=0, atol=0.05)


def test_qknorm_head_and_full_differ_as_defined():
    torch.manual_seed(0)
    q = torch.randn(2, 5, 3 * 4)  # (B, L, N*D), N=3 heads of D=4
    k = torch.randn(2, 5, 1 * 4)
    full = QKNorm(12, 4, "full", eps=1e-6)
    qf, kf = full(q, k)
    torch.testing.assert_close(qf, q / q.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt())
    head = QKNorm(4, 4, "head", eps=1e-6)
    qh, _ = head(q.view(2, 5, 3, 4), k.view(2, 5, 1, 4))
    per_head = q.view(2, 5, 3, 4)
    torch.testing.assert_close(qh, per_head / per_head.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt())
    assert not torch.allclose(qh.reshape(2, 5, 12), qf)


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="dim"):
        RMSNorm(0)
    with pytest.raises(ValueError, match="last dim 8"):
        RMSNorm(8)(torch.randn(2, 7))
    with pytest.raises(ValueError, match="mode"):
        QKNorm(4, 4, "heads")
