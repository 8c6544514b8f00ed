"""Procedural NeRF-Synthetic (Blender-format) scene generator, and a procedural real-capture-like
variant (nerfstudio format) with a surrounding environment.

Writes a small, seed-deterministic RGBA dataset that needs no download:
``train/``, ``val/``, ``test/`` folders of ``r_{i}.png`` images plus
``transforms_{split}.json`` files, laid out exactly like NeRF-Synthetic so that
nerfstudio's ``blender-data`` dataparser reads it unchanged.

The scene (a textured sphere, a striped box and a gradient sphere, all inside
``[-SCENE_BOUND, SCENE_BOUND]^3`` world units) is ray-traced analytically with
numpy. Cameras follow the OpenGL / NeRF-Synthetic convention: the camera looks
down its local -z axis, +y is up and +x is right; world +z is up. Pixel centres
are at integer + 0.5 and ``focal = 0.5 * width / tan(0.5 * camera_angle_x)``,
as in nerfstudio.

:func:`write_capture_scene` writes the same objects inside a textured environment sphere (every ray
hits something: an unbounded scene for a field without a background colour) in nerfstudio's own
format (``transforms.json`` + ``images/``, OPENCV cameras with radial distortion k1 and per-frame
focal lengths), which nerfstudio's ``nerfstudio-data`` dataparser reads.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = [
    "SCENE_BOUND",
    "SceneSpec",
    "Sphere",
    "Box",
    "Scene",
    "build_scene",
    "camera_poses",
    "look_at",
    "render_view",
    "write_blender_scene",
    "write_capture_scene",
    "SURROUND_RADIUS",
]

SCENE_BOUND = 1.0
"""All geometry lies inside the cube [-SCENE_BOUND, SCENE_BOUND]^3 (world units)."""

#: Radius of the environment sphere of :func:`write_capture_scene`, in multiples of the camera radius.
SURROUND_RADIUS = 3.0

_SPLITS = ("train", "val", "test")
_TRAIN_ELEVATION_DEG = (-10.0, 70.0)
_MAX_RAYS_PER_CHUNK = 1 << 18

_Vec3 = tuple[float, float, float]


# --------------------------------------------------------------------------- spec


@dataclass(frozen=True)
class SceneSpec:
    """Parameters of one generated dataset; validated on construction (ValueError)."""

    seed: int = 0
    """Seed: geometry/colours use ``default_rng(seed)``, train cameras ``default_rng([seed, 1])``."""
    resolution: int = 64
    """Image width = height, in pixels."""
    num_train: int = 40
    """Number of training views (random positions)."""
    num_val: int = 8
    """Number of validation views (deterministic orbit)."""
    num_test: int = 8
    """Number of test views (deterministic orbit)."""
    camera_angle_x: float = 0.6911
    """Horizontal field of view in radians (NeRF-Synthetic lego uses 0.6911)."""
    radius: float = 4.0
    """Distance of every camera from the world origin (world units)."""
    supersample: int = 2
    """Sub-pixel samples per pixel side (s*s rays per pixel) for antialiased colour and alpha."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError (one-line message) if any field is out of range."""
        _check_int("seed", self.seed, 0, 2**63 - 1)
        _check_int("resolution", self.resolution, 1, 8192)
        _check_int("num_train", self.num_train, 1, 100_000)
        _check_int("num_val", self.num_val, 1, 100_000)
        _check_int("num_test", self.num_test, 1, 100_000)
        _check_int("supersample", self.supersample, 1, 16)
        _check_float("camera_angle_x", self.camera_angle_x, 0.0, math.pi)
        # Cameras must stay outside the scene's bounding cube (half-diagonal sqrt(3) * SCENE_BOUND).
        _check_float("radius", self.radius, 2.0 * SCENE_BOUND, 1e6, lo_inclusive=True)


