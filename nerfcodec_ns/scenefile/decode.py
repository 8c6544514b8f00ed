"""Decode: a scene file (``SCENE.nfc``) -> planes, MLP and occupancy grid -> a nerfstudio run folder.

``decode_bitstream`` needs only the file and the frozen backbone weights it names (found by
SHA-256: the embedded backbone, CompressAI's zoo, or a file given with ``weights``). It runs on
the CPU. ``build_model`` makes a plain ``nerfcodec`` model (codec disabled) holding the decoded
planes; ``write_run`` writes ``config.yml`` + ``nerfstudio_models/step-*.ckpt`` that ``ns-viewer``,
``ns-render`` and ``ns-eval`` load, with either the original data set (``data``) or the
bitstream's own cameras (the ``nerfcodec-decoded`` dataparser, images rendered from the decoded
field).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, NamedTuple, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from nerfcodec_ns.atomic import current_umask
from nerfcodec_ns.scenefile.cameras import CameraTable, camera_batch, decode_poses, file_camera_table
from nerfcodec_ns.scenefile.container import Bitstream, read_file
from nerfcodec_ns.scenefile.export import zoo_quality
from nerfcodec_ns.scenefile.header import MODEL_ID, BackboneId, BitstreamError, FieldArch, Header
from nerfcodec_ns.scenefile.payload import (
    decode_array,
    decode_bits,
    decode_strings,
    encode_array,
    encode_strings,
    unpack_smallest,
)

if TYPE_CHECKING:
    from nerfcodec_ns.codec.plane import PlaneCodec
    from nerfcodec_ns.model import NerfcodecModel


class DecodeError(Exception):
    """A scene file that cannot be decoded here (one-line message for the user)."""


class DecodedScene(NamedTuple):
    """Everything decoded from a scene file (CPU tensors)."""

    header: Header
    planes: List[Tensor]
    """Per level ``[3, C, R, R]`` float32: decoded and compensated, exactly what the codec renders."""
    mlp: List[Tensor]
    """The MLP parameters as float32 (the stored float16 values, or int8 rows times their scales), in
    ``TriplaneField.mlp_parameters`` order."""
    grid: Tensor
    """``[L, G, G, G]`` bool occupancy grid (L levels; 1 for a bounded scene): the ``grid`` section, or
    derived from the decoded field (``RenderSettings.grid_source`` "derived")."""
    poses: np.ndarray
    """``[N, 3, 4]`` float32 training camera-to-world poses (dataparser frame)."""
    camera_table: Optional[CameraTable] = None
    """Per-camera intrinsics, models and distortion (the ``intrinsics`` section); None: every camera
    has the header's intrinsics."""
    occupancy: Optional[Tensor] = None
    """A derived grid's ``[L * G**3]`` float32 cell occupancies (density * step size; the sampler caps
    ``alpha_thre`` by their mean); None for a sent grid."""


def _arrays(bs: Bitstream, name: str, max_size: Optional[int] = None) -> List[np.ndarray]:
    """The arrays of a section; ``max_size``: it is a codec parameter section, LZMA-packed when the
    header says so, and unpacks to at most ``max_size`` bytes."""
    return _payload_arrays(bs.section(name), name, max_size, bs.header.codec.packing == "lzma")


def _payload_arrays(payload: bytes, name: str, max_size: Optional[int] = None, packed: bool = False) -> List[np.ndarray]:
    """The arrays of section ``name``'s payload; with ``max_size``: unpacked first when ``packed``
    (``pack_smallest``), and at most ``max_size`` bytes either way."""
    if max_size is not None and packed:
        payload = unpack_smallest(payload, max_size, f"section '{name}'")
    elif max_size is not None and len(payload) > max_size:
        raise BitstreamError(f"section '{name}': {len(payload)} bytes, more than the {max_size} it can hold")
    return [decode_array(p) for p in decode_strings(payload)]


