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

import contextlib
import copy
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


#: Plane resolutions of the demo's field: the default (64, 128, 256) is sized for 200-800 px scenes;
#: the demo's 100 px scene gets half of it, which makes a codec step about 3.5x cheaper (the coded
#: area, padded to multiples of 64, is 24,576 px instead of 86,016).
DEMO_PLANE_RESOLUTIONS = (32, 64, 128)


def stage_steps(steps: int) -> Dict[str, int]:
    """How the demo splits ``steps``: 60% field, 10% codec warm-up, the rest joint."""
    field = int(0.6 * steps)
    warmup = int(0.1 * steps)
    return {"field": field, "warmup": warmup, "joint": steps - field - warmup}


def ns_train_command(data: Path, runs: Path, steps: int, extra: List[str] = (),
                     plane_resolutions=DEMO_PLANE_RESOLUTIONS) -> List[str]:
    """The ``ns-train nerfcodec`` command line the demo runs (learning-rate schedules span ``steps``).

    The first 60% of the steps train the field, the next 10% warm up the codec and the last 30%
    train field and codec jointly. A checkpoint is kept after the last field step (the field
    uncompressed, before any codec stage) beside the final one.
    """
    bindir = Path(sys.executable).parent
    ns_train = str(bindir / "ns-train") if (bindir / "ns-train").exists() else "ns-train"
    split = stage_steps(steps)
    return [
        ns_train, "nerfcodec",
        "--data", str(data),
        "--output-dir", str(runs),
        "--experiment-name", "demo",
        "--timestamp", "run",
        "--max-num-iterations", str(steps),
        "--optimizers.planes.scheduler.max-steps", str(steps),
        "--optimizers.fields.scheduler.max-steps", str(steps),
        "--pipeline.model.codec-field-steps", str(split["field"]),
        "--pipeline.model.codec-warmup-steps", str(split["warmup"]),
        "--pipeline.model.plane-resolutions", *(str(r) for r in plane_resolutions),
        # nerfstudio saves after iteration `step` when step % steps_per_save == 0: the last field step
        "--steps-per-save", str(max(split["field"] - 1, 1)),
        "--save-only-latest-checkpoint", "False",
        "--vis", "tensorboard",
        *extra,
        "blender-data",
    ]


def field_checkpoint(config_path: Path, field_steps: int) -> Path:
    """The checkpoint the demo keeps after the last field step (``step-<field_steps - 1>.ckpt``)."""
    ckpt = Path(config_path).parent / "nerfstudio_models" / f"step-{max(field_steps - 1, 1):09d}.ckpt"
    if not ckpt.is_file():
        raise DemoError(f"{ckpt} is missing: the run did not keep its field-stage checkpoint")
    return ckpt


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


#: Side of each panel of the demo's comparison image (px).
PANEL_PX = 400


@contextlib.contextmanager
def field_stage_state(pipeline, ckpt: Path):
    """Within the block, ``pipeline`` holds the state of checkpoint ``ckpt`` (the field at the end of
    its stage: uncompressed, before any codec step); its own state is put back on exit."""
    import torch

    saved = {k: v.detach().clone() for k, v in pipeline.state_dict().items()}
    loaded = torch.load(ckpt, map_location="cpu", weights_only=False)
    pipeline.load_state_dict({k: v for k, v in loaded["pipeline"].items() if k in saved}, strict=False)
    try:
        yield pipeline
    finally:
        pipeline.load_state_dict(saved)


