"""In-attention conditioning of DecoderLM: ``"pre_norm"`` against x-transformers' ``Decoder(in_attn_cond=...)`` on
transplanted weights, ``"post_norm"`` against the sub-layer inputs it must produce, and cached generation with a
condition."""

import math

import pytest
import torch

from veil.models import DecoderConfig, DecoderLM, next_token

E, HEADS, KV, D = 64, 4, 2, 16


pytestmark = pytest.mark.usefixtures("one_thread")


def _randomize(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            std = 0.3 if p.dim() == 1 else (0.05 if "embed" in name else 2.0 / math.sqrt(p.shape[1]))
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return model.eval()


def _xt_transplant(ours, xt):
    """Copy DecoderLM weights into an x-transformers Decoder(use_rmsnorm, sandwich_norm, ff_glu, rotary).

    x-transformers differs in three conventions, each mapped here: its rotary pairs features (2i, 2i+1) where
    HF / veil pair (i, i + D/2) (a permutation of q/k features inside each head, which leaves q.k unchanged);
    its GQA gives query head i the key/value head i % Nkv where veil gives head j the kv head j // G (a
    permutation of query heads, and of the output projection's columns). With ``norm_add_unit_offset=True`` its
    RMSNorm gain is ``1 + g``, Gemma's ``1 + w``.
    """
    half = torch.arange(D // 2)
    feat = torch.stack([half, half + D // 2], dim=1).flatten()  # xt feature f <- veil feature feat[f]
    g = HEADS // KV
    head = torch.tensor([(i % KV) * g + i // KV for i in range(HEADS)])  # xt query head i <- veil head head[i]
    sd = {}
    for i, block in enumerate(ours.layers):
        a, f = f"layers.{2 * i}", f"layers.{2 * i + 1}"
        sd[f"{a}.0.0.g"] = block.attn_norm.weight
        sd[f"{a}.0.1.g"] = block.attn_post_norm.weight
        q = block.attn.q_proj.weight.view(HEADS, D, E)[head][:, feat]
        sd[f"{a}.1.to_q.weight"] = q.reshape(HEADS * D, E)
        sd[f"{a}.1.to_k.weight"] = block.attn.k_proj.weight.view(KV, D, E)[:, feat].reshape(KV * D, E)
        sd[f"{a}.1.to_v.weight"] = block.attn.v_proj.weight
        sd[f"{a}.1.to_out.weight"] = block.attn.o_proj.weight.view(E, HEADS, D)[:, head].reshape(E, HEADS * D)
        sd[f"{f}.0.0.g"] = block.mlp_norm.weight
        sd[f"{f}.0.1.g"] = block.mlp_post_norm.weight
        sd[f"{f}.1.ff.0.proj.weight"] = torch.cat([block.mlp.up_proj.weight, block.mlp.gate_proj.weight])  # up, gate
        sd[f"{f}.1.ff.0.proj.bias"] = torch.zeros(2 * block.mlp.up_proj.out_features)
        sd[f"{f}.1.ff.2.weight"] = block.mlp.down_proj.weight
    sd["final_norm.g"] = ours.norm.weight
    sd["rotary_pos_emb.inv_freq"] = xt.rotary_pos_emb.inv_freq
    xt.load_state_dict(sd)
    return xt.eval()


@torch.no_grad()
def test_pre_norm_condition_matches_x_transformers():
    xt_mod = pytest.importorskip("x_transformers")
    # x-transformers' RMSNorm has no eps (F.normalize): a negligible one here; its FF GLU uses exact GELU
    config = DecoderConfig(vocab_size=96, dim=E, depth=2, heads=HEADS, kv_heads=KV, head_dim=D, hidden=128,
                           activation="gelu", norm_eps=1e-12, cond_dim=E, cond_placement="pre_norm")
    ours = _randomize(DecoderLM(config))
    xt = xt_mod.Decoder(dim=E, depth=2, heads=HEADS, attn_dim_head=D, attn_kv_heads=KV, rotary_pos_emb=True,
                        rotary_emb_dim=D, use_rmsnorm=True, sandwich_norm=True, ff_glu=True, ff_no_bias=True,
                        ff_mult=2, norm_add_unit_offset=True)
    _xt_transplant(ours, xt)
    ids = torch.randint(0, 96, (2, 12), generator=torch.Generator().manual_seed(1))
    z = torch.randn(2, E, generator=torch.Generator().manual_seed(2))
    x = ours.embed(ids) * math.sqrt(E)
    want = xt(x, in_attn_cond=z)
    got = ours(ids, in_attn_cond=z, return_only_embed=True)
    assert (got - want).abs().max() <= 1e-4
    # the condition matters, and x-transformers without it differs
    assert (xt(x) - want).abs().max() > 1e-1
    assert (ours(ids, in_attn_cond=torch.zeros_like(z), return_only_embed=True) - xt(x)).abs().max() <= 1e-4


@torch.no_grad()
@pytest.mark.parametrize("placement", ["post_norm", "pre_norm"])
def test_condition_enters_every_sub_layer_input_at_its_placement(placement):
    # C != E: the condition is projected once; hooks record what each sub-layer actually receives
    config = DecoderConfig.preset("tiny-gemma3", cond_dim=24, cond_placement=placement)
    ours = _randomize(DecoderLM(config))
    ids = torch.randint(0, 128, (2, 10), generator=torch.Generator().manual_seed(3))
    z = torch.randn(2, 24, generator=torch.Generator().manual_seed(4))
    c = ours.cond.proj(z)[:, None]  # (B, 1, E)
    seen = []
    hooks = []
    for block in ours.layers:
        for norm, branch in ((block.attn_norm, block.attn), (block.mlp_norm, block.mlp)):
            hooks.append(branch.register_forward_pre_hook(lambda m, args: seen.append(args[0])))
            hooks.append(norm.register_forward_pre_hook(lambda m, args: seen.append(("norm_in", args[0]))))
    ours(ids, in_attn_cond=z)
    for h in hooks:
        h.remove()
    # the residual stream before each sub-layer, rebuilt without the condition's side effects
    x = ours.embed(ids) * math.sqrt(config.dim)
    checked = 0
    for block in ours.layers:
        for norm, branch, post in ((block.attn_norm, block.attn, block.attn_post_norm),
                                   (block.mlp_norm, block.mlp, block.mlp_post_norm)):
            norm_in, branch_in = seen.pop(0), seen.pop(0)
            want_in = norm(x + c) if placement == "pre_norm" else norm(x) + c
            assert norm_in[0] == "norm_in"
            assert (norm_in[1] - (x + c if placement == "pre_norm" else x)).abs().max() <= 1e-4  # stream untouched
            assert (branch_in - want_in).abs().max() <= 1e-4
            checked += 1
            if branch is block.attn:
                x = x + post(branch(branch_in, block.mask, rope=_rope(ours, block, ids.shape[1])))
            else:
                x = x + post(branch(branch_in))
    assert checked == 2 * config.depth


def _rope(model, block, n):
    return model.rope[block.layer_type](torch.arange(n))


@torch.no_grad()
@pytest.mark.parametrize("do_sample", [False, True])
def test_conditioned_cached_generation_equals_uncached_decoding(do_sample):
    config = DecoderConfig.preset("tiny-gemma2", cond_dim=16)
    ours = _randomize(DecoderLM(config))
    ids = torch.randint(1, 128, (2, 6), generator=torch.Generator().manual_seed(5))
    z = torch.randn(2, 16, generator=torch.Generator().manual_seed(6))
    opts = {"do_sample": do_sample, "temperature": 1.5, "top_k": 50, "top_p": 0.95}
    out = ours.generate(ids, max_new_tokens=20, in_attn_cond=z, seed=7, **opts)
    # recomputed without a cache: each next token from a full forward, same random stream
    seq, g = ids, torch.Generator().manual_seed(7)
    for _ in range(20):
        tok = next_token(ours(seq, in_attn_cond=z)[:, -1], generator=g, **opts)
        seq = torch.cat([seq, tok[:, None]], dim=1)
    assert torch.equal(out, seq)
    if do_sample:
        assert len(set(out[:, 6:].flatten().tolist())) > 8  # past the window, not a repetition
        assert torch.equal(ours.generate(ids, max_new_tokens=20, in_attn_cond=z, seed=7, **opts), out)  # seeded
    logits = ours(ids, in_attn_cond=z)
    assert (ours(ids, in_attn_cond=-z) - logits).abs().max() > 1e-1  # the condition steers the model
    with pytest.raises(ValueError, match="in_attn_cond"):
        ours(ids)
