"""CPU time the codec adds to one joint-training step, and how it grows with plane resolution.

For each set of plane resolutions, times the codec part of a joint step on C-channel planes: code
every level (g_a, h_a, entropy models, g_s with the 8-bit head, compensation), a loss on the
decoded planes plus the rate, backward into planes and codec, and one Adam step. The rendering
part of the step does not depend on the codec (it is the base field's step time, see
docs/foundation.md); the full joint step on lego_200 is timed by benchmarks/codec_rd.py.

    python benchmarks/codec_step_time.py --out docs/bench/codec_step_time.json
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Tuple

import tyro


@dataclass
class Args:
    resolutions: Tuple[str, ...] = ("32,64,128", "64,128,256", "128,256,512")
    """Plane resolution sets to time (comma-separated levels)."""
    channels: int = 16
    """Feature channels C."""
    weights: str = "embedded"
    """Backbone weights (the size of the backbone sets the cost)."""
    warmup: int = 2
    """Untimed steps."""
    steps: int = 5
    """Timed steps per resolution set."""
    precisions: Tuple[str, ...] = ("float32",)
    """Training arithmetic of the codec's transforms to time (``CodecConfig.train_precision``), each
    in the same run: float32 and/or bfloat16."""
    out: Path = Path("docs/bench/codec_step_time.json")
    """Where to write the results."""


def time_codec_step(resolutions, channels: int, weights: str, warmup: int, steps: int,
                    precision: str = "float32") -> Dict:
    import torch

    from nerfcodec_ns.codec.plane import PlaneCodec
    from nerfcodec_ns.codec.settings import CodecConfig

    torch.manual_seed(0)
    codec = PlaneCodec(CodecConfig(weights=weights, train_precision=precision), channels, resolutions)
    codec.train()
    planes = [torch.nn.Parameter(torch.rand(3, channels, r, r)) for r in resolutions]
    params = planes + [p for ps in codec.parameter_groups().values() for p in ps]
    opt = torch.optim.Adam(params, lr=1e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        outs = [codec(p, level) for level, p in enumerate(planes)]
        loss = sum(torch.nn.functional.mse_loss(o.x_hat, p) for o, p in zip(outs, planes))
        loss = loss + 1e-5 * sum(o.bits for o in outs) / 8000 + codec.aux_loss()
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    dt = (time.perf_counter() - t0) / steps
    texels = sum(3 * r * r for r in resolutions)
    return {"resolutions": list(resolutions), "channels": channels, "texels": texels, "precision": precision,
            "codec_s_per_step": round(dt, 3), "backbone": f"{codec.architecture} N={codec.N} M={codec.M}"}


def main(args: Args) -> Dict:
    import torch
    from rich.console import Console
    from rich.table import Table

    rows = []
    for spec in args.resolutions:
        res = tuple(int(r) for r in spec.split(","))
        for precision in args.precisions:
            rows.append(time_codec_step(res, args.channels, args.weights, args.warmup, args.steps, precision))
            print(rows[-1], flush=True)
    base = rows[0]["codec_s_per_step"]
    for r in rows:
        r["relative_to_first"] = round(r["codec_s_per_step"] / base, 2)
        same = [q for q in rows if q["resolutions"] == r["resolutions"] and q["precision"] == args.precisions[0]]
        r["relative_to_first_precision"] = round(r["codec_s_per_step"] / same[0]["codec_s_per_step"], 2)
    table = Table(title="codec part of a joint step (CPU)")
    for col in ("resolutions", "precision", "texels", "s/step", "x first", f"x {args.precisions[0]}"):
        table.add_column(col)
    for r in rows:
        table.add_row(str(r["resolutions"]), r["precision"], str(r["texels"]), f"{r['codec_s_per_step']:.3f}",
                      f"{r['relative_to_first']:.2f}", f"{r['relative_to_first_precision']:.2f}")
    Console().print(table)
    result = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
              f"threads {torch.get_num_threads()}, device cpu", "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main(tyro.cli(Args))