def save_comparison(pipeline, field_ckpt: Path, decoded_model, spec, out_png: Path, panel: int = PANEL_PX) -> Path:
    """The first test view at ``panel`` px: ground truth | the field uncompressed (``field_ckpt``, the
    end of its stage) | the scene decoded from its file. The ground truth is rendered from the
    procedural scene at that size, the two fields from the test camera rescaled to it, all over the
    model's background colour."""
    import dataclasses

    import numpy as np
    import torch
    from PIL import Image

    from nerfcodec_ns.atomic import write_atomic
    from nerfcodec_ns.scene import build_scene, camera_poses, render_view

    big = dataclasses.replace(spec, resolution=panel)
    rgba = render_view(build_scene(spec.seed), camera_poses(spec)["test"][0], big).astype(np.float32) / 255.0
    background = 1.0 if pipeline.model.config.background_color == "white" else 0.0
    gt = torch.from_numpy(rgba[..., :3] * rgba[..., 3:] + background * (1.0 - rgba[..., 3:]))
    camera = copy.deepcopy(pipeline.datamanager.eval_dataset.cameras[0:1])
    camera.rescale_output_resolution(panel / float(camera.width[0, 0]))
    pipeline.eval()  # nerfstudio's evaluation leaves the pipeline in training mode
    renders = []
    with torch.no_grad():
        with field_stage_state(pipeline, field_ckpt):
            pipeline.eval()
            renders.append(pipeline.model.get_outputs_for_camera(camera.to(pipeline.device))["rgb"].clamp(0, 1).cpu())
        decoded_model.eval()
        renders.append(decoded_model.get_outputs_for_camera(camera.to(pipeline.device))["rgb"].clamp(0, 1).cpu())
    img = (torch.cat([gt, *renders], dim=1).numpy() * 255).round().astype(np.uint8)
    return write_atomic(out_png, lambda f: Image.fromarray(img).save(f, format="PNG"), overwrite=True)


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

    _, pipeline, _, step = eval_setup(config_path, test_mode="test")  # loaded once, used three times
    metrics = evaluate_run(pipeline, step)
    field_ckpt = field_checkpoint(config_path, stage_steps(steps)["field"])
    with field_stage_state(pipeline, field_ckpt):
        uncompressed = evaluate_run(pipeline, step)  # the field at the end of its stage, before the codec
    pipeline.eval()
    sizes = estimated_size(pipeline.model)
    trained_model = pipeline.model
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
    pipeline._model = trained_model
    comparison = save_comparison(pipeline, field_ckpt, decoded.model, spec, output_dir / "render.png")
    summary = {
        "scene": str(scene),
        "config": str(config_path),
        "steps": steps,
        "train_wall_s": round(train_s, 1),
        "test_psnr_db": round(metrics["psnr"], 2),
        "uncompressed_test_psnr_db": round(uncompressed["psnr"], 2),
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
        "comparison_image": str(comparison),
    }
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")

    table = Table(title="nerfcodec demo", show_header=False)
    table.add_row("scene", summary["scene"])
    table.add_row("trained run (config.yml)", summary["config"])
    table.add_row("steps / wall time", f"{steps} / {train_s:.0f} s (incl. ~15 s start-up)")
    table.add_row(f"test PSNR: the field uncompressed (after its {stage_steps(steps)['field']} steps) | decoded from the file",
                  f"{summary['uncompressed_test_psnr_db']:.2f} dB | {summary['decoded_test_psnr_db']:.2f} dB "
                  f"({summary['decoded_test_psnr_db'] - summary['uncompressed_test_psnr_db']:+.2f} dB)")
    table.add_row("test PSNR in training (decoded planes)", f"{summary['test_psnr_db']:.2f} dB")
    table.add_row("test SSIM", f"{summary['test_ssim']:.4f}")
    table.add_row("test LPIPS", "unavailable (offline)" if summary["test_lpips"] is None else f"{summary['test_lpips']:.4f}")
    if "total_bytes_est" in sizes:
        table.add_row("float32 planes", f"{sizes['planes_float32_bytes'] / 1e6:.2f} MB")
        table.add_row("compressed (estimate)", f"{sizes['total_bytes_est'] / 1e3:.1f} kB "
                      f"({sizes['planes_float32_bytes'] / sizes['total_bytes_est']:.0f}x smaller than the planes)")
    table.add_row("checkpoint size", f"{summary['checkpoint_bytes'] / 1e6:.1f} MB" if ckpts else "-")
    table.add_row("scene file", f"{nfc}: {exported.num_bytes / 1e3:.1f} kB "
                  f"({sizes['planes_float32_bytes'] / exported.num_bytes:.0f}x smaller than the planes)")
    table.add_row("decode time", f"{decoded.decode_seconds:.2f} s")
    table.add_row("comparison image", f"{comparison} (ground truth | uncompressed | decoded, {PANEL_PX} px each)")
    table.add_row("view the decoded scene", f"ns-viewer --load-config {decoded.config_path}")
    CONSOLE.print(table)
    return summary
