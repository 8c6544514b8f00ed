"""Export: a trained ``nerfcodec`` run -> a scene file (``SCENE.nfc``, format in docs/bitstream.md).

``build_bitstream`` turns a model (codec in eval mode) and its training cameras into a
:class:`~nerfcodec_ns.scenefile.container.Bitstream`; ``export_run`` loads a run's ``config.yml`` and writes
the file atomically. ``ExportBitstream`` is the same command for ``ns-export nerfcodec-bitstream``
(grafted onto nerfstudio 1.1.5's exporter, see :func:`graft_ns_export`) and ``nerfcodec export``.

Sections (``<l>`` = level, 0 coarsest): ``y.<l>``/``z.<l>`` (entropy-coded strings, one per plane,
or ``mix_images`` per plane), ``norm.<l>`` (float16 ``[2, 3, C]`` normalisation range), ``vectors.<l>``
(int8 + float32 scales), ``mix.<l>`` (channel mixing: the decoder-side mixer, int8 weights, float32
scales and bias),
``head`` (int8 weights, float32 scales and bias), ``entropy_bottleneck`` (its quantized tables;
float16 parameters for ``tables="float"``),
``mlp`` (the MLP parameters in :meth:`TriplaneField.mlp_parameters` order, float16 or int8 rows), ``grid`` (occupancy bits; absent when the
decoder derives the grid, ``RenderSettings.grid_source``),
``cameras`` (float32 ``[N, 3, 4]`` camera-to-world poses, LZMA), ``intrinsics`` (only for cameras
that do not all share the header's intrinsics, or are distorted: per camera fx, fy, cx, cy,
distortion, size and model, LZMA).
"""

from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch

from nerfcodec_ns.atomic import write_atomic
from nerfcodec_ns.codec.ratecontrol import register_file_sizer
from nerfcodec_ns.scenefile.cameras import CameraTable, check_camera_table, encode_intrinsics, encode_poses
from nerfcodec_ns.scenefile.container import Bitstream, Section, pack, section_sizes
from nerfcodec_ns.scenefile.datasets import dataparser_extra
from nerfcodec_ns.scenefile.header import (
    CAMERA_MODELS,
    MODEL_ID,
    PACKINGS,
    BackboneId,
    BitstreamError,
    CameraSet,
    CodecSettings,
    FieldArch,
    Header,
    LevelShape,
    RenderSettings,
)
from nerfcodec_ns.scenefile.payload import encode_array, encode_bits, encode_strings, pack_smallest

if TYPE_CHECKING:  # heavy imports only for type checkers
    from nerfstudio.cameras.cameras import Cameras

    from nerfcodec_ns.codec.plane import PlaneCodec
    from nerfcodec_ns.model import NerfcodecModel

#: nerfstudio version whose ``ns-export`` internals the graft relies on.
NS_EXPORT_VERSION = "1.1.5"


class ExportError(Exception):
    """A run that cannot be exported (one-line message for the user)."""


def _arrays(*arrays: torch.Tensor) -> bytes:
    """Several tensors in one section: ``encode_strings`` of their ``encode_array`` payloads."""
    return encode_strings([encode_array(a.detach().cpu().numpy()) for a in arrays])


def backbone_source(codec: "PlaneCodec") -> str:
    """How a decoder finds the frozen weights: ``embedded``, ``zoo:<arch>/mse/q<quality>`` or
    ``file:<file name>`` (informative; the SHA-256 in the header is what is checked)."""
    weights = codec.config.weights
    if weights == "embedded":
        return "embedded"
    if weights == "zoo":
        return f"zoo:{codec.architecture}/mse/q{codec.config.quality}"
    if weights == "random":
        raise ExportError(
            "this run's codec uses a randomly initialised backbone (codec.weights=random), whose frozen "
            "weights no decoder can reproduce; train with embedded, zoo or file weights to export"
        )
    return f"file:{Path(weights).name}"


