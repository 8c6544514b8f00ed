"""Which nerfstudio data parser (and settings) a run was trained with: recorded in a scene file's
header at export, rebuilt by ``nerfcodec decode --data`` so that the decoded run opens the original
images with exactly the training cameras.

The header's ``extra`` strings carry ``dataparser`` (the parser's registered name, e.g.
``nerfstudio-data``) and ``dataparser_args`` (canonical JSON of the settings that differ from that
parser's defaults, ``data`` excluded). A decoder that is given a data folder rebuilds the parser
from them (or from a name the user gives, or from the folder's layout) and checks that its training
cameras are the file's before it writes a run.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any, Dict, Optional, Tuple

import numpy as np

if TYPE_CHECKING:
    from nerfstudio.data.dataparsers.base_dataparser import DataParserConfig

    from nerfcodec_ns.scenefile.header import Header

#: Largest camera-pose difference (world units, any matrix entry) between the data set's training
#: cameras and the file's float32 poses for them to count as the same cameras.
POSE_TOLERANCE = 1e-4


class DatasetError(Exception):
    """The data set given to the decoder does not match the scene file (one-line message)."""


def registered_parsers() -> Dict[str, "DataParserConfig"]:
    """nerfstudio's registered data parsers by CLI name (its own and plugins')."""
    from nerfstudio.configs.dataparser_configs import all_dataparsers

    return dict(all_dataparsers)


def _jsonable(value: Any) -> Tuple[bool, Any]:
    if value is None or isinstance(value, (bool, int, float, str)):
        return True, value
    if isinstance(value, PurePath):
        return True, str(value)
    if isinstance(value, (tuple, list)) and all(_jsonable(v)[0] for v in value):
        return True, [_jsonable(v)[1] for v in value]
    return False, None


def dataparser_extra(config: Optional["DataParserConfig"]) -> Tuple[Tuple[str, str], ...]:
    """The header ``extra`` entries that record ``config`` (empty for None or an unregistered parser)."""
    if config is None:
        return ()
    name = next((n for n, c in registered_parsers().items() if type(c) is type(config)), None)
    if name is None or name == "nerfcodec-decoded":
        return ()
    default = type(config)()
    args = {}
    for f in dataclasses.fields(config):
        if f.name in ("_target", "data") or getattr(config, f.name) == getattr(default, f.name):
            continue
        ok, value = _jsonable(getattr(config, f.name))
        if ok:
            args[f.name] = value
    return (("dataparser", name), ("dataparser_args", json.dumps(args, sort_keys=True, separators=(",", ":"))))


def detect_parser(data: Path) -> str:
    """The data parser a folder's layout implies (Blender, nerfstudio, COLMAP)."""
    data = Path(data)
    if data.is_file() and data.suffix == ".json":
        return "nerfstudio-data"
    if (data / "transforms_train.json").is_file():
        return "blender-data"
    if (data / "transforms.json").is_file():
        return "nerfstudio-data"
    if any((data / p).is_dir() for p in ("sparse/0", "colmap/sparse/0")):
        return "colmap"
    raise DatasetError(f"cannot tell the data set's format from {data} (no transforms_train.json, transforms.json "
                       "or sparse/0); pass --dataparser")


def dataparser_for(header: "Header", data: Path, name: Optional[str] = None) -> "DataParserConfig":
    """The parser config that reads ``data`` as the run was trained: ``name`` (or the file's recorded
    parser, or the folder's layout) with the file's recorded settings."""
    parsers = registered_parsers()
    recorded = header.get_extra("dataparser")
    chosen = name or recorded or detect_parser(data)
    if chosen not in parsers or chosen == "nerfcodec-decoded":
        known = ", ".join(n for n in parsers if n != "nerfcodec-decoded")
        raise DatasetError(f"unknown data parser {chosen!r}; known: {known}")
    config = dataclasses.replace(parsers[chosen])
    args = json.loads(header.get_extra("dataparser_args", "{}")) if chosen == recorded else {}
    if chosen == "blender-data" and "alpha_color" not in args:
        args["alpha_color"] = header.render.background  # files before the record: the run's background
    fields = {f.name: f for f in dataclasses.fields(config)}
    for key, value in args.items():
        if key not in fields:
            raise DatasetError(f"the file's data parser setting {key!r} is not a setting of {chosen}")
        current = getattr(config, key)
        setattr(config, key, Path(value) if isinstance(current, PurePath) and value is not None else
                tuple(value) if isinstance(current, tuple) else value)
    config.data = Path(data).absolute()
    return config


def check_cameras(config: "DataParserConfig", header: "Header", poses: np.ndarray) -> None:
    """Raise :class:`DatasetError` unless the parser's training cameras are the file's: same count,
    poses within :data:`POSE_TOLERANCE`, same dataparser scale."""
    try:
        outputs = config.setup().get_dataparser_outputs(split="train")
    except Exception as err:  # the parser's own failure (missing files, bad json): one line
        text = str(err).strip().splitlines()
        raise DatasetError(f"the data parser cannot read {config.data} ({type(err).__name__}: "
                           f"{text[0][:200] if text else ''})") from None
    mine = outputs.cameras.camera_to_worlds.detach().cpu().numpy().reshape(-1, 3, 4)
    if mine.shape != poses.shape:
        raise DatasetError(f"the data set has {len(mine)} training cameras, the scene file {len(poses)}: not the data "
                           "the run was trained on (or other split settings)")
    err = float(np.abs(mine - poses).max()) if len(poses) else 0.0
    scale_ok = abs(float(outputs.dataparser_scale) - header.cameras.dataparser_scale) <= 1e-6 * header.cameras.dataparser_scale
    if err > POSE_TOLERANCE or not scale_ok:
        raise DatasetError(f"the data set's training cameras differ from the scene file's (pose difference {err:.3g}, "
                           f"scale {float(outputs.dataparser_scale):.6g} vs {header.cameras.dataparser_scale:.6g}): "
                           "not the data the run was trained on, or other data parser settings")