def _check_int(name: str, value: object, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not lo <= value <= hi:
        raise ValueError(f"SceneSpec.{name} must be an int in [{lo}, {hi}], got {value!r}")


def _check_float(name: str, value: object, lo: float, hi: float, lo_inclusive: bool = False) -> None:
    ok = (
        not isinstance(value, bool)
        and isinstance(value, (int, float, np.integer, np.floating))
        and math.isfinite(value)
        and (lo <= value if lo_inclusive else lo < value)
        and value < hi
    )
    if not ok:
        lo_b = "[" if lo_inclusive else "("
        interval = f"{lo_b}{lo:.4g}, {hi:.4g})"
        raise ValueError(f"SceneSpec.{name} must be a finite number in {interval}, got {value!r}")


# -------------------------------------------------------------------------- scene


@dataclass(frozen=True)
class Sphere:
    """A sphere with a procedural texture: soft checker in spherical coords or a vertical gradient."""

    center: _Vec3
    """Centre, world units."""
    radius: float
    """Radius, world units."""
    color_a: _Vec3
    """First texture colour, RGB in [0, 1]."""
    color_b: _Vec3
    """Second texture colour, RGB in [0, 1]."""
    pattern: str
    """"checker" (longitude x latitude cells) or "gradient" (color_b at the bottom -> color_a at the top)."""
    cells: tuple[int, int] = (3, 2)
    """Checker frequency: (periods in longitude, periods of cos(k*theta) in latitude)."""


@dataclass(frozen=True)
class Box:
    """An axis-aligned box with soft diagonal stripes (visible on every face)."""

    center: _Vec3
    """Centre, world units."""
    half_size: _Vec3
    """Half extents along x, y, z, world units."""
    color_a: _Vec3
    """First stripe colour, RGB in [0, 1]."""
    color_b: _Vec3
    """Second stripe colour, RGB in [0, 1]."""
    stripe_dir: _Vec3
    """Unit vector; stripes vary along it."""
    stripe_freq: float
    """Stripe frequency, cycles per world unit."""


@dataclass(frozen=True)
class Scene:
    """Primitives plus a fixed lighting model (directional light + ambient + Blinn-Phong specular)."""

    spheres: tuple[Sphere, ...]
    """Spheres in the scene."""
    boxes: tuple[Box, ...]
    """Axis-aligned boxes in the scene."""
    light_dir: _Vec3 = (0.4364, 0.2182, 0.8729)
    """Unit vector pointing towards the light (world)."""
    ambient: float = 0.35
    """Ambient factor multiplying the albedo."""
    diffuse: float = 0.65
    """Lambert factor multiplying albedo * max(0, n.l)."""
    specular: float = 0.3
    """Strength of the white Blinn-Phong highlight (the view-dependent part)."""
    shininess: float = 30.0
    """Blinn-Phong exponent."""
    environment: Sphere | None = None
    """A sphere around everything, seen from inside and unlit (its texture is its colour): rays that
    miss the objects hit it, so every pixel is opaque."""

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Axis-aligned bounds (min, max), each shape (3,), world units."""
        lo = [np.asarray(s.center) - s.radius for s in self.spheres]
        hi = [np.asarray(s.center) + s.radius for s in self.spheres]
        lo += [np.asarray(b.center) - np.asarray(b.half_size) for b in self.boxes]
        hi += [np.asarray(b.center) + np.asarray(b.half_size) for b in self.boxes]
        return np.min(lo, axis=0), np.max(hi, axis=0)


_PALETTE = np.array(
    [
        (0.86, 0.20, 0.16),  # red
        (0.96, 0.62, 0.12),  # orange
        (0.95, 0.87, 0.25),  # yellow
        (0.22, 0.70, 0.30),  # green
        (0.12, 0.60, 0.66),  # teal
        (0.20, 0.34, 0.86),  # blue
        (0.58, 0.26, 0.78),  # purple
        (0.92, 0.91, 0.86),  # off-white
        (0.18, 0.17, 0.24),  # near-black
    ]
)


def _t3(x: np.ndarray) -> _Vec3:
    return (float(x[0]), float(x[1]), float(x[2]))


def _contrasting_pairs(rng: np.random.Generator, num_pairs: int) -> np.ndarray:
    """(2 * num_pairs, 3) distinct palette colours, consecutive pairs clearly different, slightly jittered."""
    remaining = [int(i) for i in rng.permutation(len(_PALETTE))]
    picked: list[int] = []
    for _ in range(num_pairs):
        a = remaining.pop(0)
        dist = [float(np.linalg.norm(_PALETTE[a] - _PALETTE[c])) for c in remaining]
        far = [k for k, d in enumerate(dist) if d > 0.75]
        b = remaining.pop(far[0] if far else int(np.argmax(dist)))
        picked += [a, b]
    colors = _PALETTE[picked]
    return np.clip(colors + rng.uniform(-0.04, 0.04, size=colors.shape), 0.0, 1.0)


def build_scene(seed: int) -> Scene:
    """Place and colour the primitives from ``numpy.random.default_rng(seed)``; stays inside SCENE_BOUND."""
    rng = np.random.default_rng(seed)
    colors = _contrasting_pairs(rng, 3)

    main = Sphere(
        center=_t3(rng.uniform(-0.05, 0.05, size=3)),
        radius=float(rng.uniform(0.48, 0.58)),
        color_a=_t3(colors[0]),
        color_b=_t3(colors[1]),
        pattern="checker",
        cells=(int(rng.integers(2, 5)), int(rng.integers(2, 4))),
    )

    box_az = rng.uniform(0.0, 2.0 * math.pi)
    box_center = np.array([0.72 * math.cos(box_az), 0.72 * math.sin(box_az), rng.uniform(-0.45, -0.3)])
    stripe = rng.normal(size=3)
    stripe = np.abs(stripe) + 0.3  # a direction not parallel to any face -> stripes on all faces
    stripe /= np.linalg.norm(stripe)
    box = Box(
        center=_t3(box_center),
        half_size=_t3(rng.uniform(0.16, 0.25, size=3)),
        color_a=_t3(colors[2]),
        color_b=_t3(colors[3]),
        stripe_dir=_t3(stripe),
        stripe_freq=float(rng.uniform(3.0, 4.5)),
    )

    small_az = box_az + math.pi + rng.uniform(-0.6, 0.6)
    small = Sphere(
        center=_t3(np.array([0.7 * math.cos(small_az), 0.7 * math.sin(small_az), rng.uniform(0.15, 0.35)])),
        radius=float(rng.uniform(0.22, 0.28)),
        color_a=_t3(colors[4]),
        color_b=_t3(colors[5]),
        pattern="gradient",
    )
    return Scene(spheres=(main, small), boxes=(box,))


# ------------------------------------------------------------------------ cameras


def look_at(position: np.ndarray) -> np.ndarray:
    """Camera-to-world (4, 4) float64 at ``position`` (3,), looking at the origin, world +z up (OpenGL)."""
    pos = np.asarray(position, dtype=np.float64)
    z = pos / np.linalg.norm(pos)  # camera looks along -z, i.e. towards the origin
    x = np.cross(np.array([0.0, 0.0, 1.0]), z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = x, y, z, pos
    return c2w


def _spherical(radius: float, azimuth: np.ndarray, elevation: np.ndarray) -> np.ndarray:
    """Positions (N, 3) at ``radius`` for azimuth/elevation arrays (N,) in radians."""
    ce = np.cos(elevation)
    return radius * np.stack([ce * np.cos(azimuth), ce * np.sin(azimuth), np.sin(elevation)], axis=-1)


def camera_poses(spec: SceneSpec) -> dict[str, np.ndarray]:
    """Camera-to-world matrices per split: {"train": (num_train, 4, 4), "val": ..., "test": ...}.

    Train: uniform on the sphere band with elevation in [-10, 70] degrees, all azimuths.
    Val: orbit at 30 degrees elevation. Test: orbit alternating 15 / 45 degrees elevation.
    """
    rng = np.random.default_rng([spec.seed, 1])
    lo, hi = np.radians(_TRAIN_ELEVATION_DEG)
    elev_train = np.arcsin(rng.uniform(math.sin(lo), math.sin(hi), size=spec.num_train))
    az_train = rng.uniform(0.0, 2.0 * math.pi, size=spec.num_train)

    k_val = np.arange(spec.num_val)
    az_val = 2.0 * math.pi * (k_val + 0.25) / spec.num_val
    elev_val = np.full(spec.num_val, math.radians(30.0))

    k_test = np.arange(spec.num_test)
    az_test = 2.0 * math.pi * (k_test + 0.75) / spec.num_test
    elev_test = np.radians(np.where(k_test % 2 == 0, 15.0, 45.0))

    out = {}
    for split, az, el in (
        ("train", az_train, elev_train),
        ("val", az_val, elev_val),
        ("test", az_test, elev_test),
    ):
        out[split] = np.stack([look_at(p) for p in _spherical(spec.radius, az, el)])
    return out


# ---------------------------------------------------------------------- rendering


def _intersect_sphere(origin: np.ndarray, dirs: np.ndarray, s: Sphere) -> np.ndarray:
    """Nearest positive hit distance (N,) of unit rays with a sphere; inf where missed."""
    oc = origin - np.asarray(s.center)
    b = dirs @ oc
    c = float(oc @ oc) - s.radius**2
    disc = b * b - c
    hit = disc >= 0.0
    t = np.full(dirs.shape[0], np.inf)
    t_hit = -b[hit] - np.sqrt(disc[hit])
    t[hit] = np.where(t_hit > 0.0, t_hit, np.inf)
    return t


def _intersect_box(origin: np.ndarray, dirs: np.ndarray, bx: Box) -> np.ndarray:
    """Entry distance (N,) of unit rays into an axis-aligned box (slab method); inf where missed."""
    lo = np.asarray(bx.center) - np.asarray(bx.half_size)
    hi = np.asarray(bx.center) + np.asarray(bx.half_size)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / dirs
        t1 = (lo - origin) * inv
        t2 = (hi - origin) * inv
    t_near = np.nanmax(np.fmin(t1, t2), axis=1)
    t_far = np.nanmin(np.fmax(t1, t2), axis=1)
    hit = (t_near <= t_far) & (t_near > 0.0)
    return np.where(hit, t_near, np.inf)


def _soft(x: np.ndarray) -> np.ndarray:
    """Map a signed pattern value to a soft 0..1 mask (smooth edges keep the texture learnable)."""
    return 0.5 + 0.5 * np.tanh(3.0 * x)


def _mix(a: _Vec3, b: _Vec3, t: np.ndarray) -> np.ndarray:
    """(N, 3) blend from colour a (t=0) to b (t=1)."""
    return np.asarray(a) + (np.asarray(b) - np.asarray(a)) * t[:, None]


def _shade_sphere(s: Sphere, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Albedo (N, 3) and unit normals (N, 3) at surface points (N, 3)."""
    n = (points - np.asarray(s.center)) / s.radius
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    if s.pattern == "checker":
        phi = np.arctan2(n[:, 1], n[:, 0])
        theta = np.arccos(np.clip(n[:, 2], -1.0, 1.0))
        t = _soft(np.sin(s.cells[0] * phi) * np.cos(s.cells[1] * theta))
    else:
        t = 0.5 - 0.5 * n[:, 2]
    return _mix(s.color_a, s.color_b, t), n


def _shade_box(bx: Box, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Albedo (N, 3) and unit face normals (N, 3) at surface points (N, 3)."""
    local = (points - np.asarray(bx.center)) / np.asarray(bx.half_size)
    axis = np.argmax(np.abs(local), axis=1)
    n = np.zeros_like(points)
    rows = np.arange(points.shape[0])
    n[rows, axis] = np.sign(local[rows, axis])
    t = _soft(np.sin(2.0 * math.pi * bx.stripe_freq * (points @ np.asarray(bx.stripe_dir))))
    return _mix(bx.color_a, bx.color_b, t), n


def _trace(scene: Scene, origin: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Trace unit rays (N, 3) from ``origin`` (3,): hit mask (N,) bool and shaded RGB (N, 3) in [0, 1]."""
    prims: list[Sphere | Box] = [*scene.spheres, *scene.boxes]
    t_best = np.full(dirs.shape[0], np.inf)
    which = np.full(dirs.shape[0], -1)
    for k, p in enumerate(prims):
        t = _intersect_sphere(origin, dirs, p) if isinstance(p, Sphere) else _intersect_box(origin, dirs, p)
        closer = t < t_best
        t_best[closer] = t[closer]
        which[closer] = k

    rgb = np.zeros_like(dirs)
    env = scene.environment
    if env is not None:  # from inside: the far intersection, where no object is in front
        oc = origin - np.asarray(env.center)
        b = dirs @ oc
        t_env = -b + np.sqrt(np.maximum(b * b - (float(oc @ oc) - env.radius**2), 0.0))
        idx = np.nonzero(which < 0)[0]
        rgb[idx] = _shade_sphere(env, origin + t_env[idx, None] * dirs[idx])[0]
    light = np.asarray(scene.light_dir, dtype=np.float64)
    light /= np.linalg.norm(light)
    for k, p in enumerate(prims):
        idx = np.nonzero(which == k)[0]
        if idx.size == 0:
            continue
        d = dirs[idx]
        points = origin + t_best[idx, None] * d
        albedo, n = _shade_sphere(p, points) if isinstance(p, Sphere) else _shade_box(p, points)
        ndotl = np.clip(n @ light, 0.0, None)
        half = light - d
        half /= np.linalg.norm(half, axis=1, keepdims=True)
        spec = scene.specular * np.clip(np.sum(n * half, axis=1), 0.0, None) ** scene.shininess
        spec = np.where(ndotl > 0.0, spec, 0.0)
        rgb[idx] = albedo * (scene.ambient + scene.diffuse * ndotl)[:, None] + spec[:, None]
    return (which >= 0) | (env is not None), np.clip(rgb, 0.0, 1.0)


def _undistort(x: np.ndarray, y: np.ndarray, k1: float, iterations: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Normalised image coordinates before radial distortion ``x_d = x_u (1 + k1 r_u^2)`` (fixed-point
    iterations; exact for k1 = 0)."""
    xu, yu = x.copy(), y.copy()
    if k1 == 0.0:
        return xu, yu
    for _ in range(iterations):
        f = 1.0 + k1 * (xu * xu + yu * yu)
        xu, yu = x / f, y / f
    return xu, yu


def render_view(scene: Scene, c2w: np.ndarray, spec: SceneSpec, focal: float | None = None,
                k1: float = 0.0) -> np.ndarray:
    """Render one view: RGBA uint8 (resolution, resolution, 4), straight (non-premultiplied) colour.

    Each pixel averages ``supersample**2`` rays on a regular sub-grid; the sub-sample (a, b) of
    pixel (row i, col j) sits at fine-grid pixel centre (s*i + a + 0.5, s*j + b + 0.5) of an
    (s*res)^2 image, so rendering at (res, s) matches (s*res, 1) ray for ray. Alpha is the exact
    hit fraction rounded to 8 bits; colour is the mean over the hitting sub-samples; RGB = 0 where
    alpha = 0. ``focal`` (pixels; default from ``spec.camera_angle_x``) and ``k1`` (OpenCV radial
    distortion of the image, which nerfstudio undoes) give other cameras.
    """
    res, ss = spec.resolution, spec.supersample
    n = res * ss
    if focal is None:
        focal = 0.5 * n / math.tan(0.5 * spec.camera_angle_x)  # in fine-grid pixels
    else:
        focal = focal * ss
    c2w = np.asarray(c2w, dtype=np.float64)
    rot, origin = c2w[:3, :3], c2w[:3, 3]
    coords = (np.arange(n) + 0.5 - 0.5 * n) / focal

    rows_per_chunk = max(1, _MAX_RAYS_PER_CHUNK // (ss * n))
    out = np.zeros((res, res, 4), dtype=np.uint8)
    for r0 in range(0, res, rows_per_chunk):
        r1 = min(res, r0 + rows_per_chunk)
        y_cam = -coords[r0 * ss : r1 * ss]  # image rows go down, camera +y is up
        cam = np.stack(
            [
                np.broadcast_to(coords[None, :], (y_cam.size, n)),
                np.broadcast_to(y_cam[:, None], (y_cam.size, n)),
                np.full((y_cam.size, n), -1.0),
            ],
            axis=-1,
        ).reshape(-1, 3)
        if k1 != 0.0:
            cam[:, 0], cam[:, 1] = _undistort(cam[:, 0], cam[:, 1], k1)
        dirs = cam @ rot.T
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        hit, rgb = _trace(scene, origin, dirs)

        rows = r1 - r0
        hit = hit.reshape(rows, ss, res, ss)
        rgb = rgb.reshape(rows, ss, res, ss, 3)
        count = hit.sum(axis=(1, 3))
        rgb_sum = (rgb * hit[..., None]).sum(axis=(1, 3))
        mean_rgb = rgb_sum / np.maximum(count, 1)[..., None]
        alpha = np.rint(255.0 * count / (ss * ss))
        color = np.where(count[..., None] > 0, np.rint(255.0 * np.clip(mean_rgb, 0.0, 1.0)), 0.0)
        out[r0:r1, :, :3] = color.astype(np.uint8)
        out[r0:r1, :, 3] = alpha.astype(np.uint8)
    return out


# ------------------------------------------------------------------------- output


def _write_dataset(root: Path, spec: SceneSpec) -> None:
    """Write all splits (images + transforms JSON) into the existing empty directory ``root``."""
    scene = build_scene(spec.seed)
    poses = camera_poses(spec)
    for split in _SPLITS:
        (root / split).mkdir()
        frames = []
        for i, c2w in enumerate(poses[split]):
            rgba = render_view(scene, c2w, spec)
            Image.fromarray(rgba).save(root / split / f"r_{i}.png", format="PNG")
            frames.append(
                {
                    "file_path": f"./{split}/r_{i}",
                    "rotation": 0.0,
                    "transform_matrix": [[float(v) for v in row] for row in c2w],
                }
            )
        meta = {"camera_angle_x": float(spec.camera_angle_x), "frames": frames}
        (root / f"transforms_{split}.json").write_text(json.dumps(meta, indent=4) + "\n")


def write_blender_scene(output_dir: Path, spec: SceneSpec = SceneSpec(), overwrite: bool = False) -> Path:
    """Generate the dataset for ``spec`` at ``output_dir`` atomically; returns ``output_dir``.

    Everything is written into a temporary sibling directory that is renamed into place only
    when complete. An existing non-empty ``output_dir`` raises FileExistsError unless
    ``overwrite`` is True, in which case it is removed only after the new dataset is in place.
    """
    spec.validate()
    return _write_folder(Path(output_dir), overwrite, lambda tmp: _write_dataset(tmp, spec))


def _write_folder(output_dir: Path, overwrite: bool, fill) -> Path:
    """``fill(tmp)`` a temporary sibling of ``output_dir``, then rename it into place (see
    :func:`write_blender_scene` for the rules on an existing folder)."""
    target = Path(os.path.abspath(output_dir))
    if target.parent == target:
        raise ValueError(f"refusing to write a dataset at the filesystem root: {output_dir}")
    if target.exists() or target.is_symlink():
        if not target.is_dir() or target.is_symlink():
            raise FileExistsError(f"{output_dir} exists and is not a plain directory (file or symlink)")
        if not overwrite and any(target.iterdir()):
            raise FileExistsError(f"{output_dir} exists and is not empty (pass overwrite=True to replace it)")

    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".{target.name}.partial-"))
    try:
        fill(tmp)
        os.chmod(tmp, 0o755)
        _move_into_place(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return output_dir


def _move_into_place(tmp: Path, target: Path) -> None:
    """Rename ``tmp`` to ``target``; an existing ``target`` is set aside first and deleted last."""
    if not target.exists():
        os.replace(tmp, target)
        return
    trash = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old-"))
    old = trash / "old"
    try:
        os.replace(target, old)
    except BaseException:
        trash.rmdir()
        raise
    try:
        os.replace(tmp, target)
    except BaseException:
        os.replace(old, target)  # put the previous dataset back
        trash.rmdir()
        raise
    shutil.rmtree(trash)


def write_capture_scene(output_dir: Path, spec: SceneSpec = SceneSpec(), k1: float = 0.02,
                        focal_ratio: float = 1.1, overwrite: bool = False) -> Path:
    """An unbounded, real-capture-like dataset in nerfstudio format at ``output_dir`` (atomically, as
    :func:`write_blender_scene`): the scene of ``spec.seed`` inside a checkered environment sphere of
    radius ``SURROUND_RADIUS * spec.radius``; ``spec.num_train + spec.num_val`` views (the train and
    val cameras of :func:`camera_poses`, in that order) as RGB PNGs, OPENCV cameras with radial
    distortion ``k1``, odd frames with ``focal_ratio`` times the focal length (per-frame intrinsics).
    nerfstudio-data splits the frames itself (its ``eval_mode``)."""
    spec.validate()
    return _write_folder(Path(output_dir), overwrite, lambda tmp: _write_capture(tmp, spec, k1, focal_ratio))


def _write_capture(root: Path, spec: SceneSpec, k1: float, focal_ratio: float) -> None:
    """The files of :func:`write_capture_scene` into the existing empty directory ``root``."""
    base = build_scene(spec.seed)
    colors = _contrasting_pairs(np.random.default_rng([spec.seed, 2]), 1)
    env = Sphere(center=(0.0, 0.0, 0.0), radius=SURROUND_RADIUS * spec.radius, color_a=_t3(colors[0]),
                 color_b=_t3(colors[1]), pattern="checker", cells=(6, 4))
    scene = Scene(spheres=base.spheres, boxes=base.boxes, environment=env)
    poses = camera_poses(spec)
    focal = 0.5 * spec.resolution / math.tan(0.5 * spec.camera_angle_x)
    (root / "images").mkdir()
    frames = []
    for i, c2w in enumerate(np.concatenate([poses["train"], poses["val"]])):
        f = focal * (focal_ratio if i % 2 else 1.0)
        rgb = render_view(scene, c2w, spec, focal=f, k1=k1)[..., :3]
        Image.fromarray(np.ascontiguousarray(rgb)).save(root / "images" / f"frame_{i:05d}.png", format="PNG")
        frames.append({"file_path": f"images/frame_{i:05d}.png", "fl_x": f, "fl_y": f,
                       "transform_matrix": [[float(v) for v in row] for row in c2w]})
    half = 0.5 * spec.resolution
    meta = {"camera_model": "OPENCV", "w": spec.resolution, "h": spec.resolution, "cx": half, "cy": half,
            "k1": k1, "k2": 0.0, "p1": 0.0, "p2": 0.0, "frames": frames}
    (root / "transforms.json").write_text(json.dumps(meta, indent=2) + "\n")
