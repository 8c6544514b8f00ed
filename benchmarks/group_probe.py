"""Probe: how many plane channels should one codec image carry? Codec warm-up (feature reconstruction
on the frozen planes of a base field, no rendering) with the C = 16 channels of a plane coded as
one image (the default) or split into groups of G channels coded as separate images.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/group_probe.py --groups 16 4 --steps 200

Prints, per G and every 50 steps, the normalised reconstruction MSE (MSE / mean channel variance;
1.0 = predicting the channel means) of the rounded-latent decode, and the estimated latent bytes.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import time
from pathlib import Path
from typing import Callable, Dict, List, Sequence, Tuple

import torch
import tyro

from nerfcodec_ns.codec.backbone import load_backbone
from nerfcodec_ns.codec.plane import PlaneCodec
from nerfcodec_ns.codec.settings import CodecConfig


@dataclasses.dataclass
class Args:
    base: str = "outputs/tv_base"
    """Base-field run folder (its newest checkpoint is used)."""
    groups: Tuple[int, ...] = (16, 4)
    """Channels per coded image."""
    steps: int = 200
    lmbda: float = 3e-5
    """Rate weight per kB of estimated latent size."""
    clip_sigmas: float = 4.0
    latent_gain: float = 1.0
    lr: float = 1e-3
    heads_lr: float = 3e-3
    out: str = ""
    """Optional JSON output."""


def load_planes(base: str) -> List[torch.Tensor]:
    path = sorted(glob.glob(f"{base}/**/nerfstudio_models/*.ckpt", recursive=True))[-1]
    state = torch.load(path, map_location="cpu", weights_only=False)["pipeline"]
    keys = sorted(k for k in state if k.startswith("_model.field.planes."))
    return [state[k].contiguous() for k in keys]


def code_all(codec: PlaneCodec, planes: List[torch.Tensor], G: int):
    """Normalised MSE (per level, level-wide variance) and estimated bits, all groups of all levels."""
    rec, bits = [], 0.0
    for level, x in enumerate(planes):
        var = x.var(dim=(0, 2, 3)).mean()
        err = 0.0
        for g in range(0, x.shape[1], G):
            out = codec(x[:, g:g + G], level)
            err = err + (out.x_hat - x[:, g:g + G]).pow(2).sum()
            bits = bits + out.bits
        rec.append(err / x.numel() / var)
    return rec, bits


def train_probe(codec: PlaneCodec, code: Callable, args, steps: int, tag: Dict, t0: float,
                extra_groups: Sequence[Dict] = ()) -> List[Dict]:
    """Warm-up training of ``codec`` on the loss ``mean(rec) + lmbda * kB`` where ``code()`` returns
    (per-level normalised MSE, estimated bits); Adam on the codec groups (``args.lr``, ``args.heads_lr``)
    plus ``extra_groups``, CompressAI's aux loss on its own. Evaluates (eval mode) every 50 steps and at
    the end; returns and prints those rows, each labelled with ``tag``."""
    groups = codec.parameter_groups(split_heads=True)
    opt = torch.optim.Adam([{"params": groups["codec"], "lr": args.lr},
                            {"params": groups["codec_heads"], "lr": args.heads_lr}, *extra_groups])
    aux = torch.optim.Adam(groups["codec_aux"], lr=1e-3)
    history = []
    for step in range(steps + 1):
        if step % 50 == 0 or step == steps:
            codec.eval()
            with torch.no_grad():
                rec, bits = code()
            codec.train()
            row = {**tag, "step": step, "rec": [round(float(r), 4) for r in rec],
                   "est_kB": round(float(bits) / 8000, 2), "s": round(time.perf_counter() - t0, 1)}
            history.append(row)
            print(json.dumps(row), flush=True)
        if step == steps:
            return history
        rec, bits = code()
        loss = sum(rec) / len(rec) + args.lmbda * bits / 8000
        opt.zero_grad()
        aux.zero_grad()
        loss.backward()
        codec.aux_loss().backward()
        opt.step()
        aux.step()
    return history


def main(args: Args) -> None:
    torch.manual_seed(0)
    planes = load_planes(args.base)
    resolutions = [p.shape[-1] for p in planes]
    backbone = load_backbone(CodecConfig())
    results = []
    for G in args.groups:
        cfg = CodecConfig(clip_sigmas=args.clip_sigmas, compensation=False, latent_gain=args.latent_gain)
        codec = PlaneCodec(cfg, G, resolutions, backbone=backbone)
        history = train_probe(codec, lambda: code_all(codec, planes, G), args, args.steps, {"G": G},
                              time.perf_counter())
        head = sum(p.numel() for p in codec.g_s_head.parameters())
        results.append({"G": G, "head_params": head, "history": history})
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main(tyro.cli(Args))