def zoo_quality(source: str) -> Optional[int]:
    """The quality in a ``zoo:<arch>/mse/q<quality>`` source string, else None."""
    m = re.fullmatch(r"zoo:[a-z0-9-]+/mse/q(\d+)", source)
    return int(m.group(1)) if m else None


def camera_set(cameras: "Cameras", transform: torch.Tensor, scale: float) -> Tuple[CameraSet, Optional[CameraTable]]:
    """The header's intrinsics (camera 0's) and dataparser transform of a nerfstudio ``Cameras`` batch,
    plus the per-camera table when the cameras do not all share them or are distorted (None: they do).
    Poses go in their own section. Cameras the format cannot hold raise a one-line :class:`ExportError`
    (nothing is approximated)."""
    from nerfstudio.cameras.cameras import CameraType

    n = int(cameras.camera_to_worlds.shape[0])
    if cameras.camera_to_worlds.ndim != 3:
        raise ExportError(f"expected a flat batch of cameras, got camera_to_worlds of shape "
                          f"{tuple(cameras.camera_to_worlds.shape)}")
    if cameras.times is not None:
        raise ExportError("cameras with times (dynamic scenes) cannot be stored in a scene file")
    types = cameras.camera_type.reshape(-1).tolist()
    names = []
    for t in types:
        name = CameraType(int(t)).name
        if name not in CAMERA_MODELS:
            raise ExportError(f"camera model {name} cannot be stored in a scene file (supported: {', '.join(CAMERA_MODELS)})")
        names.append(name)
    if cameras.distortion_params is not None and tuple(cameras.distortion_params.shape) != (n, 6):
        raise ExportError(f"expected 6 distortion parameters per camera, got shape {tuple(cameras.distortion_params.shape)}")
    intr = torch.cat([cameras.fx, cameras.fy, cameras.cx, cameras.cy], dim=-1).reshape(n, 4).float()
    dist = (torch.zeros(n, 6) if cameras.distortion_params is None else cameras.distortion_params.reshape(n, 6).float())
    sizes = torch.cat([cameras.width, cameras.height], dim=-1).reshape(n, 2)
    table = CameraTable(intr.cpu().numpy().astype(np.float32), dist.cpu().numpy().astype(np.float32),
                        sizes.cpu().numpy().astype(np.int32),
                        np.array([CAMERA_MODELS.index(m) for m in names], np.uint8))
    try:
        check_camera_table(table, n)
    except BitstreamError as err:
        raise ExportError(f"the cameras cannot be stored in a scene file: {str(err).removeprefix('camera intrinsics: ')}") from None
    shared = CameraSet(
        camera_model=names[0], width=int(table.sizes[0, 0]), height=int(table.sizes[0, 1]),
        fx=float(table.intrinsics[0, 0]), fy=float(table.intrinsics[0, 1]), cx=float(table.intrinsics[0, 2]),
        cy=float(table.intrinsics[0, 3]),
        dataparser_transform=tuple(tuple(float(v) for v in row) for row in transform.reshape(3, 4).tolist()),
        dataparser_scale=float(scale),
    )
    same = all((a == a[:1]).all() for a in table.arrays()) and not (table.distortion != 0).any()
    return shared, None if same else table


