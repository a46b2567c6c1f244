"""Training denoisers: the loop, EMA and safetensors checkpoints.

- :mod:`~veil.training.loop`: :class:`TrainConfig`, :class:`Trainer`, :func:`train` (AdamW, warm-up, clipping,
  accumulation, text dropout, EMA, fp32 / bf16 / fp16, metrics, resumable checkpoints).
- :mod:`~veil.training.ema`: :class:`EMA` (first update copies the weights).
- :mod:`~veil.training.checkpoint`: :func:`save_checkpoint` / :func:`load_checkpoint` (safetensors only, atomic).
- :mod:`~veil.training.batches`: :class:`SeededSampler`, :func:`collate_text_video`, :func:`drop_text`.
"""

from __future__ import annotations

from veil.training.batches import SeededSampler, collate_text_video, drop_text, pad_text, text_bucket
from veil.training.checkpoint import Checkpoint, find_latest, load_checkpoint, save_checkpoint
from veil.training.ema import EMA
from veil.training.loop import TrainConfig, Trainer, seed_everything, train

__all__ = [
    "EMA",
    "Checkpoint",
    "SeededSampler",
    "TrainConfig",
    "Trainer",
    "collate_text_video",
    "drop_text",
    "find_latest",
    "load_checkpoint",
    "pad_text",
    "save_checkpoint",
    "seed_everything",
    "text_bucket",
    "train",
]
