"""``veil.pipelines``: text-to-video end to end (encode prompt -> sample latents -> decode -> frames)."""

from veil.pipelines.codecs import PixelCodec, VAECodec
from veil.pipelines.media import save_grid, save_video
from veil.pipelines.t2v import (
           ContextStandardize,
           PipelineConfig,
           TextToVideo,
           XPrediction,
           default_checkpoint,
           make_text_encoder,
)

__all__ = ["ContextStandardize", "PipelineConfig", "PixelCodec", "TextToVideo", "VAECodec", "XPrediction",
           "default_checkpoint", "make_text_encoder", "save_grid", "save_video"]
