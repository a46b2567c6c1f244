"""An on-disk cache of text embeddings keyed by (encoder id, prompt): repeated prompts are never re-encoded.

One safetensors file per (encoder, prompt), named by a hash of both and holding the unpadded embedding [L, D]
with the encoder id and prompt in its metadata (checked on read). Files are written atomically: a temporary file
in the same directory, then ``os.replace``, so a crash never leaves a half-written entry. A file that cannot be
read, or whose metadata names another encoder or prompt, is treated as missing and rewritten.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from veil.text.base import TextEncoder, TextEncoderBase, check_prompts, pad_embeddings, unpad


class CachedTextEncoder(TextEncoderBase):
    """Wraps a :class:`TextEncoder` with an on-disk embedding cache.

    Args:
        encoder: the encoder; its ``id`` is part of every key.
        directory: where the files live (created if needed).

    Attributes:
        hits, misses: prompts served from disk and prompts encoded, since construction.
    """

    def __init__(self, encoder: TextEncoder, directory: str | os.PathLike):
        if not isinstance(encoder, TextEncoder):
            raise TypeError(f"encoder: expected a TextEncoder (id, dim, encode), got {type(encoder).__name__}")
        self.encoder = encoder
        self.id, self.dim = encoder.id, encoder.dim
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.hits = self.misses = 0

    def path(self, prompt: str) -> Path:
        """The file of ``prompt``'s embedding."""
        key = hashlib.sha256(f"{self.id}\x00{prompt}".encode()).hexdigest()[:40]
        return self.directory / f"{key}.safetensors"

    def _read(self, prompt: str) -> torch.Tensor | None:
        path = self.path(prompt)
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
            if meta.get("encoder") != self.id or meta.get("prompt") != prompt:
                return None
            return load_file(str(path))["embedding"]
        except (SafetensorError, OSError, KeyError, ValueError):
            return None

    def _write(self, prompt: str, embedding: torch.Tensor) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.directory, suffix=".tmp")
        os.close(fd)
        try:
            save_file({"embedding": embedding.detach().cpu().contiguous()}, tmp,
                      metadata={"encoder": self.id, "prompt": prompt})
            os.replace(tmp, self.path(prompt))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def encode(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Like the wrapped encoder's ``encode``; only prompts not on disk reach it (once per distinct prompt).

        Returns:
            (embeddings [B, L, D] on the CPU, zero beyond each length; lengths long [B]).
        """
        prompts = check_prompts("prompts", prompts)
        rows: dict[str, torch.Tensor] = {}
        for p in dict.fromkeys(prompts):
            cached = self._read(p)
            if cached is not None:
                rows[p] = cached
        self.hits += sum(p in rows for p in prompts)
        missing = [p for p in dict.fromkeys(prompts) if p not in rows]
        if missing:
            self.misses += len(missing)
            emb, lengths = self.encoder.encode(missing)
            for p, row in zip(missing, unpad(emb, lengths)):
                row = row.detach().cpu().clone()
                self._write(p, row)
                rows[p] = row
        return pad_embeddings([rows[p] for p in prompts])
