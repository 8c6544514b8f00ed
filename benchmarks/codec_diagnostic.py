"""Diagnostic of the codec warm-up on the lego_200 base field: per-level reconstruction error of the
planes after N warm-up steps, and the PSNR of one val view rendered with each level decoded.

    .venv/bin/python benchmarks/codec_diagnostic.py 150
"""

import sys
from pathlib import Path

import torch

import codec_rd as R
from trainer_step import train_step

from nerfcodec_ns.bench.bench import load_base
from nerfcodec_ns.metrics import psnr

base_cfg, state, _ = load_base(R._base_config(Path("outputs/quality_cpu")))
# warm-up only (the joint stage never starts), codec lr 1e-3, head lr 3e-3, the default codec lambda
args = R.Args(codec_lr=1e-3, heads_lr=3e-3, warmup_steps=10**6)
tr = R.setup_codec_trainer(args, base_cfg, state, {}, lmbda=1e-5)
model = tr.pipeline.model
for step in range(int(sys.argv[1])):
    _, ld, _ = train_step(tr, step)
    if step % 50 == 0:
        print(step, {k: round(float(v), 5) for k, v in ld.items()}, flush=True)
model.eval()
raw = [p.detach() for p in model.field.plane_list()]
with torch.no_grad():
    dec = [o.x_hat for o in model.code_planes()]
for l, (x, xh) in enumerate(zip(raw, dec)):
    err = (xh - x).pow(2).mean(dim=(0, 2, 3)).sqrt()
    sd = x.std(dim=(0, 2, 3))
    rng = x.amax(dim=(0, 2, 3)) - x.amin(dim=(0, 2, 3))
    print(f"level {l}: rel err (rms err / std) per channel median {float((err / sd).median()):.3f} "
          f"max {float((err / sd).max()):.3f}; rms err / range median {float((err / rng).median()):.4f}")
ds = tr.pipeline.datamanager.eval_dataset
cam = ds.cameras[0:1]
gt = ds.get_image_float32(0)[..., :3]


def render(planes):
    model.render_planes = lambda: planes
    with torch.no_grad():
        return float(psnr(model.get_outputs_for_camera(cam)["rgb"].clamp(0, 1), gt))


print("raw", render(raw), "all decoded", render(dec))
for l in range(3):
    mix = list(raw)
    mix[l] = dec[l]
    print(f"only level {l} decoded: {render(mix):.2f} dB")
