"""The training loop: AdamW, warm-up, clipping, accumulation, text dropout, EMA, mixed precision, checkpoints.

Legend: B batch, C latent channels, T frames, H W latent height and width, L text tokens, Dt text width.

Determinism: given a model factory, the trainer seeds the global RNGs with ``config.seed`` before building the
model, so two runs with the same seed start from the same weights. The data order comes from a
:class:`~veil.training.batches.SeededSampler` and every random draw of a step (text dropout, timesteps, noise)
from one CPU ``torch.Generator`` owned by the trainer; both, with the global RNGs (model dropout), the model,
EMA, optimizer and GradScaler, are in each checkpoint. A run stopped
after N steps and resumed therefore produces the same losses as an uninterrupted one (bit for bit in fp32 on
the CPU; GPU kernels may add their own nondeterminism).
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import math
import random
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from veil.diffusion.objectives import Objective
from veil.training.batches import SeededSampler, collate_text_video, drop_text, pad_text, text_bucket
from veil.training.checkpoint import (
    checkpoint_path,
    load_checkpoint,
    prune_checkpoints,
    resolve_resume,
    save_checkpoint,
)
from veil.training.distributed import load_sharded, save_sharded, setup_parallel, wrap
from veil.training.ema import EMA

__all__ = ["TrainConfig", "Trainer", "seed_everything", "train"]

Precision = Literal["fp32", "bf16", "fp16"]


@dataclasses.dataclass(kw_only=True)
class TrainConfig:
    """How to train (all fields are saved in each checkpoint's metadata).

    Attributes:
        steps: optimizer steps of the whole run.
        batch_size: samples per micro-batch; one step sees ``batch_size * grad_accum`` samples.
        lr, weight_decay, betas, eps: AdamW.
        warmup_steps: linear warm-up: step s (0-based) uses ``lr * min(1, (s + 1) / warmup_steps)``.
        lr_schedule: after the warm-up, "constant" (``lr``) or "cosine": from ``lr`` down to ``min_lr`` at the last
            of ``steps`` steps, ``min_lr + (lr - min_lr) (1 + cos(pi p)) / 2`` with ``p`` the share of the
            post-warm-up steps done (so changing ``steps`` on resumption changes the remaining rates).
        grad_clip: clip the global gradient norm to this (None: no clipping; the norm is still logged).
        grad_accum: micro-batches per step; the step's loss is their mean.
        text_dropout: probability of replacing a sample's text by the empty prompt (classifier-free guidance).
        ema_decay: EMA decay (None: no EMA); ``ema_warmup``: cap it at (1 + n) / (10 + n).
        precision: "fp32"; "bf16" (autocast); "fp16" (autocast and a GradScaler).
        seed: seeds the global RNGs, the data order and the trainer's generator.
        log_every: steps between metric records (JSONL, TensorBoard, the progress bar).
        checkpoint_every: steps between checkpoints (None: only at the end); ``keep_checkpoints`` latest kept.
        out_dir: where ``metrics.jsonl``, ``checkpoints/`` and ``tb/`` go (None: nothing is written).
        resume: "auto" (the latest checkpoint in ``out_dir/checkpoints``, if any), a checkpoint path, or None.
        progress: show a tqdm bar; ``tensorboard``: also write TensorBoard events when it imports.
        deterministic: ``torch.use_deterministic_algorithms(True)`` (process-wide) so that a resumed GPU run
            also repeats its losses (CUDA may then need ``CUBLAS_WORKSPACE_CONFIG=:4096:8``).
        dp: under several processes (torchrun): "ddp" (DistributedDataParallel) or "fsdp" (FSDP2
            ``fully_shard`` per block); ``batch_size`` is then the global batch, split over the data-parallel
            groups. Ignored in one process.
        sp: processes per sequence-parallel group (the model's tokens are split across them; 1 = none).
        sp_layout: how the tokens are split: "contiguous" or "zigzag" (balances ring attention under causal
            masks; see :mod:`veil.distributed.comm`).
        compile: run the training forward (and so its backward) through ``torch.compile`` with static shapes;
            the weights, checkpoints and EMA are those of the model itself. The text of each batch is padded to
            16 tokens or the next power of two above (:func:`~veil.training.batches.text_bucket`; the lengths say
            which tokens are real, so a model that honours them gives the same result), so one graph serves each
            bucket. The first step of a bucket compiles (about a minute for the presets on a CPU). Under several
            processes the DDP- or FSDP-wrapped model is compiled (tested with DDP, FSDP2 and sequence parallelism).

    Raises:
        ValueError: a field out of range.
    """

    steps: int
    batch_size: int = 8
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_steps: int = 0
    lr_schedule: Literal["constant", "cosine"] = "constant"
    min_lr: float = 0.0
    grad_clip: float | None = 1.0
    grad_accum: int = 1
    text_dropout: float = 0.1
    ema_decay: float | None = 0.9999
    ema_warmup: bool = False
    precision: Precision = "fp32"
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int | None = None
    keep_checkpoints: int = 3
    out_dir: str | None = None
    resume: str | None = None
    progress: bool = True
    tensorboard: bool = True
    deterministic: bool = False
    dp: Literal["ddp", "fsdp"] = "ddp"
    sp: int = 1
    sp_layout: Literal["contiguous", "zigzag"] = "contiguous"
    compile: bool = False

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "grad_accum", "log_every", "keep_checkpoints"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name}: expected a positive int, got {v!r}")
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ValueError(f"warmup_steps: expected an int >= 0, got {self.warmup_steps!r}")
        if self.checkpoint_every is not None and (not isinstance(self.checkpoint_every, int) or
                                                  self.checkpoint_every < 1):
            raise ValueError(f"checkpoint_every: expected a positive int or None, got {self.checkpoint_every!r}")
        if not self.lr > 0:
            raise ValueError(f"lr: expected a positive number, got {self.lr!r}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule: expected 'constant' or 'cosine', got {self.lr_schedule!r}")
        if (isinstance(self.min_lr, bool) or not isinstance(self.min_lr, (int, float))
                or not 0 <= self.min_lr <= self.lr):
            raise ValueError(f"min_lr: expected a number in [0, lr={self.lr!r}], got {self.min_lr!r}")
        if not 0.0 <= self.text_dropout <= 1.0:
            raise ValueError(f"text_dropout: expected a probability in [0, 1], got {self.text_dropout!r}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip: expected a positive number or None, got {self.grad_clip!r}")
        if self.ema_decay is not None and not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay: expected a number in [0, 1) or None, got {self.ema_decay!r}")
        if self.dp not in ("ddp", "fsdp"):
            raise ValueError(f"dp: expected 'ddp' or 'fsdp', got {self.dp!r}")
        if isinstance(self.sp, bool) or not isinstance(self.sp, int) or self.sp < 1:
            raise ValueError(f"sp: expected a positive int, got {self.sp!r}")
        if self.sp_layout not in ("contiguous", "zigzag"):
            raise ValueError(f"sp_layout: expected 'contiguous' or 'zigzag', got {self.sp_layout!r}")
        if not isinstance(self.compile, bool):
            raise ValueError(f"compile: expected a bool, got {self.compile!r}")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"precision: expected 'fp32', 'bf16' or 'fp16', got {self.precision!r}")
        self.betas = tuple(self.betas)  # type: ignore[assignment]


# fields that change the losses of the remaining steps when they differ between a run and its resumption
_REPEATABLE = ("batch_size", "sp", "lr", "weight_decay", "betas", "eps", "warmup_steps", "lr_schedule", "min_lr",
               "grad_clip", "grad_accum", "text_dropout", "ema_decay", "ema_warmup", "precision", "seed")


def _plain(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


def _jsonable(config: TrainConfig) -> dict[str, Any]:
    return {k: _plain(v) for k, v in dataclasses.asdict(config).items()}


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, numpy's global RNG and torch's (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _autocast(precision: Precision, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    if precision == "fp32":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        probe = torch.autocast(device.type, dtype=dtype)
    if not probe._enabled or any("autocast" in str(w.message).lower() for w in caught):
        raise ValueError(f"precision: {precision!r} autocast is not supported on device {device.type!r} by this "
                         f"torch {torch.__version__}; use 'fp32' or 'bf16'")
    return lambda: torch.autocast(device.type, dtype=dtype)


class Trainer:
    """Train a denoiser on (latents, text embeddings) with a diffusion objective.

    Args:
        model: a denoiser following :mod:`veil.diffusion`'s protocol (moved to ``device``), or a function of no
            arguments that builds one: it is called after the global RNGs are seeded with ``config.seed``, so the
            initial weights are the run's own (the same on every process of a multi-process run). A module passed
            as it is keeps the weights its caller drew.
        objective: e.g. :class:`~veil.diffusion.FlowMatching` or :class:`~veil.diffusion.DDPMObjective`.
        dataset: indexable items (see :mod:`veil.training.batches`), at least one.
        config: :class:`TrainConfig`.
        empty_context: [L0, Dt] embedding of the empty prompt used by text dropout (None: no tokens, L0 = 0).
        device: where to train (default: the model's device).
        collate: items -> dict with ``latents``, ``context``, ``context_lengths`` (default
            :func:`~veil.training.batches.collate_text_video`).

    Raises:
        ValueError: a bad config, an empty dataset, an unsupported precision, or a checkpoint that cannot be
            resumed (named, with the problem).
    """

    def __init__(self, model: nn.Module | Callable[[], nn.Module], objective: Objective,
                 dataset: Sequence[Mapping[str, Any]],
                 config: TrainConfig, *, empty_context: Tensor | None = None, device: torch.device | str | None = None,
                 collate: Callable[[list[Any]], Mapping[str, Tensor]] = collate_text_video):
        if not isinstance(config, TrainConfig):
            raise TypeError(f"config: expected a TrainConfig, got {type(config).__name__}")
        if len(dataset) == 0:
            raise ValueError("dataset: expected at least one item, got an empty dataset")
        self.config = config
        if config.deterministic:
            torch.use_deterministic_algorithms(True)
        seed_everything(config.seed)
        if not isinstance(model, nn.Module):
            if not callable(model):
                raise TypeError(f"model: expected an nn.Module or a function that builds one, got "
                                f"{type(model).__name__}")
            built = model()
            if not isinstance(built, nn.Module):
                raise TypeError(f"model: the factory returned {type(built).__name__}, expected an nn.Module")
            model = built
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        model = model.to(self.device)
        self.parallel = setup_parallel(config.dp, config.sp, config.batch_size, self.device, config.sp_layout)
        self.module = model  # the model itself; self.model is what runs (wrapped for DDP)
        if self.parallel is not None:
            model = wrap(model, self.parallel, self.device)
        self.model = model
        # what the training forward calls: the model, or its compiled forward (same parameters, same state dict)
        # (static shapes: dynamic text lengths hit an inductor stride error in the SDPA backward, PyTorch 2.13)
        self.forward_model: nn.Module = torch.compile(model, dynamic=False) if config.compile else model
        self.objective = objective
        self.dataset = dataset
        self.collate = collate
        self.empty_context = empty_context
        self.autocast = _autocast(config.precision, self.device)
        self.sampler = SeededSampler(len(dataset), config.seed)
        self.generator = torch.Generator().manual_seed(config.seed + 1)
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=config.lr, betas=config.betas, eps=config.eps,
                                           weight_decay=config.weight_decay)
        self.scaler = torch.amp.GradScaler(self.device.type) if config.precision == "fp16" else None
        self.ema = (EMA(self.module, config.ema_decay, warmup=config.ema_warmup) if config.ema_decay is not None
                    else None)
        self.step = 0
        self.skipped_steps = 0
        self.out_dir = Path(config.out_dir) if config.out_dir is not None else None
        self.checkpoint_dir = self.out_dir / "checkpoints" if self.out_dir is not None else None
        self.resumed_from: Path | None = None
        path = resolve_resume(config.resume, self.checkpoint_dir, sharded=self.parallel is not None)
        if path is not None:
            self.load(path)

    # --- state ---------------------------------------------------------------------------------------------

    def save(self, path: str | Path | None = None) -> Path:
        """Write a checkpoint (default ``out_dir/checkpoints/step-XXXXXXXX.safetensors``) and prune old ones.

        Raises:
            ValueError: no path and no ``out_dir``.
        """
        if path is None:
            if self.checkpoint_dir is None:
                raise ValueError("path: expected a checkpoint path when the config has no out_dir, got None")
            path = checkpoint_path(self.checkpoint_dir, self.step, sharded=self.parallel is not None)
        if self.parallel is not None:
            if self.scaler is not None:
                raise ValueError("precision: fp16 (GradScaler) checkpoints are not supported with several processes; "
                                 "use bf16 or fp32")
            meta = {"veil_checkpoint": "sharded-1", "step": self.step, "config": _jsonable(self.config),
                    "extra": self.checkpoint_extra(), "world": self.parallel.world,
                    "generator": base64.b64encode(self.generator.get_state().numpy().tobytes()).decode()}
            out = save_sharded(Path(path), self.model, self.optimizer, self.ema, meta)
        else:
            out = save_checkpoint(path, step=self.step, model=self.model, ema=self.ema, optimizer=self.optimizer,
                                  scaler=self.scaler, generators={"trainer": self.generator},
                                  config=dataclasses.asdict(self.config), extra=self.checkpoint_extra())
        if self.checkpoint_dir is not None and Path(out).parent == self.checkpoint_dir and self._main:
            prune_checkpoints(self.checkpoint_dir, self.config.keep_checkpoints)
        return out

    @property
    def _main(self) -> bool:
        """True on the process that logs and prunes (rank 0, or the only process)."""
        return self.parallel is None or self.parallel.is_main

    def checkpoint_extra(self) -> dict:
        """JSON-able state saved beside the tensors (subclasses add theirs to it)."""
        return {"sampler": self.sampler.state_dict()}

    def load(self, path: str | Path) -> None:
        """Restore everything from a checkpoint written by :meth:`save`.

        Raises:
            ValueError: the file is corrupt, not a checkpoint, or does not fit this model / optimizer / data.
        """
        if self.parallel is not None:
            if not Path(path).is_dir():
                raise ValueError(f"checkpoint {str(path)!r}: a multi-process run resumes from a sharded checkpoint "
                                 "directory (step-XXXXXXXX.dcp), got a file")
            meta = load_sharded(Path(path), self.model, self.optimizer, self.ema)
            state = torch.frombuffer(bytearray(base64.b64decode(meta["generator"])), dtype=torch.uint8)
            self.generator.set_state(state)
            step, extra, saved_config = int(meta["step"]), meta["extra"], meta.get("config")
        else:
            if Path(path).is_dir():
                raise ValueError(f"checkpoint {str(path)!r}: a sharded checkpoint needs the processes that wrote it "
                                 "(launch with torchrun); export one file with the multi-process run")
            ckpt = load_checkpoint(path, model=self.model, ema=self.ema, optimizer=self.optimizer,
                                   scaler=self.scaler, generators={"trainer": self.generator})
            step, extra, saved_config = ckpt.step, ckpt.extra, ckpt.config
        try:
            self.sampler.load_state_dict(extra["sampler"])
        except (KeyError, ValueError) as e:
            raise ValueError(f"checkpoint {str(path)!r}: cannot restore the data order ({e})") from e
        self.step = step
        self.resumed_from = Path(path)
        now = dataclasses.asdict(self.config)
        changed = sorted(k for k in _REPEATABLE if saved_config is not None and k in saved_config and
                         _plain(saved_config[k]) != _plain(now[k]))
        if changed:
            diff = ", ".join(f"{k}: {saved_config[k]!r} -> {now[k]!r}" for k in changed)
            warnings.warn(f"resuming {str(path)!r} with another configuration ({diff}): the run will not repeat "
                          "an uninterrupted one", RuntimeWarning, stacklevel=2)

    # --- one step ------------------------------------------------------------------------------------------

    def lr_at(self, step: int) -> float:
        """The learning rate of 0-based ``step``: linear warm-up, then constant or cosine (``lr_schedule``)."""
        cfg = self.config
        w = cfg.warmup_steps
        if step < w:
            return cfg.lr * (step + 1) / w
        if cfg.lr_schedule == "constant":
            return cfg.lr
        p = min(1.0, (step - w) / max(1, cfg.steps - 1 - w))  # 0 at the first post-warm-up step, 1 at the last
        return cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1.0 + math.cos(math.pi * p))

    def next_batch(self) -> dict[str, Tensor]:
        """The next micro-batch on the device, with text dropout applied (this rank's rows of the global batch
        under data parallelism; the random draws are the global batch's, so the ranks draw what one process
        would)."""
        total = self.config.batch_size
        indices = self.sampler.take(total)
        start, count = self.parallel.rows(total) if self.parallel is not None else (0, total)
        items = [self.dataset[i] for i in indices[start:start + count]]
        batch = dict(self.collate(items))
        ctx, lengths = batch["context"], batch["context_lengths"]
        if self.config.text_dropout > 0:
            drop = (torch.rand(total, generator=self.generator) < self.config.text_dropout)[start:start + count]
            empty = self.empty_context if self.empty_context is not None else ctx.new_zeros(0, ctx.shape[2])
            ctx, lengths = drop_text(ctx, lengths, drop, empty)
        if self.config.compile:
            ctx = pad_text(ctx, text_bucket(ctx.shape[1]))
        return {"latents": batch["latents"].to(self.device), "context": ctx.to(self.device),
                "context_lengths": lengths.to(self.device)}

    def train_step(self) -> dict[str, float]:
        """One optimizer step over ``grad_accum`` micro-batches; returns its metrics."""
        cfg = self.config
        self.model.train()
        lr = self.lr_at(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        total = 0.0
        par = self.parallel
        rows = (par.rows(cfg.batch_size)[0], cfg.batch_size) if par is not None else None
        for _ in range(cfg.grad_accum):
            batch = self.next_batch()
            with self.autocast():
                loss = self.objective.loss(self.forward_model, batch["latents"], batch["context"],
                                           batch["context_lengths"], generator=self.generator, rows=rows)
            # a sequence-parallel rank's gradients are its tokens' share: the world average needs them x sp
            scaled = loss * (par.sp if par is not None else 1) / cfg.grad_accum
            (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
            total += float(loss.detach())
        if par is not None:
            total = par.mean(total)  # the global batch's loss (every rank of an SP group has the same loss)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip else math.inf))
        finite = math.isfinite(grad_norm)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)  # skips the update itself when the gradients overflowed
            self.scaler.update()
        elif finite:
            self.optimizer.step()
        else:
            # one bad batch (or a kernel bug: see the bf16 test) must not turn every weight into NaN
            self.skipped_steps += 1
            warnings.warn(f"step {self.step + 1}: non-finite gradient norm ({grad_norm}); the update is skipped",
                          RuntimeWarning, stacklevel=2)
        if self.ema is not None and (finite or self.scaler is not None):
            self.ema.update(self.module)
        self.step += 1
        out = {"step": self.step, "loss": total / cfg.grad_accum, "lr": lr, "grad_norm": grad_norm,
               "skipped": not finite}
        if self.scaler is not None:
            out["loss_scale"] = float(self.scaler.get_scale())
        return out

    # --- the loop ------------------------------------------------------------------------------------------

    def train(self, num_steps: int | None = None) -> list[float]:
        """Train until ``config.steps`` (or for ``num_steps`` more steps, not past it); returns each step's loss.

        Writes ``metrics.jsonl`` (one record per ``log_every`` steps and at the end), TensorBoard events when
        ``torch.utils.tensorboard`` imports, checkpoints every ``checkpoint_every`` steps and at the end.
        """
        cfg = self.config
        end = cfg.steps if num_steps is None else min(cfg.steps, self.step + num_steps)
        losses: list[float] = []
        metrics_file = writer = None
        if self.out_dir is not None and self._main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self._drop_metrics_after(self.step)
            metrics_file = open(self.out_dir / "metrics.jsonl", "a")  # noqa: SIM115 (closed below)
            if cfg.tensorboard:
                try:
                    from torch.utils.tensorboard import SummaryWriter

                    writer = SummaryWriter(str(self.out_dir / "tb"))
                except ImportError:
                    writer = None
        samples_per_step = cfg.batch_size * cfg.grad_accum
        bar = tqdm(total=end, initial=self.step, disable=not (cfg.progress and self._main), desc="train",
                   dynamic_ncols=True)
        window_start, window_steps = time.perf_counter(), 0
        try:
            while self.step < end:
                m = self.train_step()
                losses.append(m["loss"])
                window_steps += 1
                bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == end:
                    elapsed = max(time.perf_counter() - window_start, 1e-9)
                    m["samples_per_s"] = window_steps * samples_per_step / elapsed
                    m["time"] = time.time()
                    bar.set_postfix(loss=f"{m['loss']:.4f}", samples_s=f"{m['samples_per_s']:.1f}")
                    if metrics_file is not None:
                        metrics_file.write(json.dumps(m) + "\n")
                        metrics_file.flush()
                    if writer is not None:
                        for k, v in m.items():
                            if k not in ("step", "time"):
                                writer.add_scalar(f"train/{k}", v, self.step)
                    window_start, window_steps = time.perf_counter(), 0
                if self.checkpoint_dir is not None and cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                    self.save()
            if self.checkpoint_dir is not None and (not cfg.checkpoint_every or self.step % cfg.checkpoint_every):
                self.save()
        finally:
            bar.close()
            if metrics_file is not None:
                metrics_file.close()
            if writer is not None:
                writer.close()
        return losses


    def _drop_metrics_after(self, step: int) -> None:
        # records a crashed run wrote past its last checkpoint would otherwise appear twice after resuming
        path = self.out_dir / "metrics.jsonl"
        if not path.is_file():
            return
        lines = path.read_text().splitlines(keepends=True)
        kept = []
        for line in lines:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by the crash
                continue
            if record.get("step", 0) <= step:
                kept.append(line if line.endswith("\n") else line + "\n")
        if kept != lines:
            path.write_text("".join(kept))


def train(model: nn.Module | Callable[[], nn.Module], objective: Objective, dataset: Sequence[Mapping[str, Any]],
          config: TrainConfig, **kwargs: Any) -> Trainer:
    """Build a :class:`Trainer` (resuming as ``config.resume`` says), train to ``config.steps`` and return it."""
    trainer = Trainer(model, objective, dataset, config, **kwargs)
    trainer.train()
    return trainer
