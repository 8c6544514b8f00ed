"""Real cameras in the scene file (format 5): per-camera intrinsics, camera models and distortion go
through the ``intrinsics`` section bit for bit; cameras the format cannot hold are refused at export
with one line; the data parser a run was trained with is recorded and rebuilt for ``decode --data``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from nerfcodec_ns.scenefile.cameras import (
    CameraTable,
    camera_batch,
    check_camera_table,
    decode_intrinsics,
    encode_intrinsics,
)
from nerfcodec_ns.scenefile.header import BitstreamError


def _cameras(n=5, vary=True, distortion=True, fisheye=True, times=None):
    from nerfstudio.cameras.cameras import Cameras, CameraType

    g = torch.Generator().manual_seed(0)
    c2w = torch.randn(n, 3, 4, generator=g)
    fx = 300 + 50 * torch.rand(n, 1, generator=g) if vary else torch.full((n, 1), 320.0)
    types = torch.full((n, 1), CameraType.PERSPECTIVE.value)
    if fisheye:
        types[1::2] = CameraType.FISHEYE.value
    dist = 0.01 * torch.randn(n, 6, generator=g) if distortion else None
    width = torch.tensor([[64 + 8 * (i % 2 if vary else 0)] for i in range(n)])
    return Cameras(camera_to_worlds=c2w, fx=fx, fy=fx * 1.01, cx=width / 2 + 0.25, cy=torch.full((n, 1), 24.5),
                   width=width, height=torch.full((n, 1), 48), distortion_params=dist, camera_type=types, times=times)


def _same(a, b) -> None:
    for name in ("camera_to_worlds", "fx", "fy", "cx", "cy", "width", "height", "camera_type"):
        assert torch.equal(getattr(a, name).float(), getattr(b, name).float()), name
    if a.distortion_params is None or not bool((a.distortion_params != 0).any()):
        assert b.distortion_params is None or not bool((b.distortion_params != 0).any())
    else:
        assert torch.equal(a.distortion_params, b.distortion_params)


@pytest.mark.parametrize("vary,distortion,fisheye", [(True, True, True), (False, True, False), (True, False, False)])
def test_per_camera_intrinsics_and_distortion_round_trip_bit_for_bit(vary, distortion, fisheye):
    from nerfcodec_ns.scenefile.export import camera_set

    cams = _cameras(vary=vary, distortion=distortion, fisheye=fisheye)
    shared, table = camera_set(cams, torch.eye(4)[:3], 0.5)
    assert table is not None
    back = decode_intrinsics(encode_intrinsics(table), len(cams))
    assert all(np.array_equal(a, b) and a.dtype == b.dtype for a, b in zip(table.arrays(), back.arrays()))
    _same(cams, camera_batch(None, cams.camera_to_worlds.numpy(), table=back))  # a table needs no header
    assert (shared.fx, shared.width) == (float(cams.fx[0, 0]), int(cams.width[0, 0]))


def test_shared_undistorted_cameras_need_no_section_and_rebuild_from_the_header():
    from types import SimpleNamespace

    from nerfcodec_ns.scenefile.export import camera_set

    cams = _cameras(vary=False, distortion=False, fisheye=False)
    shared, table = camera_set(cams, torch.eye(4)[:3], 1.0)
    assert table is None
    _same(cams, camera_batch(SimpleNamespace(cameras=shared), cams.camera_to_worlds.numpy()))


def test_a_small_table_of_many_identical_distorted_cameras():
    """200 cameras sharing intrinsics and one k1 (a typical OPENCV capture): the section stays small."""
    from nerfcodec_ns.scenefile.export import camera_set

    cams = _cameras(n=200, vary=False, distortion=False, fisheye=False)
    cams.distortion_params = torch.tensor([[0.02, 0, 0, 0, 0, 0]]).expand(200, 6).clone()
    _, table = camera_set(cams, torch.eye(4)[:3], 1.0)
    assert len(encode_intrinsics(table)) < 200


def _table(n=3, **changes):
    t = CameraTable(np.tile(np.float32([[300, 300, 32, 24]]), (n, 1)), np.zeros((n, 6), np.float32),
                    np.tile(np.int32([[64, 48]]), (n, 1)), np.zeros(n, np.uint8))
    return t._replace(**changes)


@pytest.mark.parametrize("change,message", [
    (dict(models=np.array([0, 4, 0], np.uint8)), "camera model index 4"),
    (dict(models=np.array([2, 0, 0], np.uint8), distortion=np.float32([[0.1, 0, 0, 0, 0, 0]] + [[0] * 6] * 2)),
     "distortion on a camera model"),
    (dict(intrinsics=np.float32([[np.nan, 1, 1, 1]] * 3)), "finite"),
    (dict(intrinsics=np.float32([[0.0, 1, 1, 1]] * 3)), "focal lengths"),
    (dict(sizes=np.int32([[4, 48]] * 3)), "image sides"),
    (dict(sizes=np.float32([[64, 48]] * 3)), "sizes must be int32"),
    (dict(models=np.zeros(2, np.uint8)), "must be"),
])
def test_bad_tables_are_refused_with_one_line(change, message):
    with pytest.raises(BitstreamError, match=message) as info:
        check_camera_table(_table(**change))
    assert "\n" not in str(info.value)


def test_decoding_checks_the_camera_count_and_bounds_the_payload():
    payload = encode_intrinsics(_table(3))
    assert decode_intrinsics(payload, 3).sizes.shape == (3, 2)
    with pytest.raises(BitstreamError, match="more than 2 cameras|expected 2"):
        decode_intrinsics(payload, 2)
    with pytest.raises(BitstreamError):
        decode_intrinsics(payload[:-3], 3)


@pytest.mark.parametrize("case", ["fisheye624", "times", "equirect-distortion", "distortion-shape"])
def test_export_refuses_cameras_the_format_cannot_hold(case):
    from nerfstudio.cameras.cameras import CameraType

    from nerfcodec_ns.scenefile.export import ExportError, camera_set

    cams = _cameras(n=3, fisheye=False)
    if case == "fisheye624":
        cams.camera_type[0] = CameraType.FISHEYE624.value
    elif case == "times":
        cams = _cameras(n=3, fisheye=False, times=torch.zeros(3, 1))
    elif case == "equirect-distortion":
        cams.camera_type[0] = CameraType.EQUIRECTANGULAR.value
    else:
        cams.distortion_params = torch.zeros(3, 4)
    with pytest.raises(ExportError) as info:
        camera_set(cams, torch.eye(4)[:3], 1.0)
    assert "\n" not in str(info.value) and len(str(info.value)) < 300


# ------------------------------------------------------------------------------ data parser record


def test_the_data_parser_record_rebuilds_the_training_parser(tmp_path):
    from types import SimpleNamespace

    from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig

    from nerfcodec_ns.scenefile.datasets import dataparser_extra, dataparser_for

    config = NerfstudioDataParserConfig(data=Path("/somewhere"), eval_mode="interval", scene_scale=1.5)
    extra = dict(dataparser_extra(config))
    assert extra["dataparser"] == "nerfstudio-data"
    assert json.loads(extra["dataparser_args"]) == {"eval_mode": "interval", "scene_scale": 1.5}
    header = SimpleNamespace(get_extra=lambda k, d=None: extra.get(k, d), render=SimpleNamespace(background="white"))
    back = dataparser_for(header, tmp_path)
    assert isinstance(back, NerfstudioDataParserConfig)
    assert (back.eval_mode, back.scene_scale, back.data) == ("interval", 1.5, tmp_path.absolute())
    assert dataparser_extra(None) == ()


def test_the_parser_is_chosen_from_the_folder_when_the_file_has_no_record(tmp_path):
    from types import SimpleNamespace

    from nerfcodec_ns.scenefile.datasets import DatasetError, dataparser_for, detect_parser

    header = SimpleNamespace(get_extra=lambda k, d=None: d, render=SimpleNamespace(background="black"))
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "transforms_train.json").write_text("{}")
    blender = dataparser_for(header, tmp_path / "a")
    assert type(blender).__name__ == "BlenderDataParserConfig" and blender.alpha_color == "black"
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "transforms.json").write_text("{}")
    assert detect_parser(tmp_path / "b") == "nerfstudio-data"
    (tmp_path / "c" / "sparse" / "0").mkdir(parents=True)
    assert detect_parser(tmp_path / "c") == "colmap"
    with pytest.raises(DatasetError, match="pass --dataparser"):
        detect_parser(tmp_path)
    with pytest.raises(DatasetError, match="unknown data parser 'nope'"):
        dataparser_for(header, tmp_path / "a", "nope")
