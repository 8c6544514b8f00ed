"""``nerfcodec bench``: rate-distortion of NeRFCodec against the alternatives, from ONE trained field.

Stages (each timed, with a progress bar):

1. ``field``: train the base tri-plane field (``ns-train nerfcodec`` with the codec off and plane TV),
   or reuse one (``--base``).
2. ``reference``: val metrics of the uncompressed field.
3. ``baselines``: every coder of :mod:`nerfcodec_ns.bench.baselines` (raw float32/float16, 8/6-bit
   quantization + zlib/lzma/zstd, PNG/JPEG/WebP/AVIF on the planes, the pre-trained CompressAI codec
   without per-scene adaptation) writes a real file: its plane payload plus the same MLP, occupancy
   grid and camera sections a NeRFCodec scene file has. The file is read back, decoded and rendered.
4. ``nerfcodec``: the codec stages of ``ns-train nerfcodec`` on the same field: one warm-up, then a
   joint stage per lambda (and per ``--budget``, with rate control), each exported to a real ``.nfc``
   file with :func:`nerfcodec_ns.scenefile.export.build_bitstream`, decoded with :mod:`nerfcodec_ns.scenefile.decode`
   and rendered.
5. ``report``: ``results.json``, ``rd.png`` (PSNR vs kilobytes, log x), ``report.md``, BD-rate /
   BD-PSNR of NeRFCodec against each baseline family, and rich tables.

Sizes are bytes of the files on disk; PSNR/SSIM (and LPIPS when its weights load) on the val split.
"""

from __future__ import annotations

import copy
import json
import os
import platform
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from nerfcodec_ns.atomic import write_atomic
from nerfcodec_ns.scenefile.container import pack
from nerfcodec_ns.scenefile.header import BitstreamError
from nerfcodec_ns.scenefile.payload import decode_array, decode_strings, encode_strings

#: Families drawn in the plot, in legend order (others are added after them).
FAMILY_ORDER = ("nerfcodec", "nerfcodec-target", "compressai", "jpeg", "webp", "avif", "png", "quant6", "quant8",
                "float16", "float32")
BASELINE_MAGIC = b"NFCB1"


class BenchError(Exception):
    """A problem with the bench's input (one-line message)."""


@dataclass
class BenchConfig:
    """Settings of one ``nerfcodec bench`` run."""

    data: Path
    """Blender-format scene (train split for training, val split for every metric)."""
    output_dir: Path = Path("bench-output")
    """Where the field run, every point's file, results.json and rd.png go."""
    base: Optional[Path] = None
    """config.yml of an existing field run to start from (skips the field stage)."""
    field_steps: int = 2000
    """Steps of base-field training."""
    plane_resolutions: Tuple[int, ...] = (64, 128, 256)
    """Plane side length per level of the base field."""
    plane_channels: int = 16
    """Feature channels per plane of the base field."""
    train_rays: int = 4096
    """Rays per training batch of the base field (and of the codec stages unless --joint-rays)."""
    joint_rays: int = 0
    """Rays per training batch in the codec stages (0: the base run's). One codec pass serves the
    whole batch, so more rays cost less than proportionally more time per step."""
    plane_tv_mult: float = 0.01
    """Plane total-variation weight of the base field (smoother planes code better)."""
    field_clip: bool = False
    """Train the base field on planes clipped to the codec's normalisation range (--clip-sigmas;
    NerfcodecModelConfig.field_clip); the classic codecs are then given the clipped planes too."""
    warmup_steps: int = 300
    """Codec warm-up steps (shared by every NeRFCodec point)."""
    joint_steps: int = 600
    """Joint rate-distortion steps per NeRFCodec point."""
    score_at: Tuple[int, ...] = ()
    """Also export and score every lambda point after these numbers of joint steps (each below
    --joint-steps), as family ``nerfcodec-j<steps>``: RD against joint steps from one run. With
    the default constant learning rates (``joint_lr_final`` 1) a point at k steps is exactly a k-step
    run's point."""
    lambdas: Tuple[float, ...] = (1e-6, 3e-5, 3e-4)
    """Rate weights (per kilobyte of latents) of the NeRFCodec points."""
    budget: Tuple[int, ...] = ()
    """Scene-file size targets in bytes: one rate-controlled NeRFCodec point each."""
    codec_lr: float = 1e-3
    """Learning rate of the encoder, h_a and entropy bottleneck in the codec stages."""
    heads_lr: float = 3e-3
    """Learning rate of the decoder head and compensation vectors."""
    planes_lr: float = 2e-3
    """Learning rate of the planes in the codec stages."""
    fields_lr: float = 5e-4
    """Learning rate of the MLPs in the codec stages."""
    codec_pass_every: int = 1
    """Joint steps per codec pass of the NeRFCodec points (NerfcodecModelConfig.codec_pass_every): 1
    (default) runs the codec every step; K > 1 once per window of K steps, the window's gradients
    carried into it (cheaper steps; each window also closes at a scored point)."""
    joint_lr_final: float = 1.0
    """Learning-rate multiplier reached at the last joint step: the four learning rates above decay
    exponentially over the joint stage from 1x to this (1: constant, as before; the warm-up is
    always constant)."""
    clip_sigmas: float = 4.0
    """Codec normalisation range (CodecConfig.clip_sigmas)."""
    latent_gain: float = 1.0
    """Latent quantization gain of the NeRFCodec points (CodecConfig.latent_gain): y is coded as
    round(g y) / g, a finer quantizer for g > 1 (more bits, less quantization error)."""
    synthesis_input: str = "noise"
    """What the codec's synthesis sees of the latent in training (CodecConfig.synthesis_input):
    "noise" (the rate's additive-noise proxy) or "round" (rounded, straight-through)."""
    weights: str = "embedded"
    """Codec backbone weights ("embedded", "zoo" or a file); also the non-adapted CompressAI baseline's."""
    adapt_heads: bool = False
    """NeRFCodec points with trained (transmitted) encoder-input and decoder-output layers; False (the
    default): the backbone's RGB layers, frozen and not transmitted (CodecConfig.adapt_heads)."""
    head_init: str = "random"
    """Start of the adapted layers (CodecConfig.head_init): "random" or "pretrained" (the tiled RGB
    layers, then trained)."""
    mlp_bits: int = 8
    """How every file of the bench stores the MLPs (NerfcodecModelConfig.mlp_bits): 8 (int8 rows, the
    default) or 16 (float16); the float32 baseline keeps a float32 MLP."""
    grid_source: str = "derived"
    """How every file of the bench carries the occupancy grid (NerfcodecModelConfig.grid_source):
    "derived" (default: no grid bytes, the decoder rebuilds it from the decoded field; NeRFCodec points
    also derive it in their joint stage, baselines from their decoded planes) or "sent" (its bits)."""
    grid_points: int = 2
    """Points per cell and axis of a derived grid where it is refined (NerfcodecModelConfig.grid_points)."""
    mix_images: int = 2
    """Channel mixing (CodecConfig.mix_images): k (default 2): each plane mixed into k RGB images coded
    with the backbone's own RGB layers, mixed back by a transmitted 1x1 map; 0 off."""
    train_precision: str = "auto"
    """Arithmetic of the codec's transforms in training (CodecConfig.train_precision): "auto"
    (bfloat16 where the device computes it natively), "float32" or "bfloat16" (faster on CPUs with
    AMX/AVX-512 BF16; files and decoding are float32 either way)."""
    baselines: bool = True
    """Run the baseline coders."""
    baseline_families: Tuple[str, ...] = ()
    """Only these baseline families (e.g. quant8 jpeg webp compressai; empty: all)."""
    eval_images: int = 0
    """Val images to evaluate, evenly spaced (0: all)."""
    overwrite: bool = False
    """Replace an existing --output-dir (only one that a previous bench run made)."""


