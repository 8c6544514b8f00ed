"""Time per training step on real captures (issue 13): `nerfcodec` (field stage, its automatic scene
contraction) against stock `nerfacto`, in one run, each method and scene in a fresh process.

Scenes: ../shared/data/real/llff_fern and ethiopian_head (nerfstudio-data, `--eval-mode interval`),
and the project's procedural unbounded capture (`nerfcodec_ns.scene.write_capture_scene`, generated
into a temporary folder). Both methods are set up as `ns-train <method> --data SCENE nerfstudio-data
--eval-mode interval` would, with the same rays per batch, and timed with the Trainer's own step
(callbacks + `train_iteration`; no evaluation or logging). Stock nerfacto builds LPIPS (AlexNet from
the internet) at start-up; offline, it gets a random AlexNet file in a temporary TORCH_HOME (LPIPS is
not used in training).

    python benchmarks/real_step_time.py --out docs/bench/real_step_time.json
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Tuple

import tyro

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "real"


@dataclass
class Args:
    scenes: Tuple[str, ...] = ("llff_fern", "ethiopian_head", "procedural")
    """Scenes under ../shared/data/real, or "procedural" (the generated unbounded capture)."""
    methods: Tuple[str, ...] = ("nerfcodec", "nerfacto")
    """Methods to time."""
    rays: int = 4096
    """Rays per batch for every method."""
    steps: int = 60
    """Timed steps per method and scene, after the warm-up."""
    warmup: int = 64
    """Untimed nerfcodec steps first (its occupancy grid prunes during its first 64 steps)."""
    nerfacto_warmup: int = 4
    """Untimed nerfacto steps first."""
    nerfacto_steps: int = 20
    """Timed nerfacto steps (slower per step on a CPU)."""
    window: int = 20
    """Steps per reported window."""
    procedural_resolution: int = 128
    """Image side (px) of the procedural capture."""
    out: Path = Path("docs/bench/real_step_time.json")
    """Where to write the results."""
    only: List[str] = field(default_factory=list)
    """Internal: time only this (method, scene folder) in this process."""




def time_one(method: str, data: Path, args: Args) -> Dict:
    import torch
    from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig

    from trainer_step import cpu_trainer, fake_alexnet_home, train_step

    torch.manual_seed(0)
    if method != "nerfcodec":
        os.environ["TORCH_HOME"] = fake_alexnet_home()
    trainer = cpu_trainer(method, data, Path(tempfile.mkdtemp(prefix="real_step_time_")), rays=args.rays,
                          dataparser=NerfstudioDataParserConfig(eval_mode="interval"))
    warmup, steps = (args.warmup, args.steps) if method == "nerfcodec" else (args.nerfacto_warmup, args.nerfacto_steps)
    for step in range(warmup):
        train_step(trainer, step)
    windows = []
    for start in range(warmup, warmup + steps, args.window):
        t0 = time.perf_counter()
        for step in range(start, start + args.window):
            train_step(trainer, step)
        windows.append((time.perf_counter() - t0) / args.window)
    out = {"method": method, "data": str(data), "s_per_step_windows": [round(w, 4) for w in windows],
           "s_per_step": round(statistics.median(windows), 4)}
    model = trainer.pipeline.model
    if method == "nerfcodec":
        out["contraction"] = model.field.spec.contraction
        out["grid_levels"] = model.sampler.levels
        out["occupied_fraction"] = round(float(model.sampler.level_binaries.float().mean()), 4)
        out["stage"] = int(model.codec_stage)
    return out


def main(args: Args) -> Dict:
    import torch

    if args.only:
        method, data, part = args.only
        Path(part).write_text(json.dumps(time_one(method, Path(data), args)) + "\n")
        os._exit(0)  # skip nerfstudio's worker shutdown
    scenes = {}
    for name in args.scenes:
        if name == "procedural":
            from nerfcodec_ns.scene import SceneSpec, write_capture_scene

            folder = Path(tempfile.mkdtemp(prefix="capture_")) / "procedural"
            write_capture_scene(folder, SceneSpec(seed=1, resolution=args.procedural_resolution, num_train=40, num_val=8))
            scenes[name] = folder
        elif (SHARED / name).is_dir():
            scenes[name] = SHARED / name
        else:
            print(f"skipping {name}: {SHARED / name} not found", flush=True)
    result: Dict = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, device cpu",
                    "threads": os.environ.get("OMP_NUM_THREADS", "default"), "rays_per_batch": args.rays,
                    "warmup_steps": {"nerfcodec": args.warmup, "nerfacto": args.nerfacto_warmup},
                    "timed_steps": {"nerfcodec": args.steps, "nerfacto": args.nerfacto_steps}, "runs": {}}
    for name, folder in scenes.items():
        for method in args.methods:
            part = Path(tempfile.mkdtemp()) / "part.json"
            cmd = [sys.executable, __file__, "--only", method, str(folder), str(part), "--rays", str(args.rays),
                   "--steps", str(args.steps), "--warmup", str(args.warmup), "--window", str(args.window),
                   "--nerfacto-warmup", str(args.nerfacto_warmup), "--nerfacto-steps", str(args.nerfacto_steps)]
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True)
            run = json.loads(part.read_text())
            run["wall_s"] = round(time.perf_counter() - t0, 1)
            result["runs"][f"{method}/{name}"] = run
            print(f"{method} on {name}: {run['s_per_step']:.3f} s/step", flush=True)
        if all(f"{m}/{name}" in result["runs"] for m in ("nerfcodec", "nerfacto")):
            r = result["runs"]
            result.setdefault("nerfacto_over_nerfcodec", {})[name] = round(
                r[f"nerfacto/{name}"]["s_per_step"] / r[f"nerfcodec/{name}"]["s_per_step"], 2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main(tyro.cli(Args))
