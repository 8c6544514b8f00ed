"""Training throughput on CPU: `nerfcodec` (base field, codec off) vs stock `tensorf`, in one run.

Both methods are set up exactly as `ns-train <method> --data <scene> blender-data` would, with the
same rays per batch, and timed with the same loop as nerfstudio's Trainer (before-iteration
callbacks + `train_iteration` + after-iteration callbacks; evaluation and logging excluded).

Stock tensorf builds LPIPS (AlexNet weights from the internet) while constructing the model; this
machine is offline, so for tensorf only, a randomly initialised AlexNet file is put in a temporary
TORCH_HOME. It only lets the model be built; LPIPS is not computed during training.

    python benchmarks/train_throughput.py --data ../shared/data/nerf_synthetic/lego_100 \
        --out docs/bench/train_throughput.json
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List

import tyro


@dataclass
class Args:
    data: Path = Path("../shared/data/nerf_synthetic/lego_100")
    """Blender-format scene."""
    rays: int = 4096
    """Rays per batch for both methods."""
    tensorf_warmup: int = 2
    """Untimed tensorf steps."""
    tensorf_steps: int = 20
    """Timed tensorf steps."""
    nerfcodec_steps: int = 1000
    """nerfcodec steps, all timed (reported as windows, so warm-up of the occupancy grid shows)."""
    window: int = 100
    """nerfcodec steps per reported window."""
    out: Path = Path("docs/bench/train_throughput.json")
    """Where to write the results."""
    only: str = ""
    """Internal: time only this method in this process ("tensorf" or "nerfcodec")."""




def _setup_trainer(method: str, data: Path, rays: int, out_dir: Path):
    from trainer_step import cpu_trainer

    # nerfcodec: the base field (codec off), what is compared with tensorf
    settings = {"codec_enabled": False} if method == "nerfcodec" else {}
    return cpu_trainer(method, data, out_dir, rays=rays, model_settings=settings)


def _time_steps(trainer, start: int, n: int) -> float:
    from trainer_step import train_step

    t0 = time.perf_counter()
    for step in range(start, start + n):
        train_step(trainer, step)
    return time.perf_counter() - t0


def bench_tensorf(args: Args, out_dir: Path) -> Dict:
    from trainer_step import fake_alexnet_home

    os.environ["TORCH_HOME"] = fake_alexnet_home()
    trainer = _setup_trainer("tensorf", args.data, args.rays, out_dir)
    _time_steps(trainer, 0, args.tensorf_warmup)
    dt = _time_steps(trainer, args.tensorf_warmup, args.tensorf_steps)
    res = {"steps_timed": args.tensorf_steps, "s_per_step": dt / args.tensorf_steps,
           "rays_per_s": args.rays * args.tensorf_steps / dt}
    print(f"tensorf: {res['s_per_step']:.3f} s/step, {res['rays_per_s']:.0f} rays/s", flush=True)
    return res


def bench_nerfcodec(args: Args, out_dir: Path) -> Dict:
    trainer = _setup_trainer("nerfcodec", args.data, args.rays, out_dir)
    windows: List[Dict] = []
    total = 0.0
    for start in range(0, args.nerfcodec_steps, args.window):
        dt = _time_steps(trainer, start, args.window)
        total += dt
        windows.append({"steps": f"{start}-{start + args.window - 1}", "s_per_step": dt / args.window,
                        "rays_per_s": args.rays * args.window / dt})
        print(f"nerfcodec steps {windows[-1]['steps']}: {windows[-1]['s_per_step']:.3f} s/step, "
              f"{windows[-1]['rays_per_s']:.0f} rays/s", flush=True)
    return {"windows": windows, "all_steps_rays_per_s": args.rays * args.nerfcodec_steps / total,
            "steady_rays_per_s": windows[-1]["rays_per_s"]}


def main(args: Args) -> Dict:
    """Each method is timed in its own fresh process (no leftover workers or memory from the other)."""
    import subprocess
    import sys

    import torch

    if args.only:
        torch.manual_seed(0)
        out_dir = Path(tempfile.mkdtemp(prefix="bench_runs_"))
        fn = {"tensorf": bench_tensorf, "nerfcodec": bench_nerfcodec}[args.only]
        args.out.write_text(json.dumps(fn(args, out_dir)) + "\n")
        os._exit(0)  # skip nerfstudio's noisy worker shutdown

    result: Dict = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}, device cpu",
        "data": str(args.data),
        "rays_per_batch": args.rays,
    }
    for method in ("tensorf", "nerfcodec"):
        part = Path(tempfile.mkdtemp()) / f"{method}.json"
        cmd = [sys.executable, __file__, "--only", method, "--out", str(part), "--data", str(args.data),
               "--rays", str(args.rays), "--tensorf-warmup", str(args.tensorf_warmup),
               "--tensorf-steps", str(args.tensorf_steps), "--nerfcodec-steps", str(args.nerfcodec_steps),
               "--window", str(args.window)]
        subprocess.run(cmd, check=True)
        result[method] = json.loads(part.read_text())
    tensorf = result["tensorf"]
    result["ratio_all_steps"] = result["nerfcodec"]["all_steps_rays_per_s"] / tensorf["rays_per_s"]
    result["ratio_steady"] = result["nerfcodec"]["steady_rays_per_s"] / tensorf["rays_per_s"]
    print(f"ratio nerfcodec/tensorf: {result['ratio_all_steps']:.1f}x over all {args.nerfcodec_steps} steps, "
          f"{result['ratio_steady']:.1f}x in the last window", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main(tyro.cli(Args))
