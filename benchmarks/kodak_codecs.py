"""The embedded backbone on Kodak against JPEG and WebP, measured in the same run on the same images.

    python benchmarks/kodak_codecs.py --weights nerfcodec_ns/codec/weights/backbone.pt \\
        --images ../shared/data/images/kodak --gains 0.5 0.7 1 1.4 2 \\
        --out docs/bench/kodak_codecs.json --plot docs/kodak_codecs.png

Every point is real coded bytes: the backbone's rANS strings (``nerfcodec eval-codec``'s coder, with
a latent quantization gain per point), Pillow's JPEG (4:2:0, like libjpeg's default) and WebP files
written to memory. PSNR is on RGB in [0, 1] against the original PNG, averaged over the images; bpp is
8 x bytes / pixels, averaged over the images. The table gives, at the backbone's own bpp (gain 1), the
PSNR of JPEG and WebP interpolated (piecewise linear in bpp) on their curves, and the BD-rate /
BD-PSNR of the backbone against each over the overlapping range.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import time
from pathlib import Path

import numpy as np
from PIL import Image


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)) / 255.0**2
    return float("inf") if mse == 0 else -10 * math.log10(mse)


def pillow_curve(images, fmt: str, qualities) -> list:
    points = []
    for q in qualities:
        bpps, psnrs = [], []
        for img in images:
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format=fmt, quality=int(q))
            dec = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
            bpps.append(8 * len(buf.getvalue()) / (img.shape[0] * img.shape[1]))
            psnrs.append(psnr(img, dec))
        points.append({"quality": int(q), "bpp": float(np.mean(bpps)), "psnr": float(np.mean(psnrs))})
    return sorted(points, key=lambda p: p["bpp"])


def interp(curve, bpp: float) -> float:
    xs, ys = [p["bpp"] for p in curve], [p["psnr"] for p in curve]
    if not xs[0] <= bpp <= xs[-1]:
        return float("nan")
    return float(np.interp(bpp, xs, ys))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", type=Path, default=Path("nerfcodec_ns/codec/weights/backbone.pt"))
    ap.add_argument("--images", type=Path, default=Path("../shared/data/images/kodak"))
    ap.add_argument("--gains", type=float, nargs="+", default=[0.5, 0.7, 1.0, 1.4, 2.0])
    ap.add_argument("--jpeg", type=int, nargs="+", default=[10, 20, 30, 40, 50, 60, 70, 80, 85, 90, 95])
    ap.add_argument("--webp", type=int, nargs="+", default=[10, 20, 30, 40, 50, 60, 70, 80, 85, 90, 95])
    ap.add_argument("--out", type=Path)
    ap.add_argument("--plot", type=Path)
    args = ap.parse_args()

    import torch

    from nerfcodec_ns.bench.rd import bd_psnr, bd_rate
    from nerfcodec_ns.codec.pretrain import evaluate, list_images, load_backbone_file

    torch.set_num_threads(2)
    files = list_images(args.images)
    images = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    t = time.perf_counter()
    jpeg = pillow_curve(images, "JPEG", args.jpeg)
    webp = pillow_curve(images, "WEBP", args.webp)
    model, meta = load_backbone_file(args.weights)
    ours = []
    for g in args.gains:
        m = evaluate(model, args.images, gain=g)["mean"]
        ours.append({"gain": g, "bpp": m["bpp"], "psnr": m["psnr"], "bpp_est": m["bpp_est"]})
        print(f"backbone gain {g:g}: {m['psnr']:.2f} dB at {m['bpp']:.3f} bpp")
    ours.sort(key=lambda p: p["bpp"])
    own = min(ours, key=lambda p: abs(p["gain"] - 1.0))
    summary = {"backbone_bpp": own["bpp"], "backbone_psnr": own["psnr"],
               "jpeg_psnr_at_bpp": interp(jpeg, own["bpp"]), "webp_psnr_at_bpp": interp(webp, own["bpp"])}
    summary["over_jpeg_db"] = summary["backbone_psnr"] - summary["jpeg_psnr_at_bpp"]
    summary["over_webp_db"] = summary["backbone_psnr"] - summary["webp_psnr_at_bpp"]
    for name, curve in (("jpeg", jpeg), ("webp", webp)):
        a = [(p["bpp"], p["psnr"]) for p in curve]
        b = [(p["bpp"], p["psnr"]) for p in ours]
        for key, fn in (("bd_rate_pct", bd_rate), ("bd_psnr_db", bd_psnr)):
            try:
                summary[f"{key}_vs_{name}"] = float(fn(a, b))
            except Exception as err:  # no overlap
                summary[f"{key}_vs_{name}"] = None
                print(f"{key} vs {name}: {err}")
    result = {"weights": str(args.weights), "backbone": {k: meta[k] for k in ("architecture", "N", "M")},
              "meta": {k: meta.get(k) for k in ("steps", "lmbda", "crop", "num_images")},
              "images": len(images), "backbone_points": ours, "jpeg": jpeg, "webp": webp, "summary": summary,
              "seconds": round(time.perf_counter() - t, 1)}
    print(json.dumps(summary, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
        for name, curve, style in (("JPEG (Pillow)", jpeg, "s--"), ("WebP (Pillow)", webp, "^--"),
                                   (f"backbone N={meta['N']} M={meta['M']} (gains)", ours, "o-")):
            ax.plot([p["bpp"] for p in curve], [p["psnr"] for p in curve], style, label=name)
        ax.axvline(own["bpp"], color="grey", lw=0.6)
        ax.set_xlabel("bits per pixel (real coded bytes)")
        ax.set_ylabel("PSNR (dB, RGB)")
        ax.set_title(f"Kodak, {len(images)} images")
        ax.set_xlim(0, max(p["bpp"] for p in ours) * 1.2)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.plot)


if __name__ == "__main__":
    main()