class Point(dict):
    """One rate-distortion point (a JSON object): name, family, bytes, psnr, ssim, lpips, file, ..."""


# ----------------------------------------------------------------------------------------------
# training helpers
# ----------------------------------------------------------------------------------------------


def train_step(trainer, step: int):
    """One step exactly as nerfstudio's Trainer runs it: before-iteration callbacks,
    ``train_iteration``, after-iteration callbacks (no eval, no logging). Returns
    ``(loss, loss_dict, metrics_dict)``."""
    from nerfstudio.engine.callbacks import TrainingCallbackLocation as Loc

    trainer.pipeline.train()
    for cb in trainer.callbacks:
        cb.run_callback_at_location(step, location=Loc.BEFORE_TRAIN_ITERATION)
    out = trainer.train_iteration(step)
    for cb in trainer.callbacks:
        cb.run_callback_at_location(step, location=Loc.AFTER_TRAIN_ITERATION)
    return out


def _progress():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                    TimeElapsedColumn(), TimeRemainingColumn(), transient=False)


def _run_steps(trainer, steps: range, label: str, cfg: Optional[BenchConfig] = None) -> List[Dict[str, float]]:
    """Train over ``steps`` with a progress bar; returns a short log (every 50 steps and the last).
    When the output is not a terminal (a log file), each log entry is also printed as a line.
    With ``cfg``, the codec stages' learning rates follow :func:`set_stage_lrs`."""
    log = []
    trainer.pipeline.model.segment_end = steps[-1] if len(steps) else None  # a codec window closes here
    with _progress() as bar:
        task = bar.add_task(label, total=len(steps), info="")
        for step in steps:
            if cfg is not None:
                set_stage_lrs(trainer, cfg, step)
            _, _, metrics = train_step(trainer, step)
            if step % 50 == 0 or step == steps[-1]:
                entry = {"step": step, "train_psnr": round(float(metrics["psnr"]), 2)}
                if "size_total_bytes" in metrics:
                    entry["est_bytes"] = round(float(metrics["size_total_bytes"]))
                    entry["lambda"] = float(metrics["codec_lambda"])
                log.append(entry)
                info = " ".join(f"{k} {v:.4g}" for k, v in entry.items() if k != "step")
                bar.update(task, info=info)
                if not bar.console.is_terminal:  # a log file: rich draws the bar only at the end
                    bar.console.print(f"{label} {step - steps[0] + 1}/{len(steps)} {info} "
                                      f"({bar.tasks[0].elapsed or 0.0:.0f} s)", highlight=False, soft_wrap=True)
            bar.advance(task)
    return log


