"""Training a text-to-video model on the captioned video world: the presets and their entry point.

Legend: B batch, C channels, T frames, H W pixels, L text tokens, Dt text width.

The model is a small :class:`~veil.models.WanDiT` working in pixel space (:class:`~veil.pipelines.PixelCodec`),
trained with flow matching on :class:`~veil.data.CaptionedVideoWorld` clips. Captions come from a finite set of
templates and synonyms: every distinct caption of the dataset is encoded once, through the on-disk embedding
cache (:class:`~veil.text.CachedTextEncoder`), before training starts.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from veil.data import CaptionedVideoWorld, VideoFolder, decode_folder, render_many
from veil.diffusion import FlowMatching
from veil.pipelines.t2v import (
    SHIPPED,
    ContextStandardize,
    PipelineConfig,
    checkpoint_path,
    make_text_encoder,
    read_checkpoint,
)
from veil.training.checkpoint import save_checkpoint
from veil.training.distributed import full_state
from veil.training.loop import TrainConfig, Trainer

try:
    import tomllib  # Python >= 3.11
except ModuleNotFoundError:  # pragma: no cover (Python 3.10)
    import tomli as tomllib  # type: ignore[no-redef]

__all__ = ["PRESETS", "ClipEmbeddings", "T2VConfig", "WorldEmbeddings", "export_checkpoint", "load_config",
           "train_t2v"]


@dataclasses.dataclass(kw_only=True)
class T2VConfig:
    """A text-to-video training run (every field can be set from TOML or ``key=value``).

    Attributes:
        dim, heads, layers, ffn_dim, freq_dim, patch: the WanDiT (pixel space, 3 channels).
        attention: the WanDiT's attention pattern, one for every layer or one per layer (a name such as
            "spatial" / "temporal" / "full", or a dict of :class:`~veil.models.wan_config.AttentionPattern` fields
            such as ``{kind = "window_3d", window = [5, 4, 4]}``).
        frames, size, samples, world_seed, exclude, radius, edges, cross: the world (``samples`` distinct clips;
            ``exclude`` phrases name held-out combinations, e.g. "blue triangle"; ``radius`` the object radius
            range as fractions of the frame; ``edges`` "inside" or "wrap" and ``cross`` the share of wrap clips
            that start anywhere on the torus, see :class:`~veil.data.CaptionedVideoWorld`).
        context_frames: the share of clips trained for continuation (a clean prefix at timestep 0, see
            :class:`~veil.diffusion.FlowMatching`); > 0 also makes extensions give the model their anchored
            frames clean (``PipelineConfig.clean_anchors``).
        context_one_patch, context_high_noise: of the continuation clips, the share whose clean prefix is one
            temporal patch and the share whose other frames are drawn near pure noise (see
            :class:`~veil.diffusion.FlowMatching`): the clips in which only the caption tells where the object goes.
        staged: sample in two stages, the clip and then its continuation from its first temporal patch
            (``PipelineConfig.staged``; needs ``context_frames`` > 0).
        text_encoder, cache_dir: "minilm" or a Hugging Face name; the embedding cache directory.
        pooled_text: also condition every block on the mean text embedding (:class:`~veil.models.WanConfig`).
        abs_pos: also add fixed 3D sin-cos positions to the patch tokens (``WanConfig.abs_pos``).
        text_norm: standardise the text embeddings per feature with the training captions' statistics (see
            :class:`~veil.pipelines.t2v.ContextStandardize`).
        shift, timesteps, loss_weight: flow matching sigma shift, timestep sampling ("logit_normal" or
            "uniform") and loss weighting ("none" or "sigma_sqr", see :class:`~veil.diffusion.FlowMatching`).
        unshifted: the share of examples whose sigma skips the shift (``FlowMatching.unshifted``): they train the
            nearly clean levels at which sampling ends.
        absolute_below, absolute_scale: score the examples below this noise level with ``absolute_scale`` times the
            absolute error instead of the squared one (``FlowMatching.absolute_below``; 0: squared everywhere).
        sigma_min, sigma_max: train on this part of the noise schedule only (``FlowMatching.sigma_min`` /
            ``sigma_max``): one expert of a pair split along the noise axis, as Wan 2.2's high- and low-noise
            experts (``init=tiny-t2v-16f sigma_max=0.85 context_high_noise=0 steps=400 lr=1e-3`` is the shipped
            low-noise expert, ``tiny-t2v-16f-low``). The range is stored with the checkpoint
            (``PipelineConfig.sigma_range``), where ``TextToVideo.from_checkpoint(..., low_noise=...)`` and
            ``veil generate --low-noise`` find the boundary.
        init: start from the weights of a veil text-to-video checkpoint (a file, or the name of a shipped one such
            as "tiny-t2v-16f") instead of random ones: a fine-tune. Its model must be this run's (same
            architecture and channels; a mismatch is refused naming the fields); with ``text_norm`` its saved text
            statistics are kept, not refitted. The EMA starts from these weights; ``resume`` still wins. Empty:
            random initial weights.
        prediction: "x0" (the network predicts the clean clip, see :class:`~veil.pipelines.t2v.XPrediction`) or
            "velocity".
        scheduler, guidance, guidance_interval, sample_steps, sample_shift, overlap: sampling defaults stored with
            the checkpoint (``sample_shift`` 0: the training ``shift``; ``guidance_interval`` None: guide every step).
        steps, batch_size, lr, warmup_steps, lr_schedule, min_lr, grad_clip, ema_decay, text_dropout, weight_decay,
            seed, log_every, checkpoint_every, threads: training (see :class:`~veil.training.TrainConfig`);
            ``threads``: torch CPU threads (0 = torch's default; 2 on an idle 2-core machine, where the preset steps
            1.8x faster than on one thread; 1 when other jobs share the CPU).
        compile: compile the training forward with ``torch.compile`` (``TrainConfig.compile``): after about a
            minute of compiling, the ``tiny-t2v-16f`` steps ran 1.31-1.38x faster side by side (docs/t2v.md).
        precision: "fp32", or "bf16" / "fp16" autocast (``TrainConfig.precision``; the weights, the optimizer
            and the exported checkpoint stay float32, and sampling runs in float32). On a CPU with AMX, bf16
            matmuls run ~9x faster than float32 ones and ``tiny-t2v-16f`` trained 1.2x faster in a full run
            (docs/benchmarks.md); on a CPU without bf16 instructions they are slower.
        dp, sp, sp_layout: under ``torchrun``: "ddp" or "fsdp", the processes per sequence-parallel group and how
            they split the tokens (see :class:`~veil.training.TrainConfig`); ``batch_size`` is the global batch.
        data: a folder of captioned clips to train on instead of the world (:class:`~veil.data.VideoFolder`:
            mp4 / gif / webm files or frame folders, captions from ``captions.jsonl`` / ``captions.csv`` or a
            ``.txt`` beside each clip); every clip is decoded once, sampled to ``frames`` frames spread over it and
            scaled / centre-cropped to ``size``; clips that cannot be read, are shorter than ``frames`` or lack a
            caption are skipped with the reason logged. Empty: the world.
        vae: a diffusers ``AutoencoderKL`` saved locally (a directory, loaded offline): the clips are encoded once
            before training and the model learns and samples its latents (``PipelineConfig.codec``; ``patch``
            then divides the latent grid, e.g. 16x16 latents of 32x32 frames for a VAE with factor 2). Empty:
            pixels.
    """

    dim: int = 192
    heads: int = 4
    layers: int = 4
    ffn_dim: int = 576
    freq_dim: int = 64
    patch: tuple[int, int, int] = (8, 4, 4)
    attention: Any = "full"
    frames: int = 8
    size: int = 32
    samples: int = 8192
    radius: tuple[float, float] = (0.2, 0.25)
    world_seed: int = 0
    edges: str = "inside"
    cross: float = 1.0
    context_frames: float = 0.0
    context_one_patch: float = 0.0
    context_high_noise: float = 0.0
    staged: bool = False
    exclude: list[str] = dataclasses.field(default_factory=lambda: ["blue triangle", "green moving up"])
    text_encoder: str = "minilm"
    cache_dir: str = "~/.cache/veil/text"
    shift: float = 5.0
    timesteps: str = "logit_normal"
    unshifted: float = 0.0
    absolute_below: float = 0.0
    absolute_scale: float = 1.0
    sigma_min: float = 0.0
    sigma_max: float = 1.0
    loss_weight: str = "none"
    text_norm: bool = True
    pooled_text: bool = False
    abs_pos: bool = False
    prediction: str = "x0"
    scheduler: str = "flow_euler"
    guidance: float = 4.0
    guidance_interval: Any = None
    sample_steps: int = 20
    sample_shift: float = 0.0
    overlap: int = 4
    steps: int = 3500
    batch_size: int = 32
    lr: float = 1e-3
    warmup_steps: int = 100
    lr_schedule: str = "constant"
    min_lr: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.995
    text_dropout: float = 0.1
    weight_decay: float = 0.0
    seed: int = 0
    log_every: int = 25
    checkpoint_every: int = 500
    threads: int = 2
    compile: bool = False
    precision: str = "fp32"
    dp: str = "ddp"
    sp: int = 1
    sp_layout: str = "contiguous"
    data: str = ""
    vae: str = ""
    init: str = ""

    def __post_init__(self) -> None:
        self.patch = tuple(self.patch)  # type: ignore[assignment]
        self.radius = tuple(self.radius)  # type: ignore[assignment]
        if isinstance(self.exclude, str):
            self.exclude = [self.exclude]
        self.exclude = list(self.exclude)
        if isinstance(self.attention, list):
            self.attention = tuple(self.attention)
        if self.staged and not self.context_frames > 0:
            raise ValueError(f"staged: sampling from the first temporal patch needs a model trained for continuation "
                             f"(context_frames > 0), got context_frames={self.context_frames!r}")

    def latent_channels(self) -> int:
        """3 on pixels; the VAE's ``latent_channels`` (from its saved ``config.json``) with ``vae``."""
        if not self.vae:
            return 3
        path = Path(self.vae).expanduser() / "config.json"
        try:
            return int(json.loads(path.read_text())["latent_channels"])
        except (OSError, KeyError, ValueError) as e:
            raise ValueError(f"vae: expected a directory holding a diffusers AutoencoderKL (config.json with "
                             f"latent_channels), got {self.vae!r} ({e})") from e

    def pipeline(self) -> PipelineConfig:
        channels = self.latent_channels()
        codec = {"kind": "vae", "path": str(Path(self.vae).expanduser())} if self.vae else {"kind": "pixel"}
        model = dict(in_channels=channels, out_channels=channels, patch_size=list(self.patch), dim=self.dim,
                     heads=self.heads, num_layers=self.layers, ffn_dim=self.ffn_dim,
                     text_dim=_text_dim(self.text_encoder), freq_dim=self.freq_dim, pooled_text=self.pooled_text,
                     attention=self.attention, **({"abs_pos": True} if self.abs_pos else {}))
        return PipelineConfig(model=model, frames=self.frames, size=self.size, text_encoder=self.text_encoder,
                              objective="flow", shift=self.shift, sample_shift=self.sample_shift or None,
                              scheduler=self.scheduler, guidance=self.guidance,
                              guidance_interval=list(self.guidance_interval) if self.guidance_interval else None,
                              steps=self.sample_steps, overlap=self.overlap, prediction=self.prediction,
                              text_norm=self.text_norm, clean_anchors=self.context_frames > 0, staged=self.staged,
                              codec=codec, sigma_range=self.sigma_range())

    def sigma_range(self) -> list[float] | None:
        """``[sigma_min, sigma_max]`` when the run trains part of the schedule; None: the whole of it."""
        if (self.sigma_min, self.sigma_max) == (0.0, 1.0):
            return None
        return [float(self.sigma_min), float(self.sigma_max)]

    def train_config(self, out_dir: str | None, resume: str | None, progress: bool = True) -> TrainConfig:
        return TrainConfig(steps=self.steps, batch_size=self.batch_size, lr=self.lr, warmup_steps=self.warmup_steps,
                           lr_schedule=typing.cast(Any, self.lr_schedule), min_lr=self.min_lr,
                           grad_clip=self.grad_clip, ema_decay=self.ema_decay, text_dropout=self.text_dropout,
                           weight_decay=self.weight_decay, seed=self.seed, log_every=self.log_every,
                           checkpoint_every=self.checkpoint_every, out_dir=out_dir, resume=resume, progress=progress,
                           tensorboard=False, compile=self.compile, precision=typing.cast(Any, self.precision),
                           dp=typing.cast(Any, self.dp), sp=self.sp,
                           sp_layout=typing.cast(Any, self.sp_layout))


