"""Rate-distortion of the NeRFCodec plane codec on one trained field, with ablations.

Starts every run from the SAME trained base field (a `nerfcodec` run with the codec off, e.g. the
one `benchmarks/quality_cpu.py` leaves in outputs/quality_cpu), then runs the codec stages of
`ns-train nerfcodec` (warm-up on the frozen planes, joint rate-distortion training) for each
setting, and measures on the val split:

* PSNR of the uncompressed base field (once);
* for each setting: PSNR rendered from the DECODED planes (latents rounded, as the receiver gets
  them) and the transmitted size: the real entropy-coded y/z strings of every level (CompressAI's
  rANS coder) plus every other transmitted part (8-bit decoder head, 8-bit compensation vectors,
  float16 normalisation stats, float16 entropy-bottleneck parameters, float16 MLPs).

    python benchmarks/codec_rd.py --base outputs/quality_cpu --lambdas 1e-5 4e-5 1.6e-4 \
        --out docs/bench/codec_rd_lego200.json

Ablations (at --ablation-lambda): random backbone, no feature compensation, frozen pre-trained heads.
Settings that differ only in lambda share one codec warm-up (run at the middle lambda).
"""

from __future__ import annotations

import copy
import json
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import tyro

from nerfcodec_ns.atomic import write_atomic  # noqa: E402
from nerfcodec_ns.bench import bench  # noqa: E402
from nerfcodec_ns.bench.bench import eval_indices, load_base, load_field, restore_training, training_snapshot  # noqa: E402


@dataclass
class Args:
    base: Path = Path("outputs/quality_cpu")
    """Folder holding the base-field run (its newest config.yml below it is used)."""
    lambdas: Tuple[float, ...] = (1e-5, 4e-5, 1.6e-4)
    """Rate weights (per kilobyte of latent) of the main rate-distortion points."""
    ablation_lambda: Optional[float] = None
    """Lambda of the ablation runs (default: the middle of --lambdas)."""
    ablations: Tuple[str, ...] = ("random-backbone", "no-compensation", "frozen-heads")
    """Which ablations to run (empty: none); also "pretrained-init-heads" (adapted heads that start from
    the tiled pretrained layers, CodecConfig.head_init)."""
    weights: str = "embedded"
    """Backbone weights of the main runs ("embedded", "zoo" or a file)."""
    latent_gain: float = 1.0
    """Quantization gain of the latents (CodecConfig.latent_gain), all runs."""
    clip_sigmas: float = 0.0
    """Normalisation range in standard deviations (CodecConfig.clip_sigmas; 0: min..max), all runs."""
    warmup_steps: int = 100
    """Codec warm-up steps on the frozen planes."""
    joint_steps: int = 300
    """Joint rate-distortion steps."""
    planes_lr: float = 2e-3
    """Learning rate of the planes in the codec stages (the reference uses 2e-3)."""
    fields_lr: float = 5e-4
    """Learning rate of the MLPs in the codec stages."""
    codec_lr: float = 1e-4
    """Learning rate of the encoder, h_a and entropy bottleneck."""
    heads_lr: float = 1e-3
    """Learning rate of the decoder head and the compensation vectors."""
    eval_images: int = 0
    """Val images to evaluate, evenly spaced (0: all)."""
    out: Path = Path("docs/bench/codec_rd_lego200.json")
    """Where to write the results (rewritten after every run, so partial results survive)."""
    only: List[str] = field(default_factory=list)
    """Run only these settings (names as in the output, e.g. "main@4e-05")."""


def _base_config(base: Path) -> Path:
    configs = sorted(base.rglob("config.yml"), key=lambda p: p.stat().st_mtime)
    if not configs:
        raise SystemExit(f"no config.yml under {base}: run benchmarks/quality_cpu.py first")
    return configs[-1]


def evaluate(pipeline, indices: List[int]) -> float:
    """Mean PSNR (dB) over the given val images, rendered by the model as it is (eval mode)."""
    return bench.evaluate(pipeline.model, pipeline.datamanager.eval_dataset, indices)["psnr"]


def measure_size(model) -> Dict[str, float]:
    """Real coded bytes of every level's y/z strings plus the other transmitted parts; also checks that
    the decoder's planes (decompress) equal what evaluation rendered."""
    import torch

    codec = model.codec
    latent = 0
    max_err = 0.0
    rendered = model.render_planes()
    with torch.no_grad():
        for level, planes in enumerate(model.field.plane_list()):
            compressed = codec.compress(planes, level)
            latent += compressed.num_bytes()
            decoded = codec.decompress(compressed, level)
            max_err = max(max_err, float((decoded - rendered[level]).abs().max()))
    parts = model.transmitted_sizes()
    return {"latent_bytes": latent, "other_bytes": sum(parts.values()), "parts": parts,
            "total_bytes": latent + sum(parts.values()), "decode_vs_render_max_abs": max_err}


def setup_codec_trainer(args: Args, base_cfg, base_state, codec_overrides: Dict, lmbda: float):
    """A Trainer for the codec stages (warm-up from step 0, then joint) on the loaded base field."""
    from nerfcodec_ns.bench.bench import BenchConfig, codec_trainer
    from nerfcodec_ns.codec.settings import CodecConfig

    bench = BenchConfig(data=Path("."), warmup_steps=args.warmup_steps, codec_lr=args.codec_lr, heads_lr=args.heads_lr,
                        planes_lr=args.planes_lr, fields_lr=args.fields_lr)
    codec = CodecConfig(**{"weights": args.weights, "latent_gain": args.latent_gain, "clip_sigmas": args.clip_sigmas,
                           **codec_overrides})
    return codec_trainer(bench, base_cfg, base_state, lmbda, codec=codec)