def train_field(cfg: BenchConfig) -> Path:
    """Train the base field (codec off) into ``output_dir/field``; returns its config.yml."""
    from nerfcodec_ns.config import nerfcodec_trainer_config

    torch.manual_seed(0)
    tc = nerfcodec_trainer_config(max_steps=cfg.field_steps)
    tc.pipeline.datamanager.data = cfg.data
    tc.pipeline.model.codec_enabled = False
    tc.pipeline.model.plane_tv_mult = cfg.plane_tv_mult
    tc.pipeline.model.field_clip = cfg.field_clip
    tc.pipeline.model.codec.clip_sigmas = cfg.clip_sigmas
    tc.pipeline.model.plane_resolutions = tuple(cfg.plane_resolutions)
    tc.pipeline.model.plane_channels = cfg.plane_channels
    tc.pipeline.datamanager.train_num_rays_per_batch = cfg.train_rays
    tc.output_dir = cfg.output_dir / "field"
    tc.experiment_name = "base"
    tc.timestamp = "run"
    tc.vis = "tensorboard"
    tc.save_config()
    trainer = tc.setup(local_rank=0, world_size=1)
    trainer.setup()
    _run_steps(trainer, range(cfg.field_steps), "field")
    trainer.save_checkpoint(cfg.field_steps - 1)
    return tc.get_base_dir() / "config.yml"


def load_base(config_path: Path):
    """A field run's TrainerConfig, its newest checkpoint's pipeline state and step."""
    import yaml

    if not config_path.is_file():
        raise BenchError(f"base run config not found: {config_path}")
    cfg = yaml.load(config_path.read_text(), Loader=yaml.Loader)
    ckpts = sorted((config_path.parent / "nerfstudio_models").glob("step-*.ckpt"))
    if not ckpts:
        raise BenchError(f"no checkpoint next to {config_path}")
    state = torch.load(ckpts[-1], map_location="cpu")
    return cfg, state["pipeline"], int(state["step"])


def load_field(model, pipeline_state: Dict) -> None:
    """Load a base field (planes, MLPs, occupancy grid) into a model. A base run's own codec state, if
    it has one, is ignored: every codec stage starts from the backbone."""
    state = {k[len("_model."):]: v for k, v in pipeline_state.items()
             if k.startswith("_model.") and not k.startswith(("_model.codec.", "_model.codec_"))}
    missing, unexpected = model.load_state_dict(state, strict=False)
    bad = [k for k in missing if not (k.startswith("codec") or k == "codec_stage")] + list(unexpected)
    if bad:
        raise BenchError(f"base checkpoint does not match the model: {bad[:5]}")


def stage_lrs(cfg: BenchConfig) -> Dict[str, float]:
    """The codec stages' learning rate per optimizer group."""
    return {"planes": cfg.planes_lr, "fields": cfg.fields_lr, "codec": cfg.codec_lr, "codec_heads": cfg.heads_lr}


def joint_lr_multiplier(cfg: BenchConfig, step: int) -> float:
    """``joint_lr_final ** t``, t = the share of the joint stage done before ``step`` (0 in the warm-up)."""
    t = min(max((step - cfg.warmup_steps) / max(cfg.joint_steps - 1, 1), 0.0), 1.0)
    return float(cfg.joint_lr_final) ** t


def set_stage_lrs(trainer, cfg: BenchConfig, step: int) -> None:
    """Set the four codec-stage groups' learning rates for ``step`` (a function of the step alone, so
    branching runs off a snapshot stays exact)."""
    mult = joint_lr_multiplier(cfg, step)
    for name, lr in stage_lrs(cfg).items():
        for group in trainer.optimizers.optimizers[name].param_groups:
            group["lr"] = lr * mult


def codec_trainer(cfg: BenchConfig, base_cfg, base_state, lmbda: float, target_bytes: int = 0, codec=None):
    """A Trainer for the codec stages (warm-up from step 0, then joint) on the loaded base field.
    ``codec``: the CodecConfig (default: ``cfg.weights`` and ``cfg.clip_sigmas``)."""
    import tempfile

    from nerfstudio.engine.optimizers import AdamOptimizerConfig

    from nerfcodec_ns.codec.settings import CodecConfig

    torch.manual_seed(0)
    tc = copy.deepcopy(base_cfg)
    m = tc.pipeline.model
    m.codec_enabled = True
    m.codec = codec if codec is not None else CodecConfig(
        weights=cfg.weights, clip_sigmas=cfg.clip_sigmas, adapt_heads=cfg.adapt_heads, head_init=cfg.head_init,
        train_precision=cfg.train_precision, mix_images=cfg.mix_images, latent_gain=cfg.latent_gain,
        synthesis_input=cfg.synthesis_input)
    m.mlp_bits = cfg.mlp_bits
    m.grid_source, m.grid_points = cfg.grid_source, cfg.grid_points
    m.codec_field_steps, m.codec_warmup_steps = 0, cfg.warmup_steps
    m.codec_lambda, m.codec_target_bytes = lmbda, target_bytes
    m.occ_warmup_steps = 0  # the grid comes from the base field
    m.codec_pass_every = cfg.codec_pass_every
    if cfg.joint_rays > 0:
        tc.pipeline.datamanager.train_num_rays_per_batch = cfg.joint_rays
    m.log_file_size_every = 0
    tc.max_num_iterations = 1 << 30  # the bench drives the steps (no last-step callbacks fire)
    for name, lr in stage_lrs(cfg).items():
        tc.optimizers[name] = {"optimizer": AdamOptimizerConfig(lr=lr, eps=1e-15), "scheduler": None}
    tc.output_dir = Path(tempfile.mkdtemp(prefix="nerfcodec_bench_"))
    tc.vis = "tensorboard"
    tc.load_dir = None
    tc.set_timestamp()
    trainer = tc.setup(local_rank=0, world_size=1)
    trainer.setup()
    load_field(trainer.pipeline.model, base_state)
    return trainer


