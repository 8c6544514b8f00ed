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
from typing import Optional, Tuple

import tyro


@dataclass
class Args:
    base: Path
    """config.yml of the run whose data set (val split) the files are scored on."""
    files: Tuple[Path, ...]
    """Scene files to score."""
    eval_images: int = 20
    """Val images, evenly spaced (0: all), as `nerfcodec bench --eval-images`."""
    out: Optional[Path] = None
    """Write the scores as JSON here (empty: print only)."""


def val_images(base: Path, eval_images: int):
    """The base run's reference pipeline, its val dataset and the ``eval_images`` evenly spaced indices."""
    from nerfcodec_ns.bench.bench import eval_indices, load_base, reference_pipeline

    base_cfg, base_state, _ = load_base(base)
    pipeline = reference_pipeline(base_cfg, base_state)
    dataset = pipeline.datamanager.eval_dataset
    return pipeline, dataset, eval_indices(len(dataset), eval_images)


def decoded_model(path: Path, pipeline):
    """The CPU model of a decoded scene file, with the reference pipeline's LPIPS."""
    from nerfcodec_ns.scenefile.decode import build_model, decode_file

    model = build_model(decode_file(path))
    model._lpips = pipeline.model._lpips
    return model


def main(args: Args) -> list:
    from nerfcodec_ns.bench.bench import evaluate

    pipeline, dataset, indices = val_images(args.base, args.eval_images)
    rows = []
    for path in args.files:
        model = decoded_model(path, pipeline)
        row = {"file": str(path), "bytes": path.stat().st_size, **evaluate(model, dataset, indices)}
        rows.append(row)
        print(f"{path.name}: {row['bytes']:,} B, {row['psnr']:.2f} dB, SSIM {row['ssim']:.4f}", flush=True)
    if args.out is not None:
        args.out.write_text(json.dumps({"base": str(args.base), "eval_images": len(indices), "scores": rows}, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main(tyro.cli(Args))