def load_backbone_for(backbone: BackboneId, weights: Optional[Path] = None):
    """The frozen backbone a file names: ``weights`` if given, else the embedded backbones (the current
    one, then the earlier ones the package keeps), else the zoo (when the file was made with zoo
    weights). Its SHA-256 must match the header's."""
    from nerfcodec_ns.codec.backbone import EMBEDDED_BACKBONE, embedded_backbones, load_backbone
    from nerfcodec_ns.codec.settings import CodecConfig

    candidates = []
    if weights is not None:
        if not Path(weights).is_file():
            raise DecodeError(f"backbone weights file not found: {weights}")
        candidates.append(CodecConfig(backbone=backbone.architecture, weights=str(weights)))
    else:
        for path in embedded_backbones():
            name = "embedded" if path == EMBEDDED_BACKBONE else str(path)
            candidates.append(CodecConfig(backbone=backbone.architecture, weights=name))
        quality = zoo_quality(backbone.source)
        if quality is not None:
            candidates.append(CodecConfig(backbone=backbone.architecture, weights="zoo", quality=quality))
    errors = []
    for config in candidates:
        try:
            model, info = load_backbone(config)
        except Exception as err:  # a candidate that cannot be loaded (offline zoo, wrong architecture)
            errors.append(f"{config.weights}: {str(err).splitlines()[0] if str(err) else type(err).__name__}")
            continue
        if info.sha256 == backbone.sha256:
            return model, info
        errors.append(f"{config.weights}: SHA-256 {info.sha256[:12]}... does not match")
    tried = "; ".join(errors) if errors else "no candidate weights"
    raise DecodeError(
        f"backbone hash mismatch or missing weights: the file needs {backbone.architecture} "
        f"(source {backbone.source}, SHA-256 {backbone.sha256[:12]}...); tried {tried}. "
        "Pass the backbone file with --weights"
    )


def _load_codec_state(codec: "PlaneCodec", bs: Bitstream) -> None:
    """Fill the codec's transmitted parts from the sections, checking every shape and dtype."""
    expected = codec.transmitted_state()  # keys, shapes and dtypes of a codec of this architecture
    arrays: Dict[str, np.ndarray] = {}
    groups = [(f"vectors.{l}", [k for k in expected if k.startswith(f"vectors.{l}.")]) for l in range(len(codec.vectors))]
    groups += [(f"mix.{l}", [f"mix.{l}.int8", f"mix.{l}.scale", f"mix.{l}.bias"]) for l in range(len(codec.mix_out))]
    if codec.config.adapt_heads:
        groups.append(("head", ["head.int8", "head.scale", "head.bias"]))
    if not codec.exact_tables:  # else the section holds the tables (_bottleneck_tables)
        groups.append(("entropy_bottleneck", [k for k in expected if k.startswith("entropy_bottleneck.")]))
    if codec.autoregressive:
        groups.append(("context_model", [k for k in expected if k.startswith(("context_prediction.", "entropy_parameters."))]))
    for section, keys in groups:
        # a packed section unpacks to exactly the encoding of arrays of the expected shapes
        raw_size = len(encode_strings([encode_array(expected[k].numpy()) for k in keys]))
        values = _arrays(bs, section, raw_size)
        if len(values) != len(keys):
            raise BitstreamError(f"section '{section}' holds {len(values)} arrays, expected {len(keys)}")
        for key, value in zip(keys, values):
            ref = expected[key]
            if tuple(value.shape) != tuple(ref.shape) or value.dtype != ref.numpy().dtype:
                raise BitstreamError(f"section '{section}': {key} is {value.dtype} {value.shape}, "
                                     f"expected {ref.numpy().dtype} {tuple(ref.shape)}")
            arrays[key] = value
    state = {k: torch.from_numpy(v) for k, v in arrays.items()}
    try:
        codec.check_transmitted_state(state)
    except ValueError as err:
        raise BitstreamError(f"codec parameters: {err}") from None
    tables = _bottleneck_tables(codec, bs) if codec.exact_tables else None
    try:
        codec.load_transmitted_state(state, tables)
    except (RuntimeError, ValueError) as err:  # CompressAI's table building
        raise BitstreamError(f"codec parameters: cannot build the entropy tables ({_first_line(err)})") from None


