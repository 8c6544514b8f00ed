"""Probe: channel mixing (``CodecConfig.mix_images``) against the tiled frozen heads and adapted heads.

Codec warm-up only (feature reconstruction of a base field's frozen planes, no rendering), the same
steps, lambda and backbone for every arm:

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/mix_probe.py --base outputs/s7/b96_frozen/field \\
        --weights pretrain_state/backbone96.pt --arms tiled mix1 mix2 --steps 150

Arms: ``tiled`` (frozen heads tiled over the channels, ``adapt_heads=False``), ``adapted`` (adapted
heads started from the tiled layers), ``mixK`` (K RGB images per plane through the channel mixers,
frozen RGB layers). Prints per arm, every 50 steps, the normalised reconstruction MSE per level of
the rounded-latent decode (MSE / mean channel variance; 1.0 = predicting the channel means) and the
estimated latent bytes, plus the transmitted decoder-side bytes of each arm.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Tuple

import torch
import tyro

import group_probe
from group_probe import code_all, load_planes, train_probe
from nerfcodec_ns.codec.backbone import load_backbone
from nerfcodec_ns.codec.plane import PlaneCodec
from nerfcodec_ns.codec.settings import CodecConfig


@dataclasses.dataclass
class Args(group_probe.Args):
    """The group probe's options (``groups`` unused), plus the arms and the backbone."""

    base: str = "outputs/s7/b96_frozen/field"
    """Base-field run folder (its newest checkpoint is used)."""
    weights: str = "embedded"
    """Backbone weights (``CodecConfig.weights``)."""
    arms: Tuple[str, ...] = ("tiled", "mix1", "mix2")
    steps: int = 150
    precision: str = "bfloat16"
    """Training arithmetic of the transforms (``CodecConfig.train_precision``)."""
    spectrum_only: bool = False
    """Only print the variance ceilings (no training)."""


def arm_config(arm: str, args: Args) -> CodecConfig:
    common = dict(weights=args.weights, clip_sigmas=args.clip_sigmas, latent_gain=args.latent_gain,
                  train_precision=args.precision)
    if arm == "tiled":
        return CodecConfig(adapt_heads=False, **common)
    if arm == "adapted":
        return CodecConfig(adapt_heads=True, head_init="pretrained", **common)
    if arm.startswith("mix"):
        return CodecConfig(adapt_heads=False, mix_images=int(arm[3:]), **common)
    raise ValueError(f"unknown arm {arm!r}")


def variance_ceilings(planes) -> list:
    """Per level and plane, the largest share of the channels' variance (about their means) that
    (a) the tiled layers can give (each channel an affine function of one of three signals, channel c
    of signal c % 3: the best rank-1 fit of each group), and (b) the 3 and 6 leading principal
    components give: what any codec behind those layers could reconstruct with perfect latents."""
    rows = []
    for level, P in enumerate(planes):
        for p in range(3):
            X = P[p].reshape(P.shape[1], -1).double()
            X = X - X.mean(dim=1, keepdim=True)
            total = float(X.square().sum())
            eig = torch.linalg.svdvals(X).square()
            tiled = sum(float(torch.linalg.svdvals(X[g::3])[0] ** 2) for g in range(3))
            rows.append({"level": level, "plane": p, "tiled": round(tiled / total, 3),
                         "pca3": round(float(eig[:3].sum()) / total, 3),
                         "pca6": round(float(eig[:6].sum()) / total, 3)})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main(args: Args) -> None:
    planes = load_planes(args.base)
    ceilings = variance_ceilings(planes)
    if args.spectrum_only:
        return
    C, resolutions = planes[0].shape[1], [p.shape[-1] for p in planes]
    backbone = load_backbone(CodecConfig(weights=args.weights))
    results = []
    for arm in args.arms:
        torch.manual_seed(0)
        codec = PlaneCodec(arm_config(arm, args), C, resolutions, backbone=backbone)
        for level, p in enumerate(planes):
            if codec.mix_images:
                codec.init_mixer(level, p)
        history = train_probe(codec, lambda: code_all(codec, planes, C), args, args.steps, {"arm": arm},
                              time.perf_counter())
        codec.eval()
        codec.update(force=True)
        sent = codec.transmitted_sizes()
        results.append({"arm": arm, "transmitted_bytes": sent, "history": history})
        print(json.dumps({"arm": arm, "transmitted_bytes": sent}), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"args": dataclasses.asdict(args), "variance_ceilings": ceilings,
                                              "results": results}, indent=1))


if __name__ == "__main__":
    main(tyro.cli(Args))
