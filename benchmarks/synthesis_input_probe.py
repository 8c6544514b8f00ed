"""Probe: what should the synthesis transform see of the latent in training? The codec warm-up task
(feature reconstruction of a base field's frozen planes, no rendering) trained with
``CodecConfig.synthesis_input`` = "noise" (CompressAI's additive-noise proxy) or "round" (the rounded
latent, straight-through; the rate keeps the noise), each from the same start.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/synthesis_input_probe.py \
        --ckpt outputs/s16/e2e/lego200/nerfcodec/run/nerfstudio_models/step-000006999.ckpt --steps 300

Prints and writes, per arm and every 50 steps, the normalised reconstruction MSE of the *rounded*
decode (eval mode: what a scene file decodes to; per level, 1.0 = predicting the channel means) and
the estimated latent kB.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import List, Tuple

import torch
import tyro

from group_probe import code_all, train_probe
from nerfcodec_ns.codec.backbone import load_backbone
from nerfcodec_ns.codec.plane import PlaneCodec
from nerfcodec_ns.codec.settings import CodecConfig


@dataclasses.dataclass
class Args:
    ckpt: Path
    """nerfstudio checkpoint of the base field (its planes are coded)."""
    arms: Tuple[str, ...] = ("noise", "round")
    steps: int = 300
    lmbda: float = 1e-5
    """Rate weight per kB of estimated latent size (the ns-train default)."""
    mix_images: int = 2
    latent_gain: float = 1.0
    clip_sigmas: float = 4.0
    lr: float = 1e-3
    heads_lr: float = 3e-3
    weights: str = "embedded"
    out: str = ""
    """Optional JSON output."""


def planes_of(ckpt: Path) -> List[torch.Tensor]:
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["pipeline"]
    keys = sorted(k for k in state if k.startswith("_model.field.planes."))
    return [state[k].contiguous() for k in keys]


def main(args: Args) -> None:
    planes = planes_of(args.ckpt)
    C, resolutions = planes[0].shape[1], [p.shape[-1] for p in planes]
    backbone = load_backbone(CodecConfig(weights=args.weights))
    results = []
    for arm in args.arms:
        torch.manual_seed(0)
        cfg = CodecConfig(weights=args.weights, clip_sigmas=args.clip_sigmas, mix_images=args.mix_images,
                          latent_gain=args.latent_gain, synthesis_input=arm)  # type: ignore[arg-type]
        codec = PlaneCodec(cfg, C, resolutions, backbone=backbone)
        history = train_probe(codec, lambda: code_all(codec, planes, C), args, args.steps,
                              {"synthesis_input": arm, "bfloat16": codec.uses_bfloat16()}, time.perf_counter())
        results.append({"synthesis_input": arm, "history": history})
    if args.out:
        Path(args.out).write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                              "torch_threads": torch.get_num_threads(),
                                              "results": results}, indent=1))


if __name__ == "__main__":
    main(tyro.cli(Args))