def _text_dim(name: str) -> int:
    return 384 if name == "minilm" else int(make_text_encoder(name).dim)


PRESETS: dict[str, T2VConfig] = {
    # 8 frames in 8x4x4 patches (one token frame: no time axis among the tokens), 3500 steps of batch 32 on 2 CPU
    # cores; shipped as veil/assets/tiny-t2v.safetensors (the default until tiny-t2v-16f replaced it)
    "tiny-t2v": T2VConfig(),
    # 16 frames of 32x32 in 2x8x8 patches (8 token frames) with Latte's spatial / temporal alternation and fixed 3D
    # positions, the wrap world, continuation training in which half the continued clips start from their first
    # patch and half of them from near pure noise (where only the caption tells the motion), and staged sampling
    # (docs/t2v.md); compiled, 4400 steps fit 30 minutes on 2 CPU cores; sampled with UniPC, guided (scale 4) at noise
    # levels 0.85-1 only (chosen by veil eval on three seeds, docs/t2v.md); the default, shipped as
    # veil/assets/tiny-t2v-16f.safetensors
    "tiny-t2v-16f": T2VConfig(patch=(2, 8, 8), frames=16, attention=("spatial", "temporal") * 2, abs_pos=True,
                              edges="wrap", cross=0.5, context_frames=0.5, context_one_patch=0.5,
                              context_high_noise=0.5, staged=True, lr_schedule="cosine", overlap=8, steps=4400,
                              compile=True, scheduler="unipc", guidance_interval=(0.85, 1.0)),
    # tests and smoke runs: a few seconds
    "micro-t2v": T2VConfig(dim=24, heads=2, layers=1, ffn_dim=48, freq_dim=16, patch=(2, 8, 8), samples=8, steps=3,
                           batch_size=2, warmup_steps=0, log_every=1, checkpoint_every=2, sample_steps=2, threads=1),
}