def _bottleneck_tables(codec: "PlaneCodec", bs: Bitstream):
    """The ``entropy_bottleneck`` section of a ``tables="exact"`` file, checked."""
    from nerfcodec_ns.codec.exact import BottleneckTables, check_bottleneck_tables
    from nerfcodec_ns.codec.plane import MAX_TABLE_LENGTH

    C = int(codec.entropy_bottleneck.channels)
    biggest = (np.zeros(C, np.float16), np.zeros(C, np.int32), np.zeros(C, np.int32),
               np.zeros(C * (MAX_TABLE_LENGTH - 1), np.uint16))
    values = _arrays(bs, "entropy_bottleneck", len(encode_strings([encode_array(a) for a in biggest])))
    if len(values) != 4:
        raise BitstreamError(f"section 'entropy_bottleneck' holds {len(values)} arrays, expected 4 tables")
    tables = BottleneckTables(*values)
    try:
        check_bottleneck_tables(tables, C, MAX_TABLE_LENGTH)
    except ValueError as err:
        raise BitstreamError(f"section 'entropy_bottleneck': {err}") from None
    return tables


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return (text.splitlines()[0][:200] if text else type(err).__name__)


def _check_finite(name: str, value: Tensor) -> None:
    if not bool(torch.isfinite(value).all()):
        raise BitstreamError(f"{name}: decoded values are not finite")


@torch.no_grad()
def decode_bitstream(bs: Bitstream, weights: Optional[Path] = None) -> DecodedScene:
    """Decode every part of a scene file on the CPU (deterministic: integer entropy decoding,
    fixed-order float ops).

    The file is untrusted: its header is within the format's limits (``scenefile.header.limits()``, checked
    when it was read), every section is checked against the size the header implies before it is
    unpacked, the entropy decoder cannot read past a string, and the decoded planes, MLP, grid and
    cameras must be finite. Every failure is a :class:`DecodeError` or a ``BitstreamError`` with one
    line, whatever library raised it.
    """
    try:
        from nerfcodec_ns.codec.entropy import large_allocations_kept

        with large_allocations_kept():
            return _decode_bitstream(bs, weights)
    except (DecodeError, BitstreamError):
        raise
    except MemoryError:
        raise DecodeError("out of memory while decoding the scene file") from None
    except Exception as err:  # a dependency's error: still the project's one-line error
        raise DecodeError(f"cannot decode the scene file ({type(err).__name__}: {_first_line(err)})") from None


def decode_latents(bs: Bitstream, weights: Optional[Path] = None) -> List[Tuple[Tensor, Tensor]]:
    """``(z_hat, y_hat)`` of every level, as the entropy decoder gives them (before ``g_s``): what must
    be the same on every CPU (tests/scenefile/test_cross_isa.py). Same checks and errors as
    :func:`decode_bitstream`."""
    try:
        codec = _codec_for(bs, weights)
        return [codec.decode_latents(_compressed_level(bs, level)) for level in range(len(bs.header.levels))]
    except (DecodeError, BitstreamError):
        raise
    except Exception as err:
        raise DecodeError(f"cannot decode the scene file ({type(err).__name__}: {_first_line(err)})") from None


