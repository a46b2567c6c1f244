"""Attention modules against HF Gemma 2 / Gemma 3 attention and diffusers' Wan attention on the same weights,
and cross-attention against each sample computed alone with its unpadded context."""

import pytest
import torch
from diffusers.models.transformers.transformer_wan import WanAttention, WanAttnProcessor, WanRotaryPosEmbed
from transformers import Gemma2Config, Gemma3TextConfig
from transformers.models.gemma2.modeling_gemma2 import Gemma2Attention
from transformers.models.gemma3.modeling_gemma3 import Gemma3Attention

import veil
from veil import masks as M
from veil.layers import Attention, CrossAttention, Rope3D, RotaryEmbedding


def _window_bias(n, w):
    # independent of veil.masks: keep i - w < j <= i
    i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
    keep = (j <= i) & (j > i - w)
    return torch.where(keep, 0.0, torch.finfo(torch.float32).min)[None, None]


def _load_hf(ours, theirs, scale_qk=1.0):
    with torch.no_grad():
        for name in ("q_proj", "k_proj", "v_proj"):
            getattr(theirs, name).weight.mul_(scale_qk if name != "v_proj" else 1.0)
        sd = {k: v for k, v in theirs.state_dict().items()}
        if "q_norm.weight" in sd:
            sd["qk_norm.q.weight"] = sd.pop("q_norm.weight")
            sd["qk_norm.k.weight"] = sd.pop("k_norm.weight")
        ours.load_state_dict(sd)


def _hf_rope(head_dim, base, n):
    table = RotaryEmbedding(head_dim, base)(torch.arange(n)[None])
    return table.cos, table.sin  # equal to HF's (tested in test_positions)


def test_matches_hf_gemma2_attention_with_softcap_and_window():
    torch.manual_seed(0)
    cfg = Gemma2Config(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                       query_pre_attn_scalar=16, attn_logit_softcapping=50.0, sliding_window=4, num_hidden_layers=2,
                       layer_types=["sliding_attention", "full_attention"], attn_implementation="eager")
    theirs = Gemma2Attention(cfg, layer_idx=0).eval()
    ours = Attention(32, 4, kv_heads=2, head_dim=8, scale=16 ** -0.5, softcap=50.0)
    _load_hf(ours, theirs, scale_qk=30.0)  # large scores: the softcap matters
    x = torch.randn(2, 9, 32)
    want, _ = theirs(x, position_embeddings=_hf_rope(8, 10000.0, 9), attention_mask=_window_bias(9, 4))
    got = ours(x, M.causal() & M.sliding_window(4), rope=RotaryEmbedding(8))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    no_cap = Attention(32, 4, kv_heads=2, head_dim=8, scale=16 ** -0.5)
    no_cap.load_state_dict(ours.state_dict())
    assert (no_cap(x, M.causal() & M.sliding_window(4), rope=RotaryEmbedding(8)) - want).abs().max() > 1e-2