@torch.no_grad()
def build_bitstream(model: "NerfcodecModel", cameras: "Cameras", transform: torch.Tensor, scale: float,
                    packing: str = "lzma", tables: Optional[str] = None, dataparser=None) -> Bitstream:
    """The scene file of a trained model: entropy-coded planes and every decoder-side part.

    ``packing``: how the codec's parameter sections are stored (``CodecSettings.packing``): ``lzma``
    (default; lossless, about 10% smaller head and entropy-bottleneck sections) or ``raw``.

    ``tables``: how the entropy coder's tables are chosen (``CodecSettings.tables``): ``exact`` (the
    same on every CPU; the default where the backbone allows it, i.e. not for cheng2020-anchor) or
    ``float`` (CompressAI's float tables, as format-2 files have them).

    ``dataparser``: the nerfstudio data-parser config the run was trained with, recorded in the
    header (``scenefile/datasets.py``; default: ``model.dataparser_config``, which training sets).
    """
    if packing not in PACKINGS:
        raise ExportError(f"packing must be one of {PACKINGS}, got {packing!r}")
    if tables not in (None, "exact", "float"):
        raise ExportError(f"tables must be exact or float, got {tables!r}")

    def params(*arrays: torch.Tensor) -> bytes:
        raw = _arrays(*arrays)
        return pack_smallest(raw) if packing == "lzma" else raw

    codec = model.codec
    if codec is None:
        raise ExportError("this run has no codec (pipeline.model.codec_enabled=False): nothing to compress")
    source = backbone_source(codec)  # refuses backbones a decoder cannot reproduce
    if tables == "exact" and codec.architecture == "cheng2020-anchor":
        raise ExportError("exact tables need a hyperprior backbone (cheng2020-anchor's context model has no exact path)")
    # cameras the format cannot hold are refused before any plane is coded
    shared_cameras, camera_table = camera_set(cameras, transform, scale)
    device = next(model.parameters()).device
    dataparser_record = dataparser_extra(dataparser if dataparser is not None else getattr(model, "dataparser_config", None))
    was_training, was_exact = model.training, codec.exact_tables
    codec.exact_tables = codec.architecture != "cheng2020-anchor" if tables is None else tables == "exact"
    model.eval()
    try:
        model.cpu()  # compress() refreshes the float16 snapping and CDF tables (update) per level
        spec = model.field.spec
        sections: List[Section] = []
        levels = []
        for level, planes in enumerate(model.field.plane_list()):
            comp = codec.compress(planes.detach(), level)
            sections += [
                Section(f"y.{level}", encode_strings(comp.y_strings)),
                Section(f"z.{level}", encode_strings(comp.z_strings)),
                Section(f"norm.{level}", encode_array(torch.stack([comp.stats_min, comp.stats_max]).numpy())),
            ]
            levels.append(LevelShape(comp.resolution, comp.padded_shape, comp.z_shape))
        state = codec.transmitted_state()
        try:  # the decoder refuses these, so a file holding them must not be written
            codec.check_transmitted_state(state)
        except ValueError as err:
            raise ExportError(f"the codec's parameters cannot be sent: {err}") from None
        for level in range(len(codec.vectors)):
            sections.append(Section(f"vectors.{level}", params(state[f"vectors.{level}.int8"], state[f"vectors.{level}.scale"])))
        for level in range(len(codec.mix_out)):
            mix = [state[f"mix.{level}.{part}"] for part in ("int8", "scale", "bias")]
            sections.append(Section(f"mix.{level}", params(*mix)))
        if codec.config.adapt_heads:
            sections.append(Section("head", params(state["head.int8"], state["head.scale"], state["head.bias"])))
        if codec.exact_tables:  # the bottleneck's quantized tables: no float network at the decoder
            from nerfcodec_ns.codec.exact import check_bottleneck_tables
            from nerfcodec_ns.codec.plane import MAX_TABLE_LENGTH

            tables = codec.bottleneck_tables()
            try:
                check_bottleneck_tables(tables, codec.entropy_bottleneck.channels, MAX_TABLE_LENGTH)
            except ValueError as err:
                raise ExportError(f"the entropy bottleneck's tables cannot be sent: {err}") from None
            sections.append(bottleneck_section(tables, packing))
        else:
            eb = [v for k, v in state.items() if k.startswith("entropy_bottleneck.")]
            sections.append(Section("entropy_bottleneck", params(*eb)))
        if codec.autoregressive:
            ctx = [v for k, v in state.items() if k.startswith(("context_prediction.", "entropy_parameters."))]
            sections.append(Section("context_model", params(*ctx)))
        bits = int(model.config.mlp_bits)
        derived = model.config.grid_source == "derived"  # the decoder rebuilds the grid (format 7)
        mlp, grid, poses = field_payloads(model, cameras, mlp_bits=bits, packing=packing, grid=not derived)
        sections += [Section("mlp", mlp), *(() if derived else (Section("grid", grid),)), Section("cameras", poses)]
        if camera_table is not None:  # cameras that differ, or distortion: one row per camera
            sections.append(Section("intrinsics", encode_intrinsics(camera_table)))

        info = codec.backbone_info
        aabb = model.scene_box.aabb.reshape(-1).tolist()
        header = Header(
            model_id=MODEL_ID,
            backbone=BackboneId(info.architecture, info.N, info.M, info.sha256, source),
            field=FieldArch(spec.resolutions, spec.num_channels, spec.reduce, spec.hidden_dim,
                            spec.geo_feat_dim, spec.hidden_dim_color, spec.sh_degree, spec.contraction, bits),
            levels=tuple(levels),
            codec=CodecSettings(codec.config.head_bits, codec.config.vector_bits, codec.config.compensation,
                                codec.config.adapt_heads, codec.gain, packing,
                                "exact" if codec.exact_tables else "float", codec.mix_images),
            render=RenderSettings(
                aabb=tuple(aabb), render_step_size=float(model.sampler.step_size),
                grid_resolution=model.sampler.grid_resolution,
                # a derived grid's occupancy values are the decoder's own: it caps alpha_thre itself
                alpha_thre=float(model.config.alpha_thre) if derived else effective_alpha_thre(model),
                early_stop_eps=model.config.early_stop_eps, near_plane=model.config.near_plane,
                background=model.config.background_color, grid_levels=int(model.sampler.levels),
                cone_angle=float(model.sampler.cone_angle),
                grid_source=model.config.grid_source, grid_threshold=float(model.config.occ_thre),
                grid_points=int(model.config.grid_points),
            ),
            cameras=shared_cameras,
            extra=(("codec_stage", str(int(model.codec_stage))),) + dataparser_record,
        )
        return Bitstream(header, tuple(sections))
    finally:
        codec.exact_tables = was_exact
        model.to(device)
        model.train(was_training)


