"""Codec pre-training speed on this CPU: seconds per training step for a few backbone sizes.

For each (N, M) of bmshj2018-hyperprior (ScaleHyperprior) it times `nerfcodec_ns.codec.pretrain.train_step`
(forward, rate-distortion loss, backward, clipping, both Adam steps, aux loss) on random-crop
batches of synthetic smooth images, after a few untimed warm-up steps, and reports the parameter
count and the size of the backbone file that `nerfcodec pretrain-codec` would write (float16).

    python benchmarks/pretrain_speed.py --out docs/bench/pretrain_speed.json
    python benchmarks/pretrain_speed.py --sizes 32 48 --steps 1 --warmup 1 --out /tmp/speed.json  # smoke
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import List, Tuple

import tyro


@dataclass
class Args:
    sizes: List[int] = field(default_factory=lambda: [32, 48, 48, 72, 64, 96, 96, 144, 128, 192])
    """Flat list of N M pairs, e.g. --sizes 32 48 64 96."""
    crop: int = 128
    """Crop side (multiple of 64)."""
    batch_size: int = 8
    """Crops per step."""
    warmup: int = 3
    """Untimed steps per size."""
    steps: int = 10
    """Timed steps per size."""
    threads: int = 0
    """torch threads (0: torch's default)."""
    precisions: List[str] = field(default_factory=lambda: ["float32"])
    """Training arithmetic to time for each size, in the same run (``PretrainConfig.precision``):
    float32 and/or bfloat16 (autocast on channels-last tensors)."""
    out: Path = Path("docs/bench/pretrain_speed.json")
    """Where to write the results (JSON)."""


def _synthetic_images(count: int = 6, h: int = 432, w: int = 648):
    """uint8 [3, H, W] smooth gradients plus noise (stand-ins for photos; only the speed matters)."""
    import torch

    gen = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    images = []
    for i in range(count):
        phase = torch.rand(3, generator=gen) * 6.28
        img = torch.stack([torch.sin(xx * 4 + phase[0]), torch.cos(yy * 3 + phase[1]),
                           torch.sin((xx + yy) * 2 + phase[2])])
        img = (img * 0.4 + 0.5 + 0.05 * torch.randn(img.shape, generator=gen)).clamp(0, 1)
        images.append((img * 255).round().to(torch.uint8))
    return images


def bench_size(N: int, M: int, args: Args, images, precision: str = "float32") -> dict:
    import torch

    from nerfcodec_ns.codec.pretrain import (
        CropBatches,
        PretrainConfig,
        build_model,
        make_optimizers,
        save_backbone,
        train_step,
    )

    cfg = PretrainConfig(N=N, M=M, crop=args.crop, batch_size=args.batch_size, precision=precision)
    torch.manual_seed(0)
    model = build_model(cfg.architecture, N, M)
    if precision == "bfloat16":  # as pretrain() does
        model = model.to(memory_format=torch.channels_last)
    net_opt, aux_opt = make_optimizers(model, cfg)
    batches = CropBatches(images, args.crop, args.batch_size, seed=0)
    for s in range(args.warmup):
        train_step(model, net_opt, aux_opt, batches[s], cfg)
    times = []
    for s in range(args.warmup, args.warmup + args.steps):
        x = batches[s]
        t0 = time.perf_counter()
        train_step(model, net_opt, aux_opt, x, cfg)
        times.append(time.perf_counter() - t0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "backbone.pt"
        save_backbone(model, path, cfg.architecture, N, M, meta={}, half=True)
        file_mb = path.stat().st_size / 1e6
    return {
        "N": N, "M": M, "precision": precision,
        "params": sum(p.numel() for p in model.parameters()),
        "file_mb_fp16": round(file_mb, 3),
        "s_per_step_median": statistics.median(times),
        "s_per_step_mean": statistics.fmean(times),
        "s_per_step_min": min(times),
        "timed_steps": len(times),
        "crops_per_s": args.batch_size / statistics.median(times),
    }


def main(args: Args) -> None:
    import torch
    from rich.console import Console
    from rich.table import Table

    if len(args.sizes) % 2:
        raise SystemExit("--sizes needs N M pairs")
    pairs: List[Tuple[int, int]] = list(zip(args.sizes[::2], args.sizes[1::2]))
    if args.threads:
        torch.set_num_threads(args.threads)
    images = _synthetic_images()
    console = Console()
    results = []
    for N, M in pairs:
        for precision in args.precisions:
            console.print(f"bmshj2018-hyperprior N={N} M={M} {precision} ...")
            results.append(bench_size(N, M, args, images, precision))

    table = Table(title=f"pretrain step time, crop {args.crop}, batch {args.batch_size}, "
                        f"{torch.get_num_threads()} threads")
    columns = ("N", "M", "precision", "params", "file MB (fp16)", "s/step (median)", "s/step (min)", "crops/s",
               "1000 steps")
    for col in columns:
        table.add_column(col, justify="right")
    for r in results:
        table.add_row(str(r["N"]), str(r["M"]), r["precision"], f"{r['params']:,}", f"{r['file_mb_fp16']:.2f}",
                      f"{r['s_per_step_median']:.3f}", f"{r['s_per_step_min']:.3f}",
                      f"{r['crops_per_s']:.1f}", f"{r['s_per_step_median'] * 1000 / 60:.1f} min")
    console.print(table)

    report = {
        "benchmark": "pretrain_speed", "architecture": "bmshj2018-hyperprior",
        "args": {**asdict(args), "out": str(args.out)},
        "torch": str(torch.__version__), "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "machine": platform.machine(), "processor": platform.processor(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main(tyro.cli(Args))
