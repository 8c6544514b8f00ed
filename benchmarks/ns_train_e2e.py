"""The default ``ns-train nerfcodec`` run, end to end: export its scene file, decode it, and score the
decoded scene against the same field uncompressed (its checkpoint at the end of the field stage), on
the same evenly spaced val images, as ``nerfcodec bench`` scores.

The run itself (its wall time is measured around ``ns-train``, and passed in here):

    OMP_NUM_THREADS=2 ns-train nerfcodec --data ../shared/data/nerf_synthetic/lego_200 \
        --output-dir outputs/s16/e2e --experiment-name lego200 --timestamp run \
        --steps-per-save 6999 --save-only-latest-checkpoint False --vis tensorboard blender-data
    OMP_NUM_THREADS=2 python benchmarks/ns_train_e2e.py \
        --config outputs/s16/e2e/lego200/nerfcodec/run/config.yml --train-wall-s 3600 \
        --out docs/bench/ns_train_e2e_lego200.json

(``--steps-per-save 6999`` keeps the field-stage checkpoint beside the final one; it changes nothing
in training.)
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import tyro


@dataclass
class Args:
    config: Path
    """config.yml of the finished ``ns-train nerfcodec`` run."""
    train_wall_s: Optional[float] = None
    """Wall time of the ``ns-train`` command (s), measured around it; recorded as given."""
    eval_images: int = 20
    """Val images, evenly spaced (0: all)."""
    scene_file: Optional[Path] = None
    """Where to export the scene file (default: next to the config, ``scene.nfc``)."""
    out: Optional[Path] = None
    """JSON results."""


def main(args: Args) -> dict:
    import torch
    import yaml

    from nerfcodec_ns.bench.bench import evaluate, eval_indices, reference_pipeline
    from nerfcodec_ns.scenefile.decode import build_model, decode_file

    cfg = yaml.load(args.config.read_text(), Loader=yaml.Loader)
    m = cfg.pipeline.model
    field_steps = int(m.codec_field_steps)
    models = args.config.parent / "nerfstudio_models"
    field_ckpt = models / f"step-{field_steps - 1:09d}.ckpt"
    final_ckpt = sorted(models.glob("step-*.ckpt"))[-1]
    if not field_ckpt.is_file() or field_ckpt == final_ckpt:
        sys.exit(f"error: {field_ckpt} (the field-stage checkpoint) is missing; train with --steps-per-save {field_steps - 1}")

    scene = args.scene_file or args.config.parent / "scene.nfc"
    bindir = Path(sys.executable).parent
    t0 = time.perf_counter()
    subprocess.run([str(bindir / "ns-export"), "nerfcodec-bitstream", "--load-config", str(args.config),
                    "--output-path", str(scene)], check=True)
    export_s = time.perf_counter() - t0

    # the field uncompressed, at the end of its stage (grid derived from it, as every derived-grid file has it)
    state = torch.load(field_ckpt, map_location="cpu", weights_only=False)
    ref = reference_pipeline(cfg, state["pipeline"], grid_points=int(m.grid_points))
    dataset = ref.datamanager.eval_dataset
    indices = eval_indices(len(dataset), args.eval_images)
    uncompressed = evaluate(ref.model, dataset, indices)
    planes_bytes = sum(p.numel() * 4 for p in ref.model.field.plane_list())

    t0 = time.perf_counter()
    decoded = build_model(decode_file(scene))
    decode_s = time.perf_counter() - t0
    decoded._lpips = ref.model._lpips
    coded = evaluate(decoded, dataset, indices)

    result = {
        "config": str(args.config), "field_checkpoint": str(field_ckpt), "final_checkpoint": str(final_ckpt),
        "steps": {"field": field_steps, "warmup": int(m.codec_warmup_steps),
                  "joint": int(cfg.max_num_iterations) - field_steps - int(m.codec_warmup_steps)},
        "codec": {k: getattr(m.codec, k) for k in ("mix_images", "latent_gain", "synthesis_input", "train_precision")
                  if hasattr(m.codec, k)},
        "codec_lambda": float(m.codec_lambda), "grid_source": m.grid_source,
        "train_wall_s": args.train_wall_s, "export_s": round(export_s, 1), "decode_s": round(decode_s, 1),
        "eval_images": len(indices), "file_bytes": scene.stat().st_size, "planes_float32_bytes": planes_bytes,
        "uncompressed": uncompressed, "decoded": coded,
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                    "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")},
    }
    print(json.dumps(result, indent=2))
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main(tyro.cli(Args))
