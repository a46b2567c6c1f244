"""TextToVideo: shapes, determinism, one guided batch, EMA round trip through a checkpoint, GIF / MP4 files."""

from __future__ import annotations

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from tests.pipelines.t2v_helpers import HashEncoder, randomize, tiny_config
from veil.pipelines import PixelCodec, TextToVideo, XPrediction, save_grid, save_video
from veil.pipelines.media import to_frames
from veil.training import EMA, save_checkpoint


class Spy(torch.nn.Module):
    """Wraps a denoiser and records each call's input and timesteps in ``calls``."""

    def __init__(self, inner, calls):
        super().__init__()
        self.inner, self.calls = inner, calls

    def forward(self, x, t, c, n=None):
        self.calls.append((x.clone(), t.clone()))
        return self.inner(x, t, c, n)


def make_pipe(prediction="x0", seed=0):
    cfg = tiny_config(prediction)
    return TextToVideo(randomize(cfg.build_model(), seed), PixelCodec(), HashEncoder(), cfg)


def test_shape_range_and_determinism_by_seed():
    pipe = make_pipe()
    a = pipe(["a red circle moving left", "a blue box"], seed=3)
    assert a.shape == (2, 3, 4, 32, 32) and a.dtype == torch.float32
    assert a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, pipe(["a red circle moving left", "a blue box"], seed=3))
    assert not torch.equal(a, pipe(["a red circle moving left", "a blue box"], seed=4))


def test_rows_depend_on_their_prompt():
    pipe = make_pipe()
    a = pipe(["a red circle", "a blue box"], seed=0, guidance=1.0)
    b = pipe(["a red circle", "a green box"], seed=0, guidance=1.0)
    assert torch.allclose(a[0], b[0], atol=1e-5) and not torch.allclose(a[1], b[1], atol=1e-3)


def test_guidance_and_negative_prompt_go_through_one_batch():
    pipe = make_pipe()
    rows = []
    inner = pipe.model.forward
    pipe.model.forward = lambda x, t, c, n=None, **kw: (rows.append((x.shape[0], c.shape[0], n.tolist())),
                                                          inner(x, t, c, n, **kw))[1]
    enc = pipe.text_encoder
    out = pipe(["a red circle", "a blue box moving up"], negative_prompt="white", guidance=3.0, steps=2)
    assert enc.calls[-1] == ["a red circle", "a blue box moving up", "white", "white"]  # one encoder call
    assert rows == [(4, 4, [3, 5, 1, 1])] * 2  # conditional then negative rows, unequal lengths, per step
    rows.clear()
    null = pipe(["a red circle", "a blue box moving up"], guidance=3.0, steps=2)
    assert rows == [(4, 4, [3, 5, 0, 0])] * 2  # no negative prompt: the null prompt (no tokens)
    assert not torch.allclose(out, null, atol=1e-4)
    rows.clear()
    pipe(["a red circle"], guidance=1.0, steps=2)
    assert rows == [(1, 1, [3])] * 2  # guidance off: one row per sample


def test_x_prediction_turns_a_clean_estimate_into_the_velocity():
    class Oracle(torch.nn.Module):  # returns a fixed x0 whatever the input
        def __init__(self, x0):
            super().__init__()
            self.x0 = x0

        def forward(self, x, t, c, n=None):
            return self.x0.expand_as(x)

    x0, noise = torch.randn(1, 3, 2, 4, 4), torch.randn(2, 3, 2, 4, 4)
    sigma = torch.tensor([0.5, 0.01])
    xt = (1 - sigma.view(-1, 1, 1, 1, 1)) * x0 + sigma.view(-1, 1, 1, 1, 1) * noise
    v = XPrediction(Oracle(x0), min_sigma=0.05)(xt, sigma * 1000, torch.zeros(2, 1, 4))
    assert torch.allclose(v[0], (noise - x0)[0], atol=1e-5)  # exact where sigma >= min_sigma
    assert torch.allclose(v[1], (xt[1] - x0[0]) / 0.05, atol=1e-5)  # clamped below


def test_x_prediction_takes_per_frame_timesteps():
    class Zero(torch.nn.Module):
        def forward(self, x, t, c, n=None):
            return torch.zeros_like(x)

    x = torch.randn(2, 3, 4, 4, 4)
    t = torch.tensor([[0.0, 0.0, 500.0, 500.0], [250.0, 250.0, 250.0, 250.0]])
    v = XPrediction(Zero(), min_sigma=0.05)(x, t, torch.zeros(2, 1, 4))
    sigma = torch.tensor([[0.05, 0.05, 0.5, 0.5], [0.25] * 4])[:, None, :, None, None]
    assert torch.allclose(v, x / sigma)
    with pytest.raises(ValueError, match="per-frame"):
        XPrediction(Zero())(x, torch.zeros(2, 7), torch.zeros(2, 1, 4))


