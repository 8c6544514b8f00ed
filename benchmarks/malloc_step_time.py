"""Time of a full joint-training step with glibc's default allocator settings against
``nerfcodec_ns.malloc.tune_malloc`` (freed memory kept in the heap), in the same run.

Each measurement is a fresh child process (glibc settings are per process), alternating the two
modes; the child builds the bench's codec trainer on a base field, runs ``--warmup`` untimed joint
steps and times ``--steps`` more, and reports seconds per step, kernel (system) seconds and minor
page faults per step, and the peak RSS.

    python benchmarks/malloc_step_time.py --base RUN/config.yml --out docs/bench/malloc_step_time.json
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import tyro


@dataclass
class Args:
    base: Path
    """config.yml of a base field run (as ``nerfcodec bench --base``)."""
    steps: int = 4
    """Timed joint steps per child."""
    warmup: int = 2
    """Untimed joint steps first (the first builds the mixer and tables)."""
    repeats: int = 2
    """Children per mode, alternating."""
    mix_images: int = 3
    """Channel mixing of the codec (``CodecConfig.mix_images``)."""
    latent_gain: float = 2.0
    """Latent quantization gain (``CodecConfig.latent_gain``)."""
    out: Path = Path("docs/bench/malloc_step_time.json")
    """Where to write the results."""
    child: Optional[str] = None
    """Internal: run one measurement in this mode ("default" or "tuned")."""


def measure(args: Args) -> dict:
    import torch

    from nerfcodec_ns.bench.bench import BenchConfig, codec_trainer, load_base, train_step
    from nerfcodec_ns.malloc import tune_malloc

    base_cfg, base_state, _ = load_base(args.base)
    cfg = BenchConfig(data=Path(base_cfg.pipeline.datamanager.data), warmup_steps=0, joint_steps=args.warmup + args.steps,
                      mix_images=args.mix_images, latent_gain=args.latent_gain)
    trainer = codec_trainer(cfg, base_cfg, base_state, 1e-5)
    assert trainer.pipeline.model.stage_at(0) == 2, "the timed steps must be joint steps"
    for s in range(args.warmup):
        train_step(trainer, s)
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for s in range(args.warmup, args.warmup + args.steps):
        train_step(trainer, s)
    dt, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
    return {"mode": args.child, "tuned": tune_malloc(), "threads": torch.get_num_threads(),
            "s_per_step": round(dt / args.steps, 3), "sys_s_per_step": round((r1.ru_stime - r0.ru_stime) / args.steps, 3),
            "minor_faults_per_step": round((r1.ru_minflt - r0.ru_minflt) / args.steps),
            "peak_rss_bytes": r1.ru_maxrss * 1024}


def main(args: Args) -> dict:
    import torch

    runs = []
    for _ in range(args.repeats):
        for mode in ("default", "tuned"):
            env = dict(os.environ, NERFCODEC_MALLOC=mode)
            cmd = [sys.executable, __file__, "--base", str(args.base), "--steps", str(args.steps), "--warmup",
                   str(args.warmup), "--mix-images", str(args.mix_images), "--latent-gain", str(args.latent_gain),
                   "--child", mode]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if out.returncode != 0:
                sys.exit(f"malloc_step_time: the {mode} child failed:\n{out.stderr[-2000:]}")
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(runs[-1], flush=True)
    mean = {m: sum(r["s_per_step"] for r in runs if r["mode"] == m) / args.repeats for m in ("default", "tuned")}
    result = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.processor() or 'cpu'}, torch {torch.__version__}",
              "base": str(args.base), "mix_images": args.mix_images, "latent_gain": args.latent_gain,
              "steps": args.steps, "runs": runs, "mean_s_per_step": {k: round(v, 3) for k, v in mean.items()},
              "speedup": round(mean["default"] / mean["tuned"], 2)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"joint step: {mean['default']:.2f} s default, {mean['tuned']:.2f} s tuned: {result['speedup']:.2f}x")
    return result


if __name__ == "__main__":
    a = tyro.cli(Args)
    if a.child:
        print(json.dumps(measure(a)), flush=True)
    else:
        main(a)
