"""A real-capture-like scene end to end: the procedural unbounded capture (nerfstudio format, OPENCV
cameras with k1 and per-frame focal lengths, a textured environment all around) trains with the
automatic scene contraction, exports with its cameras, and decodes with ``--data`` into a run that
evaluates exactly as training did."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import eval_psnr, train_tiny


@pytest.fixture(scope="module")
def capture(tmp_path_factory) -> Path:
    from nerfcodec_ns.scene import SceneSpec, write_capture_scene

    return write_capture_scene(tmp_path_factory.mktemp("capture") / "cap",
                               SceneSpec(seed=3, resolution=32, num_train=8, num_val=2, num_test=1))


@pytest.fixture(scope="module")
def capture_run(capture, tiny_backbone, tmp_path_factory) -> Path:
    return train_tiny(capture, tmp_path_factory.mktemp("capture_run"), "--pipeline.model.codec.weights",
                      str(tiny_backbone), parser=("nerfstudio-data",))


@pytest.fixture(scope="module")
def capture_nfc(capture_run, tmp_path_factory) -> Path:
    from nerfcodec_ns.scenefile.export import export_run

    path = tmp_path_factory.mktemp("capture_nfc") / "cap.nfc"
    export_run(capture_run, path)
    return path


def test_auto_contraction_picks_the_unbounded_field_for_a_capture(capture_run):
    from nerfstudio.utils.eval_utils import eval_setup

    _, pipeline, _, _ = eval_setup(capture_run, test_mode="inference")
    model = pipeline.model
    assert model.field.spec.contraction == "linf"
    assert model.sampler.levels == 4 and model.sampler.cone_angle == pytest.approx(1 / 64)
    assert model.sampler.grid_resolution == 32  # the tiny runs' setting (the unbounded default is 64)


def test_the_scene_file_keeps_the_cameras_contraction_and_data_parser(capture_run, capture_nfc):
    from nerfstudio.utils.eval_utils import eval_setup

    from nerfcodec_ns.scenefile.container import read_file

    bs = read_file(capture_nfc)
    h = bs.header
    assert (h.field.contraction, h.render.grid_levels) == ("linf", 4)
    assert bs.has_section("intrinsics") and h.get_extra("dataparser") == "nerfstudio-data"
    _, pipeline, _, _ = eval_setup(capture_run, test_mode="inference")
    cams = pipeline.datamanager.train_dataparser_outputs.cameras
    from nerfcodec_ns.scenefile.cameras import camera_batch, decode_intrinsics, decode_poses

    back = camera_batch(h, decode_poses(bs.section("cameras")), table=decode_intrinsics(bs.section("intrinsics"), len(cams)))
    for name in ("camera_to_worlds", "fx", "fy", "cx", "cy", "width", "height", "distortion_params", "camera_type"):
        assert torch.equal(getattr(back, name), getattr(cams, name).to(getattr(back, name).dtype)), name
    assert float(cams.distortion_params[0, 0]) == pytest.approx(0.02)


def test_decode_with_the_nerfstudio_folder_evaluates_as_training_did(capture_run, capture_nfc, capture,
                                                                      tiny_backbone, tmp_path):
    from nerfcodec_ns.scenefile.decode import write_run

    result = write_run(capture_nfc, tmp_path / "decoded", data=capture, weights=tiny_backbone)
    assert eval_psnr(result.config_path) == pytest.approx(eval_psnr(capture_run), abs=1e-4)


def test_decode_refuses_a_data_set_with_other_cameras(capture_nfc, tiny_scene, capture, tiny_backbone, tmp_path):
    from nerfcodec_ns.scenefile.decode import DecodeError, write_run

    with pytest.raises(DecodeError, match="training cameras") as info:
        write_run(capture_nfc, tmp_path / "wrong", data=tiny_scene, weights=tiny_backbone, dataparser="blender-data")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "wrong").exists()


def test_decode_without_data_renders_every_camera_with_its_own_intrinsics(capture_nfc, tiny_backbone, tmp_path):
    from PIL import Image

    from nerfcodec_ns.scenefile.decode import write_run

    result = write_run(capture_nfc, tmp_path / "views", weights=tiny_backbone, view_size=16)
    views = sorted(result.config_path.parents[2].joinpath("bitstream", "views").glob("*.png"))
    assert len(views) == 9  # nerfstudio-data's default split: 9 of the 10 frames train
    assert {Image.open(v).size for v in views} == {(16, 16)}