def bottleneck_section(tables, packing: str) -> Section:
    """The ``entropy_bottleneck`` section of a ``tables="exact"`` file (``BottleneckTables``)."""
    raw = encode_strings([encode_array(a) for a in tables.arrays()])
    return Section("entropy_bottleneck", pack_smallest(raw) if packing == "lzma" else raw)


def mlp_payload(params: Sequence[torch.Tensor], bits: int = 16, packing: str = "lzma") -> bytes:
    """The ``mlp`` section (``FieldArch.mlp_bits``): 16: every parameter float16; 8: each weight
    matrix as its int8 rows and float32 row scales (``quantize_rows``), biases float16, through
    :func:`pack_smallest` when ``packing`` is lzma. 32 (baseline files only): float32."""
    from nerfcodec_ns.field.field import quantize_rows

    if bits == 32:
        return _arrays(*[p.float() for p in params])
    if bits == 16:
        return _arrays(*[p.half() for p in params])
    if bits != 8:
        raise ExportError(f"mlp_bits must be 8 or 16, got {bits!r}")
    arrays: List[torch.Tensor] = []
    for p in params:
        arrays += list(quantize_rows(p)) if p.dim() == 2 else [p.detach().half()]
    raw = _arrays(*arrays)
    return pack_smallest(raw) if packing == "lzma" else raw


def field_payloads(model: "NerfcodecModel", cameras: "Cameras", mlp_bits: int = 16, packing: str = "lzma",
                   grid: bool = True):
    """The payloads of the ``mlp`` (:func:`mlp_payload`), ``grid`` (packed bits + LZMA; ``b""`` without
    ``grid``: the decoder derives it) and ``cameras`` (LZMA float32 poses) sections, which every scene
    file carries besides the planes."""
    mlp = mlp_payload(model.field.mlp_parameters(), mlp_bits, packing)
    bits = encode_bits(model.sampler.level_binaries.cpu().numpy()) if grid else b""
    return mlp, bits, encode_poses(cameras.camera_to_worlds)