def test_any_frame_count_of_whole_temporal_patches_and_clean_anchored_extension():
    cfg = tiny_config(clean_anchors=True)  # temporal patch 2, trained length 4, overlap 2
    calls = []
    pipe = TextToVideo(Spy(randomize(cfg.build_model()), calls), PixelCodec(), HashEncoder(), cfg)
    assert pipe(["a red circle"], frames=6).shape == (1, 3, 6, 32, 32)
    with pytest.raises(ValueError, match=r"frames: .*temporal patch \(2\), got 5 frames"):
        pipe(["a red circle"], frames=5)
    calls.clear()
    v = pipe(["a red circle"], extend_to=8)
    assert v.shape == (1, 3, 8, 32, 32)
    first, windows = calls[: cfg.steps], calls[cfg.steps:]
    assert all(t.dim() == 1 for _, t in first)  # the first window has no anchors
    # every extension window sees its two anchored frames clean, at timestep 0, and the rest at the step's level
    assert windows and all(t.shape == (2, 4) and (t[:, :2] == 0).all() and (t[:, 2:] > 0).all() for _, t in windows)


def test_staged_sampling_continues_the_first_temporal_patch_clean():
    cfg = tiny_config(clean_anchors=True, staged=True)  # temporal patch 2, trained length 4
    calls = []
    pipe = TextToVideo(Spy(randomize(cfg.build_model()), calls), PixelCodec(), HashEncoder(), cfg)
    v = pipe(["a red circle", "a blue box"], seed=1)
    assert v.shape == (2, 3, 4, 32, 32) and len(calls) == 2 * cfg.steps
    first, second = calls[: cfg.steps], calls[cfg.steps:]
    assert all(t.dim() == 1 for _, t in first)  # stage 1: the whole clip at one level
    # stage 2: the first patch clean at timestep 0 in every step (guided rows too), the rest at the step's level
    assert all(t.shape == (4, 4) and (t[:, :2] == 0).all() and (t[:, 2:] > 0).all() for _, t in second)
    anchored = second[0][0][:, :, :2]
    assert all(torch.equal(x[:, :, :2], anchored) for x, _ in second)
    assert torch.allclose(v[:, :, :2], anchored[:2].clamp(-1, 1), atol=1e-6)  # the output keeps the first patch
    one_pass = pipe(["a red circle", "a blue box"], seed=1, staged=False)
    assert len(calls) == 3 * cfg.steps and not torch.allclose(one_pass, v, atol=1e-3)
    assert torch.equal(pipe(["a red circle", "a blue box"], seed=1), v)  # deterministic by seed
    calls.clear()
    pipe(["a red circle"], keyframes={0: torch.zeros(3, 32, 32)})  # keyframes fix frames: one pass
    assert len(calls) == cfg.steps
    with pytest.raises(ValueError, match="staged: expected no keyframes"):
        pipe(["a red circle"], keyframes={0: torch.zeros(3, 32, 32)}, staged=True)
    with pytest.raises(TypeError, match="staged: expected a bool"):
        pipe(["a red circle"], staged=1)
    plain = TextToVideo(randomize(tiny_config().build_model()), PixelCodec(), HashEncoder(), tiny_config())
    with pytest.raises(ValueError, match="not trained for continuation"):
        plain(["a red circle"], staged=True)


def test_extend_and_keyframes():
    pipe = make_pipe()
    key = torch.rand(3, 32, 32) * 2 - 1
    v = pipe(["a red circle"], keyframes={0: key}, extend_to=9)
    assert v.shape == (1, 3, 9, 32, 32)
    assert torch.allclose(v[0, :, 0], key.clamp(-1, 1), atol=1e-5)
    with pytest.raises(ValueError, match="extend_to"):
        pipe(["a red circle"], extend_to=2)


