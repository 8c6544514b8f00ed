"""Probe: could the decoder rebuild the occupancy grid from the decoded field instead of reading it?

For each scene file: decode, render the val images with the transmitted grid, then with a grid derived
from the decoded field (density at a fixed sub-grid of points per cell, nerfacc's threshold rule,
optionally dilated), and report the grids' agreement and both PSNRs.

    python benchmarks/grid_probe.py --base RUN/config.yml --files A.nfc B.nfc --eval-images 10
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

import torch
import tyro


@dataclass
class Args:
    base: Path
    """config.yml of a run on the files' data set (only its val split is used)."""
    files: Tuple[Path, ...]
    """Scene files to probe."""
    eval_images: int = 10
    """Val images, evenly spaced."""
    sub: int = 2
    """Points per cell and axis (sub**3 per cell, at the sub-cell centres)."""
    dilate: Tuple[int, ...] = (0, 1)
    """Dilations (cells) to try."""
    out: Optional[Path] = None
    """Write the rows as JSON here (default: print only)."""


@torch.no_grad()
def derived_grid(model, sub: int, dilate: int) -> torch.Tensor:
    g, box = model.sampler.grid_resolution, model.sampler.estimator.aabbs[0]
    occ = torch.zeros(g, g, g)
    offs = (torch.arange(sub, dtype=torch.float32) + 0.5) / sub
    idx = torch.arange(g, dtype=torch.float32)
    planes = model.render_planes()
    for a, b, c in itertools.product(offs, repeat=3):
        pts = torch.stack(torch.meshgrid(idx + a, idx + b, idx + c, indexing="ij"), -1).reshape(-1, 3) / g
        x = box[:3] + pts * (box[3:] - box[:3])
        d = torch.cat([model.field.density(x[i:i + (1 << 18)], planes)[0].reshape(-1)
                       for i in range(0, x.shape[0], 1 << 18)])
        occ = torch.maximum(occ, (d * model.sampler.step_size).reshape(g, g, g))
    binaries = occ > min(float(occ.mean()), model.config.occ_thre)
    if dilate:
        k = 2 * dilate + 1
        binaries = torch.nn.functional.max_pool3d(binaries[None, None].float(), k, 1, dilate)[0, 0] > 0
    return binaries


def main(args: Args):
    from score_files import decoded_model, val_images

    from nerfcodec_ns.bench.bench import evaluate
    from nerfcodec_ns.scenefile.payload import encode_bits

    pipeline, dataset, indices = val_images(args.base, args.eval_images)
    rows = []
    for path in args.files:
        model = decoded_model(path, pipeline)
        sent = model.sampler.estimator.binaries[0].clone()
        row = {"file": str(path), "bytes": path.stat().st_size, "grid_bytes": len(encode_bits(sent[None].numpy())),
               "sent_cells": int(sent.sum()), "sent": evaluate(model, dataset, indices)}
        for dl in args.dilate:
            b = derived_grid(model, args.sub, dl)
            model.sampler.estimator.binaries = b[None].clone()
            model.sampler.refresh_march_aabb()
            row[f"derived_d{dl}"] = {"cells": int(b.sum()), "missed_sent_cells": int((sent & ~b).sum()),
                                     **evaluate(model, dataset, indices)}
        model.sampler.estimator.binaries = sent[None].clone()
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.out is not None:
        args.out.write_text(json.dumps({"eval_images": len(indices), "sub": args.sub, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main(tyro.cli(Args))