def effective_alpha_thre(model: "NerfcodecModel") -> float:
    """The opacity threshold the sampler really uses: the configured one capped by the mean grid
    occupancy value, as nerfacc does (the decoder gets this number and a grid whose cap never binds)."""
    return min(float(model.config.alpha_thre), float(model.sampler.estimator.occs.mean()))


def scene_file_size(model: "NerfcodecModel", dataparser_outputs) -> int:
    """Exact size in bytes of the scene file the model's current state exports to (what
    ``export_run`` would write from a checkpoint of this state)."""
    o = dataparser_outputs
    return len(pack(build_bitstream(model, o.cameras, o.dataparser_transform, o.dataparser_scale)))


def scene_file_size_or_none(model: "NerfcodecModel", dataparser_outputs) -> Optional[int]:
    """:func:`scene_file_size`, or None for a run that cannot be exported (:class:`ExportError`, e.g. a
    random backbone): the file sizer rate control measures with (registered below)."""
    try:
        return scene_file_size(model, dataparser_outputs)
    except ExportError:
        return None


# Rate control (nerfcodec_ns.codec.ratecontrol, used by the model) measures the real file through this
# hook, so that the codec and the model need not import the exporter.
register_file_sizer(scene_file_size_or_none)


class ExportResult(NamedTuple):
    """What :func:`export_run` wrote."""

    path: Path
    num_bytes: int
    sections: Dict[str, int]
    estimated: Dict[str, float]
    """The training-time size accounting of the same state (``size_*`` metrics, eval mode)."""
    seconds: float
    """Encoding and writing time (after the run was loaded)."""


def estimated_sizes(model: "NerfcodecModel") -> Dict[str, float]:
    """The size accounting the training metrics use, for the model's current (eval-mode) state:
    estimated y/z bytes from the rounded latents' likelihoods, plus :meth:`transmitted_sizes`."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            outs = model.code_planes()
        est = {"y": sum(float(-o.likelihoods["y"].log2().sum()) for o in outs) / 8,
               "z": sum(float(-o.likelihoods["z"].log2().sum()) for o in outs) / 8}
        est.update({k: float(v) for k, v in model.transmitted_sizes().items()})
        return est
    finally:
        model.train(was_training)


def load_run(load_config: Path):
    """``eval_setup`` of a run for export (no images are loaded: ``test_mode="inference"``)."""
    from nerfstudio.utils.eval_utils import eval_setup

    if not load_config.is_file():
        raise ExportError(f"config file not found: {load_config}")
    try:
        config, pipeline, _, step = eval_setup(load_config, test_mode="inference")
    except (FileNotFoundError, KeyError, ValueError, RuntimeError) as err:
        msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ExportError(f"cannot load the run {load_config}: {msg}") from err
    return config, pipeline, step


def export_run(load_config: Path, output_path: Path, overwrite: bool = False,
               tables: Optional[str] = None) -> ExportResult:
    """Load a trained run and write its scene file atomically (refuses to overwrite unless asked)."""
    output_path = Path(output_path)
    if output_path.exists() and not overwrite:
        raise ExportError(f"output exists: {output_path} (pass --overwrite to replace it)")
    if not output_path.parent.is_dir():
        raise ExportError(f"output folder does not exist: {output_path.parent}")
    _, pipeline, _ = load_run(Path(load_config))
    model = pipeline.model
    if getattr(model, "codec", None) is None:
        raise ExportError(f"{load_config} is not a nerfcodec run with a codec")
    model.dataparser_config = pipeline.config.datamanager.dataparser  # recorded in the header
    if int(model.codec_stage) < 2:
        print(f"warning: the run stopped in codec stage {int(model.codec_stage)} (joint training is stage 2); "
              "the codec is not trained on this scene yet", file=sys.stderr)
    outputs = pipeline.datamanager.train_dataparser_outputs
    t0 = time.perf_counter()
    bs = build_bitstream(model, outputs.cameras, outputs.dataparser_transform, outputs.dataparser_scale,
                         tables=tables)
    data = pack(bs)
    try:
        path = write_atomic(output_path, data, overwrite=overwrite)
    except FileExistsError as err:
        raise ExportError(f"output exists: {output_path} (pass --overwrite to replace it)") from err
    seconds = time.perf_counter() - t0
    return ExportResult(path, len(data), section_sizes(data), estimated_sizes(model), seconds)


@dataclass
class ExportBitstream:
    """Write a trained nerfcodec run as one compressed scene file (every byte counted)."""

    load_config: Path
    """The run's config.yml (from ns-train nerfcodec)."""
    output_path: Path = Path("scene.nfc")
    """Scene file to write (atomically; an existing file is kept unless --overwrite)."""
    overwrite: bool = False
    """Replace an existing --output-path."""

    def main(self) -> None:
        from rich.console import Console

        result = export_run(self.load_config, self.output_path, self.overwrite)
        Console().print(f"wrote [bold]{result.path}[/bold]: {result.num_bytes:,} bytes "
                        f"({result.seconds:.2f} s); `nerfcodec info {result.path}` lists the sections")