def test_from_checkpoint_uses_the_ema_weights(tmp_path):
    cfg = tiny_config()
    model = randomize(cfg.build_model(), 0)
    ema = EMA(model, 0.5)
    ema.update(model)  # first update copies
    randomize(model, 1)
    ema.update(model)  # now EMA = mean of the two, the model = the second
    path = save_checkpoint(tmp_path / "c.safetensors", step=2, model=model, ema=ema,
                           extra={"pipeline": cfg.to_dict()})
    enc = HashEncoder()
    pipe = TextToVideo.from_checkpoint(path, text_encoder=enc)
    ref = cfg.build_model()
    ema.copy_to(ref)
    for k, v in ref.state_dict().items():
        assert torch.equal(pipe.model.state_dict()[k], v), k
    want = TextToVideo(ref, PixelCodec(), enc, cfg)(["a red circle"], seed=1)
    assert torch.equal(pipe(["a red circle"], seed=1), want)
    assert pipe.config == cfg
    with pytest.raises(ValueError, match="no pipeline config"):
        TextToVideo.from_checkpoint(save_checkpoint(tmp_path / "d.safetensors", step=0, model=model),
                                    text_encoder=enc)
    with pytest.raises(ValueError, match="no such file"):
        TextToVideo.from_checkpoint(tmp_path / "missing.safetensors", text_encoder=enc)


def test_save_video_gif_and_mp4_read_back(tmp_path):
    video = torch.zeros(3, 4, 32, 32) - 1
    for t in range(4):
        video[0, t, 8:16, 8 + t:16 + t] = 1  # a red square moving right (a static GIF collapses to one frame)
    gif = save_video(video, tmp_path / "a.gif", scale=2)
    frames = iio.imread(gif, index=None)
    assert frames.shape[:3] == (4, 64, 64)
    assert tuple(frames[0, 20, 20, :3]) == (255, 0, 0) and tuple(frames[0, 0, 0, :3]) == (0, 0, 0)
    mp4 = save_video(video, tmp_path / "a.mp4", scale=4)
    frames = np.stack(list(_read_mp4(mp4)))
    assert frames.shape == (4, 128, 128, 3)
    assert frames[0, 40:60, 40:60, 0].mean() > 200 and frames[0, 40:60, 40:60, 1].mean() < 60
    with pytest.raises(ValueError, match="gif or .mp4"):
        save_video(video, tmp_path / "a.png")


def _read_mp4(path):
    import imageio.v2 as iio2

    with iio2.get_reader(str(path), format="FFMPEG") as r:
        yield from r


def test_save_grid_places_each_video(tmp_path):
    videos = torch.full((3, 3, 2, 8, 8), -1.0)
    videos[1, 1] = 1  # the second cell green
    videos[2, :, 1] = 0  # the third cell grey in its second frame (identical frames would merge in the GIF)
    path = save_grid(videos, tmp_path / "g.gif", ["a", "b", "c"], columns=2, scale=1)
    frames = iio.imread(path, index=None)
    cell = to_frames(videos[1])
    assert frames.shape[0] == 2
    assert np.array_equal(frames[0, 4:12, 16:24, :3], cell[0])
    with pytest.raises(ValueError, match="captions"):
        save_grid(videos, tmp_path / "g.gif", ["a"])


def test_context_standardize_fits_applies_and_travels_with_the_weights(tmp_path):
    from veil.pipelines import ContextStandardize

    seen = {}

    class Spy(torch.nn.Module):
        def forward(self, x, t, c, n=None):
            seen["context"] = c
            return x

    norm = ContextStandardize(Spy(), 4)
    emb = [torch.tensor([[1.0, 2.0, 0.0, 5.0], [3.0, 2.0, 0.0, 7.0]]), torch.tensor([[5.0, 2.0, 0.0, 9.0]])]
    norm.fit(emb)
    torch.testing.assert_close(norm.mean, torch.tensor([3.0, 2.0, 0.0, 7.0]))
    torch.testing.assert_close(norm.std, torch.tensor([2.0, 1e-3, 1e-3, 2.0]))  # constant features: the floor
    norm(torch.zeros(1, 3, 1, 2, 2), torch.tensor([500.0]), torch.tensor([[[5.0, 2.0, 0.0, 3.0]]]))
    torch.testing.assert_close(seen["context"], torch.tensor([[[1.0, 0.0, 0.0, -2.0]]]))
    with pytest.raises(ValueError, match="width 4"):
        norm.fit([torch.zeros(3, 5)])
    # a text_norm pipeline saves the statistics with the weights and standardises before the denoiser
    cfg = tiny_config()
    cfg.text_norm = True
    model = randomize(cfg.build_model(), 0)
    inner = next(m for m in model.modules() if isinstance(m, ContextStandardize))
    inner.fit([torch.randn(6, inner.mean.numel()) * 3 + 1])
    path = save_checkpoint(tmp_path / "n.safetensors", step=1, model=model, extra={"pipeline": cfg.to_dict()})
    pipe = TextToVideo.from_checkpoint(path, text_encoder=HashEncoder())
    back = next(m for m in pipe.model.modules() if isinstance(m, ContextStandardize))
    assert torch.equal(back.mean, inner.mean) and torch.equal(back.std, inner.std)
    assert pipe.config.text_norm