def _codec_for(bs: Bitstream, weights: Optional[Path]) -> "PlaneCodec":
    """The decoder's codec for a file: its backbone, settings and transmitted parts, checked."""
    from nerfcodec_ns.codec.plane import PlaneCodec
    from nerfcodec_ns.codec.settings import CodecConfig

    h = bs.header
    if h.model_id != MODEL_ID:
        raise DecodeError(f"unsupported model {h.model_id!r}: this decoder reads {MODEL_ID!r}")
    backbone = load_backbone_for(h.backbone, weights)
    if (backbone[1].N, backbone[1].M) != (h.backbone.N, h.backbone.M):
        raise DecodeError(f"the header's backbone N={h.backbone.N}, M={h.backbone.M} differs from the "
                          f"weights' N={backbone[1].N}, M={backbone[1].M}")
    config = CodecConfig(
        backbone=h.backbone.architecture, weights="embedded", compensation=h.codec.compensation,
        head_bits=h.codec.head_bits, vector_bits=h.codec.vector_bits, latent_gain=h.codec.latent_gain,
        adapt_heads=h.codec.adapt_heads, mix_images=h.codec.mix_images,
    )
    with torch.random.fork_rng(devices=[]):  # the codec's fresh layers are overwritten; keep global RNG intact
        torch.manual_seed(0)
        codec = PlaneCodec(config, h.field.channels, h.field.resolutions, backbone=backbone,
                           copy_backbone=False).eval()
    if h.codec.tables == "exact" and not codec.exact_tables:
        raise DecodeError(f"exact tables need a hyperprior backbone, the file names {h.backbone.architecture}")
    codec.exact_tables = h.codec.tables == "exact"
    _load_codec_state(codec, bs)
    return codec


def _compressed_level(bs: Bitstream, level: int):
    """Level ``level``'s strings, shapes and normalisation ranges, checked."""
    from nerfcodec_ns.codec.plane import CompressedLevel

    h, shape = bs.header, bs.header.levels[level]
    y, z = decode_strings(bs.section(f"y.{level}")), decode_strings(bs.section(f"z.{level}"))
    images = 3 * max(1, h.codec.mix_images)  # coded images per level: one per plane, or k per plane
    if len(y) != images or len(z) != images:
        raise BitstreamError(f"level {level}: expected {images} y and {images} z strings, "
                             f"got {len(y)} and {len(z)}")
    norm = decode_array(bs.section(f"norm.{level}"))
    if norm.dtype != np.float16 or norm.shape != (2, 3, h.field.channels):
        raise BitstreamError(f"section 'norm.{level}': expected float16 (2, 3, {h.field.channels}), "
                             f"got {norm.dtype} {norm.shape}")
    norm_t = torch.from_numpy(norm)
    if not bool(torch.isfinite(norm_t).all()) or bool((norm_t[0].float() > norm_t[1].float()).any()):
        raise BitstreamError(f"section 'norm.{level}': normalisation ranges must be finite with min <= max")
    return CompressedLevel(y, z, shape.z_shape, shape.padded_shape, shape.resolution, norm_t[0], norm_t[1])


def _decode_bitstream(bs: Bitstream, weights: Optional[Path]) -> DecodedScene:
    from nerfcodec_ns.field.field import TriplaneField

    h = bs.header
    codec = _codec_for(bs, weights)
    planes = []
    for level in range(len(h.levels)):
        comp = _compressed_level(bs, level)
        try:
            plane = codec.decompress(comp, level).contiguous()
        except (RuntimeError, ValueError) as err:
            raise BitstreamError(f"level {level}: cannot decode the latents ({_first_line(err)})") from None
        _check_finite(f"level {level} planes", plane)
        planes.append(plane)

    spec = field_spec(h.field)
    ref = TriplaneField(torch.zeros(2, 3), spec).mlp_parameters()
    mlp = decode_mlp(bs.section("mlp"), h.field.mlp_bits, ref, packed=h.codec.packing == "lzma")
    g = h.render.grid_resolution
    poses = decode_poses(bs.section("cameras"))
    table = file_camera_table(bs, len(poses))
    if h.render.grid_source == "derived":
        if bs.has_section("grid"):
            raise BitstreamError("a file whose grid is derived must not have a 'grid' section")
        return derive_grid(DecodedScene(h, planes, mlp, torch.ones(h.render.grid_levels, g, g, g, dtype=torch.bool),
                                        poses, table))
    grid = torch.from_numpy(decode_bits(bs.section("grid"), (h.render.grid_levels, g, g, g)))
    return DecodedScene(h, planes, mlp, grid, poses, table)


