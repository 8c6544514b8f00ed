"""``make demo``: procedural scene -> ``ns-train nerfcodec`` -> evaluation -> export -> decode -> summary.

Everything goes into one output folder:

* ``scene/``: the procedural Blender-format data set;
* ``runs/demo/nerfcodec/run/``: the nerfstudio run (``config.yml``, ``nerfstudio_models/``);
* ``scene.nfc``: the compressed scene file (``nerfcodec export``);
* ``decoded/``: the run folder decoded from ``scene.nfc`` alone (``nerfcodec decode``);
* ``render.png``: a test view, ground truth left, rendering right;
* ``summary.json``: the numbers printed at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

from rich.console import Console
from rich.table import Table

CONSOLE = Console()


class DemoError(Exception):
    """The demo cannot go on (existing output, a failed training run, an unexportable run); the
    ``nerfcodec demo`` command prints it as one line."""


def ns_train_command(data: Path, runs: Path, steps: int, extra: List[str] = ()) -> List[str]:
    """The ``ns-train nerfcodec`` command line the demo runs (learning-rate schedules span ``steps``).

    The first 60% of the steps train the field, the next 10% warm up the codec and the last 30%
    train field and codec jointly.
    """
    bindir = Path(sys.executable).parent
    ns_train = str(bindir / "ns-train") if (bindir / "ns-train").exists() else "ns-train"
    return [
        ns_train, "nerfcodec",
        "--data", str(data),
        "--output-dir", str(runs),
        "--experiment-name", "demo",
        "--timestamp", "run",
        "--max-num-iterations", str(steps),
        "--optimizers.planes.scheduler.max-steps", str(steps),
        "--optimizers.fields.scheduler.max-steps", str(steps),
        "--pipeline.model.codec-field-steps", str(int(0.6 * steps)),
        "--pipeline.model.codec-warmup-steps", str(int(0.1 * steps)),
        "--vis", "tensorboard",
        *extra,
        "blender-data",
    ]


def evaluate_run(pipeline, step: int) -> Dict[str, float]:
    """Average PSNR/SSIM(/LPIPS) over the loaded pipeline's test split."""
    metrics = pipeline.get_average_eval_image_metrics(step=step, get_std=False)
    return {k: float(v) for k, v in metrics.items()}


def estimated_size(model) -> Dict[str, float]:
    """Estimated transmitted size of the trained model (latents from the eval-mode likelihoods, plus
    every other transmitted part: :func:`nerfcodec_ns.scenefile.export.estimated_sizes`) and the size of its
    float32 planes, in bytes."""
    planes_bytes = sum(p.numel() * 4 for p in model.field.plane_list())
    if model.codec is None:
        return {"planes_float32_bytes": planes_bytes}
    from nerfcodec_ns.scenefile.export import estimated_sizes

    parts = estimated_sizes(model)
    return {"planes_float32_bytes": planes_bytes, "latent_bytes_est": parts["y"] + parts["z"],
            "total_bytes_est": sum(parts.values())}


def save_comparison(pipeline, out_png: Path) -> None:
    """Render the first test view and save ground truth | rendering side by side."""
    import numpy as np
    import torch
    from PIL import Image

    dm = pipeline.datamanager
    pipeline.eval()  # nerfstudio's evaluation leaves the pipeline in training mode
    camera = dm.eval_dataset.cameras[0:1].to(pipeline.device)
    with torch.no_grad():
        rgb = pipeline.model.get_outputs_for_camera(camera)["rgb"].clamp(0, 1).cpu()
    gt = dm.eval_dataset.get_image_float32(0)[..., :3]
    img = (torch.cat([gt, rgb], dim=1).numpy() * 255).round().astype(np.uint8)
    Image.fromarray(img).save(out_png)


