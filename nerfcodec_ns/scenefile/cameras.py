"""The cameras of a scene file: the ``cameras`` section (training camera-to-world poses) and the
nerfstudio ``Cameras`` rebuilt from it and the header's shared intrinsics.

Written by the exporter, read by the decoder and by the ``nerfcodec-decoded`` dataparser (which
needs no torch for the poses themselves). torch and nerfstudio are imported only by
:func:`camera_batch`, so this module stays torch-free at import time, like the rest of the format.
"""

from __future__ import annotations

import lzma
from typing import TYPE_CHECKING, Optional

import numpy as np

from nerfcodec_ns.scenefile.header import MAX_CAMERAS, BitstreamError, Header
from nerfcodec_ns.scenefile.payload import decode_array, decompress_at_most, encode_array

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


def camera_batch(header: Header, poses: np.ndarray, size: Optional[int] = None) -> "Cameras":
    """nerfstudio ``Cameras`` for the file's poses; ``size``: rescale so the longer side is ``size`` px."""
    import torch
    from nerfstudio.cameras.cameras import Cameras, CameraType

    c = header.cameras
    n = len(poses)
    cams = Cameras(
        camera_to_worlds=torch.from_numpy(poses).float(),
        fx=torch.full((n, 1), c.fx), fy=torch.full((n, 1), c.fy), cx=torch.full((n, 1), c.cx),
        cy=torch.full((n, 1), c.cy), width=torch.full((n, 1), c.width, dtype=torch.long),
        height=torch.full((n, 1), c.height, dtype=torch.long), camera_type=CameraType[c.camera_model],
    )
    if size is not None and size < max(c.width, c.height):
        cams.rescale_output_resolution(size / max(c.width, c.height))
    return cams
