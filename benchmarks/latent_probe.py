"""Probe: amortized encoder vs direct latent optimization, on the codec warm-up task (feature
reconstruction of a base field's frozen planes, no rendering).

Both arms start from the same state after ``--warmup`` encoder steps. Arm "encoder" keeps training
g_a (as the codec does); arm "latents" makes y = g_a(x) a free parameter per level and trains it
directly (the decoder side is unchanged: the same head, entropy models and bitstream).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/latent_probe.py --warmup 100 --steps 200
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time

import torch
import tyro

from group_probe import load_planes, train_probe
from nerfcodec_ns.codec.backbone import load_backbone
from nerfcodec_ns.codec.plane import PlaneCodec, estimate_bits, plane_stats
from nerfcodec_ns.codec.settings import CodecConfig
from nerfcodec_ns.model import normalized_mse


@dataclasses.dataclass
class Args:
    base: str = "outputs/tv_base"
    warmup: int = 100
    steps: int = 200
    lmbda: float = 3e-5
    latent_lr: float = 1e-2
    lr: float = 1e-3
    heads_lr: float = 3e-3


def decode_from_y(codec: PlaneCodec, y: torch.Tensor, planes: torch.Tensor, level: int):
    """The codec's forward from a given latent y (bmshj2018-hyperprior)."""
    R = planes.shape[-1]
    lo16, hi16 = plane_stats(planes, codec.config.clip_sigmas)
    z = codec.h_a(torch.abs(y))
    z_hat, z_lik = codec.entropy_bottleneck(z)
    g = codec.gain
    y_hat, y_lik = codec.gaussian_conditional(y * g, codec.h_s(z_hat) * g)
    x_hat = codec._denormalize(codec.g_s(y_hat / g), R, lo16, hi16, level)
    return x_hat, estimate_bits({"y": y_lik, "z": z_lik})


def run(codec, planes, args, latents, steps, tag, t0):
    """Train on the warm-up task; ``latents``: optimize these y per level (else the encoder makes y)."""
    def code():
        outs = [decode_from_y(codec, latents[l], x, l) if latents is not None else codec(x, l)[:3:2]
                for l, x in enumerate(planes)]
        return [normalized_mse(o[0], x) for o, x in zip(outs, planes)], sum(o[1] for o in outs)

    extra = [{"params": latents, "lr": args.latent_lr}] if latents is not None else []
    train_probe(codec, code, args, steps, {"arm": tag}, t0, extra)


def main(args: Args) -> None:
    torch.manual_seed(0)
    planes = load_planes(args.base)
    codec = PlaneCodec(CodecConfig(clip_sigmas=4, compensation=False), planes[0].shape[1],
                       [p.shape[-1] for p in planes], backbone=load_backbone(CodecConfig()))
    t0 = time.perf_counter()
    run(codec, planes, args, None, args.warmup, "warmup", t0)
    enc = copy.deepcopy(codec)
    with torch.no_grad():
        latents = [torch.nn.Parameter(codec.g_a(codec._normalize(x, *plane_stats(x, 4)))) for x in planes]
    run(codec, planes, args, latents, args.steps, "latents", t0)
    run(enc, planes, args, None, args.steps, "encoder", t0)


if __name__ == "__main__":
    main(tyro.cli(Args))