def _train(trainer, name: str, steps: range, log: List[Dict]) -> None:
    from trainer_step import train_step

    model = trainer.pipeline.model
    for step in steps:
        _, loss_dict, metrics = train_step(trainer, step)
        if step % 25 == 0 or step == steps[-1]:
            log.append({"step": step, "stage": int(model.codec_stage), "train_psnr": round(float(metrics["psnr"]), 2),
                        "rec_loss": round(float(loss_dict.get("codec_rec", float("nan"))), 5),
                        "est_total_bytes": round(float(metrics.get("size_total_bytes", float("nan"))))})
            print(name, log[-1], flush=True)


def run_group(args: Args, names: List[str], base_cfg, base_state, codec_overrides: Dict, lambdas: List[float],
              warmup_lambda: float, indices) -> List[Dict]:
    """Settings that differ only in lambda share ONE codec warm-up (run at ``warmup_lambda``): its
    end state (model and optimizers) is restored before each lambda's joint stage."""
    import torch

    trainer = setup_codec_trainer(args, base_cfg, base_state, codec_overrides, warmup_lambda)
    model = trainer.pipeline.model
    warm_log: List[Dict] = []
    t0 = time.perf_counter()
    _train(trainer, "+".join(names) + " warm-up", range(args.warmup_steps), warm_log)
    warm_s = time.perf_counter() - t0
    snapshot = training_snapshot(trainer) if len(lambdas) > 1 else None
    results = []
    for i, (name, lmbda) in enumerate(zip(names, lambdas)):
        if i > 0 and snapshot is not None:
            restore_training(trainer, snapshot)
        model.config.codec_lambda = lmbda
        torch.manual_seed(1)
        log = list(warm_log)
        t1 = time.perf_counter()
        _train(trainer, name, range(args.warmup_steps, args.warmup_steps + args.joint_steps), log)
        t_end = time.perf_counter()
        psnr_decoded = evaluate(trainer.pipeline, indices)
        size = measure_size(model)
        result = {
            "name": name, "lambda": lmbda, "warmup_lambda": warmup_lambda, "shared_warmup": names,
            "codec": {"weights": args.weights, "latent_gain": args.latent_gain, "clip_sigmas": args.clip_sigmas,
                      **codec_overrides},
            "val_psnr_decoded": round(psnr_decoded, 3), **size,
            "warmup_s_per_step": round(warm_s / max(1, args.warmup_steps), 3),
            "joint_s_per_step": round((t_end - t1) / max(1, args.joint_steps), 3),
            "train_log": log,
        }
        print(json.dumps({k: v for k, v in result.items() if k != "train_log"}), flush=True)
        results.append(result)
    return results


def main(args: Args) -> Dict:
    import torch

    config_path = _base_config(args.base)
    base_cfg, base_state, base_step = load_base(config_path)
    print(f"base field: {config_path} (step {base_step})", flush=True)

    # uncompressed reference, same images
    torch.manual_seed(0)
    cfg0 = copy.deepcopy(base_cfg)
    cfg0.pipeline.model.codec_enabled = False
    pipeline0 = cfg0.pipeline.setup(device="cpu", test_mode="val")
    load_field(pipeline0.model, base_state)
    indices = eval_indices(len(pipeline0.datamanager.eval_dataset), args.eval_images)
    psnr_base = evaluate(pipeline0, indices)
    planes_bytes = sum(p.numel() * 4 for p in pipeline0.model.field.plane_list())
    print(f"uncompressed val PSNR {psnr_base:.3f} dB over {len(indices)} images, planes {planes_bytes} B", flush=True)
    del pipeline0

    mid = args.ablation_lambda if args.ablation_lambda is not None else sorted(args.lambdas)[len(args.lambdas) // 2]
    settings = [(f"main@{lm:g}", {}, lm) for lm in args.lambdas]
    variants = {"random-backbone": {"weights": "random"}, "no-compensation": {"compensation": False},
                "frozen-heads": {"adapt_heads": False}, "pretrained-init-heads": {"head_init": "pretrained"}}
    settings += [(f"{a}@{mid:g}", variants[a], mid) for a in args.ablations]
    if args.only:
        settings = [s for s in settings if s[0] in args.only]

    result: Dict = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, device cpu",
        "base_config": str(config_path), "base_step": base_step, "split": "val", "num_eval_images": len(indices),
        "val_psnr_uncompressed": round(psnr_base, 3), "planes_float32_bytes": planes_bytes,
        "warmup_steps": args.warmup_steps, "joint_steps": args.joint_steps,
        "lr": {"planes": args.planes_lr, "fields": args.fields_lr, "codec": args.codec_lr, "heads": args.heads_lr},
        "runs": [],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    groups: Dict[str, List] = {}
    for name, overrides, lm in settings:
        groups.setdefault(json.dumps(overrides, sort_keys=True), []).append((name, overrides, lm))
    for members in groups.values():
        names = [m[0] for m in members]
        lambdas = [m[2] for m in members]
        warm_lambda = mid if mid in lambdas else sorted(lambdas)[len(lambdas) // 2]
        for res in run_group(args, names, base_cfg, base_state, members[0][1], lambdas, warm_lambda, indices):
            res["ratio_vs_planes"] = round(planes_bytes / res["total_bytes"], 1)
            res["psnr_drop_db"] = round(psnr_base - res["val_psnr_decoded"], 3)
            result["runs"].append(res)
            write_atomic(args.out, (json.dumps(result, indent=2) + "\n").encode(), overwrite=True)
    return result


if __name__ == "__main__":
    main(tyro.cli(Args))
