"""Every scene file committed under ``docs/scenes/`` decodes with the current code and renders a view
(needs no ``../shared``: the files carry their cameras, and their backbones ship with the package)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nerfcodec_ns.scenefile.cameras import camera_batch
from nerfcodec_ns.scenefile.container import read_file
from nerfcodec_ns.scenefile.decode import build_model, decode_file

SCENES = Path(__file__).resolve().parents[2] / "docs" / "scenes"
FILES = sorted(SCENES.rglob("*.nfc"))


def test_there_are_committed_scene_files():
    assert FILES, f"no scene files under {SCENES}"


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(SCENES)) for p in FILES])
def test_committed_scene_file_decodes_and_renders_a_view(path):
    header = read_file(path).header
    scene = decode_file(path)  # the backbone by its SHA-256 among the shipped ones
    assert all(bool(torch.isfinite(p).all()) for p in scene.planes)
    model = build_model(scene).eval()
    camera = camera_batch(header, scene.poses[:1], size=48)
    with torch.no_grad():
        rgb = model.get_outputs_for_camera(camera)["rgb"]
    assert rgb.shape == (48, 48, 3) and bool(torch.isfinite(rgb).all())
    background = 1.0 if header.render.background == "white" else 0.0
    object_pixels = ((rgb - background).abs().amax(dim=-1) > 0.1).float().mean()
    assert object_pixels > 0.02, "the view shows nothing but background"
