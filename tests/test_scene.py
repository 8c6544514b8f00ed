"""Tests for the procedural NeRF-Synthetic scene generator (CPU only, a few seconds)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nerfcodec_ns import scene as scene_mod
from nerfcodec_ns.scene import (
    SCENE_BOUND,
    SceneSpec,
    build_scene,
    camera_poses,
    render_view,
    write_blender_scene,
)

SMALL = SceneSpec(seed=3, resolution=32, num_train=5, num_val=2, num_test=3)
SPLITS = ("train", "val", "test")


def _all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _load_rgba(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.mode == "RGBA"
        return np.asarray(im)


def _expected_alpha(scene: scene_mod.Scene, c2w: np.ndarray, spec: SceneSpec) -> np.ndarray:
    """Independent coverage computation: NeRF-Synthetic / nerfstudio pinhole rays (pixel centres at
    +0.5, focal from camera_angle_x, camera looks down -z, +y up, image rows down) on the s x s
    sub-grid, hit-tested against the scene's spheres (distance to ray) and boxes (per-axis slabs)."""
    n = spec.resolution * spec.supersample
    focal = 0.5 * n / np.tan(0.5 * spec.camera_angle_x)
    rows, cols = np.meshgrid(np.arange(n) + 0.5, np.arange(n) + 0.5, indexing="ij")
    d_cam = np.stack([(cols - n / 2) / focal, -(rows - n / 2) / focal, -np.ones_like(rows)], axis=-1)
    d = d_cam @ np.asarray(c2w)[:3, :3].T
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    o = np.asarray(c2w)[:3, 3]
    return _coverage(scene, o, d.reshape(-1, 3)).reshape(n, n)