# ----------------------------------------------------------------------------------------------
# evaluation
# ----------------------------------------------------------------------------------------------


def eval_indices(n_total: int, n: int) -> List[int]:
    """``n`` evenly spaced image indices out of ``n_total`` (all when ``n`` is 0 or too large)."""
    if n <= 0 or n >= n_total:
        return list(range(n_total))
    if n == 1:
        return [0]
    return [round(i * (n_total - 1) / (n - 1)) for i in range(n)]


@torch.no_grad()
def evaluate(model, dataset, indices: Sequence[int]) -> Dict[str, Optional[float]]:
    """Mean PSNR (dB), SSIM and LPIPS (None when unavailable) of ``model`` on the given images."""
    from nerfcodec_ns.metrics import psnr, ssim

    model.eval()
    device = next(model.parameters()).device
    vals: Dict[str, List[float]] = {"psnr": [], "ssim": [], "lpips": []}
    for i in indices:
        camera = dataset.cameras[i : i + 1].to(device)
        rgb = model.get_outputs_for_camera(camera)["rgb"].clamp(0, 1)
        gt = dataset.get_image_float32(i)[..., :3].to(rgb.device)
        vals["psnr"].append(float(psnr(rgb, gt)))
        vals["ssim"].append(float(ssim(rgb, gt)))
        lp = model._lpips(rgb, gt)
        if lp is not None:
            vals["lpips"].append(lp)
    out: Dict[str, Optional[float]] = {k: (round(sum(v) / len(v), 4) if v else None) for k, v in vals.items()}
    return out


# ----------------------------------------------------------------------------------------------
# baseline files: plane payload + the same MLP / grid / camera sections as a scene file
# ----------------------------------------------------------------------------------------------


def common_sections(model, cameras, mlp_bits: int = 16, grid_source: str = "sent") -> List[bytes]:
    """The parts every scene file carries besides the planes: MLP (``mlp_bits`` 8, 16 or 32), occupancy
    grid (empty when the decoder derives it), camera poses (encoded exactly as in a ``.nfc`` file,
    :func:`nerfcodec_ns.scenefile.export.field_payloads`)."""
    from nerfcodec_ns.scenefile.export import field_payloads

    return list(field_payloads(model, cameras, mlp_bits=mlp_bits, grid=grid_source == "sent"))


def pack_baseline(name: str, payload: bytes, common: List[bytes], mlp_bits: int = 16) -> bytes:
    """A baseline scene file: magic, coder name, MLP bits, plane payload, MLP, grid, cameras."""
    return encode_strings([BASELINE_MAGIC, name.encode(), str(int(mlp_bits)).encode(), payload, *common])


def unpack_baseline(data: bytes, ref_mlp: Sequence[torch.Tensor]) -> Tuple[str, bytes, List[torch.Tensor], bytes]:
    """(coder name, plane payload, MLP parameters as float32, packed grid section) of a baseline file;
    ``ref_mlp``: parameters of the field's architecture, for the MLP's shapes."""
    from nerfcodec_ns.scenefile.decode import decode_mlp

    parts = decode_strings(data)
    if len(parts) != 7 or parts[0] != BASELINE_MAGIC or parts[2] not in (b"8", b"16", b"32"):
        raise BitstreamError("not a nerfcodec baseline file")
    mlp = decode_mlp(parts[4], int(parts[2]), list(ref_mlp), packed=True)
    return parts[1].decode(), parts[3], mlp, parts[5]


