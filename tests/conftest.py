"""Shared fixtures: a tiny procedural scene and one short `ns-train nerfcodec` run on it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
BIN = Path(sys.executable).parent

# Small model settings so that a training run takes seconds on a 2-core CPU.
TINY_MODEL_ARGS = [
    "--pipeline.model.plane-resolutions", "16", "32",
    "--pipeline.model.plane-channels", "8",
    "--pipeline.model.grid-resolution", "32",
    "--pipeline.datamanager.train-num-rays-per-batch", "512",
    "--pipeline.model.eval-num-rays-per-chunk", "1024",
    # stages: field 0-9, codec warm-up 10-14, joint from 15 (the backbone: see `tiny_backbone`)
    "--pipeline.model.codec-field-steps", "10",
    "--pipeline.model.codec-warmup-steps", "5",
    # C-channel adapted heads (the tiny runs exercise the head section; the default codec, with channel
    # mixing and frozen RGB layers, is the run of tests/scenefile/test_mixing_file.py)
    "--pipeline.model.codec.mix-images", "0", "--pipeline.model.codec.adapt-heads", "True",
]


def shared_data(*parts: str) -> Path:
    """A path under ../shared/data, or skip the test when that folder is absent (users do not have it)."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not found: development data (../shared/data) is not available on this machine")
    return path


@pytest.fixture(scope="session")
def tiny_scene(tmp_path_factory) -> Path:
    from nerfcodec_ns.scene import SceneSpec, write_blender_scene

    out = tmp_path_factory.mktemp("scene") / "tiny"
    return write_blender_scene(out, SceneSpec(seed=3, resolution=32, num_train=8, num_val=2, num_test=2))


def run_cli(args, cwd=None, timeout=600, env=None) -> subprocess.CompletedProcess:
    """Run a console script of the venv, capturing output."""
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env)


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory) -> Path:
    """A tiny randomly initialised bmshj2018 backbone (N=16, M=24) saved as a backbone file, so runs
    using it can be exported and decoded (a decoder needs the frozen weights)."""
    import torch

    from nerfcodec_ns.codec.backbone import build_backbone, save_backbone_file

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("backbone") / "tiny_backbone.pt"
    return save_backbone_file(build_backbone("bmshj2018-hyperprior", 16, 24), "bmshj2018-hyperprior", 16, 24, path)


def train_tiny(scene: Path, out: Path, *extra: str, model_args=TINY_MODEL_ARGS, parser=("blender-data",)) -> Path:
    """Train `ns-train nerfcodec` for 30 steps on ``scene`` into ``out`` with ``model_args`` and
    ``extra`` options, reading it with the data parser ``parser`` (name and options); returns its
    config.yml."""
    res = run_cli([
        str(BIN / "ns-train"), "nerfcodec", "--data", str(scene), "--output-dir", str(out),
        "--experiment-name", "tiny", "--timestamp", "t0", "--max-num-iterations", "30",
        "--vis", "tensorboard", "--steps-per-save", "30", *model_args, *extra, *parser,
    ])
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    config = out / "tiny" / "nerfcodec" / "t0" / "config.yml"
    assert config.exists(), res.stdout[-2000:]
    return config


@pytest.fixture(scope="session")
def tiny_run(tiny_scene, tiny_backbone, tmp_path_factory) -> Path:
    """Train `ns-train nerfcodec` for a few steps on the tiny scene; returns its config.yml."""
    return train_tiny(tiny_scene, tmp_path_factory.mktemp("runs"), "--pipeline.model.codec.weights", str(tiny_backbone))


@pytest.fixture(scope="session")
def tiny_nfc(tiny_run, tmp_path_factory):
    """The tiny run exported in-process: (path, ExportResult). Its grid is derived by the decoder
    (the default ``grid_source``)."""
    from nerfcodec_ns.scenefile.export import export_run

    path = tmp_path_factory.mktemp("nfc") / "tiny.nfc"
    return path, export_run(tiny_run, path)


@pytest.fixture(scope="session")
def tiny_sent_run(tiny_scene, tiny_backbone, tmp_path_factory) -> Path:
    """The tiny run with ``grid_source="sent"`` (the file carries the occupancy grid's bits)."""
    return train_tiny(tiny_scene, tmp_path_factory.mktemp("runs_sent"), "--pipeline.model.codec.weights",
                      str(tiny_backbone), "--pipeline.model.grid-source", "sent")


@pytest.fixture(scope="session")
def tiny_sent_nfc(tiny_sent_run, tmp_path_factory):
    """:func:`tiny_sent_run` exported in-process: (path, ExportResult)."""
    from nerfcodec_ns.scenefile.export import export_run

    path = tmp_path_factory.mktemp("nfc_sent") / "tiny_sent.nfc"
    return path, export_run(tiny_sent_run, path)


@pytest.fixture(scope="session")
def embedded_nfc(tiny_scene, tmp_path_factory) -> Path:
    """A short run with the shipped (embedded) backbone, exported: its pretrained ``h_s`` spreads the
    latents' scales over the whole table, unlike the random tiny backbone's."""
    from nerfcodec_ns.scenefile.export import export_run

    config = train_tiny(tiny_scene, tmp_path_factory.mktemp("runs_embedded"))
    path = tmp_path_factory.mktemp("nfc_embedded") / "embedded.nfc"
    export_run(config, path)
    return path


@pytest.fixture(scope="session")
def tiny_float_nfc(tiny_run, tmp_path_factory) -> Path:
    """The tiny run exported with CompressAI's float tables (``tables="float"``: how format-1/2 files
    were coded)."""
    from nerfcodec_ns.scenefile.export import export_run

    path = tmp_path_factory.mktemp("nfc_float") / "tiny_float.nfc"
    export_run(tiny_run, path, tables="float")
    return path


def eval_psnr(config: Path) -> float:
    """Mean PSNR of a run (trained or decoded) over its eval images, as ``ns-eval`` computes it."""
    import torch
    from nerfstudio.utils.eval_utils import eval_setup

    _, pipeline, _, _ = eval_setup(config, test_mode="val")
    with torch.no_grad():
        return float(pipeline.get_average_eval_image_metrics()["psnr"])
