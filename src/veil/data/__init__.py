"""Data: the procedural captioned video world, its analyzer (the scoring oracle), and folders of real clips."""

from __future__ import annotations

from veil.data.analyze import Analysis, analyze, analyze_batch
from veil.data.folder import VideoFolder, decode_folder, read_clip
from veil.data.vocab import (
    COLOURS,
    MOTIONS,
    SHAPES,
    Pattern,
    all_combinations,
    caption,
    parse_exclude,
    parse_phrase,
    split_combinations,
    split_prompts,
    vocabulary,
)
from veil.data.world import CaptionedVideoWorld, VideoSpec, make_video, render, render_many, sample_spec

__all__ = [
    "COLOURS", "MOTIONS", "SHAPES", "Analysis", "CaptionedVideoWorld", "Pattern", "VideoFolder", "VideoSpec",
    "all_combinations", "analyze", "analyze_batch", "caption", "decode_folder", "make_video", "parse_exclude",
    "parse_phrase", "read_clip", "render", "render_many", "sample_spec", "split_combinations", "split_prompts",
    "vocabulary",
]