def test_matches_hf_gemma3_attention_with_qk_norm():
    torch.manual_seed(0)
    cfg = Gemma3TextConfig(hidden_size=32, num_attention_heads=4, num_key_value_heads=1, head_dim=8,
                           query_pre_attn_scalar=12, sliding_window=3, num_hidden_layers=2,
                           layer_types=["sliding_attention", "full_attention"], attn_implementation="eager")
    theirs = Gemma3Attention(cfg, layer_idx=1).eval()
    with torch.no_grad():
        theirs.q_norm.weight.normal_()
        theirs.k_norm.weight.normal_()
    ours = Attention(32, 4, kv_heads=1, head_dim=8, qk_norm="head", qk_norm_unit_offset=True, scale=12 ** -0.5)
    _load_hf(ours, theirs)
    x = torch.randn(2, 7, 32)
    bias = _window_bias(7, 7)
    want, _ = theirs(x, position_embeddings=_hf_rope(8, 1e6, 7), attention_mask=bias)
    got = ours(x, M.causal(), rope=RotaryEmbedding(8, base=1e6))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def _wan_pair(dim=24, heads=2, cross=False):
    theirs = WanAttention(dim, heads=heads, dim_head=dim // heads, eps=1e-6, processor=WanAttnProcessor(),
                          cross_attention_dim_head=dim // heads if cross else None).eval()
    with torch.no_grad():
        theirs.norm_q.weight.normal_()
        theirs.norm_k.weight.normal_()
    cls = CrossAttention if cross else Attention
    ours = cls(dim, heads=heads, qk_norm="full", bias=True) if cross else cls(dim, heads, qk_norm="full", bias=True)
    sd = theirs.state_dict()
    mapping = {"to_q": "q_proj", "to_k": "k_proj", "to_v": "v_proj", "to_out.0": "o_proj",
               "norm_q": "qk_norm.q", "norm_k": "qk_norm.k"}
    ours.load_state_dict({mapping[k.rsplit(".", 1)[0]] + "." + k.rsplit(".", 1)[1]: v for k, v in sd.items()})
    return ours, theirs


def test_matches_diffusers_wan_self_attention_with_3d_rope():
    torch.manual_seed(0)
    ours, theirs = _wan_pair()
    grid = (2, 2, 3)
    cos, sin = WanRotaryPosEmbed(12, (1, 2, 2), 16)(torch.zeros(1, 4, 2, 4, 6))
    x = torch.randn(2, 12, 24)
    want = theirs(x, None, None, (cos, sin))
    with veil.use_backend("reference"):
        got = ours(x, rope=Rope3D(12)(grid))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # the "head" QK-norm is a different model: it does not match
    head = Attention(24, 2, qk_norm="head", bias=True)
    assert (head(x, rope=Rope3D(12)(grid)) - want).abs().max() > 1e-3


def test_matches_diffusers_wan_cross_attention():
    torch.manual_seed(0)
    ours, theirs = _wan_pair(cross=True)
    x, ctx = torch.randn(2, 6, 24), torch.randn(2, 5, 24)
    torch.testing.assert_close(ours(x, ctx), theirs(x, ctx), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ["reference", "sdpa"])
def test_cross_attention_prompt_and_shorter_negative_prompt(backend):
    torch.manual_seed(0)
    attn = CrossAttention(16, context_dim=12, heads=2, bias=True, qk_norm="head", backend=backend)
    x = torch.randn(3, 5, 16)
    context = torch.randn(3, 7, 12)
    lengths = torch.tensor([7, 3, 0])  # prompt, shorter negative prompt, empty prompt
    context[1, 3:] = 1e4  # garbage in the padding must not leak
    out = attn(x, context, context_lengths=lengths)
    for b in range(2):
        alone = attn(x[b:b + 1], context[b:b + 1, : lengths[b]])
        torch.testing.assert_close(out[b:b + 1], alone, rtol=1e-5, atol=1e-5)
    assert torch.equal(out[2], torch.zeros_like(out[2]))  # exactly 0, bias included, never NaN
    x.requires_grad_(True)
    attn(x, context, context_lengths=lengths).sum().backward()
    assert torch.isfinite(x.grad).all() and torch.equal(x.grad[2], torch.zeros_like(x.grad[2]))


def test_cross_attention_context_mask_any_padding():
    torch.manual_seed(0)
    attn = CrossAttention(8, heads=2)
    x, context = torch.randn(2, 4, 8), torch.randn(2, 6, 8)
    keep = torch.tensor([[False, False, True, True, True, True], [True, False, True, False, False, False]])
    out = attn(x, context, context_mask=keep)
    for b in range(2):
        torch.testing.assert_close(out[b:b + 1], attn(x[b:b + 1], context[b:b + 1, keep[b]]), rtol=1e-5, atol=1e-5)
    both = attn(x, context, context_lengths=torch.tensor([6, 2]), context_mask=keep)
    torch.testing.assert_close(both[1:], attn(x[1:], context[1:, :1]), rtol=1e-5, atol=1e-5)


def test_gqa_equals_repeated_heads():
    torch.manual_seed(0)
    gqa = Attention(16, 4, kv_heads=2, head_dim=4)
    mha = Attention(16, 4, head_dim=4)
    with torch.no_grad():
        mha.q_proj.weight.copy_(gqa.q_proj.weight)
        mha.o_proj.weight.copy_(gqa.o_proj.weight)
        # key/value head j serves query heads 2j, 2j+1
        mha.k_proj.weight.copy_(gqa.k_proj.weight.view(2, 4, 16).repeat_interleave(2, 0).reshape(16, 16))
        mha.v_proj.weight.copy_(gqa.v_proj.weight.view(2, 4, 16).repeat_interleave(2, 0).reshape(16, 16))
    x = torch.randn(2, 5, 16)
    torch.testing.assert_close(gqa(x, M.causal()), mha(x, M.causal()), rtol=1e-5, atol=1e-5)


def test_bad_arguments():
    with pytest.raises(ValueError, match="kv_heads"):
        Attention(16, 4, kv_heads=3)
    with pytest.raises(ValueError, match="head_dim"):
        Attention(10, 4)
    with pytest.raises(ValueError, match="qk_norm"):
        Attention(16, 4, qk_norm="rms")
    with pytest.raises(ValueError, match=r"x: expected \[B, L, 16\]"):
        Attention(16, 4)(torch.randn(2, 3, 8))
    with pytest.raises(TypeError, match="rope"):
        Attention(16, 4)(torch.randn(2, 3, 16), rope="rope")
    with pytest.raises(ValueError, match="context_mask"):
        CrossAttention(16, heads=4)(torch.randn(2, 3, 16), torch.randn(2, 4, 16), context_mask=torch.ones(2, 4))
    with pytest.raises(ValueError, match="context_lengths"):
        CrossAttention(16, heads=4)(torch.randn(2, 3, 16), torch.randn(2, 4, 16), context_lengths=torch.tensor([5, 1]))
