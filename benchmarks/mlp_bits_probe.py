"""Probe: what an 8-bit (or fewer-bit) MLP would save and cost, on a decoded scene file.

The scene file stores the field's MLPs as float16 (the ``mlp`` section). This decodes a file, renders
it on evenly spaced val images, then replaces every MLP weight matrix by its symmetric per-output-row
integer quantization (biases stay float16) WITHOUT retraining, renders again, and reports the PSNR
change and the LZMA-packed size of both encodings.

    python benchmarks/mlp_bits_probe.py SCENE.nfc --data ../shared/data/nerf_synthetic/lego_200 --bits 8 6
"""

from __future__ import annotations

import json
import lzma
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch
import tyro


@dataclass
class Args:
    scene: tyro.conf.Positional[Path]
    data: Path
    """Blender-format data set of the scene (val split)."""
    bits: List[int] = field(default_factory=lambda: [8])
    eval_images: int = 20
    out: Optional[Path] = None


def _packed(arrays) -> int:
    return len(lzma.compress(b"".join(a.tobytes() for a in arrays), preset=9 | lzma.PRESET_EXTREME))


def main(args: Args) -> None:
    from nerfstudio.data.dataparsers.blender_dataparser import BlenderDataParserConfig
    from nerfstudio.data.datasets.base_dataset import InputDataset

    from nerfcodec_ns.bench.bench import eval_indices, evaluate
    from nerfcodec_ns.scenefile.decode import build_model, decode_file

    torch.set_num_threads(1)
    dataset = InputDataset(BlenderDataParserConfig(data=args.data).setup().get_dataparser_outputs("val"))
    indices = eval_indices(len(dataset), args.eval_images)
    scene = decode_file(args.scene)
    model = build_model(scene)
    model._lpips = lambda *a: None
    params = model.field.mlp_parameters()
    originals = [p.detach().clone() for p in params]
    base = evaluate(model, dataset, indices)
    rows = [{"mlp": "float16 (as stored)", "psnr": base["psnr"], "packed_bytes": _packed([o.half().numpy() for o in originals])}]
    for bits in args.bits:
        qmax = 2 ** (bits - 1) - 1
        stored = []
        with torch.no_grad():
            for p, o in zip(params, originals):
                if o.ndim == 2:  # weights: per output row
                    scale = (o.abs().amax(dim=1, keepdim=True) / qmax).clamp_min(1e-12).half().float()
                    ints = torch.round(o / scale).clamp(-qmax, qmax)
                    p.copy_(ints * scale)
                    stored += [ints.to(torch.int8).numpy(), scale.half().numpy()]
                else:
                    p.copy_(o)
                    stored.append(o.half().numpy())
        m = evaluate(model, dataset, indices)
        rows.append({"mlp": f"int{bits} per row (no retraining)", "psnr": m["psnr"], "packed_bytes": _packed(stored),
                     "psnr_change": round(m["psnr"] - base["psnr"], 4)})
    with torch.no_grad():
        for p, o in zip(params, originals):
            p.copy_(o)
    out = {"command": "python benchmarks/mlp_bits_probe.py " + " ".join(sys.argv[1:]), "scene": str(args.scene),
           "eval_images": len(indices), "rows": rows}
    print(json.dumps(out, indent=1))
    if args.out:
        from nerfcodec_ns.atomic import write_atomic

        write_atomic(args.out, json.dumps(out, indent=1).encode(), overwrite=True)


if __name__ == "__main__":
    main(tyro.cli(Args))
