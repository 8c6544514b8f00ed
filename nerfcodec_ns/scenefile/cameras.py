"""The cameras of a scene file: the ``cameras`` section (training camera-to-world poses), the
optional ``intrinsics`` section (format 5: per-camera intrinsics, camera models and distortion, for
cameras that do not all share the header's intrinsics), and the nerfstudio ``Cameras`` rebuilt from
them.

Written by the exporter, read by the decoder and by the ``nerfcodec-decoded`` dataparser (which
needs no torch for the poses themselves). torch and nerfstudio are imported only by
:func:`camera_batch`, so this module stays torch-free at import time, like the rest of the format.
"""

from __future__ import annotations

import lzma
from typing import TYPE_CHECKING, NamedTuple, Optional

import numpy as np

from nerfcodec_ns.scenefile.header import (
    CAMERA_MODELS,
    DISTORTED_MODELS,
    MAX_CAMERAS,
    MAX_IMAGE_SIDE,
    MAX_MAGNITUDE,
    MIN_FOCAL,
    MIN_IMAGE_SIDE,
    BitstreamError,
    Header,
)
from nerfcodec_ns.scenefile.payload import decode_array, decode_strings, decompress_at_most, encode_array, encode_strings

if TYPE_CHECKING:  # type checkers only: importing torch here would break the torch-free format modules
    import torch
    from nerfstudio.cameras.cameras import Cameras


def encode_poses(camera_to_worlds: "torch.Tensor") -> bytes:
    """``[N, 3, 4]`` poses as float32, LZMA-compressed (the ``cameras`` section)."""
    if len(camera_to_worlds) > MAX_CAMERAS:
        raise BitstreamError(f"{len(camera_to_worlds)} cameras: a scene file holds at most {MAX_CAMERAS}")
    return lzma.compress(encode_array(camera_to_worlds.detach().cpu().float().numpy()), preset=9)


def decode_poses(payload: bytes) -> np.ndarray:
    """Inverse of :func:`encode_poses`; checks the ``[N, 3, 4]`` shape."""
    # the poses unpack to at most MAX_CAMERAS [3, 4] float32 matrices (plus the array framing)
    max_size = 2 + 3 * 4 + MAX_CAMERAS * 12 * 4
    dec = lzma.LZMADecompressor(format=lzma.FORMAT_XZ, memlimit=1 << 27)
    raw = decompress_at_most(dec, payload, max_size, "camera poses",
                             too_long=f"more than {MAX_CAMERAS} cameras", stream="xz")
    arr = decode_array(raw)
    if arr.dtype != np.float32 or arr.ndim != 3 or arr.shape[1:] != (3, 4) or not np.isfinite(arr).all():
        raise BitstreamError(f"corrupt camera poses: expected finite float32 [N, 3, 4], got {arr.dtype} {arr.shape}")
    return arr


class CameraTable(NamedTuple):
    """Per-camera intrinsics (the ``intrinsics`` section), numpy arrays over N cameras."""

    intrinsics: np.ndarray
    """``[N, 4]`` float32: fx, fy, cx, cy (pixels)."""
    distortion: np.ndarray
    """``[N, 6]`` float32: nerfstudio's distortion parameters (k1, k2, k3, k4, p1, p2)."""
    sizes: np.ndarray
    """``[N, 2]`` int32: width, height (pixels)."""
    models: np.ndarray
    """``[N]`` uint8: index into :data:`CAMERA_MODELS`."""

    def arrays(self):
        return (self.intrinsics, self.distortion, self.sizes, self.models)