@torch.no_grad()
def derive_grid(scene: DecodedScene) -> DecodedScene:
    """``scene`` with the occupancy grid its decoded field gives (``OccupancySampler.derive`` with the
    header's threshold and points per cell), as the encoder's model derived it."""
    model = build_model(scene)  # its config holds the header's grid_threshold and grid_points
    model.derive_grid()
    est = model.sampler.estimator
    return scene._replace(grid=est.binaries.reshape(scene.grid.shape).clone(), occupancy=est.occs.clone())


def decode_file(path: Path, weights: Optional[Path] = None) -> DecodedScene:
    """Read, validate and decode a scene file."""
    try:
        bs = read_file(path)
    except (FileNotFoundError, IsADirectoryError) as err:
        raise DecodeError(str(err)) from None
    return decode_bitstream(bs, weights)


def decode_mlp(payload: bytes, bits: int, ref: List[Tensor], packed: bool = True) -> List[Tensor]:
    """The MLP parameters of an ``mlp`` section payload as float32 (``FieldArch.mlp_bits``: 16, 8, or
    32 in baseline files), checked against the shapes ``ref`` of the header's architecture;
    ``packed``: an 8-bit section went through ``pack_smallest`` (``CodecSettings.packing`` lzma)."""
    from nerfcodec_ns.field.field import dequantize_rows

    bad = BitstreamError("section 'mlp' does not match the field architecture in the header")
    if bits in (16, 32):
        dtype = np.float16 if bits == 16 else np.float32
        arrays = _payload_arrays(payload, "mlp")
        if len(arrays) != len(ref) or any(a.dtype != dtype or a.shape != tuple(p.shape) for a, p in zip(arrays, ref)):
            raise bad
        if not all(np.isfinite(a).all() for a in arrays):
            raise BitstreamError("section 'mlp': the MLP weights are not finite")
        return [torch.from_numpy(a.astype(np.float32)) for a in arrays]
    # int8 rows + float32 scales per weight matrix, float16 biases: bounded well below 4 bytes a value
    arrays = _payload_arrays(payload, "mlp", 4 * sum(p.numel() + 4 * p.shape[0] for p in ref) + (1 << 16), packed)
    expected = []
    for p in ref:
        expected += [(np.int8, tuple(p.shape)), (np.float32, (p.shape[0],))] if p.dim() == 2 else [(np.float16, tuple(p.shape))]
    if len(arrays) != len(expected) or any(a.dtype != dt or a.shape != sh for a, (dt, sh) in zip(arrays, expected)):
        raise bad
    if not all(np.isfinite(a).all() for a in arrays) or any((a == -128).any() for a in arrays if a.dtype == np.int8):
        raise BitstreamError("section 'mlp': the MLP weights are not finite or outside -127..127")
    out, i = [], 0
    for p in ref:
        if p.dim() == 2:
            out.append(dequantize_rows(torch.from_numpy(arrays[i]), torch.from_numpy(arrays[i + 1])))
            i += 2
        else:
            out.append(torch.from_numpy(arrays[i].astype(np.float32)))
            i += 1
    return out


def field_spec(arch: FieldArch):
    """The :class:`TriplaneFieldSpec` of a header's field architecture."""
    from nerfcodec_ns.field.field import TriplaneFieldSpec

    return TriplaneFieldSpec(tuple(arch.resolutions), arch.channels, arch.reduce, arch.hidden_dim,
                             arch.geo_feat_dim, arch.hidden_dim_color, arch.sh_degree, arch.contraction)


