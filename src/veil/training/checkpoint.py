"""Training checkpoints in safetensors only (never pickle), written atomically.

One file holds everything a resumed run needs to continue with the same losses as an uninterrupted one:

- tensors: ``model.<name>``, ``ema.shadow.<name>`` / ``ema.buffer.<name>``, ``optim.<param index>.<key>``
  (AdamW's ``step`` / ``exp_avg`` / ``exp_avg_sq``), ``rng.torch`` (the global CPU generator state, uint8),
  ``rng.cuda.<i>``, ``rng.numpy`` (MT19937 keys) and ``gen.<name>`` (named ``torch.Generator`` states, e.g. the
  trainer's noise generator and the data sampler's);
- metadata (strings): ``veil_checkpoint`` (format version), ``step``, and JSON for ``config``, ``optimizer``
  (param groups and non-tensor state), ``ema`` scalars, ``scaler`` (fp16 GradScaler), ``rng`` (Python's
  ``random`` state, numpy's scalars) and ``extra`` (e.g. the sampler position). Tuples survive the round trip.

A file is written to a temporary name in the same directory, fsynced and moved over the final name with
``os.replace``, so a crash never leaves a half-written checkpoint under a checkpoint's name.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save as st_save
from torch import Tensor, nn

from veil.training.ema import EMA

__all__ = ["FORMAT_VERSION", "Checkpoint", "checkpoint_path", "find_latest", "list_checkpoints", "load_checkpoint",
           "prune_checkpoints", "resolve_resume", "save_checkpoint"]

FORMAT_VERSION = "1"
_NAME = re.compile(r"^step-(\d+)\.safetensors$")
_SHARDED = re.compile(r"^step-(\d+)\.dcp$")


def _encode(obj: Any) -> Any:
    # JSON with tuples kept as tuples (AdamW's betas, Python's random state)
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v) for v in obj]}
    if isinstance(obj, list):
        return [_encode(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): _encode(v) for k, v in obj.items()}
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    return obj


def _decode(obj: Any) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {"__tuple__"}:
            return tuple(_decode(v) for v in obj["__tuple__"])
        return {k: _decode(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode(v) for v in obj]
    return obj


def _dumps(obj: Any) -> str:
    return json.dumps(_encode(obj), sort_keys=True)


def _owned(t: Tensor) -> Tensor:
    # safetensors refuses shared storage (tied weights, views): every tensor gets its own
    return t.detach().to("cpu").contiguous().clone()


@dataclasses.dataclass
class Checkpoint:
    """What :func:`load_checkpoint` read besides the restored objects."""

    path: Path
    step: int
    config: dict[str, Any] | None
    extra: dict[str, Any]


def checkpoint_path(directory: str | os.PathLike, step: int, *, sharded: bool = False) -> Path:
    """``directory/step-00000123.safetensors`` (one file), or ``directory/step-00000123.dcp`` (a sharded
    checkpoint directory of a multi-process run)."""
    return Path(directory) / f"step-{step:08d}.{'dcp' if sharded else 'safetensors'}"


def list_checkpoints(directory: str | os.PathLike, *, sharded: bool = False) -> list[tuple[int, Path]]:
    """``(step, path)`` of the checkpoints in ``directory``, by step: files, or with ``sharded`` complete
    ``.dcp`` directories (temporary files and directories are not listed)."""
    d = Path(directory)
    if not d.is_dir():
        return []
    if sharded:
        found = [(int(m.group(1)), p) for p in d.iterdir()
                 if (m := _SHARDED.match(p.name)) and p.is_dir() and (p / "veil.json").is_file()]
    else:
        found = [(int(m.group(1)), p) for p in d.iterdir() if (m := _NAME.match(p.name)) and p.is_file()]
    return sorted(found)


def find_latest(directory: str | os.PathLike, *, sharded: bool = False) -> Path | None:
    """The checkpoint with the highest step in ``directory``, or None."""
    found = list_checkpoints(directory, sharded=sharded)
    return found[-1][1] if found else None


def resolve_resume(resume: str | os.PathLike | None, directory: str | os.PathLike | None, *,
                   sharded: bool = False) -> Path | None:
    """``None`` -> None; ``"auto"`` -> the latest checkpoint in ``directory`` (None when there is none); a path
    -> that path. ``sharded``: look for the ``.dcp`` directories of a multi-process run.

    Raises:
        ValueError: ``"auto"`` without a directory, or a path that does not exist.
    """
    if resume is None:
        return None
    if resume == "auto":
        if directory is None:
            raise ValueError("resume: 'auto' needs a checkpoint directory (out_dir), got none")
        found = find_latest(directory, sharded=sharded)
        other = find_latest(directory, sharded=not sharded)
        if found is None and other is not None:  # never restart silently from scratch over another run's work
            if sharded:
                raise ValueError(f"resume: {str(directory)!r} holds one-process checkpoints ({other.name}) but no "
                                 "sharded ones; a multi-process run resumes from step-*.dcp directories: resume it "
                                 "with one process, or start the multi-process run in a new --out")
            raise ValueError(f"resume: {str(directory)!r} holds sharded checkpoints of a multi-process run "
                             f"({other.name}); resume it with torchrun and the same dp / sp settings")
        return found
    p = Path(resume)
    if not (p.is_file() or (sharded and p.is_dir())):
        raise ValueError(f"resume: expected 'auto' or an existing checkpoint, got {str(resume)!r}")
    return p


def prune_checkpoints(directory: str | os.PathLike, keep: int) -> None:
    """Delete all but the ``keep`` latest checkpoints in ``directory`` (files and sharded directories apart)."""
    for sharded in (False, True):
        for _, p in list_checkpoints(directory, sharded=sharded)[:-keep] if keep > 0 else []:
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if hasattr(os, "O_DIRECTORY"):  # make the rename itself durable (POSIX)
        dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def save_checkpoint(path: str | os.PathLike, *, step: int, model: nn.Module, ema: EMA | None = None,
                    optimizer: torch.optim.Optimizer | None = None, scaler: torch.amp.GradScaler | None = None,
                    generators: Mapping[str, torch.Generator] | None = None, config: Mapping[str, Any] | None = None,
                    extra: Mapping[str, Any] | None = None) -> Path:
    """Write a checkpoint atomically; the global torch / CUDA / numpy / Python RNG states are always included.

    Args:
        path: the file to write (its directory is created).
        step: optimizer steps taken so far.
        model, ema, optimizer, scaler: what to save (the last three optional).
        generators: named ``torch.Generator`` s whose states to save.
        config: a JSON-able run configuration, stored in the metadata.
        extra: other JSON-able state (e.g. a data sampler's position).

    Returns:
        The path written.
    """
    path = Path(path)
    tensors: dict[str, Tensor] = {f"model.{k}": _owned(v) for k, v in model.state_dict().items()}
    meta: dict[str, str] = {"veil_checkpoint": FORMAT_VERSION, "step": str(int(step))}
    if ema is not None:
        ema_state = ema.state_dict()
        tensors.update({f"ema.{k}": _owned(v) for k, v in ema_state.items() if isinstance(v, Tensor)})
        meta["ema"] = _dumps({k: v for k, v in ema_state.items() if not isinstance(v, Tensor)})
    if optimizer is not None:
        osd = optimizer.state_dict()
        plain: dict[str, dict[str, Any]] = {}
        for pid, st in osd["state"].items():
            for key, value in st.items():
                if isinstance(value, Tensor):
                    tensors[f"optim.{pid}.{key}"] = _owned(value)
                else:
                    plain.setdefault(str(pid), {})[key] = value
        meta["optimizer"] = _dumps({"param_groups": osd["param_groups"], "state": plain,
                                    "type": type(optimizer).__name__})
    if scaler is not None:
        meta["scaler"] = _dumps(scaler.state_dict())
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    np_state = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(np.asarray(np_state[1], dtype=np.int64))
    meta["rng"] = _dumps({"python": random.getstate(), "numpy": [np_state[0], *np_state[2:]]})
    for name, g in (generators or {}).items():
        tensors[f"gen.{name}"] = g.get_state()
    if config is not None:
        meta["config"] = _dumps(dict(config))
    meta["extra"] = _dumps(dict(extra or {}))
    _atomic_write(path, st_save(tensors, metadata=meta))
    return path


def _read(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    if not path.is_file():
        raise ValueError(f"checkpoint {str(path)!r}: no such file")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for truncated / garbled files
        raise ValueError(f"checkpoint {str(path)!r}: not a readable safetensors file ({type(e).__name__}: {e})") from e
    if meta.get("veil_checkpoint") != FORMAT_VERSION:
        raise ValueError(f"checkpoint {str(path)!r}: not a veil checkpoint (metadata veil_checkpoint = "
                         f"{meta.get('veil_checkpoint')!r}, expected {FORMAT_VERSION!r})")
    return tensors, meta


def _section(tensors: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def _check_model(path: Path, state: Mapping[str, Tensor], model: nn.Module) -> None:
    own = model.state_dict()
    missing = sorted(own.keys() - state.keys())
    unexpected = sorted(state.keys() - own.keys())
    shapes = [f"{k}: file {list(state[k].shape)} vs model {list(own[k].shape)}"
              for k in sorted(own.keys() & state.keys()) if state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = [f"{label} {items[:5]}{' ...' if len(items) > 5 else ''}"
                 for label, items in (("missing keys", missing), ("unexpected keys", unexpected),
                                      ("shape mismatches", shapes)) if items]
        raise ValueError(f"checkpoint {str(path)!r}: does not fit the model ({'; '.join(parts)})")


def load_checkpoint(path: str | os.PathLike, *, model: nn.Module | None = None, ema: EMA | None = None,
                    optimizer: torch.optim.Optimizer | None = None, scaler: torch.amp.GradScaler | None = None,
                    generators: Mapping[str, torch.Generator] | None = None, restore_rng: bool = True) -> Checkpoint:
    """Read a checkpoint and restore it into the given objects (each optional).

    Args:
        path: a file written by :func:`save_checkpoint`.
        model, ema, optimizer, scaler: restored in place when given.
        generators: named generators to restore (each name must be in the file).
        restore_rng: also restore the global torch / CUDA / numpy / Python RNG states.

    Returns:
        The step, config and extra state.

    Raises:
        ValueError: the file is missing, corrupt, not a veil checkpoint, does not fit the model / EMA, or lacks
            the optimizer / EMA / scaler / generator state asked for; every message names the file.
    """
    path = Path(path)
    tensors, meta = _read(path)
    name = str(path)
    try:
        if model is not None:
            state = _section(tensors, "model.")
            _check_model(path, state, model)
            model.load_state_dict(state)
        if ema is not None:
            if "ema" not in meta:
                raise ValueError("it has no EMA state")
            ema.load_state_dict({**_section(tensors, "ema."), **_decode(json.loads(meta["ema"]))})
        if optimizer is not None:
            if "optimizer" not in meta:
                raise ValueError("it has no optimizer state")
            info = _decode(json.loads(meta["optimizer"]))
            if info["type"] != type(optimizer).__name__:
                raise ValueError(f"it holds a {info['type']} state, the optimizer is a {type(optimizer).__name__}")
            state: dict[int, dict[str, Any]] = {}
            for key, value in _section(tensors, "optim.").items():
                pid, sub = key.split(".", 1)
                state.setdefault(int(pid), {})[sub] = value
            for pid, st in info["state"].items():
                state.setdefault(int(pid), {}).update(st)
            optimizer.load_state_dict({"state": state, "param_groups": info["param_groups"]})
        if scaler is not None:
            if "scaler" not in meta:
                raise ValueError("it has no GradScaler state (saved from an fp32 / bf16 run?)")
            scaler.load_state_dict(_decode(json.loads(meta["scaler"])))
        for gname, g in (generators or {}).items():
            if f"gen.{gname}" not in tensors:
                raise ValueError(f"it has no state for the generator {gname!r}")
            g.set_state(tensors[f"gen.{gname}"])
        if restore_rng:
            torch.set_rng_state(tensors["rng.torch"])
            cuda = sorted((int(k.split(".")[2]), v) for k, v in tensors.items() if k.startswith("rng.cuda."))
            if cuda and torch.cuda.is_available():
                torch.cuda.set_rng_state_all([v for _, v in cuda])
            rng = _decode(json.loads(meta["rng"]))
            random.setstate(rng["python"])
            kind, *rest = rng["numpy"]
            np.random.set_state((kind, tensors["rng.numpy"].numpy().astype(np.uint32), *rest))
    except ValueError as e:
        if str(e).startswith(f"checkpoint {name!r}"):
            raise
        raise ValueError(f"checkpoint {name!r}: {e}") from e
    except (KeyError, RuntimeError) as e:
        raise ValueError(f"checkpoint {name!r}: inconsistent contents ({type(e).__name__}: {e})") from e
    config = _decode(json.loads(meta["config"])) if "config" in meta else None
    return Checkpoint(path=path, step=int(meta["step"]), config=config, extra=_decode(json.loads(meta["extra"])))
