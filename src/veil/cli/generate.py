"""``veil generate``: a prompt in, a GIF or MP4 out (the shipped checkpoint unless --checkpoint)."""

from __future__ import annotations

import argparse
import os

import torch
from PIL import Image

from veil.distributed import init
from veil.pipelines import TextToVideo, save_video


def add_parser(sub) -> None:
    p = sub.add_parser("generate", help="generate a video from a prompt",
                       description="Generate a video for PROMPT and write it as GIF or MP4 (by the -o suffix).")
    p.add_argument("prompt")
    p.add_argument("-o", "--output", default="out.gif", help="a .gif or .mp4 file (default out.gif)")
    p.add_argument("--negative-prompt", help="what to steer away from (default: the null prompt)")
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale (default: the checkpoint's)")
    p.add_argument("--steps", type=int, help="sampler steps (default: the checkpoint's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--frames", type=int, help="frames per window (default: the trained length)")
    p.add_argument("--keyframe", action="append", default=[], metavar="INDEX=IMAGE",
                   help="hold frame INDEX to an image file (resized to the frame size); repeatable")
    p.add_argument("--extend", type=int, metavar="N", help="extend to N frames, window by window")
    add_model_arguments(p)
    p.add_argument("--sp", type=int, metavar="K",
                   help="sequence-parallel over K processes: launch with 'torchrun --nproc-per-node K -m veil.cli.main "
                        "generate ... --sp K'; rank 0 writes the file")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: small tensors run fastest on one thread of a busy CPU)")
    p.set_defaults(run=run, parser=p)


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """``--checkpoint``, ``--low-noise`` and ``--boundary``: the model a command samples with."""
    p.add_argument("--checkpoint", help="a checkpoint from 'veil train', or a shipped one by name: tiny-t2v-16f "
                   "(16 frames whose tokens keep time) or tiny-t2v (8 frames in one token frame); default: "
                   "tiny-t2v-16f with its shipped low-noise expert tiny-t2v-16f-low below noise level 0.85")
    p.add_argument("--low-noise", metavar="CHECKPOINT",
                   help="a low-noise expert: --checkpoint then denoises the high-noise steps and this one the rest, "
                        "as Wan 2.2's two experts (train one with 'veil train sigma_max=0.875 ...')")
    p.add_argument("--boundary", type=float,
                   help="with --low-noise: the noise level in (0, 1] from which the --checkpoint expert is used "
                        "(default: where the experts' training ranges meet, else 0.875)")


def load_pipeline(args: argparse.Namespace) -> TextToVideo:
    """The pipeline that :func:`add_model_arguments`' options name."""
    return TextToVideo.from_checkpoint(args.checkpoint, low_noise=args.low_noise, boundary=args.boundary)


def _keyframe(spec: str, size: int) -> tuple[int, torch.Tensor]:
    index, sep, path = spec.partition("=")
    if not sep or not index.strip().lstrip("-").isdigit():
        raise ValueError(f"--keyframe: expected INDEX=IMAGE, got {spec!r}")
    try:
        img = Image.open(path).convert("RGB").resize((size, size))
    except OSError as e:  # missing file, a directory, not an image (PIL's UnidentifiedImageError is an OSError)
        raise ValueError(f"--keyframe: cannot read the image {path!r} ({e.strerror or e})") from None
    x = torch.tensor(list(img.getdata()), dtype=torch.float32).reshape(size, size, 3).permute(2, 0, 1)
    return int(index), x / 127.5 - 1  # (3, H, W) in [-1, 1]


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    main = True
    if args.sp is not None:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if args.sp < 1 or world != args.sp:
            raise ValueError(f"--sp: expected the number of processes torchrun started ({world}), got {args.sp}; "
                             f"launch with 'torchrun --nproc-per-node {max(args.sp, 1)} -m veil.cli.main generate ...'")
        if args.sp > 1:
            rank, _ = init()
            main = rank == 0
    pipe = load_pipeline(args)
    experts = pipe.extra.get("experts")
    if experts and main:
        print(f"experts: {experts['high_noise']} at noise levels >= {experts['boundary']:g}, "
              f"{experts['low_noise']} below")
    if args.sp is not None and args.sp > 1:
        pipe.enable_sequence_parallel()
    keyframes = dict(_keyframe(k, pipe.config.size) for k in args.keyframe) or None
    video = pipe(args.prompt, args.negative_prompt, guidance=args.guidance, steps=args.steps, seed=args.seed,
                 frames=args.frames, keyframes=keyframes, extend_to=args.extend, progress=main)
    if main:
        path = save_video(video[0], args.output)
        print(f"{path}: {video.shape[2]} frames of {video.shape[3]}x{video.shape[4]}")
    if args.sp is not None and args.sp > 1:
        # every rank gets here before any closes its connections: a gloo peer that leaves while another's transport
        # threads still read from it aborts that process
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return 0
