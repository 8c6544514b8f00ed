"""A short `ns-train nerfcodec` run writes a checkpoint that nerfstudio can load under torch >= 2.6."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from conftest import BIN, TINY_MODEL_ARGS, run_cli


def _ckpt(config):
    ckpts = sorted((config.parent / "nerfstudio_models").glob("step-*.ckpt"))
    assert ckpts, "no checkpoint written"
    return ckpts[-1]


def test_training_writes_checkpoint(tiny_run):
    ckpt = _ckpt(tiny_run)
    assert ckpt.name == "step-000000029.ckpt"
    state = torch.load(ckpt, map_location="cpu")  # nerfcodec_ns is imported: safe globals registered
    keys = state["pipeline"].keys()
    assert any("field.planes.0" in k for k in keys)
    assert any(k.endswith("codec.g_s.0.weight") for k in keys), "the codec is part of the checkpoint"
    stage = [v for k, v in state["pipeline"].items() if k.endswith("codec_stage")]
    assert stage and int(stage[0]) == 2, "30 steps with field 10 + warm-up 5 end in the joint stage"
    assert not any("lpips" in k.lower() for k in keys), "LPIPS weights must not be in the checkpoint"


def test_checkpoint_needs_the_safe_globals(tiny_run):
    """Negative control: without the plugin's registration torch's weights-only loader rejects it."""
    code = (
        "import sys, torch\n"
        f"try:\n    torch.load({str(_ckpt(tiny_run))!r}, map_location='cpu')\n"
        "except Exception as e:\n    print(type(e).__name__); sys.exit(0)\n"
        "print('loaded')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "UnpicklingError"


def test_eval_setup_loads_checkpoint(tiny_run):
    code = (
        "from nerfstudio.utils.eval_utils import eval_setup\n"
        "from pathlib import Path\n"
        f"_, pipeline, ckpt, step = eval_setup(Path({str(tiny_run)!r}), test_mode='test')\n"
        "m = pipeline.get_average_eval_image_metrics(step=step)\n"
        "print('DECODED', pipeline.model.render_planes() is not None)\n"
        "print('STEP', step, 'PSNR', m['psnr'])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    line = [l for l in out.stdout.splitlines() if l.startswith("STEP")][-1].split()
    assert int(line[1]) == 29
    assert "DECODED True" in out.stdout, "evaluation renders the decoded planes after the joint stage began"
    assert 5.0 < float(line[3]) < 60.0


def test_resume_from_checkpoint(tiny_run, tiny_scene, tiny_backbone, tmp_path):
    res = run_cli([
        str(BIN / "ns-train"), "nerfcodec", "--data", str(tiny_scene), "--output-dir", str(tmp_path),
        "--load-dir", str(tiny_run.parent / "nerfstudio_models"), "--max-num-iterations", "3",
        "--vis", "tensorboard", *TINY_MODEL_ARGS, "--pipeline.model.codec.weights", str(tiny_backbone),
        "blender-data",
    ])
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "Done loading Nerfstudio checkpoint" in res.stdout + res.stderr
    ckpts = list(tmp_path.rglob("step-*.ckpt"))
    assert [c.name for c in ckpts] == ["step-000000032.ckpt"]