def _coverage(scene: scene_mod.Scene, o: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Boolean hit mask (N,) of unit rays d (N, 3) from o (3,) with any primitive."""
    hit = np.zeros(d.shape[0], dtype=bool)
    for s in scene.spheres:
        oc = np.asarray(s.center) - o
        along = d @ oc
        perp2 = np.sum((oc[None, :] - along[:, None] * d) ** 2, axis=1)
        hit |= (along > 0) & (perp2 <= s.radius**2)
    for b in scene.boxes:
        lo = np.asarray(b.center) - np.asarray(b.half_size)
        hi = np.asarray(b.center) + np.asarray(b.half_size)
        t_near = np.full(d.shape[0], -np.inf)
        t_far = np.full(d.shape[0], np.inf)
        for ax in range(3):
            with np.errstate(divide="ignore", invalid="ignore"):
                ta = (lo[ax] - o[ax]) / d[:, ax]
                tb = (hi[ax] - o[ax]) / d[:, ax]
            t_near = np.maximum(t_near, np.minimum(ta, tb))
            t_far = np.minimum(t_far, np.maximum(ta, tb))
        hit |= (t_near <= t_far) & (t_far > 0)
    return hit


def _assert_alpha_matches(alpha: np.ndarray, expected_hits: np.ndarray, ss: int) -> None:
    res = alpha.shape[0]
    count = expected_hits.reshape(res, ss, res, ss).sum(axis=(1, 3))
    expected = np.rint(255.0 * count / (ss * ss)).astype(int)
    diff = np.abs(alpha.astype(int) - expected)
    quantum = int(np.ceil(255.0 / (ss * ss)))
    # Exact up to floating-point ties on silhouettes: at most one pixel off by one sub-sample.
    assert np.count_nonzero(diff) <= 1, f"{np.count_nonzero(diff)} pixels differ, max {diff.max()}"
    assert diff.max() <= quantum


# ----------------------------------------------------------------------------- determinism


def test_same_seed_is_byte_identical_and_different_seed_differs(tmp_path: Path) -> None:
    a = _all_files(write_blender_scene(tmp_path / "a", SMALL))
    b = _all_files(write_blender_scene(tmp_path / "b", SMALL))
    assert a.keys() == b.keys()
    assert a == b
    c = _all_files(write_blender_scene(tmp_path / "c", dataclasses.replace(SMALL, seed=4)))
    assert c.keys() == a.keys()
    pngs = [k for k in a if k.endswith(".png")]
    assert all(a[k] != c[k] for k in pngs)
    assert a["transforms_train.json"] != c["transforms_train.json"]


# ----------------------------------------------------------------------------------- layout


def test_layout_and_cameras(tmp_path: Path) -> None:
    spec = SMALL
    out = write_blender_scene(tmp_path / "scene", spec)
    assert out == tmp_path / "scene"
    counts = {"train": spec.num_train, "val": spec.num_val, "test": spec.num_test}
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [*SPLITS, *(f"transforms_{s}.json" for s in SPLITS)]
    )
    all_positions = {}
    for split in SPLITS:
        meta = json.loads((out / f"transforms_{split}.json").read_text())
        assert meta["camera_angle_x"] == pytest.approx(spec.camera_angle_x)
        assert len(meta["frames"]) == counts[split]
        assert sorted(p.name for p in (out / split).iterdir()) == sorted(
            f"r_{i}.png" for i in range(counts[split])
        )
        positions = []
        for i, frame in enumerate(meta["frames"]):
            assert frame["file_path"] == f"./{split}/r_{i}"
            assert frame["rotation"] == 0.0
            # nerfstudio's blender dataparser: data / (file_path without "./") + ".png"
            assert (out / (frame["file_path"].replace("./", "") + ".png")).is_file()
            m = np.array(frame["transform_matrix"], dtype=np.float64)
            assert m.shape == (4, 4)
            np.testing.assert_allclose(m[3], [0, 0, 0, 1], atol=0)
            rot, pos = m[:3, :3], m[:3, 3]
            np.testing.assert_allclose(rot.T @ rot, np.eye(3), atol=1e-9)
            assert np.linalg.det(rot) == pytest.approx(1.0, abs=1e-9)
            assert np.linalg.norm(pos) == pytest.approx(spec.radius, abs=1e-9)
            # OpenGL convention: the camera looks down its -z axis, towards the origin.
            np.testing.assert_allclose(-rot[:, 2], -pos / np.linalg.norm(pos), atol=1e-6)
            # World +z up: camera x axis is horizontal and the camera is not upside down.
            assert abs(rot[2, 0]) < 1e-9 and rot[2, 1] > 0
            elevation = np.degrees(np.arcsin(pos[2] / spec.radius))
            assert -10.0 - 1e-9 <= elevation <= 70.0 + 1e-9
            positions.append(pos)
        all_positions[split] = np.array(positions)
    # Held-out views are not copies of training views.
    for split in ("val", "test"):
        dist = np.linalg.norm(all_positions[split][:, None] - all_positions["train"][None], axis=-1)
        assert dist.min() > 1e-3
    test_frames = json.loads((out / "transforms_test.json").read_text())["frames"]
    written = np.stack([np.array(f["transform_matrix"]) for f in test_frames])
    np.testing.assert_array_equal(written, camera_poses(spec)["test"])  # JSON floats round-trip


def test_train_cameras_cover_azimuths_and_elevations() -> None:
    poses = camera_poses(SceneSpec(num_train=200))["train"]
    pos = poses[:, :3, 3]
    az = np.degrees(np.arctan2(pos[:, 1], pos[:, 0])) % 360
    el = np.degrees(np.arcsin(pos[:, 2] / 4.0))
    assert np.histogram(az, bins=8, range=(0, 360))[0].min() > 5
    assert el.min() < 5 and el.max() > 55 and (el < 0).any()


def test_scene_inside_bounds_for_many_seeds() -> None:
    for seed in range(100):
        lo, hi = build_scene(seed).bounds()
        assert lo.min() >= -SCENE_BOUND and hi.max() <= SCENE_BOUND, seed
    assert SCENE_BOUND <= 1.0  # well inside nerfstudio's blender aabb [-1.5, 1.5]^3 and [-1.2, 1.2]^3


# ----------------------------------------------------------------------------------- images


def test_images_rgba_antialiased_and_textured(tmp_path: Path) -> None:
    spec = SceneSpec(seed=1, resolution=64, num_train=3, num_val=1, num_test=1)
    out = write_blender_scene(tmp_path / "scene", spec)
    for split, n in (("train", 3), ("val", 1), ("test", 1)):
        for i in range(n):
            img = _load_rgba(out / split / f"r_{i}.png")
            assert img.dtype == np.uint8 and img.shape == (64, 64, 4)
            alpha, rgb = img[..., 3], img[..., :3]
            assert (alpha == 0).any() and (alpha == 255).any()
            frac = (alpha > 0) & (alpha < 255)
            assert frac.sum() >= 10  # antialiased silhouettes
            assert set(np.unique(alpha)) <= {0, 64, 128, 191, 255}  # s=2 -> multiples of 1/4
            assert (rgb[alpha == 0] == 0).all()
            # The whole scene is in view: nothing touches the image border.
            border = np.concatenate([alpha[0], alpha[-1], alpha[:, 0], alpha[:, -1]])
            assert (border == 0).all()
            # Textured, not flat: strong colour variation inside the object.
            solid = rgb[alpha == 255].astype(np.float64)
            assert solid.std(axis=0).mean() > 20.0
            # Straight (non-premultiplied) colour: edge pixels are not darkened by their coverage.
            assert rgb[frac].astype(float).mean() > 0.5 * solid.mean()


def test_supersample_one_gives_binary_alpha() -> None:
    spec = SceneSpec(seed=2, resolution=48, supersample=1)
    scene = build_scene(spec.seed)
    img = render_view(scene, camera_poses(spec)["train"][0], spec)
    assert set(np.unique(img[..., 3])) == {0, 255}
    assert (img[..., :3][img[..., 3] == 0] == 0).all()


@pytest.mark.parametrize("seed,ss", [(0, 2), (5, 3), (7, 1)])
def test_alpha_is_exact_coverage(seed: int, ss: int) -> None:
    spec = SceneSpec(seed=seed, resolution=40, supersample=ss, num_train=2, num_val=1, num_test=1)
    scene = build_scene(seed)
    poses = camera_poses(spec)
    for c2w in (poses["train"][0], poses["train"][1], poses["test"][0]):
        alpha = render_view(scene, c2w, spec)[..., 3]
        _assert_alpha_matches(alpha, _expected_alpha(scene, c2w, spec), ss)


def test_alpha_catches_a_wrong_camera_convention() -> None:
    """Sanity check of the check above: a y-flipped camera must not match."""
    spec = SceneSpec(seed=0, resolution=40, supersample=2)
    scene = build_scene(0)
    c2w = camera_poses(spec)["train"][0]
    flipped = c2w.copy()
    flipped[:3, 1] *= -1
    flipped[:3, 0] *= -1  # keep it a rotation: rotate 180 degrees about the view axis
    alpha = render_view(scene, flipped, spec)[..., 3]
    with pytest.raises(AssertionError):
        _assert_alpha_matches(alpha, _expected_alpha(scene, c2w, spec), 2)


def test_supersampled_equals_downsampled_fine_render() -> None:
    coarse = SceneSpec(seed=6, resolution=24, supersample=2)
    fine = SceneSpec(seed=6, resolution=48, supersample=1)
    scene = build_scene(6)
    c2w = camera_poses(coarse)["val"][1]
    a = render_view(scene, c2w, coarse)[..., 3].astype(int)
    f = render_view(scene, c2w, fine)[..., 3].astype(int) // 255
    np.testing.assert_array_equal(a, np.rint(255 * f.reshape(24, 2, 24, 2).mean(axis=(1, 3))))


def test_view_dependent_specular() -> None:
    """A surface point seen head-on along the light direction (highlight) vs. 60 degrees away:
    colours differ by the specular term only (equal when the scene's specular strength is 0)."""
    spec = SceneSpec(seed=0, resolution=65)  # odd: the centre pixel's ray is the optical axis

    def centre_colours(scene: scene_mod.Scene) -> list[np.ndarray]:
        light = np.asarray(scene.light_dir) / np.linalg.norm(scene.light_dir)
        point = np.asarray(scene.spheres[0].center) + scene.spheres[0].radius * light
        axis = np.cross(light, [0.0, 0.0, 1.0])
        axis /= np.linalg.norm(axis)
        cols = []
        for angle in (0.0, np.radians(60.0)):
            view = light * np.cos(angle) + np.cross(axis, light) * np.sin(angle)
            c2w = scene_mod.look_at(view)  # orientation looking along -view ...
            c2w[:3, 3] = point + 3.0 * view  # ... placed so the optical axis hits `point`
            img = render_view(scene, c2w, spec)
            assert img[32, 32, 3] == 255
            cols.append(img[32, 32, :3].astype(int))
        return cols

    scene = build_scene(0)
    shiny = centre_colours(scene)
    assert (shiny[0] - shiny[1]).mean() > 40
    matte = centre_colours(dataclasses.replace(scene, specular=0.0))
    assert np.abs(matte[0] - matte[1]).max() <= 3
    np.testing.assert_allclose(matte[1], shiny[1], atol=15)  # highlight is small: gone at 60 degrees


# ------------------------------------------------------------------------------ atomicity


def test_existing_non_empty_dir_requires_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "scene"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="scene"):
        write_blender_scene(out, SMALL)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert (out / "keep.txt").read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene"]

    write_blender_scene(out, SMALL, overwrite=True)
    assert not (out / "keep.txt").exists()
    assert (out / "transforms_train.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene"]


def test_existing_empty_dir_is_filled(tmp_path: Path) -> None:
    out = tmp_path / "scene"
    out.mkdir()
    write_blender_scene(out, SMALL)
    assert (out / "test" / "r_2.png").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene"]


def test_file_in_the_way_raises(tmp_path: Path) -> None:
    out = tmp_path / "scene"
    out.write_text("x")
    with pytest.raises(FileExistsError):
        write_blender_scene(out, SMALL, overwrite=True)
    assert out.read_text() == "x"


def test_nested_output_dir_is_created(tmp_path: Path) -> None:
    out = write_blender_scene(tmp_path / "a" / "b" / "scene", SMALL)
    assert (out / "transforms_val.json").is_file()


def _failing_render(monkeypatch: pytest.MonkeyPatch, fail_at: int) -> None:
    real = scene_mod.render_view
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == fail_at:
            raise RuntimeError("simulated crash")
        return real(*args, **kwargs)

    monkeypatch.setattr(scene_mod, "render_view", flaky)


@pytest.mark.parametrize("fail_at", [1, 4, 9])
def test_failure_leaves_no_partial_dataset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail_at: int
) -> None:
    _failing_render(monkeypatch, fail_at)
    with pytest.raises(RuntimeError, match="simulated crash"):
        write_blender_scene(tmp_path / "scene", SMALL)
    assert list(tmp_path.iterdir()) == []


