"""Text to video: encode the prompt, sample latents with guidance, decode to frames; from a veil checkpoint.

Legend: B batch, C channels, T frames, H W pixels (latent rows / columns for a VAE codec), L text tokens,
Dt text width. Videos are float32 ``[B, C, T, H, W]`` in ``[-1, 1]``.

A checkpoint written by ``veil train`` (:mod:`veil.training.t2v`) holds, in its safetensors metadata, the
:class:`PipelineConfig` under ``extra["pipeline"]``: everything needed to rebuild the model, codec, text encoder
and sampler without the training code. :meth:`TextToVideo.from_checkpoint` uses the EMA weights when present.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from veil.diffusion import DDPMObjective, FlowMatching, extend, make_scheduler, sample
from veil.distributed import enable_sequence_parallel
from veil.models.experts import WAN22_T2V_BOUNDARY, TimestepExperts
from veil.models.wan import WanDiT
from veil.models.wan_config import WanConfig
from veil.pipelines.codecs import PixelCodec, VAECodec
from veil.pipelines.media import save_grid, save_video
from veil.text.weighting import parse_weights

__all__ = ["DEFAULT_CHECKPOINT", "SHIPPED", "SHIPPED_EXPERTS", "ContextStandardize", "PipelineConfig", "TextToVideo",
           "XPrediction", "checkpoint_path", "default_checkpoint", "make_text_encoder", "save_grid", "save_video"]

SHIPPED = ("tiny-t2v-16f", "tiny-t2v")  # checkpoints in the package's veil/assets, the default first
DEFAULT_CHECKPOINT = f"{SHIPPED[0]}.safetensors"
# shipped low-noise experts (veil/assets too): the default model samples with its own below its boundary
SHIPPED_EXPERTS = {"tiny-t2v-16f": "tiny-t2v-16f-low"}
_SHIPPED_NAMES = (*SHIPPED, *SHIPPED_EXPERTS.values())  # every file in veil/assets


class XPrediction(nn.Module):
    """A flow-matching denoiser whose network predicts the clean sample: velocity ``(x - x0_hat) / sigma``.

    In pixel space a patch holds more values than the model width (8x8x3 = 192 > 96): a velocity (or noise)
    target, being mostly noise, cannot pass through that bottleneck, but the clean image, which lies on a
    low-dimensional manifold, can (Li and He, "Back to Basics: Let Denoising Generative Models Denoise", 2025).
    The wrapper keeps :mod:`veil.diffusion`'s velocity protocol, so the flow-matching loss becomes the
    x0 error weighted by ``1 / sigma^2`` and sampling is unchanged.

    Args:
        model: the network (``model(x, timestep, context, context_lengths) -> x0_hat``).
        min_sigma: ``sigma`` is clamped below at this (the weight ``1 / sigma^2`` stays bounded).
    """

    def __init__(self, model: nn.Module, min_sigma: float = 0.05):
        super().__init__()
        self.model = model
        self.config = getattr(model, "config", None)
        self.min_sigma = float(min_sigma)

    def forward(self, x: Tensor, timestep: Tensor, context: Tensor, context_lengths: Tensor | None = None,
                **kwargs: Any) -> Tensor:
        x0 = self.model(x, timestep, context, context_lengths, **kwargs)[:, : x.shape[1]]
        sigma = (torch.as_tensor(timestep, device=x.device).to(x.dtype) / 1000).clamp(min=self.min_sigma)
        if sigma.dim() == 2 and sigma.shape[1] == x.shape[2]:  # per frame [B, F]
            sigma = sigma[:, None, :, None, None]  # (B, 1, F, 1, 1)
        elif sigma.dim() <= 1:
            sigma = sigma.reshape(-1, *([1] * (x.dim() - 1)))  # (B or 1, 1, 1, 1, 1)
        else:
            raise ValueError(f"timestep: x0 prediction takes [B] or per-frame [B, F] = [{x.shape[0]}, {x.shape[2]}] "
                             f"timesteps, got {list(sigma.shape)}")
        return (x - x0) / sigma  # (B, C, T, H, W)


class ContextStandardize(nn.Module):
    """Standardises the text embeddings per feature, ``(context - mean) / std``, before the denoiser sees them.

    Token embeddings of a sentence-similarity encoder (all-MiniLM-L6-v2) share a common component; removing the
    mean and scaling every feature to unit variance over the training captions' tokens spreads them out (in
    "a red circle moving ...", the cosine of the "up" and "left" vectors goes from 0.26 to 0.12, of "red" and
    "blue" from 0.36 to 0.26; "left" and "right" stay close, 0.78 -> 0.75). The tiny-t2v preset uses it; on its
    own it did not change the scores of a 1000-step run (docs/t2v.md). ``mean`` and ``std`` are buffers (saved
    with the weights); :meth:`fit` sets them from embeddings.

    Args:
        model: the denoiser (``model(x, timestep, context, context_lengths, **kwargs)``).
        dim: the text width Dt.
    """

    def __init__(self, model: nn.Module, dim: int):
        super().__init__()
        self.model = model
        self.config = getattr(model, "config", None)
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    @torch.no_grad()
    def fit(self, embeddings: Sequence[Tensor], min_std: float = 1e-3) -> None:
        """Set ``mean`` and ``std`` from token embeddings (a list of ``[L_i, Dt]`` tensors, one per caption)."""
        tokens = torch.cat([e.reshape(-1, e.shape[-1]).float() for e in embeddings])
        if tokens.dim() != 2 or tokens.shape[1] != self.mean.numel() or tokens.shape[0] < 2:
            raise ValueError(f"embeddings: expected at least 2 tokens of width {self.mean.numel()}, "
                             f"got {list(tokens.shape)}")
        self.mean.copy_(tokens.mean(0))
        self.std.copy_(tokens.std(0).clamp(min=min_std))

    def forward(self, x: Tensor, timestep: Tensor, context: Tensor, context_lengths: Tensor | None = None,
                **kwargs: Any) -> Tensor:
        context = (context - self.mean.to(context.dtype)) / self.std.to(context.dtype)
        return self.model(x, timestep, context, context_lengths, **kwargs)


@dataclasses.dataclass(kw_only=True)
class PipelineConfig:
    """What a checkpoint needs to become a :class:`TextToVideo` (stored in its metadata).

    Attributes:
        model: :class:`~veil.models.wan_config.WanConfig` fields of the denoiser (a WanDiT).
        frames, size: the trained clip length T and frame size H = W (pixels).
        text_encoder: ``"minilm"`` (:class:`~veil.text.MiniLMEncoder`) or a Hugging Face model name.
        objective: ``"flow"`` (flow matching, ``shift``) or ``"ddpm"`` (epsilon).
        shift: flow-matching sigma shift.
        sample_shift: the sampler's sigma shift (None: ``shift``); a smaller one spends more steps at low noise.
        scheduler: a :func:`~veil.diffusion.make_scheduler` name.
        guidance, steps: default guidance scale and sampler steps.
        guidance_interval: ``[lo, hi]``: guide only the steps whose noise level lies in it (see
            :func:`veil.diffusion.sample`); None: every step.
        overlap: frames each window of an extension is anchored on.
        prediction: what the network outputs: ``"velocity"`` (the objective's target) or ``"x0"`` (wrapped in
            :class:`XPrediction`; flow matching only).
        text_norm: standardise the text embeddings with statistics saved in the weights
            (:class:`ContextStandardize`).
        clean_anchors: the model was trained for continuation (``FlowMatching.context_frames``): the frames an
            extension window is anchored on are given to it clean, at timestep 0 (see :func:`veil.diffusion.sample`),
            rather than noised to the current level.
        staged: sample a clip in two stages (needs ``clean_anchors``): the whole clip, then the clip again from new
            noise as a continuation of the first stage's first temporal patch, which the denoiser sees clean. A clip
            sampled in one pass takes its direction of motion from the starting noise as much as from the prompt;
            from a known first patch, the prompt is what tells the motion (twice the sampling time).
        codec: ``{"kind": "pixel"}`` (the model works on pixels) or ``{"kind": "vae", "path": DIR}`` (a diffusers
            ``AutoencoderKL`` saved at ``DIR``, loaded offline; ``"scaling_factor"`` optional): the model works on
            its latents, ``size`` stays the pixel size and the sampled latents take the codec's
            ``latent_shape``.
        sigma_range: ``[lo, hi]``: the part of the noise schedule the model was trained on (one expert of a pair
            split along the noise axis, see :meth:`TextToVideo.from_checkpoint`'s ``low_noise``); None: all of it.
    """

    model: dict[str, Any]
    frames: int = 8
    size: int = 32
    text_encoder: str = "minilm"
    objective: str = "flow"
    shift: float = 1.0
    sample_shift: float | None = None
    scheduler: str = "flow_euler"
    guidance: float = 4.0
    guidance_interval: list[float] | None = None
    steps: int = 20
    overlap: int = 4
    prediction: str = "velocity"
    text_norm: bool = False
    clean_anchors: bool = False
    staged: bool = False
    codec: dict[str, Any] = dataclasses.field(default_factory=lambda: {"kind": "pixel"})
    sigma_range: list[float] | None = None

    def build_codec(self) -> nn.Module:
        """The codec this config names (a VAE is loaded from its local path, never downloaded).

        Raises:
            ValueError: an unknown kind, a VAE without a path, or one whose latent channels do not fit the model.
        """
        kind = self.codec.get("kind", "pixel")
        if kind == "pixel":
            return PixelCodec(int(self.model.get("in_channels", 3)))
        if kind != "vae" or not self.codec.get("path"):
            raise ValueError(f"codec: expected {{'kind': 'pixel'}} or {{'kind': 'vae', 'path': DIR}}, got {self.codec}")
        codec = VAECodec.from_pretrained(str(self.codec["path"]), local_files_only=True)
        if self.codec.get("scaling_factor") is not None:
            codec.scaling_factor = float(self.codec["scaling_factor"])
        if codec.latent_channels != int(self.model.get("in_channels", 3)):
            raise ValueError(f"codec: the VAE at {self.codec['path']} has {codec.latent_channels} latent channels, "
                             f"the model takes {self.model.get('in_channels')}")
        return codec

    def build_model(self) -> nn.Module:
        net: nn.Module = WanDiT(WanConfig(**self.model))
        if self.text_norm:
            net = ContextStandardize(net, int(self.model["text_dim"]))
        if self.prediction == "velocity":
            return net
        if self.prediction == "x0" and self.objective == "flow":
            return XPrediction(net)
        raise ValueError(f"prediction: expected 'velocity', or 'x0' with objective 'flow', got {self.prediction!r} "
                         f"with {self.objective!r}")

    def build_objective(self) -> FlowMatching | DDPMObjective:
        if self.objective == "flow":
            return FlowMatching(shift=self.shift)
        if self.objective == "ddpm":
            return DDPMObjective()
        raise ValueError(f"objective: expected 'flow' or 'ddpm', got {self.objective!r}")

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))  # tuples -> lists: plain JSON

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PipelineConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"pipeline config: unknown keys {unknown}")
        return cls(**d)


def make_text_encoder(name: str = "minilm", cache_dir: str | os.PathLike | None = None):
    """The text encoder ``name`` ("minilm" or a Hugging Face model), wrapped in an on-disk cache when
    ``cache_dir`` is given."""
    from veil.text import CachedTextEncoder, HFTextEncoder, MiniLMEncoder

    enc = MiniLMEncoder() if name == "minilm" else HFTextEncoder(name)
    return CachedTextEncoder(enc, cache_dir) if cache_dir is not None else enc


def default_checkpoint(name: str | None = None) -> Path:
    """A checkpoint shipped in the package: ``veil/assets/{name}.safetensors``.

    Args:
        name: one of :data:`SHIPPED` (``"tiny-t2v-16f"``, the default: 16 frames whose tokens keep time, or
            ``"tiny-t2v"``: 8 frames in one token frame) or a shipped low-noise expert of
            :data:`SHIPPED_EXPERTS` (``"tiny-t2v-16f-low"``); None: the default.

    Raises:
        ValueError: another name.
    """
    name = SHIPPED[0] if name is None else name
    if name not in _SHIPPED_NAMES:
        raise ValueError(f"name: expected one of the shipped checkpoints {list(_SHIPPED_NAMES)}, got {name!r}")
    return Path(str(resources.files("veil") / "assets" / f"{name}.safetensors"))


def checkpoint_path(path: str | os.PathLike | None) -> Path:
    """``path`` itself, or the shipped checkpoint of that name (:func:`default_checkpoint`) where no such file exists;
    None: the default shipped checkpoint."""
    if path is None or (str(path) in _SHIPPED_NAMES and not Path(path).exists()):
        return default_checkpoint(None if path is None else str(path))
    return Path(path)


def _untuple(obj: Any) -> Any:  # veil checkpoints write tuples as {"__tuple__": [...]}
    if isinstance(obj, dict):
        if set(obj) == {"__tuple__"}:
            return [_untuple(v) for v in obj["__tuple__"]]
        return {k: _untuple(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_untuple(v) for v in obj]
    return obj


def read_checkpoint(path: str | os.PathLike) -> tuple[PipelineConfig, dict[str, Tensor], dict[str, Any]]:
    """The pipeline config, inference weights (EMA when saved, else the model's) and the ``extra`` metadata.

    Raises:
        ValueError: the file is missing, unreadable, or holds no pipeline config.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint: no such file {str(path)!r}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys() if k.startswith(("model.", "ema."))}
    except Exception as e:
        raise ValueError(f"checkpoint {str(path)!r}: not a readable safetensors file ({type(e).__name__}: {e})") from e
    extra = _untuple(json.loads(meta.get("extra", "{}")))
    if "pipeline" not in extra:
        raise ValueError(f"checkpoint {str(path)!r}: has no pipeline config (not written by 'veil train'?)")
    weights = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    for prefix in ("ema.shadow.", "ema.buffer."):
        weights.update({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    return PipelineConfig.from_dict(extra["pipeline"]), weights, extra


def _load_denoiser(path: Path) -> tuple[PipelineConfig, nn.Module, dict[str, Any]]:
    config, weights, extra = read_checkpoint(path)
    model = config.build_model()
    missing, unexpected = (sorted(model.state_dict().keys() - weights.keys()),
                           sorted(weights.keys() - model.state_dict().keys()))
    if missing or unexpected:
        raise ValueError(f"checkpoint {str(path)!r}: weights do not fit the model (missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]})")
    model.load_state_dict(weights)
    return config, model, extra


_EXPERTS_MUST_MATCH = ("frames", "size", "text_encoder", "objective", "codec", "clean_anchors")


def _check_experts(high: PipelineConfig, low: PipelineConfig, high_path: Path, low_path: Path) -> None:
    """Both experts of a pair read and write the same latents and text (their networks may differ)."""
    def what(c: PipelineConfig) -> dict[str, Any]:
        d = c.to_dict()
        m = d["model"]
        return {**{k: d[k] for k in _EXPERTS_MUST_MATCH}, "in_channels": m.get("in_channels", 3),
                "out_channels": m.get("out_channels", 3), "temporal patch": list(m.get("patch_size", [1]))[0]}
    a, b = what(high), what(low)
    differ = [f"{k}: {a[k]!r} high-noise, {b[k]!r} low-noise" for k in a if a[k] != b[k]]
    if differ:
        raise ValueError(f"low_noise: the expert {str(low_path)!r} does not describe the clips of {str(high_path)!r} "
                         f"({'; '.join(differ)})")


def _expert_boundary(high: PipelineConfig, low: PipelineConfig, boundary: float | None) -> float:
    """The boundary asked for, or where the experts' training ranges meet; checked against those ranges."""
    low_hi = low.sigma_range[1] if low.sigma_range else 1.0
    high_lo = high.sigma_range[0] if high.sigma_range else 0.0
    if boundary is None:
        boundary = low_hi if low_hi < 1 else high_lo if high_lo > 0 else WAN22_T2V_BOUNDARY
    if isinstance(boundary, bool) or not isinstance(boundary, (int, float)) or not 0 < boundary <= 1:
        raise ValueError(f"boundary: expected a noise level in (0, 1], got {boundary!r}")
    if boundary > low_hi or boundary < high_lo:
        raise ValueError(f"boundary: {boundary!r} leaves noise levels that neither expert was trained on (the "
                         f"low-noise expert up to {low_hi!r}, the high-noise expert from {high_lo!r})")
    return float(boundary)


class TextToVideo:
    """Prompts in, videos out.

    Args:
        model: a denoiser following :mod:`veil.diffusion`'s protocol (e.g. a WanDiT).
        codec: latents <-> pixels (:class:`~veil.pipelines.PixelCodec` or :class:`~veil.pipelines.VAECodec`).
        text_encoder: a :class:`~veil.text.TextEncoder` (optionally a :class:`~veil.text.CachedTextEncoder`).
        config: the :class:`PipelineConfig` (objective, scheduler, frame size and defaults).
        device: where the model runs.
    """

    def __init__(self, model: nn.Module, codec: nn.Module, text_encoder: Any, config: PipelineConfig, *,
                 device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.codec = codec.to(self.device)
        self.text_encoder = text_encoder
        self.config = config
        self.objective = config.build_objective()
        self.extra: dict[str, Any] = {}

    def enable_sequence_parallel(self, group: Any = None, *, ulysses: int | None = None,
                                 ring: int | None = None, layout: str = "contiguous") -> TextToVideo:
        """Run the denoiser sequence-parallel over ``group`` (default: every process; see :mod:`veil.distributed`).

        Every rank then calls the pipeline with the same arguments and gets the same video, the one a single
        process makes (the noise comes from the seed, the text encoder runs whole on each rank). Returns ``self``.
        """
        enable_sequence_parallel(self.model, group, ulysses=ulysses, ring=ring, layout=layout)
        return self

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike | None = None, *, low_noise: str | os.PathLike | None = None,
                        boundary: float | None = None, cache_dir: str | os.PathLike | None = None,
                        text_encoder: Any = None, device: str | torch.device = "cpu") -> TextToVideo:
        """Rebuild the pipeline from a veil checkpoint (default: the shipped one), with its EMA weights.

        With ``low_noise`` the denoiser is a pair of experts split along the noise axis, as in Wan 2.2
        (:class:`~veil.models.TimestepExperts`): the checkpoint at ``path`` denoises the steps at noise levels
        ``>= boundary`` (layout and motion), the one at ``low_noise`` the steps below (detail). Sampling follows
        ``path``'s config (scheduler, steps, guidance, shift); both checkpoints must describe the same clips (frames,
        size, text encoder, objective, codec, channels, temporal patch, clean anchors); their networks may differ.

        Args:
            path: the checkpoint file, or the name of a shipped one (``"tiny-t2v"``, see :func:`default_checkpoint`)
                where no such file exists; None = the default shipped model: ``"tiny-t2v-16f"`` with its shipped
                low-noise expert ``"tiny-t2v-16f-low"`` (:data:`SHIPPED_EXPERTS`; the name ``"tiny-t2v-16f"``
                alone is the one model). With ``low_noise``: the high-noise expert.
            low_noise: the low-noise expert's checkpoint (a file or a shipped name); None: one model (except for
                the default, ``path=None``).
            boundary: the noise level (a fraction of the training schedule, in ``(0, 1]``) from which the high-noise
                expert is used. Default: where the experts' training ranges (``PipelineConfig.sigma_range``, set by
                ``veil train sigma_max=...`` / ``sigma_min=...``) meet: the low-noise expert's upper end, else the
                high-noise expert's lower end, else 0.875 (Wan 2.2 T2V).
            cache_dir: a text-embedding cache directory (None: no cache).
            text_encoder: use this encoder instead of building the one the config names.

        Raises:
            ValueError: a missing / unreadable file, no pipeline config, weights that do not fit, experts that do
                not describe the same clips, a boundary outside ``(0, 1]`` or one that leaves noise levels neither
                expert was trained on, or a ``boundary`` without ``low_noise``.
        """
        if path is None and low_noise is None:  # the default model: the shipped pair
            low_noise = SHIPPED_EXPERTS.get(SHIPPED[0])
        path = checkpoint_path(path)
        config, model, extra = _load_denoiser(path)
        if low_noise is not None:
            low_path = checkpoint_path(low_noise)
            low_config, low_model, _ = _load_denoiser(low_path)
            _check_experts(config, low_config, path, low_path)
            boundary = _expert_boundary(config, low_config, boundary)
            model = TimestepExperts(model, low_model, boundary)
            extra = {**extra, "experts": {"high_noise": str(path), "low_noise": str(low_path), "boundary": boundary}}
        elif boundary is not None:
            raise ValueError(f"boundary: only with low_noise (a low-noise expert), got boundary={boundary!r} alone")
        enc = text_encoder if text_encoder is not None else make_text_encoder(config.text_encoder, cache_dir)
        pipe = cls(model, config.build_codec(), enc, config, device=device)
        pipe.extra = extra
        return pipe

    def scheduler(self) -> Any:
        return make_scheduler(self.config.scheduler, self.objective, shift=self.config.sample_shift)

    def encode_prompts(self, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Token embeddings ``[B, S, Dt]`` (float32) and lengths of ``prompts``, ``(word:w)`` weighting applied.

        Without ``text_norm`` a weight scales the token's embedding (the encoder's weighting). With it, the model
        standardises embeddings (``(e - mean) / std``) and a plain scale would shift them by ``(w - 1) mean / std``
        too; so the weight scales the token's *standardised* embedding instead: ``e -> mean + w (e - mean)``, which
        the model sees as ``w (e - mean) / std``. ``(red:0)`` then makes "red" the mean token (no information) and
        ``(red:1.5)`` moves it 1.5 times as far from the mean.
        """
        prompts = list(prompts)
        ctx, lengths = self.text_encoder.encode(prompts)
        ctx = ctx.to(self.device, torch.float32)
        norms = [m for m in self.model.modules() if isinstance(m, ContextStandardize)]
        norm = norms[0] if norms else None
        weighted = [bool(parse_weights(p)[1]) for p in prompts]
        if norm is not None and any(weighted):
            if any(not (torch.equal(n.mean, norm.mean) and torch.equal(n.std, norm.std)) for n in norms[1:]):
                raise ValueError("prompts: weighting under text_norm needs one set of text statistics, but the "
                                 "experts standardise text differently (train the low-noise expert with init= the "
                                 "high-noise one, which keeps its statistics); drop the (word:w) weights")
            plain, _ = self.text_encoder.encode([parse_weights(p)[0] for p in prompts])
            plain = plain.to(self.device, torch.float32)[:, :ctx.shape[1]]  # (B, S, Dt): the same tokens, w = 1
            # each token's weight, exactly: the encoder's weighted embedding is w times the plain one
            w = (ctx * plain).sum(-1) / (plain * plain).sum(-1).clamp(min=1e-12)  # (B, S)
            valid = torch.arange(ctx.shape[1], device=self.device) < lengths.to(self.device)[:, None]
            mean = norm.mean.to(ctx)
            ctx = torch.where(valid[..., None], mean + w[..., None] * (plain - mean), ctx)
        return ctx, lengths.to(self.device)

    @torch.no_grad()
    def __call__(self, prompts: str | Sequence[str], negative_prompt: str | Sequence[str] | None = None, *,
                 guidance: float | None = None, steps: int | None = None, seed: int = 0, frames: int | None = None,
                 keyframes: Mapping[int, Tensor] | None = None, extend_to: int | None = None,
                 staged: bool | None = None, progress: bool = False) -> Tensor:
        """Generate one video per prompt.

        Args:
            prompts: a prompt or B prompts (``(word:1.3)`` weighting allowed).
            negative_prompt: one for all, B of them, or None (the null prompt: no tokens).
            guidance: classifier-free guidance scale (1 = off; default the config's). Conditional and
                unconditional rows go through the model in one batch.
            steps: sampler steps (default the config's).
            seed: the initial noise (the same seed gives the same videos).
            frames: T (default the trained length).
            keyframes: ``{frame index: image [C, H, W] or [B, C, H, W] in [-1, 1]}`` held fixed.
            extend_to: extend each video window by window to this many frames (>= T; see
                :func:`veil.diffusion.extend`), each window anchored on the previous one's last
                ``config.overlap`` frames.
            staged: sample in two stages, the second a continuation of the first one's first temporal patch (see
                ``PipelineConfig.staged``; default the config's, and off with ``keyframes``, which already fix
                frames; True with keyframes is an error).
            progress: show progress bars.

        Returns:
            float32 videos [B, C, T', H, W] in [-1, 1] on the CPU (T' = ``extend_to`` or T).

        Raises:
            ValueError / TypeError: bad prompts, sizes, steps, guidance or keyframes.
        """
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise TypeError(f"prompts: expected a string or a non-empty list of strings, got {prompts!r}")
        b, cfg = len(prompts), self.config
        guidance = cfg.guidance if guidance is None else float(guidance)
        steps = cfg.steps if steps is None else steps
        frames = cfg.frames if frames is None else frames
        if not isinstance(frames, int) or frames < 1:
            raise ValueError(f"frames: expected a positive int, got {frames!r}")
        if extend_to is not None and (not isinstance(extend_to, int) or extend_to < frames):
            raise ValueError(f"extend_to: expected an int >= frames = {frames}, got {extend_to!r}")
        neg_ctx = neg_len = None
        if negative_prompt is not None:
            negs = [negative_prompt] * b if isinstance(negative_prompt, str) else list(negative_prompt)
            if len(negs) != b:
                raise ValueError(f"negative_prompt: expected one or {b} prompts, got {len(negs)}")
            ctx, lengths = self.encode_prompts(prompts + negs)  # one encoder call for both
            ctx, lengths, neg_ctx, neg_len = ctx[:b], lengths[:b], ctx[b:], lengths[b:]
        else:
            ctx, lengths = self.encode_prompts(prompts)
        asked = frames
        c, frames, h, w = self.codec.latent_shape(frames, cfg.size, cfg.size)  # a VAE's latents are smaller
        pt = int(cfg.model.get("patch_size", (1, 2, 2))[0])
        if frames % pt:
            raise ValueError(f"frames: expected a length whose latent frames are a multiple of the model's temporal "
                             f"patch ({pt}), got {asked} frames ({frames} latent frames)")
        if extend_to is not None and extend_to > frames and cfg.clean_anchors and cfg.overlap % pt:
            raise ValueError(f"overlap: clean anchors need whole temporal patches of {pt} frames, got "
                             f"{cfg.overlap}")
        if staged is None:  # the config's, except with keyframes, which already fix frames of the clip
            staged = cfg.staged and not keyframes
        if not isinstance(staged, bool):
            raise TypeError(f"staged: expected a bool, got {staged!r}")
        if staged and not cfg.clean_anchors:
            raise ValueError("staged: the model was not trained for continuation (config.clean_anchors is False)")
        if staged and keyframes:
            raise ValueError("staged: expected no keyframes (they already fix frames of the clip)")
        anchors = None
        if keyframes:
            anchors = {}
            for i, img in keyframes.items():
                img = img.to(self.device, torch.float32)
                img = img.expand(b, *img.shape) if img.dim() == 3 else img  # (B, C, H, W)
                anchors[int(i)] = self.codec.encode(img[:, :, None])[:, :, 0]  # (B, C, h, w)
        generator = torch.Generator().manual_seed(int(seed))
        kw = dict(guidance_scale=guidance, steps=steps, generator=generator, guidance_interval=cfg.guidance_interval)
        latents = sample(self.model, self.scheduler(), (b, c, frames, h, w), ctx, lengths, neg_ctx, neg_len,
                         keyframes=anchors, progress=progress, **kw)
        if staged and frames > pt:  # again, as a continuation of the first temporal patch, which it sees clean
            first = {i: latents[:, :, i] for i in range(pt)}
            latents = sample(self.model, self.scheduler(), (b, c, frames, h, w), ctx, lengths, neg_ctx, neg_len,
                             keyframes=first, progress=progress, clean_anchors=True, **kw)
        if extend_to is not None and extend_to > frames:
            latents = extend(self.model, self.scheduler(), latents, ctx, extend_to, frames, cfg.overlap,
                             context_lengths=lengths, negative_context=neg_ctx, negative_lengths=neg_len,
                             progress=progress, clean_anchors=cfg.clean_anchors, **kw)
        return self.codec.decode(latents).float().clamp(-1, 1).cpu()
