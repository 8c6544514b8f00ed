"""``nerfcodec-decoded``: a nerfstudio dataparser that takes its cameras from a scene file.

A decoded scene must open in ``ns-viewer`` without the original images. This dataparser reads the
training camera poses and intrinsics from ``<data>/scene.nfc`` (no torch needed for that part) and
uses the small images ``<data>/views/<i>.png`` that ``nerfcodec decode`` rendered from the decoded
field; the cameras are rescaled to those images' size. Every split returns the same cameras.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Type

import torch

from nerfstudio.data.dataparsers.base_dataparser import DataParser, DataParserConfig, DataparserOutputs
from nerfstudio.data.scene_box import SceneBox
from nerfstudio.plugins.registry_dataparser import DataParserSpecification


@dataclass
class NfcDataParserConfig(DataParserConfig):
    """Cameras from a nerfcodec scene file, images rendered from the decoded field."""

    _target: Type = field(default_factory=lambda: NfcDataParser)
    data: Path = Path("bitstream")
    """Folder with ``scene.nfc`` and ``views/`` (written by ``nerfcodec decode``)."""


class NfcDataParser(DataParser):
    """See the module docstring."""

    config: NfcDataParserConfig

    def _generate_dataparser_outputs(self, split: str = "train", **kwargs) -> DataparserOutputs:
        from PIL import Image

        from nerfcodec_ns.scenefile.cameras import camera_batch, decode_poses, file_camera_table
        from nerfcodec_ns.scenefile.container import read_file

        folder = Path(self.config.data)
        bs = read_file(folder / "scene.nfc")
        poses = decode_poses(bs.section("cameras"))
        views = sorted((folder / "views").glob("*.png"))
        if len(views) != len(poses):
            raise FileNotFoundError(f"{folder / 'views'} holds {len(views)} images for {len(poses)} cameras; "
                                    "run `nerfcodec decode` again")
        with Image.open(views[0]) as img:
            size = max(img.size)
        h = bs.header
        cameras = camera_batch(h, poses, size, file_camera_table(bs, len(poses)))
        aabb = torch.tensor(h.render.aabb, dtype=torch.float32).reshape(2, 3)
        bg = torch.tensor([1.0, 1.0, 1.0] if h.render.background == "white" else [0.0, 0.0, 0.0])
        transform = torch.tensor(h.cameras.dataparser_transform, dtype=torch.float32)
        return DataparserOutputs(
            image_filenames=views,
            cameras=cameras,
            alpha_color=bg,
            scene_box=SceneBox(aabb=aabb),
            dataparser_transform=transform,
            dataparser_scale=h.cameras.dataparser_scale,
        )


nerfcodec_decoded = DataParserSpecification(
    config=NfcDataParserConfig(),
    description="Cameras from a nerfcodec scene file (SCENE.nfc), images rendered from the decoded field.",
)