def graft_ns_export() -> None:
    """Add ``nerfcodec-bitstream`` to ``ns-export``'s subcommands when ``ns-export`` is starting.

    nerfstudio 1.1.5 has no entry point for exporters: ``nerfstudio/scripts/exporter.py`` builds a
    fixed union ``Commands`` and its ``entrypoint()`` calls ``tyro.extras.set_accent_color`` and then
    ``tyro.cli(Commands)``. This plugin's config module is imported while ``exporter.py`` is still
    loading (through ``eval_utils`` -> ``method_configs``), so we wrap ``set_accent_color`` once to
    extend ``Commands`` right before ``tyro.cli`` reads it. Nothing happens in any other program.
    """
    module = sys.modules.get("nerfstudio.scripts.exporter")
    if module is None or getattr(module, "_nerfcodec_grafted", False):
        return
    module._nerfcodec_grafted = True  # type: ignore[attr-defined]
    import tyro

    original = tyro.extras.set_accent_color

    def set_accent_color(*args, **kwargs):
        tyro.extras.set_accent_color = original
        _extend_commands(module)
        return original(*args, **kwargs)

    tyro.extras.set_accent_color = set_accent_color


def _extend_commands(module) -> None:
    """Replace ``module.Commands`` with the union plus ``nerfcodec-bitstream`` (version-checked)."""
    from typing import Annotated, Union, get_args

    import nerfstudio
    import tyro

    version = getattr(nerfstudio, "__version__", None)
    if version is None:
        from importlib.metadata import version as dist_version

        version = dist_version("nerfstudio")
    if version != NS_EXPORT_VERSION:
        print(f"nerfcodec: ns-export nerfcodec-bitstream needs nerfstudio {NS_EXPORT_VERSION} (found {version}); "
              "use `nerfcodec export` instead", file=sys.stderr)
        return
    commands = getattr(module, "Commands", None)
    if commands is None:
        return
    union, *meta = get_args(commands)
    members = get_args(union)
    entry = Annotated[_NsExportBitstream, tyro.conf.subcommand(name="nerfcodec-bitstream")]
    module.Commands = Annotated[(Union[members + (entry,)], *meta)]  # type: ignore[misc]


@dataclass
class _NsExportBitstream(ExportBitstream):
    """Write a trained nerfcodec run as one compressed scene file (every byte counted)."""

    def main(self) -> None:
        try:
            super().main()
        except (ExportError, BitstreamError) as err:
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(2) from None