def run_baseline(coder, model, dataset, indices, common: List[bytes], folder: Path, mlp_bits: int = 16,
                 derive_grid: bool = False) -> Point:
    """Encode the model's planes with ``coder``, write the file, read it back, decode, render;
    ``derive_grid``: the file has no grid, derive it from the decoded field as a NeRFCodec decoder
    does (``model.derive_grid`` with the model's ``grid_points``)."""
    levels = [p.detach().cpu().numpy() for p in model.field_planes()]
    t0 = time.perf_counter()
    data = pack_baseline(coder.name, coder.encode(levels), common, mlp_bits)
    encode_s = time.perf_counter() - t0
    path = write_atomic(folder / f"{coder.name}.bin", data, overwrite=True)
    t1 = time.perf_counter()
    name, payload, mlp, grid = unpack_baseline(path.read_bytes(), model.field.mlp_parameters())
    planes = coder.decode(payload)
    decode_s = time.perf_counter() - t1
    if grid != common[1]:
        raise RuntimeError("baseline file: occupancy grid did not round-trip")
    eval_model = copy.deepcopy(model)
    with torch.no_grad():
        for param, value in zip(eval_model.field.planes, planes):
            param.copy_(torch.from_numpy(value))
        for param, value in zip(eval_model.field.mlp_parameters(), mlp):
            param.copy_(value)
    if derive_grid:
        eval_model.derive_grid()
    metrics = evaluate(eval_model, dataset, indices)
    return Point(name=coder.name, family=coder.family, bytes=path.stat().st_size, **metrics,
                 file=str(path), encode_s=round(encode_s, 3), decode_s=round(decode_s, 3))


def run_baselines(coders, pipeline, indices, folder: Path, mlp_bits: int = 16, grid_source: str = "sent") -> List[Point]:
    """Every coder's point on the pipeline's field (the float32 file keeps a float32 MLP, the others
    store it with ``mlp_bits``, as the NeRFCodec files of the same bench; every file carries the grid
    as ``grid_source`` says, a derived one with the pipeline model's ``grid_points``)."""
    model, dataset = pipeline.model, pipeline.datamanager.eval_dataset
    cameras = pipeline.datamanager.train_dataparser_outputs.cameras
    common = {bits: common_sections(model, cameras, bits, grid_source) for bits in (mlp_bits, 32)}
    points = []
    with _progress() as bar:
        task = bar.add_task("baselines", total=len(coders), info="")
        for coder in coders:
            bar.update(task, info=coder.name)
            bits = 32 if coder.name == "float32" else mlp_bits
            sections = common[bits]
            points.append(run_baseline(coder, model, dataset, indices, sections, folder, bits, grid_source == "derived"))
            bar.advance(task)
    return points


def reference_pipeline(base_cfg, base_state, grid_points: Optional[int] = None):
    """A CPU val pipeline (codec off) holding the base field: the uncompressed reference. With
    ``grid_points``, its occupancy grid is derived from the field (as every file of a bench with
    ``--grid-source derived`` has it), so that the float32 file renders exactly the reference."""
    torch.manual_seed(0)
    ref_cfg = copy.deepcopy(base_cfg)
    ref_cfg.pipeline.model.codec_enabled = False
    pipeline = ref_cfg.pipeline.setup(device="cpu", test_mode="val")
    load_field(pipeline.model, base_state)
    if grid_points is not None:
        pipeline.model.config.grid_points = grid_points
        pipeline.model.derive_grid()
    return pipeline


# ----------------------------------------------------------------------------------------------
# NeRFCodec points
# ----------------------------------------------------------------------------------------------


def training_snapshot(trainer) -> Tuple[Dict, Dict]:
    """Copies of the model's and every optimizer's state (to branch several runs off one warm-up)."""
    return (copy.deepcopy(trainer.pipeline.model.state_dict()),
            {k: copy.deepcopy(o.state_dict()) for k, o in trainer.optimizers.optimizers.items()})


def restore_training(trainer, snapshot: Tuple[Dict, Dict]) -> None:
    """Put a trainer back to a :func:`training_snapshot` (the snapshot stays reusable)."""
    trainer.pipeline.model.load_state_dict(snapshot[0])
    for k, o in trainer.optimizers.optimizers.items():
        o.load_state_dict(copy.deepcopy(snapshot[1][k]))


def _weights_file(weights: str) -> Optional[Path]:
    """The backbone file a decoder must be given (None for the embedded / zoo weights it finds itself)."""
    return None if weights in ("embedded", "zoo", "random") else Path(weights)


def export_and_score(trainer, name: str, family: str, dataset, indices, folder: Path, extra: Dict,
                     weights: Optional[Path] = None) -> Point:
    """Export the trainer's model to a real scene file, decode it, render the decoded scene."""
    from nerfcodec_ns.scenefile.decode import build_model, decode_file
    from nerfcodec_ns.scenefile.export import build_bitstream

    model = trainer.pipeline.model
    outputs = trainer.pipeline.datamanager.train_dataparser_outputs
    t0 = time.perf_counter()
    data = pack(build_bitstream(model, outputs.cameras, outputs.dataparser_transform, outputs.dataparser_scale))
    encode_s = time.perf_counter() - t0
    path = write_atomic(folder / f"{name}.nfc", data, overwrite=True)
    t1 = time.perf_counter()
    decoded = build_model(decode_file(path, weights))
    decode_s = time.perf_counter() - t1
    decoded._lpips = model._lpips
    metrics = evaluate(decoded, dataset, indices)
    return Point(name=name, family=family, bytes=path.stat().st_size, **metrics, file=str(path),
                 encode_s=round(encode_s, 3), decode_s=round(decode_s, 3), **extra)