def test_failure_during_overwrite_keeps_old_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = write_blender_scene(tmp_path / "scene", SMALL)
    before = _all_files(out)
    _failing_render(monkeypatch, 6)
    with pytest.raises(RuntimeError, match="simulated crash"):
        write_blender_scene(out, dataclasses.replace(SMALL, seed=9), overwrite=True)
    assert _all_files(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene"]


# ------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "kwargs",
    [
        {"resolution": 0},
        {"resolution": -4},
        {"resolution": 32.0},
        {"num_train": 0},
        {"num_val": 0},
        {"num_test": -1},
        {"supersample": 0},
        {"seed": -1},
        {"seed": True},
        {"camera_angle_x": 0.0},
        {"camera_angle_x": 3.2},
        {"camera_angle_x": float("nan")},
        {"radius": 1.0},
        {"radius": float("inf")},
    ],
)
def test_invalid_spec_raises(kwargs: dict) -> None:
    with pytest.raises(ValueError, match="SceneSpec"):
        SceneSpec(**kwargs)


def test_spec_is_frozen() -> None:
    with pytest.raises(AttributeError):
        SceneSpec().resolution = 8  # type: ignore[misc]


# ------------------------------------------------------------------------------ nerfstudio


def test_nerfstudio_blender_dataparser_reads_it(tmp_path: Path) -> None:
    """nerfstudio's own cameras/rays reproduce our silhouettes (convention check end to end)."""
    pytest.importorskip("nerfstudio")
    import torch
    from nerfstudio.data.dataparsers.blender_dataparser import BlenderDataParserConfig

    spec = SceneSpec(seed=4, resolution=32, supersample=1, num_train=3, num_val=1, num_test=1)
    out = write_blender_scene(tmp_path / "scene", spec)
    outputs = BlenderDataParserConfig(data=out).setup().get_dataparser_outputs(split="train")
    assert len(outputs.image_filenames) == 3
    assert (outputs.scene_box.aabb.abs() >= SCENE_BOUND).all()
    scene = build_scene(spec.seed)
    for i in range(3):
        with torch.no_grad():
            rays = outputs.cameras.generate_rays(camera_indices=i)
        o = rays.origins.reshape(-1, 3).double().numpy()[0]
        d = rays.directions.reshape(-1, 3).double().numpy()
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        alpha = _load_rgba(out / "train" / f"r_{i}.png")[..., 3]
        hits = _coverage(scene, o, d).reshape(32, 32)
        # float32 poses in nerfstudio: allow a couple of silhouette pixels to differ.
        assert np.count_nonzero((alpha == 255) != hits) <= 3