def test_prompt_weighting_scales_the_standardised_embedding_under_text_norm():
    # the shipped pipeline standardises its text: a weight w must scale the token's standardised embedding
    from veil.pipelines.t2v import ContextStandardize

    pipe = TextToVideo.from_checkpoint()
    norm = next(m for m in pipe.model.modules() if isinstance(m, ContextStandardize))

    def standardised(prompt):
        ctx, lengths = pipe.encode_prompts([prompt])
        return ((ctx - norm.mean) / norm.std)[0, : int(lengths[0])]

    plain = standardised("a red circle moving right")
    heavy = standardised("a (red:1.5) circle moving right")
    zero = standardised("a (red:0) circle moving right")
    changed = (heavy - plain).abs().amax(-1) > 1e-4  # the tokens of "red" (one token for MiniLM)
    assert changed.sum() == 1
    torch.testing.assert_close(heavy[changed], 1.5 * plain[changed], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(heavy[~changed], plain[~changed])
    assert zero[changed].abs().max() < 1e-4  # (red:0): the mean token, no information


def test_prompt_weighting_moves_the_shipped_model_s_colour_choice():
    # "a blue red circle" names two colours; the shipped model (with its low-noise expert) draws blue (20 seeds:
    # 10 blue, 0 red, 10 neither cleanly, measured); (red:1.5) makes red win (12 red, 2 blue) and (red:0) removes red
    # (20 blue). One batch of 20 seeds per prompt.
    from collections import Counter

    from veil.data.analyze import analyze

    pipe = TextToVideo.from_checkpoint()

    def colours(prompt):
        return Counter(analyze(v).colour for v in pipe([prompt] * 20, seed=0))

    ambiguous, heavy, zero = (colours(p) for p in ("a blue red circle moving right",
                                                    "a blue (red:1.5) circle moving right",
                                                    "a blue (red:0) circle moving right"))
    assert ambiguous["red"] + ambiguous["blue"] >= 8, ambiguous  # one of the two named colours is drawn
    assert heavy["red"] - heavy["blue"] >= ambiguous["red"] - ambiguous["blue"] + 10, (ambiguous, heavy)
    assert heavy["red"] >= 8 and heavy["red"] >= 3 * heavy["blue"], heavy
    assert zero["red"] == 0, zero


def test_a_vae_pipeline_samples_latents_and_round_trips_through_its_checkpoint(tmp_path):
    # a tiny random diffusers AutoencoderKL saved locally (4 latent channels, factor 2): the model works on
    # [B, 4, T, 16, 16] latents of 32x32 frames, and from_checkpoint rebuilds the VAE codec from the config
    from diffusers import AutoencoderKL

    from veil.pipelines import VAECodec

    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8),
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        layers_per_block=1, norm_num_groups=4, sample_size=32).eval()
    vae.save_pretrained(tmp_path / "vae")
    cfg = tiny_config(codec={"kind": "vae", "path": str(tmp_path / "vae")})
    cfg.model.update(in_channels=4, out_channels=4, patch_size=[1, 2, 2])
    model = randomize(cfg.build_model(), 0)
    path = save_checkpoint(tmp_path / "c.safetensors", step=1, model=model, extra={"pipeline": cfg.to_dict()})
    enc = HashEncoder()
    pipe = TextToVideo.from_checkpoint(path, text_encoder=enc)
    assert isinstance(pipe.codec, VAECodec) and pipe.codec.latent_shape(4, 32, 32) == (4, 4, 16, 16)
    seen = []
    inner = pipe.model.forward
    pipe.model.forward = lambda x, *a, **k: (seen.append(tuple(x.shape)), inner(x, *a, **k))[1]
    video = pipe(["a red circle"], seed=1)
    assert video.shape == (1, 3, 4, 32, 32) and seen[0][1:] == (4, 4, 16, 16)
    bad = tiny_config(codec={"kind": "vae", "path": str(tmp_path / "vae")})  # 3-channel model, 4-channel VAE
    with pytest.raises(ValueError, match="latent channels"):
        bad.build_codec()
    with pytest.raises(ValueError, match="codec"):
        tiny_config(codec={"kind": "vae"}).build_codec()