def run_nerfcodec(cfg: BenchConfig, base_cfg, base_state, dataset, indices, folder: Path) -> List[Point]:
    """One shared codec warm-up, then a joint stage per lambda and per budget, each exported and scored."""
    from nerfcodec_ns.scenefile.export import scene_file_size

    runs: List[Tuple[str, str, float, int]] = [(f"nerfcodec-l{lm:g}", "nerfcodec", lm, 0) for lm in cfg.lambdas]
    mid = sorted(cfg.lambdas)[len(cfg.lambdas) // 2] if cfg.lambdas else 3e-5
    runs += [(f"nerfcodec-target{b}", "nerfcodec-target", mid, int(b)) for b in cfg.budget]
    if not runs:
        return []
    # rate control needs its buffer from the start: build the trainer with it when any budget is asked
    trainer = codec_trainer(cfg, base_cfg, base_state, mid, target_bytes=int(cfg.budget[0]) if cfg.budget else 0)
    model = trainer.pipeline.model
    model.set_rate_target(0, mid)  # the shared warm-up runs at a fixed lambda
    t0 = time.perf_counter()
    warm_log = _run_steps(trainer, range(cfg.warmup_steps), "codec warm-up")
    warmup_s = round(time.perf_counter() - t0, 1)
    snapshot = training_snapshot(trainer)
    points = []
    joint = range(cfg.warmup_steps, cfg.warmup_steps + cfg.joint_steps)
    for name, family, lmbda, target in runs:
        restore_training(trainer, snapshot)
        model.set_rate_target(target, lmbda)
        torch.manual_seed(1)
        train_s = 0.0  # joint-stage training only: the scoring of intermediate points is not counted
        log: List[Dict[str, float]] = []
        done = cfg.warmup_steps
        for k in sorted(cfg.score_at) if target <= 0 else ():  # intermediate points along this run
            t0 = time.perf_counter()
            log += _run_steps(trainer, range(done, cfg.warmup_steps + k), f"{name} (to {k} joint steps)", cfg)
            train_s += time.perf_counter() - t0
            done = cfg.warmup_steps + k
            extra_k = {"lambda": lmbda, "joint_steps": k, "train_s": round(train_s, 1), "warmup_s": warmup_s,
                       "train_log": warm_log + log}
            points.append(export_and_score(trainer, f"{name}-j{k}", f"nerfcodec-j{k}", dataset, indices, folder,
                                           extra_k, _weights_file(cfg.weights)))
        t0 = time.perf_counter()
        log += _run_steps(trainer, range(done, joint.stop), name, cfg)
        extra: Dict[str, Any] = {"lambda": lmbda if target <= 0 else model.codec_lambda(),
                                 "joint_steps": cfg.joint_steps, "warmup_s": warmup_s}
        if target > 0:  # what ns-train does at its last step: land the rate with the quantization gain
            outputs = trainer.pipeline.datamanager.train_dataparser_outputs
            extra["target_bytes"] = target
            extra["size_before_landing"] = scene_file_size(model, outputs)
            model.land_on_target(outputs)
            extra["latent_gain"] = model.codec.gain
        extra["train_s"] = round(train_s + time.perf_counter() - t0, 1)
        extra["train_log"] = warm_log + log
        point = export_and_score(trainer, name, family, dataset, indices, folder, extra, _weights_file(cfg.weights))
        if target > 0:
            point["target_error"] = round(point["bytes"] / target - 1.0, 4)
        points.append(point)
    return points


# ----------------------------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------------------------


def family_curves(points: Sequence[Point]) -> Dict[str, List[Point]]:
    """Per family, its Pareto front (fewest bytes for the PSNR), sorted by bytes."""
    from nerfcodec_ns.bench.rd import RDPoint, pareto_front

    fams: Dict[str, List[Point]] = {}
    for p in points:
        fams.setdefault(p["family"], []).append(p)
    out = {}
    for fam, pts in fams.items():
        front = pareto_front([RDPoint(p["name"], p["bytes"], p["psnr"]) for p in pts])
        names = {r.name for r in front}
        out[fam] = sorted([p for p in pts if p["name"] in names], key=lambda p: p["bytes"])
    return out


def bd_table(points: Sequence[Point], anchor_family: str = "nerfcodec") -> Dict[str, Dict[str, Any]]:
    """BD-rate (%) and BD-PSNR (dB) of ``anchor_family`` against every other family with >= 2 points
    (negative BD-rate: NeRFCodec needs fewer bytes for the same PSNR)."""
    from nerfcodec_ns.bench.rd import bd_psnr, bd_rate

    curves = family_curves(points)
    mine = [(p["bytes"], p["psnr"]) for p in curves.get(anchor_family, [])]
    table: Dict[str, Dict[str, Any]] = {}
    for fam, pts in curves.items():
        if fam.startswith(anchor_family):  # NeRFCodec's own rate-controlled points
            continue
        ref = [(p["bytes"], p["psnr"]) for p in pts]
        row: Dict[str, Any] = {"points": len(ref)}
        for key, fn in (("bd_rate_pct", bd_rate), ("bd_psnr_db", bd_psnr)):
            try:
                row[key] = round(fn(ref, mine), 2)
            except ValueError as err:
                row[key] = None
                note = (str(err).replace("anchor curve", f"the {fam} curve").replace("test curve", "the NeRFCodec curve")
                        .replace("(anchor ", f"({fam} ").replace(", test ", ", NeRFCodec "))
                row.setdefault("note", note)
        table[fam] = row
    return table


def plot(points: Sequence[Point], reference_psnr: float, path: Path, title: str) -> Path:
    """PSNR vs kilobytes (log x), one line per family (its Pareto front), all points as markers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fams = family_curves(points)
    order = [f for f in FAMILY_ORDER if f in fams] + sorted(f for f in fams if f not in FAMILY_ORDER)
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=120)
    fixed = {"nerfcodec": "tab:blue", "nerfcodec-target": "tab:orange"}
    others = [c for c in plt.get_cmap("tab20").colors[4:]]
    colors = {f: fixed.get(f) or others[i % len(others)] for i, f in enumerate(x for x in order if x not in fixed)}
    colors.update(fixed)
    for fam in order:
        every = [p for p in points if p["family"] == fam]
        front = fams[fam]
        style = {"lw": 2.5, "ms": 7} if fam.startswith("nerfcodec") else {"lw": 1.2, "ms": 4}
        (line,) = ax.plot([p["bytes"] / 1000 for p in front], [p["psnr"] for p in front], "o-", label=fam,
                          color=colors[fam], **style)
        ax.plot([p["bytes"] / 1000 for p in every], [p["psnr"] for p in every], "o", color=line.get_color(),
                alpha=0.35, ms=style["ms"])
    ax.axhline(reference_psnr, color="k", ls="--", lw=1, label=f"uncompressed field ({reference_psnr:.2f} dB)")
    ax.set_xscale("log")
    ax.set_xlabel("scene file size (kB, log scale)")
    ax.set_ylabel("val PSNR (dB)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    try:
        write_atomic(path, lambda f: fig.savefig(f, format="png"), overwrite=True)
    finally:
        plt.close(fig)
    return path


def print_table(result: Dict[str, Any]) -> None:
    """The points and the BD numbers as rich tables."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    t = Table(title=f"rate-distortion on {result['data']} (val, {result['num_eval_images']} images)")
    for col in ("point", "family", "bytes", "ratio", "PSNR", "SSIM", "LPIPS"):
        t.add_column(col, justify="left" if col in ("point", "family") else "right")
    planes = result["planes_float32_bytes"]
    for p in sorted(result["points"], key=lambda p: p["bytes"]):
        lp = "-" if p.get("lpips") is None else f"{p['lpips']:.4f}"
        t.add_row(p["name"], p["family"], f"{p['bytes']:,}", f"{planes / p['bytes']:.0f}x", f"{p['psnr']:.2f}",
                  f"{p['ssim']:.4f}", lp)
    console.print(t)
    b = Table(title="NeRFCodec against each family (BD over the overlapping range)")
    for col in ("family", "points", "BD-rate", "BD-PSNR", "note"):
        b.add_column(col)
    for fam, row in result["bd"].items():
        rate = "-" if row["bd_rate_pct"] is None else f"{row['bd_rate_pct']:+.1f}%"
        dp = "-" if row["bd_psnr_db"] is None else f"{row['bd_psnr_db']:+.2f} dB"
        b.add_row(fam, str(row["points"]), rate, dp, row.get("note", ""))
    console.print(b)


def markdown_report(result: Dict[str, Any]) -> str:
    """The points (sorted by size) and the BD table as Markdown (what docs/results.md shows)."""
    planes = result["planes_float32_bytes"]
    ref = result["reference"]
    lines = [f"Uncompressed field: **{ref['psnr']:.2f} dB** PSNR, SSIM {ref['ssim']:.4f} "
             f"({result['num_eval_images']} val images); float32 planes {planes:,} B.", "",
             "| point | family | file bytes | x smaller than float32 planes | PSNR (dB) | SSIM | LPIPS |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for p in sorted(result["points"], key=lambda p: p["bytes"]):
        lp = "n/a" if p.get("lpips") is None else f"{p['lpips']:.4f}"
        name = f"**{p['name']}**" if p["family"].startswith("nerfcodec") else p["name"]
        lines.append(f"| {name} | {p['family']} | {p['bytes']:,} | {planes / p['bytes']:.0f} | {p['psnr']:.2f} | "
                     f"{p['ssim']:.4f} | {lp} |")
    lines += ["", "| NeRFCodec against | points on its front | BD-rate | BD-PSNR | note |", "|---|---:|---:|---:|---|"]
    for fam, row in result.get("bd", {}).items():
        rate = "n/a" if row["bd_rate_pct"] is None else f"{row['bd_rate_pct']:+.1f}%"
        dp = "n/a" if row["bd_psnr_db"] is None else f"{row['bd_psnr_db']:+.2f} dB"
        lines.append(f"| {fam} | {row['points']} | {rate} | {dp} | {row.get('note', '')} |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------
# the whole bench
# ----------------------------------------------------------------------------------------------


def _write_json(path: Path, obj: Any) -> None:
    write_atomic(path, (json.dumps(obj, indent=2) + "\n").encode(), overwrite=True)


def run_bench(cfg: BenchConfig) -> Dict[str, Any]:
    """Run every stage (see the module docstring); returns the results written to results.json."""
    from nerfcodec_ns.bench.baselines import default_coders
    from nerfcodec_ns.codec.backbone import load_backbone
    from nerfcodec_ns.codec.settings import CodecConfig

    if cfg.base is None and not (cfg.data / "transforms_train.json").is_file():
        raise BenchError(f"not a Blender-format scene (no transforms_train.json): {cfg.data}")
    if any(k <= 0 or k >= cfg.joint_steps for k in cfg.score_at):
        raise BenchError(f"--score-at steps must lie between 0 and --joint-steps ({cfg.joint_steps}): "
                         f"{list(cfg.score_at)}")
    if cfg.codec_pass_every < 1:
        raise BenchError(f"--codec-pass-every must be at least 1, got {cfg.codec_pass_every}")
    if not 0 < cfg.joint_lr_final <= 1:
        raise BenchError(f"--joint-lr-final must be in (0, 1], got {cfg.joint_lr_final}")
    known = sorted({c.family for c in default_coders(None)} | {"compressai"})
    unknown = sorted(set(cfg.baseline_families) - set(known))
    if unknown:
        raise BenchError(f"unknown baseline families {unknown}; known: {known}")
    from nerfcodec_ns.field.field import MLP_BITS
    from nerfcodec_ns.scenefile.header import GRID_SOURCES, MAX_GRID_POINTS

    if cfg.mlp_bits not in MLP_BITS:
        raise BenchError(f"--mlp-bits must be one of {MLP_BITS}, got {cfg.mlp_bits}")
    if cfg.grid_source not in GRID_SOURCES or not 1 <= cfg.grid_points <= MAX_GRID_POINTS:
        raise BenchError(f"--grid-source must be one of {GRID_SOURCES} and --grid-points 1..{MAX_GRID_POINTS}, "
                         f"got {cfg.grid_source!r} and {cfg.grid_points}")
    if cfg.output_dir.exists() and any(cfg.output_dir.iterdir()):
        if not cfg.overwrite:
            raise BenchError(f"output folder exists and is not empty: {cfg.output_dir} (pass --overwrite)")
        if not any((cfg.output_dir / name).exists() for name in ("results.json", "points", "field")):
            raise BenchError(f"refusing to delete {cfg.output_dir}: it is not the output of a previous bench run")
        shutil.rmtree(cfg.output_dir)
    cfg.output_dir.mkdir(parents=True, exist_ok=True)
    times: Dict[str, float] = {}
    t_all = time.perf_counter()

    t = time.perf_counter()
    base_path = cfg.base if cfg.base is not None else train_field(cfg)
    times["field"] = time.perf_counter() - t
    base_cfg, base_state, base_step = load_base(base_path)
    base_cfg.pipeline.datamanager.data = cfg.data if cfg.base is None else base_cfg.pipeline.datamanager.data

    t = time.perf_counter()
    pipeline = reference_pipeline(base_cfg, base_state, cfg.grid_points if cfg.grid_source == "derived" else None)
    model = pipeline.model
    dataset = pipeline.datamanager.eval_dataset
    indices = eval_indices(len(dataset), cfg.eval_images)
    reference = evaluate(model, dataset, indices)
    planes_bytes = sum(p.numel() * 4 for p in model.field.plane_list())
    times["reference"] = time.perf_counter() - t

    result: Dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
                   f"threads {torch.get_num_threads()}, device cpu",
        "data": str(cfg.data), "split": "val", "num_eval_images": len(indices), "base_config": str(base_path),
        "base_step": base_step, "planes_float32_bytes": planes_bytes, "reference": reference,
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
        "points": [], "times_s": times,
    }
    points_dir = cfg.output_dir / "points"
    points_dir.mkdir(exist_ok=True)

    t = time.perf_counter()
    if cfg.baselines:
        backbone, _ = load_backbone(CodecConfig(weights=cfg.weights))
        coders = default_coders(backbone)
        if cfg.baseline_families:
            coders = [c for c in coders if c.family in cfg.baseline_families]
        result["points"] += run_baselines(coders, pipeline, indices, points_dir, cfg.mlp_bits, cfg.grid_source)
        _write_json(cfg.output_dir / "results.json", result)
    times["baselines"] = time.perf_counter() - t

    t = time.perf_counter()
    result["points"] += run_nerfcodec(cfg, base_cfg, base_state, dataset, indices, points_dir)
    times["nerfcodec"] = time.perf_counter() - t

    result["bd"] = bd_table(result["points"])
    times["total"] = time.perf_counter() - t_all
    result["times_s"] = {k: round(v, 1) for k, v in times.items()}
    plot(result["points"], reference["psnr"], cfg.output_dir / "rd.png", f"{cfg.data.name}: val PSNR vs scene file size")
    _write_json(cfg.output_dir / "results.json", result)
    write_atomic(cfg.output_dir / "report.md", markdown_report(result).encode(), overwrite=True)
    print_table(result)
    return result