def model_config(header: Header):
    """A ``nerfcodec`` model config (codec disabled) with the header's field and render settings."""
    from nerfcodec_ns.model import NerfcodecModelConfig

    a, r = header.field, header.render
    return NerfcodecModelConfig(
        plane_resolutions=tuple(a.resolutions), plane_channels=a.channels, plane_reduce=a.reduce,
        hidden_dim=a.hidden_dim, geo_feat_dim=a.geo_feat_dim, hidden_dim_color=a.hidden_dim_color,
        sh_degree=a.sh_degree, grid_resolution=r.grid_resolution, render_step_size=r.render_step_size,
        alpha_thre=r.alpha_thre, early_stop_eps=r.early_stop_eps, near_plane=r.near_plane,
        background_color=r.background, codec_enabled=False, scene_contraction=a.contraction,
        grid_levels=r.grid_levels, cone_angle=r.cone_angle, grid_source=r.grid_source,
        occ_thre=r.grid_threshold, grid_points=r.grid_points,
    )


@torch.no_grad()
def build_model(scene: DecodedScene) -> "NerfcodecModel":
    """A CPU ``nerfcodec`` model (codec disabled) rendering exactly the decoded scene."""
    from nerfstudio.data.scene_box import SceneBox

    aabb = torch.tensor(scene.header.render.aabb, dtype=torch.float32).reshape(2, 3)
    model = model_config(scene.header).setup(scene_box=SceneBox(aabb=aabb), num_train_data=len(scene.poses), metadata={})
    for param, value in zip(model.field.planes, scene.planes):
        param.copy_(value)
    for param, value in zip(model.field.mlp_parameters(), scene.mlp):
        param.copy_(value)
    est = model.sampler.estimator
    est.binaries = scene.grid.reshape(est.binaries.shape).clone()
    if scene.occupancy is not None:  # a derived grid: the encoder's occupancy values, the encoder's cap
        est.occs.copy_(scene.occupancy)
    else:
        # occupancy values with mean 1: the sampler's cap min(alpha_thre, mean) keeps the header's
        # (already capped) alpha_thre, and re-thresholding gives the same binaries
        occupied = est.binaries.reshape(-1).float()
        est.occs.copy_(occupied / occupied.mean().clamp_min(1.0 / occupied.numel()))
    model.sampler.refresh_march_aabb()
    return model.eval()


def _folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


class DecodeResult(NamedTuple):
    """What :func:`write_run` made."""

    config_path: Path
    decode_seconds: float
    """Reading and decoding the file (planes, MLP, grid)."""
    write_seconds: float
    """Building the model, rendering the view images and writing the run folder."""
    run_bytes: int
    model: "NerfcodecModel"
    """The decoded model the run folder holds (CPU, eval mode)."""


