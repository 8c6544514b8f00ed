"""Add baseline points to a finished `nerfcodec bench` run (same field, same val images), e.g. lower
image-codec qualities so that the curves overlap NeRFCodec's PSNR range; rewrites results.json.

    python benchmarks/bench_extra_points.py outputs/bench_lego200/results.json --coders jpeg-q5 webp-q5 avif-q15 avif-q5
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Tuple

import tyro

from nerfcodec_ns.atomic import write_atomic
from nerfcodec_ns.bench.baselines import ImageCoder
from nerfcodec_ns.bench.bench import bd_table, eval_indices, load_base, reference_pipeline, run_baselines


@dataclass
class Args:
    results: tyro.conf.Positional[Path]
    """results.json written by `nerfcodec bench`."""
    coders: Tuple[str, ...] = ("jpeg-q5", "webp-q5", "avif-q15", "avif-q5")
    """Image-coder points to add, as FORMAT-qQUALITY."""


def main(args: Args) -> None:
    result = json.loads(args.results.read_text())
    have = {p["name"] for p in result["points"]}
    coders = []
    for name in args.coders:
        fmt, q = name.split("-q")
        if name not in have:
            coders.append(ImageCoder(fmt.upper(), int(q)))
    base_cfg, base_state, _ = load_base(Path(result["base_config"]))
    pipeline = reference_pipeline(base_cfg, base_state)
    indices = eval_indices(len(pipeline.datamanager.eval_dataset), result["num_eval_images"])
    folder = Path(result["points"][0]["file"]).parent
    result["points"] += run_baselines(coders, pipeline, indices, folder)
    result["bd"] = bd_table(result["points"])
    result.setdefault("added_later", []).extend(c.name for c in coders)
    write_atomic(args.results, (json.dumps(result, indent=2) + "\n").encode(), overwrite=True)


if __name__ == "__main__":
    main(tyro.cli(Args))
