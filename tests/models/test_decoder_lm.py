"""DecoderLM against Hugging Face Gemma 2 / Gemma 3 on the same weights: full forward, cached decoding past the
window, left padding, generation; and the cache's memory.

The HF models are tiny and random, with weights scaled so that both softcaps bind (checked: dropping either
changes the logits), a sliding window (8) shorter than the sequences (24), GQA, and for Gemma 3 QK-norm, two
RoPE bases and linear RoPE scaling on the global layers.
"""

import dataclasses

import pytest
import torch
from transformers import Gemma2Config, Gemma2ForCausalLM, Gemma3ForCausalLM, Gemma3TextConfig

import veil
from veil.models import DECODER_PRESETS, DecoderConfig, DecoderLM
from veil.models.convert_hf import config_from_transformers

V, W, N = 128, 8, 24  # vocab, sliding window, sequence length


pytestmark = pytest.mark.usefixtures("one_thread")


def _scale_up(hf):
    """Large weights so that the attention and final softcaps bind; random norm weights."""
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "embed" in name:
                p.mul_(3.0)
            elif "q_proj" in name or "k_proj" in name:
                p.mul_(10.0)
            elif p.dim() == 2:
                p.mul_(6.0)
            else:
                p.normal_(0.0, 0.3)
        hf.model.norm.weight.add_(5.0)  # final-norm gain: logits ~10, where the final softcap bends them
    return hf.eval()


def _gemma2(layers=4):
    torch.manual_seed(0)
    cfg = Gemma2Config(vocab_size=V, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16,
                       sliding_window=W, attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
                       attn_implementation="eager", pad_token_id=0, bos_token_id=None, eos_token_id=None)
    return _scale_up(Gemma2ForCausalLM(cfg))


