"""Trace of `ns-train nerfcodec` on a real capture, step by step: seconds per step, samples per ray,
occupied grid fraction and training PSNR (what decides the step time of an unbounded scene).

    OMP_NUM_THREADS=2 python benchmarks/real_step_trace.py --data ../shared/data/real/llff_fern --steps 120 \
        --set '{"render_step_size": 0.027, "grid_resolution": 64, "cone_angle": 0.015625}'

The method is set up as `ns-train nerfcodec --data DATA nerfstudio-data --eval-mode interval` would
(``--set``: model settings to change, as JSON), and stepped with the Trainer's own step.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import tyro


@dataclass
class Args:
    data: Path = Path("../shared/data/real/llff_fern")
    """A nerfstudio-format capture."""
    steps: int = 120
    """Training steps to run."""
    every: int = 8
    """Print (and keep) every this many steps, and the last two."""
    set: str = "{}"
    """JSON object of model settings (NerfcodecModelConfig fields) to change."""
    out: Optional[Path] = None
    """Also write the trace as JSON here (empty: print only)."""


def main(args: Args) -> list:
    import torch
    from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig

    from trainer_step import cpu_trainer, train_step

    torch.manual_seed(0)
    trainer = cpu_trainer("nerfcodec", args.data, Path(tempfile.mkdtemp(prefix="real_step_trace_")),
                          dataparser=NerfstudioDataParserConfig(eval_mode="interval"),
                          model_settings=json.loads(args.set))
    model = trainer.pipeline.model
    print(f"aabb {model.scene_box.aabb.tolist()} step {model.sampler.step_size:.4g} levels {model.sampler.levels} "
          f"grid {model.sampler.grid_resolution} cone {model.sampler.cone_angle:.4g} "
          f"contraction {model.field.spec.contraction}", flush=True)
    trace = []
    for step in range(args.steps):
        t0 = time.perf_counter()
        _, _, metrics = train_step(trainer, step)
        if step % args.every == 0 or step >= args.steps - 2:
            row = {"step": step, "s": round(time.perf_counter() - t0, 3),
                   "samples_per_ray": round(float(metrics["samples_per_ray"]), 1),
                   "occupied_fraction": round(float(metrics["occupied_fraction"]), 4),
                   "train_psnr": round(float(metrics["psnr"]), 2)}
            trace.append(row)
            print(" ".join(f"{k} {v}" for k, v in row.items()), flush=True)
    if args.out is not None:
        args.out.write_text(json.dumps({"data": str(args.data), "set": json.loads(args.set), "trace": trace}, indent=1))
    return trace


if __name__ == "__main__":
    main(tyro.cli(Args))
