"""Quality within a CPU budget: val PSNR of `nerfcodec` after a fixed wall-clock training time.

Sets up `ns-train nerfcodec --data <scene> blender-data` in-process (default config; learning-rate
schedules span --max-steps), trains until --minutes of wall-clock time have passed (or --max-steps),
saves a checkpoint, then evaluates PSNR/SSIM on every image of the val split.

    python benchmarks/quality_cpu.py --data ../shared/data/nerf_synthetic/lego_200 --minutes 30 \
        --out docs/bench/quality_cpu_lego200.json
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional

import tyro


@dataclass
class Args:
    data: Path = Path("../shared/data/nerf_synthetic/lego_200")
    """Blender-format scene (its val split is evaluated)."""
    minutes: float = 30.0
    """Wall-clock training budget."""
    max_steps: int = 7000
    """Step cap, and the horizon of the learning-rate schedules."""
    out: Path = Path("docs/bench/quality_cpu_lego200.json")
    """Where to write the results."""
    plane_tv_mult: float = 0.0
    """Total-variation weight on the planes (model.plane_tv_mult; 0 = the default field)."""
    run_dir: Optional[Path] = Path("outputs/quality_cpu")
    """Where to keep the run (its checkpoint is the trained field the codec benchmark starts from)."""


def main(args: Args) -> Dict:
    import torch
    from trainer_step import train_step

    from nerfcodec_ns.config import nerfcodec_trainer_config

    torch.manual_seed(0)
    cfg = nerfcodec_trainer_config(max_steps=args.max_steps)
    cfg.pipeline.datamanager.data = args.data
    cfg.pipeline.model.codec_enabled = False  # the base field (the codec benchmark starts from this run)
    cfg.pipeline.model.plane_tv_mult = args.plane_tv_mult
    cfg.output_dir = args.run_dir if args.run_dir is not None else Path(tempfile.mkdtemp(prefix="quality_runs_"))
    cfg.vis = "tensorboard"
    cfg.set_timestamp()
    cfg.save_config()
    trainer = cfg.setup(local_rank=0, world_size=1)
    trainer.setup()
    budget = args.minutes * 60.0
    t0 = time.perf_counter()
    step = 0
    log = []
    while step < args.max_steps and time.perf_counter() - t0 < budget:
        _, _, metrics = train_step(trainer, step)
        if step % 500 == 0:
            elapsed = time.perf_counter() - t0
            log.append({"step": step, "elapsed_s": round(elapsed, 1), "train_psnr": round(float(metrics["psnr"]), 2)})
            print(log[-1], flush=True)
        step += 1
    train_s = time.perf_counter() - t0
    trainer.save_checkpoint(step - 1)
    t1 = time.perf_counter()
    metrics = trainer.pipeline.get_average_eval_image_metrics(step=step, get_std=False)
    eval_s = time.perf_counter() - t1
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}, device cpu",
        "data": str(args.data),
        "split": "val",
        "num_eval_images": len(trainer.pipeline.datamanager.eval_dataset),
        "budget_minutes": args.minutes,
        "steps": step,
        "train_wall_s": round(train_s, 1),
        "eval_wall_s": round(eval_s, 1),
        "val_psnr": round(float(metrics["psnr"]), 3),
        "val_ssim": round(float(metrics["ssim"]), 4),
        "plane_tv_mult": args.plane_tv_mult,
        "run_config": str(cfg.get_base_dir() / "config.yml"),
        "train_log": log,
    }
    print(json.dumps({k: v for k, v in result.items() if k != "train_log"}, indent=2), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main(tyro.cli(Args))
