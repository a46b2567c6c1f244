"""Shared pieces for the text-to-video tests: a tiny pipeline config and a deterministic word-hash encoder."""

from __future__ import annotations

import hashlib

import torch

from veil.pipelines import PipelineConfig
from veil.text import TextEncoderBase, pad_embeddings


class HashEncoder(TextEncoderBase):
    """Each word -> a fixed random vector (seeded by its hash); counts calls and prompts."""

    def __init__(self, dim: int = 16):
        self.id, self.dim = f"hash:{dim}", dim
        self.calls: list[list[str]] = []

    def encode(self, prompts):
        self.calls.append(list(prompts))
        rows = []
        for p in prompts:
            words = p.split()
            vecs = [torch.randn(self.dim, generator=torch.Generator().manual_seed(
                int(hashlib.sha256(w.encode()).hexdigest()[:8], 16))) for w in words]
            rows.append(torch.stack(vecs) if vecs else torch.zeros(0, self.dim))
        return pad_embeddings(rows)


def tiny_config(prediction: str = "x0", **kw) -> PipelineConfig:
    model = dict(in_channels=3, out_channels=3, patch_size=[2, 8, 8], dim=24, heads=2, num_layers=1, ffn_dim=32,
                 text_dim=16, freq_dim=16)
    return PipelineConfig(model=model, frames=4, size=32, text_encoder="hash", guidance=3.0, steps=2, overlap=2,
                          prediction=prediction, **kw)


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-zero weights everywhere (Wan zero-initialises its head, which would make every output equal)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model
