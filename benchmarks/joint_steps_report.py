"""Rate-distortion against joint steps and against joint-stage wall time, for several `nerfcodec bench`
runs on one base field (e.g. ``--codec-pass-every`` 1 and 4): a Markdown table on stdout and a plot.

    python benchmarks/joint_steps_report.py --runs K=1:outputs/s19/k1/results.json K=4:outputs/s19/k4/results.json \\
        --logs outputs/s19/k1.log outputs/s19/k4.log --plot docs/joint_steps_lego200.png

Each run's NeRFCodec points scored along one joint stage (``--score-at``, families ``nerfcodec`` and
``nerfcodec-j<k>``) become one curve. Time is the joint-stage training time up to each point:
``train_s`` of the point, or, when the run's bench log is given, the sum of the elapsed seconds of its
training segments as the log's progress lines print them (bench runs before the ``train_s`` fix
counted the scoring of earlier points in ``train_s``; the log never does).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import tyro


@dataclass
class Args:
    runs: Tuple[str, ...]
    """LABEL:results.json, one per run (same base field and val images)."""
    logs: Tuple[Path, ...] = ()
    """The runs' bench logs, in the order of --runs (optional; see the module docstring)."""
    plot: Optional[Path] = None
    """Where to write the plot (PNG): PSNR against joint steps, and against joint-stage seconds."""
    title: str = "lego_200: NeRFCodec against joint training"
    """Plot title."""


def segment_seconds(log_text: str, name: str) -> Dict[int, float]:
    """Joint steps -> cumulative training seconds of point ``name``'s joint stage, from the last progress
    line of each segment (``<name> (to K joint steps) N/N ... (S s)`` and ``<name> N/N ... (S s)``)."""
    ends: List[Tuple[Optional[int], int, float]] = []
    pattern = re.compile(rf"^{re.escape(name)}(?: \(to (\d+) joint steps\))? (\d+)/(\d+) .*\((\d+) s\)\s*$")
    for line in log_text.splitlines():
        m = pattern.match(line.strip())
        if m and m.group(2) == m.group(3):  # the segment's last line
            ends.append((int(m.group(1)) if m.group(1) else None, int(m.group(3)), float(m.group(4))))
    out, total_s, total_steps = {}, 0.0, 0
    for k, n, s in ends:
        total_s, total_steps = total_s + s, total_steps + n
        out[k if k is not None else total_steps] = total_s
    return out


def curve(result: dict, log_text: Optional[str]) -> List[dict]:
    """The points of the run's one fixed-lambda joint stage, by joint steps."""
    pts = [p for p in result["points"] if p["family"] == "nerfcodec" or p["family"].startswith("nerfcodec-j")]
    base = {p["name"].rsplit("-j", 1)[0] if p["family"] != "nerfcodec" else p["name"] for p in pts}
    if len(base) != 1:
        raise SystemExit(f"expected the points of one lambda, got {sorted(base)}")
    seconds = segment_seconds(log_text, base.pop()) if log_text else {}
    rows = []
    for p in sorted(pts, key=lambda p: p["joint_steps"]):
        t = seconds.get(p["joint_steps"], p["train_s"])
        rows.append({"joint_steps": p["joint_steps"], "seconds": t, "s_per_step": t / p["joint_steps"],
                     "bytes": p["bytes"], "psnr": p["psnr"], "ssim": p["ssim"], "warmup_s": p.get("warmup_s")})
    return rows


def main(args: Args) -> None:
    if args.logs and len(args.logs) != len(args.runs):
        raise SystemExit("--logs needs one log per --runs entry")
    curves = {}
    for i, spec in enumerate(args.runs):
        label, _, path = spec.partition(":")
        result = json.loads(Path(path).read_text())
        curves[label] = (result, curve(result, args.logs[i].read_text() if args.logs else None))
    print("| run | joint steps | joint-stage time (s) | s per joint step | file bytes | decoded PSNR (dB) | SSIM |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, (result, rows) in curves.items():
        for r in rows:
            print(f"| {label} | {r['joint_steps']} | {r['seconds']:.0f} | {r['s_per_step']:.3f} | {r['bytes']:,} | "
                  f"{r['psnr']:.2f} | {r['ssim']:.4f} |")
    ref = next(iter(curves.values()))[0].get("reference", {})
    if ref:
        print(f"\nuncompressed field: {ref.get('psnr', float('nan')):.2f} dB")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
        for label, (_, rows) in curves.items():
            a.plot([r["joint_steps"] for r in rows], [r["psnr"] for r in rows], "o-", label=label)
            b.plot([r["seconds"] / 60 for r in rows], [r["psnr"] for r in rows], "o-", label=label)
            for r in rows:
                b.annotate(f"{r['bytes'] / 1000:.0f} kB", (r["seconds"] / 60, r["psnr"]), fontsize=7,
                           textcoords="offset points", xytext=(4, -10))
        if ref.get("psnr"):
            for ax in (a, b):
                ax.axhline(ref["psnr"], color="gray", ls="--", lw=1, label="uncompressed field")
        a.set(xlabel="joint steps", ylabel="decoded PSNR (dB)", xscale="log")
        b.set(xlabel="joint-stage training time (min)", ylabel="decoded PSNR (dB)")
        for ax in (a, b):
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.suptitle(args.title)
        fig.tight_layout()
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.plot, dpi=120)
        print(f"\nplot: {args.plot}")


if __name__ == "__main__":
    main(tyro.cli(Args))
