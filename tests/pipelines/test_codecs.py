"""Codecs: the identity, and a tiny random AutoencoderKL with Latte's latent scaling."""

import pytest
import torch
from diffusers import AutoencoderKL

from veil.pipelines import PixelCodec, VAECodec


def tiny_vae():
    torch.manual_seed(0)
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=4,
                         norm_num_groups=4, sample_size=16).eval()


def test_pixel_codec_is_the_identity_and_checks_shapes():
    x = torch.rand(2, 3, 4, 8, 8) * 2 - 1
    c = PixelCodec()
    assert torch.equal(c.decode(c.encode(x)), x)
    with pytest.raises(ValueError, match="video"):
        c.encode(torch.zeros(2, 4, 4, 8, 8))


def test_vae_codec_scales_after_encoding_and_unscales_before_decoding():
    vae = tiny_vae()
    codec = VAECodec(vae)
    assert codec.scaling_factor == 0.18215 and codec.latent_shape(4, 16, 16) == (4, 4, 8, 8)
    video = torch.rand(2, 3, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        z = codec.encode(video)
        # oracle: the VAE frame by frame, then x 0.18215 (Latte multiplies; the VAE does not)
        frame = video[1, :, 2][None]
        expect = vae.encode(frame).latent_dist.mean * 0.18215
        torch.testing.assert_close(z[1, :, 2], expect[0], atol=1e-5, rtol=1e-5)
        out = codec.decode(z)
        expect_frame = vae.decode(z[0, :, 1][None] / 0.18215).sample.clamp(-1, 1)
        torch.testing.assert_close(out[0, :, 1], expect_frame[0], atol=1e-5, rtol=1e-5)
    assert out.shape == video.shape


def test_vae_codec_rejects_bad_input():
    with pytest.raises(TypeError, match="vae"):
        VAECodec(torch.nn.Linear(2, 2))
    codec = VAECodec(tiny_vae())
    with pytest.raises(ValueError, match="height, width"):
        codec.latent_shape(4, 15, 16)
    with pytest.raises(ValueError, match="latents"):
        codec.decode(torch.zeros(1, 3, 2, 8, 8))