def write_run(
    scene_path: Path,
    output_dir: Path,
    data: Optional[Path] = None,
    weights: Optional[Path] = None,
    overwrite: bool = False,
    view_size: int = 64,
    dataparser: Optional[str] = None,
) -> DecodeResult:
    """Decode ``scene_path`` into a nerfstudio run folder under ``output_dir`` (written atomically:
    built in a temporary folder beside it, then renamed).

    Layout: ``output_dir/config.yml`` is NOT where nerfstudio looks; the run is
    ``output_dir/<scene>/nerfcodec/decoded/{config.yml, nerfstudio_models/step-*.ckpt}`` plus
    ``output_dir/<scene>/bitstream/{scene.nfc, views/*.png}`` for the bitstream dataparser.
    ``data``: the original data set (for ``ns-eval`` against real images), read with the data parser
    the file records (``dataparser`` overrides it; files without a record: the folder's layout), whose
    training cameras must be the file's; None uses the cameras in the file and ``view_size``-pixel
    images rendered from the decoded field.
    """
    import yaml

    from nerfcodec_ns.config import nerfcodec_trainer_config
    from nerfcodec_ns.scenefile.dataparser import NfcDataParserConfig

    scene_path, output_dir = Path(scene_path), Path(output_dir).absolute()
    if output_dir.exists() and any(output_dir.iterdir()) and not overwrite:
        raise DecodeError(f"output folder exists and is not empty: {output_dir} (pass --overwrite to replace it)")
    if data is not None and not Path(data).is_dir():
        raise DecodeError(f"data folder not found: {data}")
    if not output_dir.parent.is_dir():
        raise DecodeError(f"parent folder does not exist: {output_dir.parent}")
    t0 = time.perf_counter()
    scene = decode_file(scene_path, weights)
    decode_s = time.perf_counter() - t0
    parser_config = None
    if data is not None:
        from nerfcodec_ns.scenefile.datasets import DatasetError, check_cameras, dataparser_for

        try:
            parser_config = dataparser_for(scene.header, Path(data), dataparser)
            check_cameras(parser_config, scene.header, scene.poses)
        except DatasetError as err:
            raise DecodeError(str(err)) from None

    t1 = time.perf_counter()
    try:
        model = build_model(scene)
    except Exception as err:  # the decoded scene must build, or the file is rejected
        raise DecodeError(f"the decoded scene does not build a model ({type(err).__name__}: {_first_line(err)})") from None
    name = "scene"
    tmp = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", dir=output_dir.parent))
    try:
        run_dir = tmp / name / "nerfcodec" / "decoded"
        (run_dir / "nerfstudio_models").mkdir(parents=True)
        bits_dir = tmp / name / "bitstream"
        bits_dir.mkdir(parents=True)
        shutil.copyfile(scene_path, bits_dir / "scene.nfc")
        if parser_config is not None:
            run_parser = parser_config
        else:
            try:
                render_views(model, scene, bits_dir / "views", view_size)
            except Exception as err:
                raise DecodeError(f"the decoded scene does not render ({type(err).__name__}: {_first_line(err)})") from None
            run_parser = NfcDataParserConfig(data=output_dir / name / "bitstream")
        config = nerfcodec_trainer_config()
        config.output_dir = output_dir
        config.experiment_name = name
        config.timestamp = "decoded"
        config.vis = "viewer"
        config.pipeline.datamanager.dataparser = run_parser
        config.pipeline.datamanager.data = None
        config.pipeline.model = model_config(scene.header)
        config.load_dir = None
        (run_dir / "config.yml").write_text(yaml.dump(config), "utf8")
        state = {"_model." + k: v for k, v in model.state_dict().items()}
        torch.save({"step": 0, "pipeline": state}, run_dir / "nerfstudio_models" / "step-000000000.ckpt")
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes it 0700; a run folder is a normal folder
        if output_dir.exists():
            shutil.rmtree(output_dir)
        os.replace(tmp, output_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    write_s = time.perf_counter() - t1
    return DecodeResult(output_dir / name / "nerfcodec" / "decoded" / "config.yml", decode_s, write_s,
                        _folder_bytes(output_dir), model)


@torch.no_grad()
def render_views(model: "NerfcodecModel", scene: DecodedScene, folder: Path, size: int) -> None:
    """Render every training camera at ``size`` px (longer side) into ``folder/<i>.png``."""
    from PIL import Image

    import warnings

    folder.mkdir(parents=True)
    cams = camera_batch(scene.header, scene.poses, size, scene.camera_table)
    for i in range(len(scene.poses)):
        with warnings.catch_warnings():  # nerfstudio's camera code warns about torch indexing each call
            warnings.simplefilter("ignore", UserWarning)
            out = model.get_outputs_for_camera(cams[i : i + 1])
        img = (out["rgb"].clamp(0, 1) * 255).round().byte().cpu().numpy()
        Image.fromarray(img).save(folder / f"{i:05d}.png")
