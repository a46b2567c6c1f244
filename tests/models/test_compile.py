"""``torch.compile(model, fullgraph=True)``: WanDiT, LatteDiT and DecoderLM trace without a graph break, equal eager,
and a compiled decoding loop compiles a bounded number of graphs (fixed-shape KV cache), not one per token.

Each compile takes 10-35 s on a 2-core CPU: one model per test, small configs, every feature under test at once.
"""

import pytest
import torch
from torch._dynamo.utils import counters

import veil
from veil import masks as M
from veil.models import DecoderConfig, DecoderLM, LatteConfig, LatteDiT, WanConfig, WanDiT
from veil.models.wan_config import AttentionPattern as P


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def _graphs() -> int:
    return counters["stats"]["unique_graphs"]


def _wan(patterns=None):
    patterns = patterns or (P(kind="window_3d", window=(3, 3, 3)), "spatial", "temporal", "frame_causal")
    torch.manual_seed(0)
    return WanDiT(WanConfig.preset("tiny", num_layers=len(patterns), attention=list(patterns)))


def test_wan_compiles_whole_and_equals_eager_forward_and_backward():
    model = _wan()
    x, ctx = torch.randn(2, 4, 4, 8, 8), torch.randn(2, 7, 16)
    t, lengths = torch.tensor([500.0, 300.0]), torch.tensor([3, 0])  # sample 1 has no text at all
    want = model(x, t, ctx, lengths)
    want.square().mean().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    compiled = torch.compile(model, fullgraph=True)  # fullgraph: any graph break is an error
    got = compiled(x, t, ctx, lengths)
    got.square().mean().backward()
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    for p, g in zip(model.parameters(), grads):
        torch.testing.assert_close(p.grad, g, atol=1e-5, rtol=1e-4)
    # other text lengths are data, not a new graph
    other = torch.tensor([7, 1])
    torch.testing.assert_close(compiled(x, t, ctx, other), model(x, t, ctx, other), atol=1e-5, rtol=1e-5)
    assert _graphs() == 1


@pytest.mark.parametrize("backend", ["reference", "flex"])
def test_wan_compiles_on_the_reference_and_flex_paths(backend):
    # two patterns: each distinct mask is a flex kernel for inductor to build (seconds each on CPU)
    model = _wan((P(kind="window_3d", window=(3, 3, 3)), "frame_causal")).eval()
    x, ctx, t = torch.randn(1, 4, 4, 8, 8), torch.randn(1, 5, 16), torch.tensor([250.0])
    # flex on CPU: sample-dependent masks fail inductor's CPU flex template (torch 2.13), so the text is unpadded
    lengths = torch.tensor([3]) if backend == "reference" else None
    with torch.no_grad(), veil.use_backend(backend):
        want = model(x, t, ctx, lengths)
        got = torch.compile(model, fullgraph=True)(x, t, ctx, lengths)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_latte_compiles_whole_with_padded_frames_and_text():
    torch.manual_seed(0)
    cfg = LatteConfig.preset("tiny", text_dim=16, num_classes=0)
    model = LatteDiT(cfg).eval()
    x, t, text = torch.randn(2, cfg.in_channels, 4, 8, 8), torch.tensor([500.0, 300.0]), torch.randn(2, 7, 16)
    keep = torch.tensor([[1, 1, 1, 0, 0, 0, 0], [0] * 7]).bool()
    frames = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]]).bool()
    kwargs = dict(encoder_hidden_states=text, encoder_attention_mask=keep, attention_mask=frames)
    with torch.no_grad():
        want = model(x, t, **kwargs)
        got = torch.compile(model, fullgraph=True)(x, t, **kwargs)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert got[0, :, 3].abs().max() == 0  # the padded frame