def _parse_value(text: str, like: Any, key: str) -> Any:
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text  # a bare word: a string
    if key == "attention":  # a pattern name, a list of them, or a table of AttentionPattern fields
        ok = isinstance(value, (str, list, dict))
    elif isinstance(like, bool) or isinstance(like, str):
        ok = isinstance(value, type(like))
    elif isinstance(like, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(like, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(like, (tuple, list)):
        if isinstance(value, str) and isinstance(like, list):
            value = [value]
        ok = isinstance(value, list)
    else:
        ok = True
    if not ok:
        raise ValueError(f"{key}: expected a {type(like).__name__}, got {text!r}")
    return value


def load_config(preset: str = "tiny-t2v-16f", path: str | os.PathLike | None = None,
                overrides: Sequence[str] = ()) -> T2VConfig:
    """A preset, updated by a TOML file (top-level keys = fields) and then by ``key=value`` overrides.

    Raises:
        ValueError: an unknown preset or key, a value of the wrong type, or an override without ``=``.
    """
    if preset not in PRESETS:
        raise ValueError(f"preset: expected one of {sorted(PRESETS)}, got {preset!r}")
    cfg = dataclasses.replace(PRESETS[preset])
    fields = {f.name for f in dataclasses.fields(T2VConfig)}
    updates: dict[str, Any] = {}
    if path is not None:
        with open(path, "rb") as f:
            table = tomllib.load(f)
        unknown = sorted(set(table) - fields)
        if unknown:
            raise ValueError(f"config {str(path)!r}: unknown keys {unknown}; expected some of {sorted(fields)}")
        updates.update(table)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override: expected key=value, got {item!r}")
        key, text = (s.strip() for s in item.split("=", 1))
        if key not in fields:
            raise ValueError(f"override: unknown key {key!r}; expected one of {sorted(fields)}")
        updates[key] = _parse_value(text, getattr(cfg, key), key)
    for key, value in updates.items():
        like = getattr(cfg, key)
        if isinstance(like, float) and isinstance(value, int) and not isinstance(value, bool):
            updates[key] = float(value)
    return dataclasses.replace(cfg, **updates)


class ClipEmbeddings(Dataset):
    """Clips kept in memory with their captions' text embeddings: items ``{"latents", "context"}`` for the trainer.

    Every distinct caption is encoded once, in chunks, through ``encoder`` (give a
    :class:`~veil.text.CachedTextEncoder` to keep them on disk). A folder's clips come from
    :func:`veil.data.decode_folder`; :class:`WorldEmbeddings` renders the world's.

    Args:
        videos: float32 ``[N, 3, T, H, W]`` in [-1, 1].
        captions: N captions.
        encoder: a text encoder (``encode(prompts) -> (embeddings [B, L, Dt], lengths [B])``).
        chunk: prompts per encoder call.
    """

    def __init__(self, videos: Tensor, captions: list[str], encoder: Any, *, chunk: int = 256):
        distinct = list(dict.fromkeys(captions))
        index = {c: i for i, c in enumerate(distinct)}
        self.caption_index = [index[c] for c in captions]
        self.embeddings: list[Tensor] = []
        for start in range(0, len(distinct), chunk):
            emb, lengths = encoder.encode(distinct[start:start + chunk])
            self.embeddings += [emb[i, : int(n)].float().clone() for i, n in enumerate(lengths)]
        self.distinct = len(distinct)
        self.videos = videos

    def __len__(self) -> int:
        return self.videos.shape[0]

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return {"latents": self.videos[index], "context": self.embeddings[self.caption_index[index]]}


class WorldEmbeddings(ClipEmbeddings):
    """World clips with their captions' cached text embeddings: items ``{"latents", "context"}`` for the trainer.

    Every clip is rendered once at construction (deterministic by index; one torch thread, which renders these
    small tensors ~30x faster than two contended ones) and kept in memory (``samples * 3 * T * H * W`` floats);
    every distinct caption is encoded once, in chunks, through ``encoder`` (give a
    :class:`~veil.text.CachedTextEncoder` to keep them on disk).

    Args:
        world: the :class:`~veil.data.CaptionedVideoWorld`.
        encoder: a text encoder (``encode(prompts) -> (embeddings [B, L, Dt], lengths [B])``).
        chunk: prompts per encoder call.
    """

    def __init__(self, world: CaptionedVideoWorld, encoder: Any, *, chunk: int = 256):
        self.world = world
        videos = render_many(world.spec(i) for i in range(len(world)))  # (N, 3, T, H, W)
        super().__init__(videos, [world.caption(i) for i in range(len(world))], encoder, chunk=chunk)


class _T2VTrainer(Trainer):
    """A :class:`Trainer` whose checkpoints also carry the pipeline config and how the run was started."""

    def __init__(self, *args: Any, pipeline: PipelineConfig, run: dict[str, Any], **kwargs: Any):
        self.pipeline_config, self.run_info = pipeline, run
        super().__init__(*args, **kwargs)

    def checkpoint_extra(self) -> dict[str, Any]:
        return {**super().checkpoint_extra(), "pipeline": self.pipeline_config.to_dict(), "run": self.run_info}


def export_checkpoint(trainer: Trainer, path: str | os.PathLike, extra: dict[str, Any]) -> Path:
    """Write an inference checkpoint: the EMA weights as the model, no optimizer state (a few MB).

    In a multi-process run every rank calls it: the weights are gathered and rank 0 writes the one file.
    """
    model = trainer.pipeline_config.build_model() if hasattr(trainer, "pipeline_config") else None
    if model is None:
        raise ValueError("trainer: expected a text-to-video trainer")
    if trainer.parallel is not None:
        state = full_state(trainer.model, trainer.ema)  # every rank takes part; rank 0 gets the weights
        if state is not None:
            model.load_state_dict(state)
            save_checkpoint(path, step=trainer.step, model=model, config=dataclasses.asdict(trainer.config),
                            extra=extra)
        torch.distributed.barrier()
        return Path(path)
    model.load_state_dict(trainer.module.state_dict())
    if trainer.ema is not None:
        trainer.ema.copy_to(model)
    return save_checkpoint(path, step=trainer.step, model=model, config=dataclasses.asdict(trainer.config),
                           extra=extra)


def train_t2v(config: T2VConfig, out_dir: str | os.PathLike, *, resume: str | None = None,
              run: dict[str, Any] | None = None, progress: bool = True, log=print) -> Path:
    """Train ``config`` into ``out_dir`` (checkpoints, ``metrics.jsonl``) and export ``out_dir/model.safetensors``.

    Args:
        config: the run.
        out_dir: output directory.
        resume: "auto", a checkpoint path, or None.
        run: recorded in the checkpoints' metadata (e.g. the command line and git commit).
        progress: show a progress bar. log: where status lines go.

    Returns:
        The exported inference checkpoint (EMA weights and the pipeline config).
    """
    if config.threads:
        torch.set_num_threads(config.threads)
    out = Path(out_dir)
    t0 = time.perf_counter()
    pipeline = config.pipeline()
    initial = _initial_weights(config.init, pipeline) if config.init else None  # checked before the slow part
    objective = FlowMatching(shift=config.shift, sampling=typing.cast(Any, config.timesteps),
                             unshifted=config.unshifted, absolute_below=config.absolute_below,
                             absolute_scale=config.absolute_scale,
                             weighting=typing.cast(Any, config.loss_weight), context_frames=config.context_frames,
                             context_one_patch=config.context_one_patch, context_high_noise=config.context_high_noise,
                             frame_patch=config.patch[0], sigma_min=config.sigma_min, sigma_max=config.sigma_max)
    encoder = make_text_encoder(config.text_encoder, Path(config.cache_dir).expanduser())
    several = torch.distributed.is_available() and torch.distributed.is_initialized()
    main = not several or torch.distributed.get_rank() == 0
    world = None
    if config.data:  # decoded on every rank (each holds the clips); the skip messages from rank 0 only
        folder = VideoFolder(Path(config.data).expanduser(), size=config.size, frames=config.frames)
        videos, captions, _ = decode_folder(folder, log=log if main else _quiet)
    else:
        world = CaptionedVideoWorld(config.samples, frames=config.frames, size=config.size, seed=config.world_seed,
                                    exclude=config.exclude or None, radius=config.radius, edges=config.edges,
                                    cross=config.cross)
    if several and not main:
        torch.distributed.barrier()  # rank 0 fills the text-embedding cache first; the others then read it
    data = WorldEmbeddings(world, encoder) if world is not None else ClipEmbeddings(videos, captions, encoder)
    if several and main:
        torch.distributed.barrier()
    if not main:
        log = _quiet
    if world is not None:
        log(f"world: {len(world)} clips, {len(world.seen)} seen / {len(world.held_out)} held-out combinations, "
            f"{data.distinct} distinct captions encoded in {time.perf_counter() - t0:.1f} s")
    else:
        log(f"data: {len(data)} clips from {config.data} ({config.frames} frames of {config.size}x{config.size}), "
            f"{data.distinct} distinct captions encoded in {time.perf_counter() - t0:.1f} s")
    if initial is not None:
        log(f"init: the weights of {config.init}")
    if config.vae:  # the clips become the VAE's latents once, before training
        data.videos = _encode_clips(pipeline.build_codec(), data.videos)
        log(f"vae: {len(data)} clips encoded to latents {list(data.videos.shape[1:])}")

    def build() -> torch.nn.Module:  # called by the trainer once the run's seed is set: seeded initial weights
        model = pipeline.build_model()
        if initial is not None:  # a fine-tune: the checkpoint's weights, its text statistics included
            model.load_state_dict(initial)
        elif config.text_norm:
            norm = next(m for m in model.modules() if isinstance(m, ContextStandardize))
            norm.fit(data.embeddings)
        return model

    run_info = {**(run or {}), "t2v_config": _jsonable(dataclasses.asdict(config))}
    # under torchrun with nccl each process trains on its own GPU (init() made it the current device)
    device = (torch.device("cuda", torch.cuda.current_device())
              if several and torch.distributed.get_backend() == "nccl" else None)
    trainer = _T2VTrainer(build, objective, data, config.train_config(str(out), resume, progress),
                          pipeline=pipeline, run=run_info, device=device)
    if trainer.resumed_from is not None:
        log(f"resumed from {trainer.resumed_from} at step {trainer.step}")
    t1 = time.perf_counter()
    start = trainer.step
    trainer.train()
    seconds = time.perf_counter() - t1
    run_info["train_seconds"] = round(seconds, 1)
    run_info["steps_per_second"] = round((trainer.step - start) / max(seconds, 1e-9), 3)
    held_out = [list(c) for c in world.held_out] if world is not None else []
    path = export_checkpoint(trainer, out / "model.safetensors",
                             {"pipeline": pipeline.to_dict(), "run": run_info, "held_out": held_out})
    log(f"trained {trainer.step - start} steps in {seconds:.0f} s; wrote {path}")
    return path


_INIT_MUST_MATCH = ("prediction", "text_encoder", "text_norm", "objective")


def _initial_weights(init: str, pipeline: PipelineConfig) -> dict[str, Tensor]:
    """The inference weights of checkpoint ``init`` (a path or a shipped name), checked against ``pipeline``'s model.

    Raises:
        ValueError: no such checkpoint, not a text-to-video one, or a model other than ``pipeline``'s.
    """
    try:
        theirs, weights, _ = read_checkpoint(checkpoint_path(Path(init).expanduser()))
    except ValueError as e:
        raise ValueError(f"init: expected a veil text-to-video checkpoint or one of {list(SHIPPED)}, "
                         f"got {init!r} ({e})") from e
    # the architecture, and what its inputs and outputs mean
    ours, theirs_d = pipeline.to_dict(), theirs.to_dict()
    mine = {**ours["model"], **{k: ours[k] for k in _INIT_MUST_MATCH}, "codec": ours["codec"]["kind"]}
    other = {**theirs_d["model"], **{k: theirs_d[k] for k in _INIT_MUST_MATCH}, "codec": theirs_d["codec"]["kind"]}
    differ = [f"{k}: {other.get(k, '(unset)')!r} there, {mine.get(k, '(unset)')!r} here"
              for k in sorted(set(mine) | set(other)) if mine.get(k) != other.get(k)]
    if differ:
        raise ValueError(f"init: the model of {init!r} is not this run's ({'; '.join(differ)})")
    expected = pipeline.build_model().state_dict()
    missing, unexpected = sorted(expected.keys() - weights.keys()), sorted(weights.keys() - expected.keys())
    wrong = [k for k in sorted(expected.keys() & weights.keys()) if expected[k].shape != weights[k].shape]
    if missing or unexpected or wrong:
        raise ValueError(f"init: the weights of {init!r} do not fit the model (missing {missing[:5]}, unexpected "
                         f"{unexpected[:5]}, other shapes {wrong[:5]})")
    return weights


@torch.no_grad()
def _encode_clips(codec: torch.nn.Module, videos: Tensor, chunk: int = 64) -> Tensor:
    """Pixel clips ``[N, 3, T, H, W]`` in [-1, 1] -> the codec's latents ``[N, C, T', h, w]`` (float32, CPU)."""
    codec.eval()
    return torch.cat([codec.encode(videos[i:i + chunk]).float().cpu() for i in range(0, videos.shape[0], chunk)])


def _quiet(*args: Any, **kwargs: Any) -> None:
    """The status printer of ranks other than 0."""


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
