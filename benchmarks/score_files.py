"""Score scene files as `nerfcodec bench` scores its points: decode each file, render the same evenly
spaced val images of the base run's data set, report bytes, PSNR and SSIM.

For files a bench run wrote but did not get to report (a run stopped early), or files made elsewhere:

    python benchmarks/score_files.py --base outputs/s7/b96_frozen/field/base/nerfcodec/run/config.yml \
        --files outputs/s9/steps_l1e-5/points/*.nfc --eval-images 20 --out docs/bench/scores.json
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Tuple

import tyro


@dataclass
class Args:
    base: Path
    """config.yml of the run whose data set (val split) the files are scored on."""
    files: Tuple[Path, ...]
    """Scene files to score."""
    eval_images: int = 20
    """Val images, evenly spaced (0: all), as `nerfcodec bench --eval-images`."""
    out: Path = Path("")
    """Write the scores as JSON here (empty: print only)."""


def main(args: Args) -> list:
    from nerfcodec_ns.bench.bench import eval_indices, evaluate, load_base, reference_pipeline
    from nerfcodec_ns.scenefile.decode import build_model, decode_file

    base_cfg, base_state, _ = load_base(args.base)
    pipeline = reference_pipeline(base_cfg, base_state)
    dataset = pipeline.datamanager.eval_dataset
    indices = eval_indices(len(dataset), args.eval_images)
    rows = []
    for path in args.files:
        model = build_model(decode_file(path))
        model._lpips = pipeline.model._lpips
        row = {"file": str(path), "bytes": path.stat().st_size, **evaluate(model, dataset, indices)}
        rows.append(row)
        print(f"{path.name}: {row['bytes']:,} B, {row['psnr']:.2f} dB, SSIM {row['ssim']:.4f}", flush=True)
    if str(args.out):
        args.out.write_text(json.dumps({"base": str(args.base), "eval_images": len(indices), "scores": rows}, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main(tyro.cli(Args))
