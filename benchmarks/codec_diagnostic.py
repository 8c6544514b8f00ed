"""Diagnostic of the codec warm-up on the lego_200 base field: per-level reconstruction error of the
planes after N warm-up steps, and the PSNR of one val view rendered with each level decoded.

    .venv/bin/python benchmarks/codec_diagnostic.py 150
"""
import sys, copy, tempfile, torch
sys.path.insert(0, "benchmarks")
from pathlib import Path
import codec_rd as R
from nerfstudio.engine.callbacks import TrainingCallbackLocation as Loc
from nerfstudio.engine.optimizers import AdamOptimizerConfig
from nerfcodec_ns.codec import CodecConfig
from nerfcodec_ns.metrics import psnr
cfgp = R._base_config(Path("outputs/quality_cpu"))
base_cfg, state, _ = R._load_base(cfgp)
cfg = copy.deepcopy(base_cfg)
m = cfg.pipeline.model
m.codec_enabled = True; m.codec = CodecConfig(); m.codec_field_steps = 0; m.codec_warmup_steps = 10**6; m.occ_warmup_steps = 0
for k, lr in (("codec", 1e-3), ("codec_heads", 3e-3)):
    cfg.optimizers[k] = {"optimizer": AdamOptimizerConfig(lr=lr, eps=1e-15), "scheduler": None}
cfg.optimizers["planes"] = {"optimizer": AdamOptimizerConfig(lr=2e-3, eps=1e-15), "scheduler": None}
cfg.optimizers["fields"] = {"optimizer": AdamOptimizerConfig(lr=5e-4, eps=1e-15), "scheduler": None}
cfg.output_dir = Path(tempfile.mkdtemp()); cfg.vis = "tensorboard"; cfg.set_timestamp()
tr = cfg.setup(local_rank=0, world_size=1); tr.setup()
model = tr.pipeline.model; R.load_field(model, state)
for step in range(int(sys.argv[1])):
    tr.pipeline.train()
    for cb in tr.callbacks: cb.run_callback_at_location(step, location=Loc.BEFORE_TRAIN_ITERATION)
    _, ld, _ = tr.train_iteration(step)
    if step % 50 == 0: print(step, {k: round(float(v), 5) for k, v in ld.items()}, flush=True)
model.eval()
raw = [p.detach() for p in model.field.plane_list()]
with torch.no_grad():
    dec = [o.x_hat for o in model.code_planes()]
for l, (x, xh) in enumerate(zip(raw, dec)):
    err = (xh - x).pow(2).mean(dim=(0, 2, 3)).sqrt()
    sd = x.std(dim=(0, 2, 3))
    rng = x.amax(dim=(0, 2, 3)) - x.amin(dim=(0, 2, 3))
    print(f"level {l}: rel err (rms err / std) per channel median {float((err / sd).median()):.3f} max {float((err / sd).max()):.3f}; rms err / range median {float((err / rng).median()):.4f}")
ds = tr.pipeline.datamanager.eval_dataset
cam = ds.cameras[0:1]; gt = ds.get_image_float32(0)[..., :3]
def render(planes):
    model.render_planes = lambda: planes
    with torch.no_grad():
        return float(psnr(model.get_outputs_for_camera(cam)["rgb"].clamp(0, 1), gt))
print("raw", render(raw), "all decoded", render(dec))
for l in range(3):
    mix = list(raw); mix[l] = dec[l]
    print(f"only level {l} decoded: {render(mix):.2f} dB")
