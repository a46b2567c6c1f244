"""WanDiT, LatteDiT and DecoderLM sequence-parallel under 2 and 4 gloo processes equal one process, forward and
backward.

Every rank builds the same model and inputs, runs the one-process model (the oracle) and the same weights with
``enable_sequence_parallel``; outputs, input gradients and parameter gradients (summed over the group, as the
model's docs say) are compared. The token counts (27) do not divide by 2 or 4.
"""

from __future__ import annotations

import copy

import torch
import torch.distributed as dist

import veil.distributed as vd
from veil.models import AttentionPattern, LatteConfig, LatteDiT, WanConfig, WanDiT

TOL = 1e-5


def _wan(seed: int = 0) -> WanDiT:
    torch.manual_seed(seed)
    cfg = WanConfig(patch_size=(1, 2, 2), in_channels=4, out_channels=4, dim=32, heads=4, num_layers=3, ffn_dim=48,
                    text_dim=16, freq_dim=16,
                    attention=("full", AttentionPattern(kind="window_3d", window=(3, 3, 1)), "frame_causal"))
    model = WanDiT(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def _latte(seed: int = 0) -> LatteDiT:
    torch.manual_seed(seed)
    cfg = LatteConfig(input_size=6, patch_size=2, hidden_size=32, depth=4, num_heads=4, num_frames=3, max_frames=4,
                      num_classes=0, text_dim=12, in_channels=4, learn_sigma=False,
                      conditioning="adaln_single")
    model = LatteDiT(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def _diffs(model, run, modes) -> dict[str, tuple[float, float, float]]:
    """For each mode: max |diff| of the output, the input's gradient and every parameter's gradient."""
    ref = copy.deepcopy(model)
    want, want_dx = run(ref)
    want_params = {n: p.grad for n, p in ref.named_parameters()}
    out = {}
    for mode in modes:
        sp_model = copy.deepcopy(model).enable_sequence_parallel(**mode)
        got, dx = run(sp_model)
        sp_model.sequence_parallel.reduce_gradients(sp_model)
        dist.all_reduce(dx)  # the input's gradient: each rank's tokens' share
        # relative to each parameter's largest gradient entry (clamped at 1): sums over many tokens reach ~10
        worst_param = max(float((p.grad - want_params[n]).abs().max() / want_params[n].abs().max().clamp(min=1.0))
                          for n, p in sp_model.named_parameters())
        out[str(mode)] = (float((got - want).abs().max()), float((dx - want_dx).abs().max()), worst_param)
    return out


def _modes_for(size: int) -> list[dict]:
    return [dict(ulysses=size), dict(ring=size), dict(ring=size, layout="zigzag")] + (
        [dict(ulysses=2, ring=2)] if size == 4 else [])


def _modes() -> list[dict]:
    return _modes_for(dist.get_world_size())


def worker_models() -> dict[str, tuple[float, float, float]]:
    g = torch.Generator().manual_seed(1)
    # Wan: 3 frames of 6x6 latents = a (3, 3, 3) patch grid; padded text
    x = torch.randn(2, 4, 3, 6, 6, generator=g)
    t = torch.tensor([900.0, 40.0])
    text, lengths = torch.randn(2, 5, 16, generator=g), torch.tensor([5, 2])
    w = torch.randn(2, 4, 3, 6, 6, generator=g)

    def run_wan(model):
        xi = x.clone().requires_grad_()
        out = model(xi, t, text, lengths)
        (out * w).sum().backward()
        return out.detach(), xi.grad

    results = {f"wan {k}": v for k, v in _diffs(_wan(), run_wan, _modes()).items()}
    # Latte: 3 frames (the last one padded in sample 1) of 6x6 latents = 27 tokens; padded text
    frames = torch.tensor([[True, True, True], [True, True, False]])
    text2, keep = torch.randn(2, 4, 12, generator=g), torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]]).bool()

    def run_latte(model):
        xi = x.clone().requires_grad_()
        out = model(xi, t, encoder_hidden_states=text2, attention_mask=frames, encoder_attention_mask=keep)
        (out * w[:, :, :3]).sum().backward()
        return out.detach(), xi.grad

    results.update({f"latte {k}": v for k, v in _diffs(_latte(), run_latte, _modes()).items()})
    return results


def _check(results):
    for rank, res in enumerate(results):
        for key, diffs in res.items():
            assert max(diffs) <= TOL, f"rank {rank}: {key}: out / dx / param grads differ by {diffs}"


def test_wan_and_latte_on_two_processes_equal_one():
    results = vd.spawn(worker_models, 2, timeout=300)
    _check(results)
    assert len(results[0]) == 6


def test_wan_and_latte_on_four_processes_equal_one():
    results = vd.spawn(worker_models, 4, timeout=420)
    _check(results)
    assert len(results[0]) == 8


def worker_decoder() -> dict[str, float]:
    """DecoderLM (Gemma 2 and Gemma 3 toy configs: local windows, softcaps, GQA): a forward with left padding and
    its gradients, and a cached prefill + greedy decode, sequence-parallel against one process."""
    from veil.models import DecoderConfig, DecoderLM

    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, 128, (2, 27), generator=g)
    mask = torch.ones(2, 27, dtype=torch.long)
    mask[1, :6] = 0  # left padding
    res = {}
    for preset in ("tiny-gemma2", "tiny-gemma3"):
        torch.manual_seed(0)
        model = DecoderLM(DecoderConfig.preset(preset))
        w = torch.randn(2, 27, 128, generator=g)
        ref = copy.deepcopy(model)
        want = ref(ids, mask)
        (want * w).sum().backward()
        with torch.no_grad():
            want_tokens = ref.generate(ids, mask, max_new_tokens=6)
        for mode in _modes():
            sp = copy.deepcopy(model).enable_sequence_parallel(**mode)
            got = sp(ids, mask)
            (got * w).sum().backward()
            sp.sequence_parallel.reduce_gradients(sp)
            # relative to each parameter's largest gradient entry: the tied embedding's reach the hundreds
            grads = max(float((p.grad - q.grad).abs().max() / q.grad.abs().max().clamp(min=1.0))
                        for p, q in zip(sp.parameters(), ref.parameters()))
            with torch.no_grad():
                tokens = sp.generate(ids, mask, max_new_tokens=6)
            res[f"{preset} {mode}"] = (float((got.detach() - want.detach()).abs().max()), grads,
                                       float((tokens != want_tokens).sum()))
    return res


def test_decoder_lm_forward_backward_and_prefill_under_sequence_parallelism():
    for size in (2, 4):
        for rank, res in enumerate(vd.spawn(worker_decoder, size, timeout=300)):
            assert len(res) == 2 * len(_modes_for(size))
            for key, (out, grads, wrong_tokens) in res.items():
                assert out <= TOL and grads <= TOL and wrong_tokens == 0, f"{size} ranks, rank {rank}: {key}: " \
                    f"logits {out}, grads {grads}, {wrong_tokens} tokens differ"
