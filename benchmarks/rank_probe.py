"""How much of a field's quality survives channel mixing's rank limit, before any codec noise.

With ``mix_images = k`` the codec decodes each plane as ``mean + U (rgb - 0.5) / a`` from 3k decoded
channels (``PlaneCodec.init_mixer``), plus a rank-1 compensation per axis: the decoded plane has
at most 3k independent channels out of C. This probe replaces every plane of a trained field by
its projection on its own 3k leading principal components, in the codec's normalised space
(per-channel range of ``plane_stats`` with ``clip_sigmas``, clipped to [0, 1]), and renders the
val images: the PSNR a perfect backbone (no quantisation, no rate) would give with that rank, before
joint training lets the field and MLP adapt to it (so a lower bound on the rank's ceiling).

    python benchmarks/rank_probe.py --base outputs/s7/b96_frozen/field/base/nerfcodec/run/config.yml \
        --components 3 6 9 12 16 --eval-images 20 --out docs/bench/rank_probe_lego200.json
    python benchmarks/rank_probe.py --base ... --components 16 --clip-sigmas 4 0 8 --asinh 1 \
        --noise 0 0.02 0.05 --eval-images 20 --out docs/bench/range_probe_lego200.json
"""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

import torch
import tyro


@dataclass
class Args:
    base: Path
    """config.yml of the trained field (its newest checkpoint is probed)."""
    components: Tuple[int, ...] = (3, 6, 9, 12, 16)
    """Principal components kept per plane (3k for ``mix_images = k``; C keeps all: clipping only)."""
    clip_sigmas: Tuple[float, ...] = (4.0,)
    """Normalisation ranges to probe (``CodecConfig.clip_sigmas``: 0 = min..max, k = mean -/+ k std)."""
    asinh: Tuple[float, ...] = ()
    """Also probe a companding map instead of clipping: t = asinh(z / a) of the standardised channel
    z, scaled to [0, 1] by its min..max (one value of a per entry; no clipping, invertible)."""
    noise: Tuple[float, ...] = (0.0,)
    """Standard deviations of Gaussian noise added in the coded [0, 1] domain (a stand-in for the codec's
    error there; fixed seed), after the projection."""
    eval_images: int = 20
    """Val images, evenly spaced (0: all), as `nerfcodec bench --eval-images`."""
    out: Optional[Path] = None
    """Write the results as JSON here (empty: print only)."""


@torch.no_grad()
def project(planes: torch.Tensor, kept: int, clip_sigmas: float, asinh: float = 0.0,
            noise: float = 0.0) -> Tuple[torch.Tensor, float]:
    """``planes`` [3, C, R, R] mapped to [0, 1] per channel (the codec's clipped normalisation, or
    the asinh companding when ``asinh`` > 0), projected per plane on ``kept`` principal components,
    noise added, mapped back; also the fraction of the normalised variance kept (mean over planes)."""
    from nerfcodec_ns.codec.plane import PlaneCodec, plane_stats

    p = planes.float()
    if asinh > 0:
        mean, std = p.mean(dim=(2, 3), keepdim=True), p.std(dim=(2, 3), keepdim=True).clamp_min(1e-12)
        t = torch.asinh((p - mean) / std / asinh)
        lo, span = t.amin(dim=(2, 3), keepdim=True), (t.amax(dim=(2, 3), keepdim=True) - t.amin(dim=(2, 3), keepdim=True)).clamp_min(1e-12)
        x = (t - lo) / span
    else:
        lo, span = PlaneCodec._offset_span(*plane_stats(planes, clip_sigmas))
        x = (p - lo) / span
        if clip_sigmas > 0:
            x = x.clamp(0.0, 1.0)
    three, C, R, _ = x.shape
    out, shares = torch.empty_like(x), []
    for i in range(three):
        X = x[i].reshape(C, R * R).double()
        centre = X.mean(dim=1, keepdim=True)
        centred = X - centre
        vals, vecs = torch.linalg.eigh(centred @ centred.T)
        U = vecs.flip(1)[:, : min(kept, C)]
        out[i] = (centre + U @ (U.T @ centred)).reshape(C, R, R).float()
        shares.append(float(vals.flip(0)[: min(kept, C)].sum() / vals.sum().clamp_min(1e-30)))
    if noise > 0:
        out = out + noise * torch.randn(out.shape, generator=torch.Generator().manual_seed(0))
    if asinh > 0:
        return torch.sinh((out * span + lo)) * asinh * std + mean, sum(shares) / len(shares)
    return out * span + lo, sum(shares) / len(shares)


def main(args: Args) -> dict:
    from nerfcodec_ns.bench.bench import eval_indices, evaluate, load_base, reference_pipeline

    base_cfg, base_state, step = load_base(args.base)
    pipeline = reference_pipeline(base_cfg, base_state)
    model, dataset = pipeline.model, pipeline.datamanager.eval_dataset
    indices = eval_indices(len(dataset), args.eval_images)
    originals = [p.detach().clone() for p in model.field.plane_list()]
    C = originals[0].shape[1]
    rows = []
    t0 = time.time()
    row = {"components": None, "variance_kept": 1.0, **evaluate(model, dataset, indices)}
    rows.append(row)
    print(f"uncompressed planes: {row['psnr']:.2f} dB", flush=True)
    maps = [("clip", s) for s in args.clip_sigmas] + [("asinh", a) for a in args.asinh]
    for (kind, value), noise, k in itertools.product(maps, args.noise, args.components):
        shares = []
        for param, orig in zip(model.field.planes, originals):
            projected, share = project(orig, k, value if kind == "clip" else 0.0, value if kind == "asinh" else 0.0, noise)
            param.data.copy_(projected)
            shares.append(share)
        row = {"map": kind, "clip_sigmas" if kind == "clip" else "asinh": value, "noise": noise, "components": k,
               "variance_kept": sum(shares) / len(shares), **evaluate(model, dataset, indices)}
        rows.append(row)
        print(f"{kind} {value:g}, noise {noise:g}, {k:2d} of {C} components ({row['variance_kept']:.4f} of the "
              f"variance): {row['psnr']:.2f} dB, SSIM {row['ssim']:.4f}", flush=True)
    for param, orig in zip(model.field.planes, originals):
        param.data.copy_(orig)
    result = {"base": str(args.base), "step": step, "channels": C,
              "eval_images": len(indices), "seconds": time.time() - t0, "rows": rows}
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main(tyro.cli(Args))