def run_demo(output_dir: Path, steps: int = 1000, resolution: int = 100, seed: int = 0, overwrite: bool = False) -> Dict:
    """Run the whole demo; returns the summary that is also written to ``summary.json``."""
    from nerfcodec_ns.scene import SceneSpec, write_blender_scene

    output_dir = Path(output_dir)
    if output_dir.exists() and any(output_dir.iterdir()):
        if not overwrite:
            raise DemoError(f"{output_dir} already exists and is not empty (pass --overwrite to replace it)")
        shutil.rmtree(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    CONSOLE.rule("[bold]1/5 procedural scene")
    spec = SceneSpec(seed=seed, resolution=resolution, num_train=40, num_val=8, num_test=8)
    scene = write_blender_scene(output_dir / "scene", spec)
    CONSOLE.print(f"scene: {scene} ({spec.num_train} train, {spec.num_val} val, {spec.num_test} test views, "
                  f"{resolution}x{resolution} px)")

    CONSOLE.rule("[bold]2/5 ns-train nerfcodec")
    cmd = ns_train_command(scene, output_dir / "runs", steps)
    CONSOLE.print("$ " + " ".join(cmd))
    t0 = time.time()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.run(cmd, env=env)
    train_s = time.time() - t0
    if proc.returncode != 0:
        raise DemoError(f"ns-train failed with exit code {proc.returncode}")
    config_path = output_dir / "runs" / "demo" / "nerfcodec" / "run" / "config.yml"

    CONSOLE.rule("[bold]3/5 evaluation (ns-eval equivalent, test views)")
    from nerfstudio.utils.eval_utils import eval_setup

    _, pipeline, _, step = eval_setup(config_path, test_mode="test")  # loaded once, used twice
    metrics = evaluate_run(pipeline, step)
    pipeline.eval()
    sizes = estimated_size(pipeline.model)
    save_comparison(pipeline, output_dir / "render.png")
    ckpts = sorted((config_path.parent / "nerfstudio_models").glob("*.ckpt"))

    CONSOLE.rule("[bold]4/5 export: nerfcodec export")
    from nerfcodec_ns.scenefile.decode import write_run
    from nerfcodec_ns.scenefile.export import ExportError, export_run

    nfc = output_dir / "scene.nfc"
    CONSOLE.print(f"$ nerfcodec export --load-config {config_path} --output-path {nfc}")
    try:
        exported = export_run(config_path, nfc)
    except ExportError as err:
        raise DemoError(str(err)) from err
    CONSOLE.print(f"wrote {nfc}: {exported.num_bytes:,} bytes in {exported.seconds:.2f} s")

    CONSOLE.rule("[bold]5/5 decode: nerfcodec decode, then evaluate the decoded scene")
    decoded_dir = output_dir / "decoded"
    CONSOLE.print(f"$ nerfcodec decode {nfc} --output-dir {decoded_dir}")
    decoded = write_run(nfc, decoded_dir)
    CONSOLE.print(f"decoded in {decoded.decode_seconds:.2f} s; run folder written in {decoded.write_seconds:.1f} s")
    pipeline._model = decoded.model.to(pipeline.device)  # the decoded scene, same test views
    decoded_metrics = evaluate_run(pipeline, step)
    summary = {
        "scene": str(scene),
        "config": str(config_path),
        "steps": steps,
        "train_wall_s": round(train_s, 1),
        "test_psnr_db": round(metrics["psnr"], 2),
        "test_ssim": round(metrics["ssim"], 4),
        "test_lpips": round(metrics["lpips"], 4) if "lpips" in metrics else None,
        "checkpoint_bytes": ckpts[-1].stat().st_size if ckpts else None,
        **{k: round(v) for k, v in sizes.items()},
        "scene_file": str(nfc),
        "scene_file_bytes": exported.num_bytes,
        "export_s": round(exported.seconds, 2),
        "decode_s": round(decoded.decode_seconds, 3),
        "decoded_config": str(decoded.config_path),
        "decoded_test_psnr_db": round(decoded_metrics["psnr"], 2),
    }
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")

    table = Table(title="nerfcodec demo", show_header=False)
    table.add_row("scene", summary["scene"])
    table.add_row("trained run (config.yml)", summary["config"])
    table.add_row("steps / wall time", f"{steps} / {train_s:.0f} s (incl. ~15 s start-up)")
    table.add_row("test PSNR (decoded planes)", f"{summary['test_psnr_db']:.2f} dB")
    table.add_row("test SSIM", f"{summary['test_ssim']:.4f}")
    table.add_row("test LPIPS", "unavailable (offline)" if summary["test_lpips"] is None else f"{summary['test_lpips']:.4f}")
    if "total_bytes_est" in sizes:
        table.add_row("float32 planes", f"{sizes['planes_float32_bytes'] / 1e6:.2f} MB")
        table.add_row("compressed (estimate)", f"{sizes['total_bytes_est'] / 1e3:.1f} kB "
                      f"({sizes['planes_float32_bytes'] / sizes['total_bytes_est']:.0f}x smaller than the planes)")
    table.add_row("checkpoint size", f"{summary['checkpoint_bytes'] / 1e6:.1f} MB" if ckpts else "-")
    table.add_row("scene file", f"{nfc}: {exported.num_bytes / 1e3:.1f} kB "
                  f"({sizes['planes_float32_bytes'] / exported.num_bytes:.0f}x smaller than the planes)")
    table.add_row("test PSNR decoded from the file", f"{summary['decoded_test_psnr_db']:.2f} dB")
    table.add_row("decode time", f"{decoded.decode_seconds:.2f} s")
    table.add_row("comparison image", str(output_dir / "render.png"))
    table.add_row("view the decoded scene", f"ns-viewer --load-config {decoded.config_path}")
    CONSOLE.print(table)
    return summary
