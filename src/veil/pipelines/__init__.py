"""``veil.pipelines``: text-to-video end to end (encode prompt -> sample latents -> decode -> frames)."""

from veil.pipelines.codecs import PixelCodec, VAECodec

__all__ = ["PixelCodec", "VAECodec"]