def check_camera_table(table: CameraTable, n: Optional[int] = None) -> None:
    """Raise a one-line :class:`BitstreamError` unless ``table`` is a valid table of ``n`` cameras:
    the header's limits for every camera, and distortion only on the models nerfstudio distorts."""
    specs = (("intrinsics", np.float32, (4,)), ("distortion", np.float32, (6,)), ("sizes", np.int32, (2,)),
             ("models", np.uint8, ()))
    rows = len(table.models) if isinstance(table.models, np.ndarray) else -1
    for (name, dtype, tail), arr in zip(specs, table.arrays()):
        if not isinstance(arr, np.ndarray) or arr.dtype != dtype or arr.shape != (rows,) + tail:
            got = f"{arr.dtype} {arr.shape}" if isinstance(arr, np.ndarray) else type(arr).__name__
            raise BitstreamError(f"camera intrinsics: {name} must be {np.dtype(dtype)} [N{''.join(f', {t}' for t in tail)}], got {got}")
    if not 1 <= rows <= MAX_CAMERAS or (n is not None and rows != n):
        raise BitstreamError(f"camera intrinsics: {rows} cameras, expected {n if n is not None else f'1..{MAX_CAMERAS}'}")
    floats = np.concatenate([table.intrinsics, table.distortion], axis=1)
    if not np.isfinite(floats).all() or (np.abs(floats) > MAX_MAGNITUDE).any():
        raise BitstreamError(f"camera intrinsics: values must be finite and at most {MAX_MAGNITUDE:g} in magnitude")
    if (table.intrinsics[:, :2] < MIN_FOCAL).any():
        raise BitstreamError(f"camera intrinsics: focal lengths must be at least {MIN_FOCAL:g} px")
    if ((table.sizes < MIN_IMAGE_SIDE) | (table.sizes > MAX_IMAGE_SIDE)).any():
        raise BitstreamError(f"camera intrinsics: image sides must be {MIN_IMAGE_SIDE}..{MAX_IMAGE_SIDE} px")
    if (table.models >= len(CAMERA_MODELS)).any():
        raise BitstreamError(f"camera intrinsics: camera model index {int(table.models.max())} is not one of "
                             f"0..{len(CAMERA_MODELS) - 1} ({', '.join(CAMERA_MODELS)})")
    plain = ~np.isin(table.models, [CAMERA_MODELS.index(m) for m in DISTORTED_MODELS])
    if (table.distortion[plain] != 0).any():
        raise BitstreamError(f"camera intrinsics: distortion on a camera model nerfstudio does not distort "
                             f"(only {', '.join(DISTORTED_MODELS)})")


def encode_intrinsics(table: CameraTable) -> bytes:
    """The ``intrinsics`` section: the table's four arrays (:func:`encode_strings`), LZMA-compressed."""
    check_camera_table(table)
    return lzma.compress(encode_strings([encode_array(a) for a in table.arrays()]), preset=9)


def decode_intrinsics(payload: bytes, n: int) -> CameraTable:
    """Inverse of :func:`encode_intrinsics` for a file of ``n`` cameras; checks every value."""
    # four arrays of n rows (plus the string and array framing, a few hundred bytes at most)
    max_size = 1024 + n * (4 * 4 + 6 * 4 + 2 * 4 + 1)
    dec = lzma.LZMADecompressor(format=lzma.FORMAT_XZ, memlimit=1 << 27)
    raw = decompress_at_most(dec, payload, max_size, "camera intrinsics", too_long=f"more than {n} cameras",
                             stream="xz")
    parts = decode_strings(raw)
    if len(parts) != 4:
        raise BitstreamError(f"camera intrinsics: expected 4 arrays, got {len(parts)}")
    table = CameraTable(*[decode_array(p) for p in parts])
    check_camera_table(table, n)
    return table


def file_camera_table(bs, n: int) -> Optional[CameraTable]:
    """The ``intrinsics`` section of a read file (a ``container.Bitstream``) for its ``n`` cameras,
    checked; None when the file has none (every camera has the header's intrinsics)."""
    return decode_intrinsics(bs.section("intrinsics"), n) if bs.has_section("intrinsics") else None


def camera_batch(header: Header, poses: np.ndarray, size: Optional[int] = None,
                 table: Optional[CameraTable] = None) -> "Cameras":
    """nerfstudio ``Cameras`` for the file's poses, with the per-camera ``table`` when the file has one
    (else the header's shared intrinsics); ``size``: rescale so the longer side of the largest image
    is ``size`` px."""
    import torch
    from nerfstudio.cameras.cameras import Cameras, CameraType

    n = len(poses)
    if table is None:
        c = header.cameras
        intr = np.tile(np.array([[c.fx, c.fy, c.cx, c.cy]], np.float32), (n, 1))
        sizes = np.tile(np.array([[c.width, c.height]], np.int64), (n, 1))
        types = torch.full((n, 1), CameraType[c.camera_model].value, dtype=torch.long)
        distortion = None
    else:
        intr, sizes = table.intrinsics, table.sizes.astype(np.int64)
        types = torch.tensor([CameraType[CAMERA_MODELS[int(m)]].value for m in table.models]).reshape(n, 1)
        distortion = torch.from_numpy(table.distortion.copy()) if (table.distortion != 0).any() else None
    t = torch.from_numpy(np.ascontiguousarray(intr, np.float32))
    cams = Cameras(
        camera_to_worlds=torch.from_numpy(poses).float(),
        fx=t[:, 0:1].clone(), fy=t[:, 1:2].clone(), cx=t[:, 2:3].clone(), cy=t[:, 3:4].clone(),
        width=torch.from_numpy(sizes[:, 0:1].copy()), height=torch.from_numpy(sizes[:, 1:2].copy()),
        distortion_params=distortion, camera_type=types,
    )
    longest = int(sizes.max())
    if size is not None and size < longest:
        cams.rescale_output_resolution(size / longest)
    return cams