def test_from_checkpoint_with_a_low_noise_expert_runs_each_step_on_its_expert(tmp_path):
    from veil.models import TimestepExperts

    enc = HashEncoder()
    high_cfg, low_cfg = tiny_config(clean_anchors=True), tiny_config(clean_anchors=True, sigma_range=[0.0, 0.6])
    high = save_checkpoint(tmp_path / "high.safetensors", step=1, model=randomize(high_cfg.build_model(), 0),
                           extra={"pipeline": high_cfg.to_dict()})
    low = save_checkpoint(tmp_path / "low.safetensors", step=1, model=randomize(low_cfg.build_model(), 1),
                          extra={"pipeline": low_cfg.to_dict()})
    pipe = TextToVideo.from_checkpoint(high, low_noise=low, text_encoder=enc)
    # the boundary defaults to the upper end of the low-noise expert's training range
    assert isinstance(pipe.model, TimestepExperts) and pipe.model.boundary == 0.6
    assert pipe.extra["experts"] == {"high_noise": str(high), "low_noise": str(low), "boundary": 0.6}
    calls = {"high": [], "low": []}
    pipe.model.high_noise_model = Spy(pipe.model.high_noise_model, calls["high"])
    pipe.model.low_noise_model = Spy(pipe.model.low_noise_model, calls["low"])
    mixed = pipe(["a red circle"], steps=6, seed=2, extend_to=6)
    # every step on its expert, including the extension's steps, whose anchored frames are clean at timestep 0
    assert calls["high"] and calls["low"]
    assert all(t.max() >= 600 for _, t in calls["high"]) and all(t.max() < 600 for _, t in calls["low"])
    assert any(t.dim() == 2 and (t == 0).any() for _, t in calls["low"] + calls["high"])
    # the oracle: with one checkpoint as both experts the pipeline is the single-model one, to the bit
    alone = TextToVideo.from_checkpoint(high, text_encoder=enc)(["a red circle"], steps=6, seed=2, extend_to=6)
    same = TextToVideo.from_checkpoint(high, low_noise=high, boundary=0.6, text_encoder=enc)
    assert torch.equal(same(["a red circle"], steps=6, seed=2, extend_to=6), alone)
    assert (mixed - alone).abs().max() > 1e-3
    # bad pairs and boundaries are refused, naming what differs
    other = tiny_config(clean_anchors=True)
    other.size = 16
    bad = save_checkpoint(tmp_path / "bad.safetensors", step=1, model=other.build_model(),
                          extra={"pipeline": other.to_dict()})
    with pytest.raises(ValueError, match=r"low_noise: .*size: 32 high-noise, 16 low-noise"):
        TextToVideo.from_checkpoint(high, low_noise=bad, text_encoder=enc)
    with pytest.raises(ValueError, match=r"boundary: 0.9 leaves noise levels .*up to 0.6"):
        TextToVideo.from_checkpoint(high, low_noise=low, boundary=0.9, text_encoder=enc)
    with pytest.raises(ValueError, match=r"boundary: expected a noise level in \(0, 1\]"):
        TextToVideo.from_checkpoint(high, low_noise=high, boundary=0.0, text_encoder=enc)
    with pytest.raises(ValueError, match="boundary: only with low_noise"):
        TextToVideo.from_checkpoint(high, boundary=0.5, text_encoder=enc)


def test_prompt_weighting_with_experts_needs_one_set_of_text_statistics(tmp_path):
    from veil.pipelines import ContextStandardize

    cfg = tiny_config(text_norm=True)
    paths = []
    for seed in (0, 1):
        model = randomize(cfg.build_model(), seed)
        norm = next(m for m in model.modules() if isinstance(m, ContextStandardize))
        norm.fit([torch.randn(6, 16, generator=torch.Generator().manual_seed(seed)) + 1])
        paths.append(save_checkpoint(tmp_path / f"{seed}.safetensors", step=1, model=model,
                                     extra={"pipeline": cfg.to_dict()}))
    same = TextToVideo.from_checkpoint(paths[0], low_noise=paths[0], text_encoder=HashEncoder())
    assert same(["a (red:1.5) circle"], steps=2).shape == (1, 3, 4, 32, 32)
    differ = TextToVideo.from_checkpoint(paths[0], low_noise=paths[1], text_encoder=HashEncoder())
    assert differ(["a red circle"], steps=2).shape == (1, 3, 4, 32, 32)  # unweighted: each expert its own
    with pytest.raises(ValueError, match="one set of text statistics"):
        differ(["a (red:1.5) circle"], steps=2)
