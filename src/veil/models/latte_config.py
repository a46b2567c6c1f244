"""Configuration and presets of :class:`veil.models.LatteDiT`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

Conditioning = Literal["adaln_zero", "adaln_single"]
FeedForward = Literal["gelu_tanh", "gelu", "geglu"]


def _positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected a positive int, got {value!r}")


def _optional_positive_int(name: str, value: object) -> None:
    if value is not None:
        _positive_int(name, value)


@dataclass(kw_only=True)
class LatteConfig:
    """Architecture of a Latte model.

    Attributes:
        input_size: latent side the model is trained on (H = W; the 2D table is built for it; other sizes are
            evaluated on the same range).
        patch_size: spatial patch side p (2 in Latte).
        in_channels: latent channels C.
        learn_sigma: output ``2 C`` channels (noise and the learned variance), as Latte / DiT.
        num_frames: frames the temporal table is trained on.
        max_frames: most frames a video may have (the temporal table is interpolated); None = ``num_frames``.
        hidden_size: width D.
        depth: number of blocks, spatial and temporal counted separately (even; the Latte repository's count:
            Latte-XL/2 has 28 blocks = 14 spatial-temporal pairs; diffusers' ``num_layers`` counts pairs).
        num_heads: attention heads (divides D).
        mlp_ratio: MLP hidden width over D.
        feed_forward: ``"gelu_tanh"`` MLP (Latte, Latte-1), ``"gelu"`` MLP, or ``"geglu"`` (diffusers' default).
        qkv_bias: biases on the q/k/v projections (the output projection always has one).
        norm_affine: learned weight and bias in the block norms (False in Latte and Latte-1).
        norm_eps: eps of the block norms.
        conditioning: ``"adaln_zero"``: each block maps ``c = t_emb (+ label_emb) (+ pooled_text_emb)`` to its six
            modulation vectors with its own zero-initialised linear (DiT, the Latte repository's class / pooled
            text models); ``"adaln_single"``: one shared ``Linear(D, 6 D)`` of the timestep embedding plus a
            learned per-block table (PixArt-alpha; diffusers' Latte / Latte-1, text through cross-attention).
        num_classes: class labels (0 = none; ``adaln_zero`` only).
        class_dropout_prob: label dropout for classifier-free guidance (adds the null class ``num_classes``).
        pooled_text_dim: width of a pooled text vector added to the condition (``adaln_zero`` only).
        text_dim: width of the text tokens for cross-attention in the spatial blocks (projected to D by a
            PixArt caption MLP); None = no cross-attention.
        interpolation_scale: spatial positions are divided by it; None = ``max(input_size // 64, 1)`` (diffusers).
        attention_backend: :func:`veil.attend` backend of every attention.
    """

    input_size: int = 32
    patch_size: int = 2
    in_channels: int = 4
    learn_sigma: bool = True
    num_frames: int = 16
    max_frames: int | None = None
    hidden_size: int = 1152
    depth: int = 28
    num_heads: int = 16
    mlp_ratio: float = 4.0
    feed_forward: FeedForward = "gelu_tanh"
    qkv_bias: bool = True
    norm_affine: bool = False
    norm_eps: float = 1e-6
    conditioning: Conditioning = "adaln_zero"
    num_classes: int = 0
    class_dropout_prob: float = 0.1
    pooled_text_dim: int | None = None
    text_dim: int | None = None
    interpolation_scale: float | None = None
    attention_backend: str = "auto"

    def __post_init__(self) -> None:
        for name in ("input_size", "patch_size", "in_channels", "num_frames", "hidden_size", "depth", "num_heads"):
            _positive_int(name, getattr(self, name))
        for name in ("max_frames", "pooled_text_dim", "text_dim"):
            _optional_positive_int(name, getattr(self, name))
        if self.input_size % self.patch_size:
            raise ValueError(f"input_size: expected a multiple of patch_size={self.patch_size}, got {self.input_size}")
        if self.max_frames is not None and self.max_frames < self.num_frames:
            raise ValueError(f"max_frames: expected >= num_frames={self.num_frames}, got {self.max_frames}")
        if self.depth % 2:
            raise ValueError(f"depth: expected an even number of blocks (spatial, temporal pairs), got {self.depth}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"num_heads: expected a divisor of hidden_size={self.hidden_size}, got {self.num_heads}")
        if self.hidden_size % 4:
            raise ValueError(f"hidden_size: expected a multiple of 4 (2D sin-cos table), got {self.hidden_size}")
        if not isinstance(self.mlp_ratio, (int, float)) or isinstance(self.mlp_ratio, bool) or self.mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio: expected a positive number, got {self.mlp_ratio!r}")
        if self.feed_forward not in ("gelu_tanh", "gelu", "geglu"):
            raise ValueError(f"feed_forward: expected 'gelu_tanh', 'gelu' or 'geglu', got {self.feed_forward!r}")
        if self.conditioning not in ("adaln_zero", "adaln_single"):
            raise ValueError(f"conditioning: expected 'adaln_zero' or 'adaln_single', got {self.conditioning!r}")
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int) or self.num_classes < 0:
            raise ValueError(f"num_classes: expected an int >= 0, got {self.num_classes!r}")
        if not 0.0 <= self.class_dropout_prob < 1.0:
            raise ValueError(f"class_dropout_prob: expected a probability in [0, 1), got {self.class_dropout_prob!r}")
        if self.conditioning == "adaln_single" and (self.num_classes or self.pooled_text_dim):
            raise ValueError(f"conditioning: 'adaln_single' conditions on the timestep only (text through "
                             f"cross-attention); got num_classes={self.num_classes}, "
                             f"pooled_text_dim={self.pooled_text_dim}")
        if not self.norm_eps > 0:
            raise ValueError(f"norm_eps: expected a positive float, got {self.norm_eps!r}")
        if self.interpolation_scale is not None and not self.interpolation_scale > 0:
            raise ValueError(f"interpolation_scale: expected a positive number or None, got "
                             f"{self.interpolation_scale!r}")

    @property
    def out_channels(self) -> int:
        return 2 * self.in_channels if self.learn_sigma else self.in_channels

    @property
    def frame_limit(self) -> int:
        """``max_frames``, or ``num_frames`` when unset."""
        return self.num_frames if self.max_frames is None else self.max_frames

    @property
    def spatial_interpolation_scale(self) -> float:
        return float(max(self.input_size // 64, 1) if self.interpolation_scale is None else self.interpolation_scale)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> LatteConfig:
        """The config of a named preset (see :data:`LATTE_PRESETS`), with fields overridden."""
        if name not in LATTE_PRESETS:
            raise ValueError(f"name: expected one of {sorted(LATTE_PRESETS)}, got {name!r}")
        return cls(**{**LATTE_PRESETS[name], **overrides})

    def replace(self, **changes: Any) -> LatteConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


LATTE_PRESETS: dict[str, dict[str, Any]] = {
    # Vchitect/Latte models/latte.py (Latte_models["Latte-XL/2"]: depth 28, width 1152, 16 heads, patch 2) with
    # configs/ucf101/ucf101_train.yaml (256 px -> 32 latent, 16 frames, 101 classes, learn_sigma); 673.7M in the paper.
    "Latte-XL/2": dict(input_size=32, patch_size=2, hidden_size=1152, depth=28, num_heads=16, num_frames=16,
                       num_classes=101, learn_sigma=True),
    # diffusers maxin-cn/Latte-1 transformer/config.json: 28 spatial + 28 temporal layers, 16 heads x 72,
    # sample_size 64, ada_norm_single, gelu-approximate, caption_channels 4096 (T5-XXL), out_channels 8.
    "Latte-1": dict(input_size=64, patch_size=2, hidden_size=1152, depth=56, num_heads=16, num_frames=16,
                    conditioning="adaln_single", text_dim=4096, learn_sigma=True),
    # tests and examples: seconds on a CPU
    "tiny": dict(input_size=8, patch_size=2, hidden_size=32, depth=4, num_heads=2, num_frames=4, max_frames=8,
                 num_classes=10),
}