def test_compiled_decoding_compiles_two_graphs_and_equals_eager():
    torch.manual_seed(0)
    model = DecoderLM(DecoderConfig.preset("tiny-gemma3")).eval()  # 5 local (ring cache) + 1 global layer
    prompts = torch.randint(0, 128, (2, 12))
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[0, :5] = 0  # left padding
    want = model.generate(prompts, mask, max_new_tokens=64)
    eager_logits = model(prompts, mask)
    model.compile(fullgraph=True)  # nn.Module.compile: generate then runs the compiled module
    got = model.generate(prompts, mask, max_new_tokens=64)
    assert torch.equal(got, want)
    # the decoding step: not one graph per token (on CPU the prefill runs eagerly, DecoderLM._prefill_call)
    assert _graphs() == 1
    other = torch.randint(0, 128, (2, 12))
    again = model.generate(other, mask, max_new_tokens=40)  # new prompt, fewer tokens: the same graph
    assert _graphs() == 1
    # a prefill through the compiled module itself (the fixed-shape cache's at_positions masks) equals eager's
    cache = model.new_cache(2, 256, fixed_shapes=True)
    with torch.inference_mode():  # as generate runs it
        torch.testing.assert_close(model(prompts, mask, cache=cache, last_only=True), eager_logits[:, -1])
    assert _graphs() == 2
    # with gradients on, a call that writes a fixed-shape cache runs eagerly, with a warning (AOT autograd cannot
    # compile its in-place writes of values with history): exact, differentiable, no new graph
    cache.reset()
    with pytest.warns(RuntimeWarning, match="runs eagerly"):
        out = model(prompts, mask, cache=cache, last_only=True)
    torch.testing.assert_close(out, eager_logits[:, -1])
    out.logsumexp(-1).sum().backward()
    assert model.embed.weight.grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)
    assert _graphs() == 2
    # steps after the first run with only the guards that tell cached graphs apart (DecoderLM.warm_stance):
    # the tokens above and these equal eager's
    assert torch.equal(model.generate(prompts, mask, max_new_tokens=30), want[:, :42])
    model._compiled_call_impl = None  # back to eager for the oracle
    assert torch.equal(again, model.generate(other, mask, max_new_tokens=40))
    torch.testing.assert_close(model(prompts, mask), eager_logits)
    # other batch sizes (which once failed: traced with symbolic sizes, the backend choice formatted and sorted
    # symbolic costs): each batch size compiles its own decoding graph
    model.compile(fullgraph=True)
    compiled = model._compiled_call_impl
    graphs = None
    for b, n in ((1, 12), (4, 20), (4, 9)):
        if (b, n) == (4, 9):
            graphs = _graphs()
        p, m = torch.randint(0, 128, (b, n)), torch.ones(b, n, dtype=torch.long)
        model._compiled_call_impl = compiled
        got = model.generate(p, m, max_new_tokens=8)
        model._compiled_call_impl = None
        assert torch.equal(got, model.generate(p, m, max_new_tokens=8))
    assert _graphs() == graphs


def test_eager_only_backends_are_skipped_or_refused_inside_a_compiled_region():
    q = k = v = torch.randn(1, 2, 64, 8)
    mask = M.sliding_window(8)
    assert veil.explain(q, k, v, mask).backend == "tiles"  # eager: tiles is the choice

    def auto(q, k, v):
        return veil.attend(q, k, v, mask)

    torch.testing.assert_close(torch.compile(auto, fullgraph=True)(q, k, v),
                               veil.attend(q, k, v, mask, backend="reference"), atol=1e-5, rtol=1e-5)

    def named(q, k, v):
        return veil.attend(q, k, v, mask, backend="tiles")

    with pytest.raises(Exception, match="eager only under torch.compile"):
        torch.compile(named, fullgraph=True)(q, k, v)

    # frame-wise masks are views of the sequence (no host plan): tiles traces them, per head too
    g = (4, 2, 8)
    frames = M.per_head([M.spatial(g), M.temporal(g)])

    def framewise(q, k, v):
        return veil.attend(q, k, v, frames, backend="tiles")

    torch.testing.assert_close(torch.compile(framewise, fullgraph=True)(q, k, v),
                               veil.attend(q, k, v, frames, backend="reference"), atol=1e-5, rtol=1e-5)


def test_eager_hot_paths_read_nothing_back_to_the_host(monkeypatch):
    # after a first call (value checks read each tensor once), a forward and a decoding step make no host read
    wan = _wan().eval()
    x, ctx, t, lengths = torch.randn(2, 4, 4, 8, 8), torch.randn(2, 7, 16), torch.tensor([500.0, 3.0]), \
        torch.tensor([3, 0])
    cfg = LatteConfig.preset("tiny", text_dim=16, num_classes=0)
    latte = LatteDiT(cfg).eval()
    xl, text = torch.randn(2, cfg.in_channels, 4, 8, 8), torch.randn(2, 7, 16)
    keep, frames = torch.tensor([[1, 1, 1, 0, 0, 0, 0], [0] * 7]).bool(), torch.tensor([[1, 1, 1, 0], [1] * 4]).bool()
    lm = DecoderLM(DecoderConfig.preset("tiny-gemma3")).eval()
    ids, am = torch.randint(0, 128, (2, 12)), torch.ones(2, 12, dtype=torch.long)
    am[0, :4] = 0
    cache = lm.new_cache(2, 64)
    calls = [lambda: wan(x, t, ctx, lengths),
             lambda: latte(xl, t, encoder_hidden_states=text, encoder_attention_mask=keep, attention_mask=frames)]
    with torch.no_grad():
        for call in calls:
            call()
        token = lm.prefill(ids, am, cache).argmax(-1)
        token = lm.decode_step(token, cache).argmax(-1)

        def host_read(*args, **kwargs):
            raise AssertionError("a tensor was read back to the host")

        for name in ("item", "tolist", "__bool__", "__int__", "__index__", "__float__"):
            monkeypatch.setattr(torch.Tensor, name, host_read)
        for call in calls:
            call()
        for _ in range(3):
            token = lm.decode_step(token, cache).argmax(-1)