def _gemma3():
    torch.manual_seed(1)
    rope = {"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
            "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}
    cfg = Gemma3TextConfig(vocab_size=V, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=12,
                           sliding_window=W, rope_parameters=rope, layer_types=["sliding_attention"] * 2
                           + ["full_attention", "sliding_attention"],
                           attn_implementation="eager", pad_token_id=0, bos_token_id=None, eos_token_id=None)
    return _scale_up(Gemma3ForCausalLM(cfg))


MODELS = {"gemma2": _gemma2, "gemma3": _gemma3}


def _variant(ours, **changes):
    other = DecoderLM(dataclasses.replace(ours.config, **changes))
    other.load_state_dict(ours.state_dict())
    return other.eval()


@torch.no_grad()
@pytest.mark.parametrize("family", MODELS)
def test_full_forward_matches_hf(family):
    hf = MODELS[family]()
    ours = DecoderLM.from_transformers(hf)
    ids = torch.randint(0, V, (2, N), generator=torch.Generator().manual_seed(2))
    want = hf(ids).logits
    got = ours(ids)
    assert (got - want).abs().max() <= 1e-4
    # the test can fail: the window's size, the softcaps and the RoPE settings all change the logits
    changes = [{"sliding_window": W + 1}, {"sliding_window": W - 1}, {"rope_base_local": 1e6}]
    changes += [{"attn_softcap": None}, {"final_softcap": None}] if family == "gemma2" else [{"rope_scaling": 1.0}]
    for change in changes:
        assert (_variant(ours, **change)(ids) - want).abs().max() > 1e-2, change
    hidden = hf.model(ids).last_hidden_state
    assert (ours(ids, return_only_embed=True) - hidden).abs().max() <= 1e-4


@torch.no_grad()
@pytest.mark.parametrize("family", MODELS)
@pytest.mark.parametrize("prefill", [5, 12])  # shorter and longer than the window
def test_cached_decoding_matches_hf_full_forward(family, prefill):
    hf = MODELS[family]()
    ours = DecoderLM.from_transformers(hf)
    ids = torch.randint(0, V, (2, N), generator=torch.Generator().manual_seed(3))
    want = hf(ids).logits  # (2, N, V)
    cache = ours.new_cache(2, N)
    got = [ours(ids[:, :prefill], cache=cache)]
    for t in range(prefill, N):  # one token per step, the ring buffers wrap twice
        got.append(ours(ids[:, t:t + 1], cache=cache))
    got = torch.cat(got, dim=1)
    assert cache.length == N
    assert (got - want).abs().max() <= 1e-4


@torch.no_grad()
def test_sdpa_backend_and_bf16():
    import veil

    hf = _gemma3()  # no attention softcap: SDPA can run every layer
    ours = DecoderLM.from_transformers(hf)
    ids = torch.randint(0, V, (2, N), generator=torch.Generator().manual_seed(3))
    want = hf(ids).logits
    with veil.use_backend("sdpa"):
        cache = ours.new_cache(2, N)
        got = torch.cat([ours(ids[:, :12], cache=cache)] + [ours(ids[:, t:t + 1], cache=cache) for t in range(12, N)],
                        dim=1)
        assert (ours(ids) - want).abs().max() <= 1e-4
    assert (got - want).abs().max() <= 1e-4
    fp32_freq = ours.rope["global"].inv_freq.clone()
    ours.to(torch.bfloat16)
    assert ours.embed.weight.dtype == torch.bfloat16 and ours.rope["global"].inv_freq.dtype == torch.float32
    assert torch.equal(ours.rope["global"].inv_freq, fp32_freq)
    assert ours.new_cache(1, 8).layers[0].k.dtype == torch.bfloat16
    assert (ours(ids).float() - want).abs().max() < 1.0  # bf16 runs, roughly right


def _left_padded(lengths, n, seed=4):
    ids = torch.randint(1, V, (len(lengths), n), generator=torch.Generator().manual_seed(seed))
    mask = torch.zeros(len(lengths), n, dtype=torch.long)
    for b, k in enumerate(lengths):
        mask[b, n - k:] = 1
    return ids * mask, mask


@torch.no_grad()
@pytest.mark.parametrize("family", MODELS)
def test_left_padding_matches_hf_with_shifted_positions(family):
    hf = MODELS[family]()
    ours = DecoderLM.from_transformers(hf)
    ids, mask = _left_padded([N, 17, 6], N)
    positions = (mask.cumsum(1) - 1).clamp(min=0)  # as HF generate does for left padding
    want = hf(ids, attention_mask=mask, position_ids=positions).logits
    got = ours(ids, mask)
    valid = mask.bool()
    assert (got[valid] - want[valid]).abs().max() <= 1e-4
    assert torch.isfinite(got).all()
    # each sample equals its own unpadded forward
    for b in range(3):
        alone = ours(ids[b:b + 1, valid[b]])
        assert (got[b:b + 1, valid[b]] - alone).abs().max() <= 1e-4


@torch.no_grad()
@pytest.mark.parametrize("family", MODELS)
def test_batched_greedy_generation_equals_each_prompt_alone_and_hf(family):
    hf = MODELS[family]()
    ours = DecoderLM.from_transformers(hf)
    ids, mask = _left_padded([9, 3, 6], 9, seed=5)
    new = 3 * W  # well past the window: the local caches wrap
    out = ours.generate(ids, mask, max_new_tokens=new)
    assert out.shape == (3, 9 + new) and torch.equal(out[:, :9], ids)
    assert len(set(out[:, 9:].flatten().tolist())) > 8  # not a degenerate repetition
    for b in range(3):
        prompt = ids[b:b + 1, mask[b].bool()]
        alone = ours.generate(prompt, max_new_tokens=new)
        assert torch.equal(alone[0, prompt.shape[1]:], out[b, 9:]), b
    theirs = hf.generate(ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new, do_sample=False)
    assert torch.equal(theirs[:, 9:], out[:, 9:])


@torch.no_grad()
def test_generation_stops_at_eos_and_pads_finished_samples():
    ours = DecoderLM.from_transformers(_gemma2(layers=2))
    ids, mask = _left_padded([6, 4], 6, seed=6)
    free = ours.generate(ids, mask, max_new_tokens=12)[:, 6:]
    eos = int(free[0, 2])  # sample 0 ends at its third new token
    out = ours.generate(ids, mask, max_new_tokens=12, eos_token_id=eos, pad_token_id=5)[:, 6:]
    for b in range(2):
        hits = (free[b] == eos).nonzero()
        end = int(hits[0]) + 1 if len(hits) else free.shape[1]
        assert torch.equal(out[b, :end], free[b, :end])
        assert (out[b, end:] == 5).all()
    assert out.shape[1] == 12  # sample 1 never produced eos: generation ran to the end
    # a batch whose every sample finished stops there
    alone = ours.generate(ids[1:, 2:], max_new_tokens=12, eos_token_id=int(free[1, 1]))
    assert torch.equal(alone[0, 4:], free[1, :2])


def test_local_cache_memory_is_flat_in_the_context_length():
    config = DecoderConfig.preset("tiny-gemma2", max_seq_len=8192)
    ours = DecoderLM(config)
    c = config
    n_local = c.layer_types.count("local")
    per_slot = 2 * c.kv_heads * c.head_dim * 4  # k and v, float32
    sizes = {}
    for max_len in (64, 512, 4096):
        cache = ours.new_cache(1, max_len)
        sizes[max_len] = (cache.nbytes("local"), cache.nbytes("global"))
        for layer, kind in zip(cache.layers, c.layer_types):
            assert layer.k.shape == (1, c.kv_heads, W if kind == "local" else max_len, c.head_dim)
        assert cache.nbytes("local") == n_local * W * per_slot
        assert cache.nbytes("global") == (c.depth - n_local) * max_len * per_slot
    assert sizes[64][0] == sizes[512][0] == sizes[4096][0]
    # decoding past the window keeps the ring at W slots
    cache = ours.new_cache(1, 64)
    with torch.no_grad():
        ours(torch.randint(0, V, (1, 5)), cache=cache)
        for _ in range(3 * W):
            ours.decode_step(torch.randint(0, V, (1,)), cache)
    assert all(layer.k.shape[2] == W for layer in cache.layers if layer.is_ring)
    assert cache.nbytes("local") == sizes[64][0]


def test_attention_sinks_keep_the_first_tokens_in_every_local_layer():
    torch.manual_seed(0)
    plain = DecoderLM(DecoderConfig.preset("tiny-gemma3")).eval()
    sinks = DecoderLM(DecoderConfig.preset("tiny-gemma3", attention_sinks=2)).eval()
    sinks.load_state_dict(plain.state_dict())
    ids = torch.randint(0, V, (2, 3 * W))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    with torch.no_grad():
        # positions within the window of the first tokens cannot tell; later ones see the sinks
        a, b = plain(ids, mask), sinks(ids, mask)
        assert (a[:, :W] - b[:, :W]).abs().max() <= 1e-5 and (a[:, W + 2:] - b[:, W + 2:]).abs().max() > 1e-3
        with veil.use_backend("reference"):
            torch.testing.assert_close(sinks(ids, mask), b, atol=1e-5, rtol=1e-5)
        # cached decoding keeps the sinks: local layers use static caches, and generation equals the greedy
        # continuation of full forwards
        cache = sinks.new_cache(2, 64)
        assert not any(layer.is_ring for layer in cache.layers)
        out = sinks.generate(ids, mask, max_new_tokens=10)
        full = sinks(out, torch.cat([mask, torch.ones(2, 10, dtype=mask.dtype)], 1))
        assert torch.equal(full[:, 3 * W - 1:-1].argmax(-1), out[:, 3 * W:])
    with pytest.raises(ValueError, match="attention_sinks"):
        DecoderConfig.preset("tiny-gemma3", attention_sinks=-1)


def test_presets_mirror_hf_configs():
    # transformers' Gemma2Config defaults are gemma-2-2b's config.json
    assert config_from_transformers(Gemma2Config()) == DECODER_PRESETS["gemma2-2b"]
    g3 = config_from_transformers(_gemma3().config)
    assert g3.qk_norm and g3.attn_softcap is None and g3.rope_scaling == 8.0 and g3.rope_base_local == 1e4
    assert g3.layer_types == ("local", "local", "global", "local")
    assert DECODER_PRESETS["gemma3-1b"].layer_types == ("local",) * 5 + ("global",) + ("local",) * 5 + ("global",) + \
        ("local",) * 5 + ("global",) + ("local",) * 5 + ("global",) + ("local",) * 2


def test_from_transformers_rejects_what_it_cannot_load():
    hf = _gemma2(layers=2)
    with torch.no_grad():
        hf.lm_head.weight = torch.nn.Parameter(hf.lm_head.weight.detach() + 1.0)  # untie
    with pytest.raises(ValueError, match="tied"):
        DecoderLM.from_transformers(hf)
    with pytest.raises(ValueError, match="model_type"):
        config_from_transformers(type("C", (), {"model_type": "llama"})())
    with pytest.raises(TypeError, match="model"):
        DecoderLM.from_transformers(object())


@pytest.mark.parametrize("field, value, match", [
    ("heads", 0, "heads: expected a positive int, got 0"),
    ("kv_heads", 3, "kv_heads: must divide heads=4, got 3"),
    ("layer_types", ("local",), "layer_types: expected 4 entries"),
    ("sliding_window", None, "sliding_window: expected a positive int"),
    ("attn_softcap", -1.0, "attn_softcap: expected a positive number or None, got -1.0"),
    ("rope_base", 1.0, "rope_base: expected a number > 1, got 1.0"),
    ("activation", "tanh", "activation: expected 'gelu_tanh', 'gelu' or 'silu', got 'tanh'"),
    ("cond_placement", "mid", "cond_placement: expected 'post_norm' or 'pre_norm', got 'mid'"),
])
def test_config_validation_names_field_and_value(field, value, match):
    with pytest.raises(ValueError, match=match.replace("(", r"\(").replace(")", r"\)")):
        DecoderConfig.preset("tiny-gemma2", **{field: value})
    with pytest.raises(ValueError, match="name: expected one of"):
        DecoderConfig.preset("gemma9")


def test_bad_inputs():
    ours = DecoderLM(DecoderConfig.preset("tiny-gemma2"))
    ids = torch.randint(0, V, (2, 5))
    with pytest.raises(ValueError, match="input_ids"):
        ours(ids.float())
    with pytest.raises(ValueError, match="attention_mask"):
        ours(ids, torch.ones(2, 4))
    with pytest.raises(ValueError, match="left padding"):
        ours.generate(ids, torch.tensor([[1, 1, 0, 1, 1], [1] * 5]), max_new_tokens=2)
    with pytest.raises(ValueError, match="in_attn_cond"):
        ours(ids, in_attn_cond=torch.zeros(2, 64))
    with pytest.raises(ValueError, match="cache"):
        ours(ids, cache=ours.new_cache(3, 16))
    with pytest.raises(ValueError, match="pad_token_id"):
        ours.generate(ids, max_new_tokens=2, pad_token_id=-1)
    with pytest.raises(ValueError, match="temperature"):
        ours.generate(ids, max_new_tokens=2, do_sample=True, temperature=0.0)
