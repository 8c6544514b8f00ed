"""Pre-train a small CompressAI image codec (the frozen NeRFCodec backbone) on a folder of images.

The result is a *backbone file*: ``torch.save`` of a dict holding only str/int/float/dict/tensor
values, so it loads with ``torch.load(..., weights_only=True)``::

    {
        "format": "nerfcodec-backbone",
        "version": 1,
        "architecture": "bmshj2018-hyperprior" | "mbt2018-mean" | "cheng2020-anchor",
        "N": int, "M": int,              # cheng2020-anchor has no M: it is stored as M = N
        "state_dict": {name: tensor},    # after model.update(force=True): CDF buffers included
        "meta": {"images": str, "num_images": int, "steps": int, "lmbda": float, "crop": int,
                 "batch_size": int, "lr": float, "seed": int, "half": int, "final_loss": float,
                 "final_bpp": float, "final_psnr": float, "torch": str, "compressai": str,
                 "created": str},
    }

With ``half`` the *parameters* are stored as float16 and the entropy models' CDF tables are
built from those float16-rounded weights, so a loaded model is exactly the saved one. Buffers
keep their dtype: the integer CDF tables, and the small float constants (GDN's pedestal of
2^-36 would underflow to 0 in float16).

Training follows CompressAI's ``examples/train.py``: loss = lmbda * 255^2 * MSE + bpp, one Adam
for the network and one for the entropy bottleneck's ``quantiles`` (aux loss), gradient
clipping. Batches are a pure function of (seed, step), and the only other randomness (the
quantisation noise) comes from torch's global CPU generator, whose state is checkpointed, so a
resumed run is identical to an uninterrupted one.

compressai is imported inside functions only (``import compressai`` takes about 2 s).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

__all__ = [
    "ARCHITECTURES",
    "BACKBONE_FORMAT",
    "BACKBONE_VERSION",
    "IMAGE_SUFFIXES",
    "PretrainConfig",
    "PretrainError",
    "PretrainResult",
    "CropBatches",
    "build_model",
    "make_optimizers",
    "rate_distortion",
    "list_images",
    "load_images",
    "train_step",
    "pretrain",
    "checkpoint_path",
    "save_backbone",
    "load_backbone_file",
    "evaluate",
]

from nerfcodec_ns.atomic import write_atomic
from nerfcodec_ns.codec.backbone import BACKBONE_FORMAT, BACKBONE_VERSION
from nerfcodec_ns.codec.settings import ARCHITECTURES, Architecture

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# Every supported architecture downsamples by 2^4 (analysis) * 2^2 (hyper-analysis).
DOWNSAMPLING = 64
# Config fields that may differ between a checkpoint and the run that resumes it.
_RESUMABLE_CHANGES = {"steps", "checkpoint_every", "num_workers", "half"}
SCHEDULES = ("constant", "cosine")
PRECISIONS = ("float32", "bfloat16")


class PretrainError(ValueError):
    """A problem with the user's input (paths, images, settings); the CLI prints it as one line."""


@dataclass
class PretrainConfig:
    """Settings of one pre-training run."""

    architecture: Architecture = "bmshj2018-hyperprior"
    """CompressAI model: ScaleHyperprior(N, M), MeanScaleHyperprior(N, M) or Cheng2020Anchor(N)."""
    N: int = 64
    """Channels of the transforms."""
    M: int = 96
    """Channels of the latent y (ignored by cheng2020-anchor, whose latent has N channels)."""
    steps: int = 5000
    """Total training steps (a resumed run continues up to this number)."""
    batch_size: int = 8
    """Crops per step."""
    crop: int = 128
    """Side of the square random crops, a multiple of 64; smaller images are resized up (bicubic)."""
    lmbda: float = 0.0130
    """Rate-distortion trade-off, CompressAI's convention: loss = lmbda * 255^2 * MSE + bpp."""
    lr: float = 1e-4
    """Adam learning rate of the network."""
    aux_lr: float = 1e-3
    """Adam learning rate of the entropy bottleneck quantiles (aux loss)."""
    clip_max_norm: float = 1.0
    """Gradient-norm clipping of the network parameters (0 disables it)."""
    seed: int = 0
    """Seeds the initial weights, the crops/flips and the quantisation noise."""
    checkpoint_every: int = 500
    """Write the resumable checkpoint <output>.ckpt every this many steps (and always at the end)."""
    num_workers: int = 0
    """DataLoader processes cutting the crops (0: main process; images are in memory anyway)."""
    half: bool = True
    """Store the backbone's parameters as float16 (about half the file size)."""
    schedule: Literal["constant", "cosine"] = "constant"
    """Learning-rate schedule of the network: "constant" (lr throughout) or "cosine" (lr until
    ``decay_start`` x steps, then a half-cosine down to ``min_lr`` at the last step). The schedule is a
    pure function of (step, steps), so a resumed run follows it exactly; a resume that raises --steps
    stretches the remaining decay."""
    decay_start: float = 0.5
    """Fraction of the steps after which the cosine decay starts (``schedule="cosine"``)."""
    min_lr: float = 1e-5
    """Learning rate at the last step (``schedule="cosine"``)."""
    precision: Literal["float32", "bfloat16"] = "float32"
    """Arithmetic of the transforms' convolutions in training: "bfloat16" runs g_a/g_s/h_a/h_s under
    CPU/CUDA autocast with channels-last tensors (2.5-4.0x faster per step on this machine's AMX CPU,
    docs/backbone.md); the entropy models, the loss and the weights stay float32. Evaluation and the
    saved backbone are always float32."""
    init: str = ""
    """Start from the weights of this backbone file (same architecture, N, M) instead of random ones
    (a new optimizer state and schedule: the way to chain pre-training phases)."""

    def validate(self) -> None:
        """Raise PretrainError naming the first bad field."""
        if self.architecture not in ARCHITECTURES:
            raise PretrainError(f"architecture must be one of {', '.join(ARCHITECTURES)}, "
                                f"got {self.architecture!r}")
        for name in ("N", "M", "steps", "batch_size", "crop", "checkpoint_every"):
            if int(getattr(self, name)) < 1:
                raise PretrainError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.crop % DOWNSAMPLING:
            raise PretrainError(f"crop must be a multiple of {DOWNSAMPLING}, got {self.crop}")
        if self.schedule not in SCHEDULES:
            raise PretrainError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.precision not in PRECISIONS:
            raise PretrainError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if not 0.0 <= self.decay_start < 1.0:
            raise PretrainError(f"decay_start must be in [0, 1), got {self.decay_start}")
        for name in ("lmbda", "lr", "aux_lr", "min_lr"):
            value = float(getattr(self, name))
            if not (math.isfinite(value) and value > 0):
                raise PretrainError(f"{name} must be a positive number, got {value}")
        if not (math.isfinite(self.clip_max_norm) and self.clip_max_norm >= 0):
            raise PretrainError(f"clip_max_norm must be >= 0, got {self.clip_max_norm}")
        if self.num_workers < 0:
            raise PretrainError(f"num_workers must be >= 0, got {self.num_workers}")


@dataclass
class PretrainResult:
    """What :func:`pretrain` returns."""

    model: Any
    """The trained model in full precision (train mode, CDF tables not built)."""
    output: Path
    """The backbone file that was written."""
    checkpoint: Path
    """The resumable checkpoint next to it."""
    step: int
    """Steps done in total."""
    resumed_from: int
    """Step the run started from (0 for a fresh run)."""
    meta: Dict[str, Any] = field(default_factory=dict)
    """The "meta" dict stored in the backbone file."""


# ---------------------------------------------------------------------------------------------
# images


def _folders(images: Union[Path, str, Sequence[Union[Path, str]]]) -> List[Path]:
    """One folder or several, as a list of paths."""
    return [Path(images)] if isinstance(images, (str, Path)) else [Path(f) for f in images]


def list_images(images: Union[Path, str, Sequence[Union[Path, str]]]) -> List[Path]:
    """The png/jpg/jpeg files in ``images`` (one folder or several) and all their sub-folders.

    Hidden files and folders (names starting with ".") are skipped. Files are sorted by their path
    relative to their folder, folders in the order given.
    """
    files: List[Path] = []
    for folder in _folders(images):
        if not folder.exists():
            raise PretrainError(f"image folder {folder} does not exist")
        if not folder.is_dir():
            raise PretrainError(f"{folder} is not a folder")
        found = sorted(
            (p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
             and not any(part.startswith(".") for part in p.relative_to(folder).parts)),
            key=lambda p: p.relative_to(folder).as_posix())
        if not found:
            raise PretrainError(f"no images ({'/'.join(s[1:] for s in IMAGE_SUFFIXES)}) in {folder} "
                                f"or its sub-folders")
        files += found
    return files


def _image_names(images: Union[Path, str, Sequence[Union[Path, str]]], files: List[Path]) -> List[str]:
    """Stable names of ``files``: ``<folder name>/<path relative to the folder>``."""
    names = []
    folders = _folders(images)
    for p in files:
        root = next(f for f in folders if p.is_relative_to(f))
        names.append(f"{root.name}/{p.relative_to(root).as_posix()}")
    return names


def _read_rgb(path: Path, min_side: int = 0) -> torch.Tensor:
    """One image as a uint8 tensor [3, H, W]; resized up (bicubic) if its shorter side < min_side."""
    import numpy as np
    from PIL import Image

    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            w, h = img.size
            if min_side and min(w, h) < min_side:
                scale = min_side / min(w, h)
                size = (max(min_side, math.ceil(w * scale)), max(min_side, math.ceil(h * scale)))
                img = img.resize(size, Image.BICUBIC)
            arr = np.asarray(img, dtype=np.uint8).copy()
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise PretrainError(f"cannot read image {path}: {msg}") from err
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def load_images(images: Union[Path, Sequence[Path]], min_side: int = 0) -> Tuple[List[str], List[torch.Tensor]]:
    """Read every image of ``images`` (see :func:`list_images`) once: (names, uint8 tensors [3, H, W])."""
    files = list_images(images)
    return _image_names(images, files), [_read_rgb(p, min_side) for p in files]


class CropBatches(torch.utils.data.Dataset):
    """Item ``step`` is the float [0, 1] batch [B, 3, crop, crop] used at that step.

    Each crop picks an image uniformly, a random position and random horizontal/vertical flips,
    all drawn from a generator seeded with (seed, step): batches do not depend on what ran before,
    which makes resuming exact and lets DataLoader workers cut them in any order.
    """

    def __init__(self, images: List[torch.Tensor], crop: int, batch_size: int, seed: int):
        self.images, self.crop, self.batch_size, self.seed = images, crop, batch_size, seed

    def __len__(self) -> int:  # only used by samplers; steps are unbounded
        return 2**62

    def __getitem__(self, step: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + int(step) + 1)
        out = torch.empty(self.batch_size, 3, self.crop, self.crop, dtype=torch.uint8)
        for b in range(self.batch_size):
            img = self.images[int(torch.randint(len(self.images), (1,), generator=gen))]
            _, h, w = img.shape
            top = int(torch.randint(h - self.crop + 1, (1,), generator=gen))
            left = int(torch.randint(w - self.crop + 1, (1,), generator=gen))
            patch = img[:, top:top + self.crop, left:left + self.crop]
            flips = torch.rand(2, generator=gen)
            if flips[0] < 0.5:
                patch = patch.flip(-1)
            if flips[1] < 0.5:
                patch = patch.flip(-2)
            out[b] = patch
        return out.float().div_(255.0)


# ---------------------------------------------------------------------------------------------
# model, training step


def _import_compressai():
    """``import compressai`` without its torch>=2.9 FutureWarning about torch.jit.script."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)
        import compressai
        import compressai.models  # noqa: F401
    return compressai


def build_model(architecture: str, N: int, M: int):
    """A fresh CompressAI model of the named architecture (random weights)."""
    _import_compressai()
    from compressai.models import Cheng2020Anchor, MeanScaleHyperprior, ScaleHyperprior

    if architecture == "bmshj2018-hyperprior":
        return ScaleHyperprior(int(N), int(M))
    if architecture == "mbt2018-mean":
        return MeanScaleHyperprior(int(N), int(M))
    if architecture == "cheng2020-anchor":
        return Cheng2020Anchor(int(N))
    raise PretrainError(f"unknown architecture {architecture!r} (known: {', '.join(ARCHITECTURES)})")


def _effective_M(architecture: str, N: int, M: int) -> int:
    return int(N) if architecture == "cheng2020-anchor" else int(M)


def _split_parameters(model) -> Tuple[List[torch.nn.Parameter], List[torch.nn.Parameter]]:
    """CompressAI's split: (network parameters, entropy-bottleneck ``*.quantiles``)."""
    named = sorted((n, p) for n, p in model.named_parameters() if p.requires_grad)
    net = [p for n, p in named if not n.endswith(".quantiles")]
    aux = [p for n, p in named if n.endswith(".quantiles")]
    return net, aux


def make_optimizers(model, cfg: PretrainConfig) -> Tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
    """(net Adam at cfg.lr, aux Adam at cfg.aux_lr)."""
    net, aux = _split_parameters(model)
    return torch.optim.Adam(net, lr=cfg.lr), torch.optim.Adam(aux, lr=cfg.aux_lr)


def learning_rate(cfg: PretrainConfig, step: int) -> float:
    """Network learning rate for (0-based) training step ``step`` under ``cfg.schedule``."""
    if cfg.schedule == "constant":
        return float(cfg.lr)
    start = int(cfg.decay_start * cfg.steps)
    if step < start or cfg.steps - 1 <= start:
        return float(cfg.lr)
    t = min(1.0, (step - start) / (cfg.steps - 1 - start))
    return float(cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + math.cos(math.pi * t)))


def _autocast(x: torch.Tensor, enabled: bool):
    """bfloat16 autocast on x's device type (a no-op context when not ``enabled``)."""
    import contextlib

    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(x.device.type, dtype=torch.bfloat16)


def forward(model, x: torch.Tensor, precision: str = "float32") -> Dict[str, Any]:
    """The model's training forward, ``{"x_hat", "likelihoods"}`` as CompressAI's ``forward``.

    With ``precision="bfloat16"`` (hyperprior architectures) the four transforms run under bfloat16
    autocast on channels-last tensors, and their outputs are cast back to float32 before the entropy
    models, so the rate and the quantisation are computed in float32. Other architectures, or
    float32, use the model's own ``forward``.
    """
    from compressai.models import MeanScaleHyperprior, ScaleHyperprior

    mixed = precision == "bfloat16" and isinstance(model, ScaleHyperprior)
    if not mixed:
        return model(x)
    mean_scale = isinstance(model, MeanScaleHyperprior)

    def run(module, inp):
        with _autocast(inp, True):
            return module(inp.contiguous(memory_format=torch.channels_last)).float()

    y = run(model.g_a, x)
    z = run(model.h_a, y if mean_scale else torch.abs(y))
    z_hat, z_likelihoods = model.entropy_bottleneck(z)
    params = run(model.h_s, z_hat)
    if mean_scale:
        scales, means = params.chunk(2, 1)
        y_hat, y_likelihoods = model.gaussian_conditional(y, scales, means=means)
    else:
        y_hat, y_likelihoods = model.gaussian_conditional(y, params)
    x_hat = run(model.g_s, y_hat)
    return {"x_hat": x_hat, "likelihoods": {"y": y_likelihoods, "z": z_likelihoods}}


def rate_distortion(out: Dict[str, Any], x: torch.Tensor, lmbda: float) -> Dict[str, torch.Tensor]:
    """CompressAI's RateDistortionLoss: {"loss", "bpp", "mse"} for a forward output and target."""
    n, _, h, w = x.shape
    bits = sum(torch.log(lk).sum() for lk in out["likelihoods"].values()) / (-math.log(2))
    bpp = bits / (n * h * w)
    mse = F.mse_loss(out["x_hat"], x)
    return {"loss": lmbda * 255**2 * mse + bpp, "bpp": bpp, "mse": mse}


def train_step(model, net_opt, aux_opt, x: torch.Tensor, cfg: PretrainConfig,
               step: Optional[int] = None) -> Dict[str, float]:
    """One training step (net loss + aux loss); returns {"loss", "bpp", "mse", "psnr", "aux", "lr"}.

    ``step`` (0-based) sets the network's learning rate from ``cfg``'s schedule; None keeps it.
    """
    model.train()
    if step is not None:
        for group in net_opt.param_groups:
            group["lr"] = learning_rate(cfg, step)
    net_opt.zero_grad(set_to_none=True)
    aux_opt.zero_grad(set_to_none=True)
    terms = rate_distortion(forward(model, x, cfg.precision), x, cfg.lmbda)
    terms["loss"].backward()
    if cfg.clip_max_norm > 0:
        torch.nn.utils.clip_grad_norm_([p for g in net_opt.param_groups for p in g["params"]],
                                       cfg.clip_max_norm)
    net_opt.step()
    aux = model.aux_loss()
    aux.backward()
    aux_opt.step()
    mse = terms["mse"].item()
    return {"loss": terms["loss"].item(), "bpp": terms["bpp"].item(), "mse": mse,
            "psnr": _psnr(mse), "aux": aux.item(), "lr": float(net_opt.param_groups[0]["lr"])}


def _psnr(mse: float) -> float:
    return float("inf") if mse <= 0 else -10.0 * math.log10(mse)


# ---------------------------------------------------------------------------------------------
# files


def checkpoint_path(output: Path) -> Path:
    """The resumable checkpoint that belongs to backbone file ``output``: ``<output>.ckpt``."""
    output = Path(output)
    return output.with_name(output.name + ".ckpt")


def _check_writable_dir(folder: Path) -> None:
    """Create ``folder`` if needed and prove it is writable (a real probe: works as root too)."""
    import tempfile

    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-probe-"):
            pass
    except OSError as err:
        raise PretrainError(f"output directory {folder} is not writable ({err.strerror or err})") from err


def save_backbone(model, path: Path, architecture: str, N: int, M: int, meta: Dict[str, Any],
                  half: bool = True) -> Path:
    """Write the backbone file atomically (:func:`nerfcodec_ns.codec.backbone.save_backbone_file`), parameters
    as float16 when ``half``; the model itself is left untouched."""
    from nerfcodec_ns.codec.backbone import save_backbone_file

    dtype = torch.float16 if half else torch.float32
    return save_backbone_file(model, architecture, int(N), _effective_M(architecture, N, M), Path(path),
                              meta=dict(meta), dtype=dtype)


def load_backbone_file(path: Path):
    """Load a backbone file: (model in eval mode, float32, CDF tables ready; meta).

    The returned meta is the stored "meta" dict plus "architecture", "N" and "M".
    """
    from nerfcodec_ns.codec.backbone import read_backbone_file

    try:
        obj = read_backbone_file(path)
    except (FileNotFoundError, ValueError) as err:
        raise PretrainError(str(err).splitlines()[0]) from err
    model = build_model(obj["architecture"], obj["N"], obj["M"])
    # CompressionModel.load_state_dict (compressai 1.2.8, models/base.py) first resizes the
    # entropy models' CDF buffers to the stored shapes (update_registered_buffers).
    model.load_state_dict(obj["state_dict"])
    model.update(force=True)
    model.eval()
    meta = dict(obj.get("meta", {}))
    meta.update(architecture=obj["architecture"], N=int(obj["N"]), M=int(obj["M"]))
    return model, meta


# ---------------------------------------------------------------------------------------------
# training


def _progress(console=None):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.progress import TimeRemainingColumn

    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), TimeRemainingColumn(),
        console=console, transient=False,
    )


def _load_checkpoint(ckpt: Path, cfg: PretrainConfig, image_names: List[str]) -> Dict[str, Any]:
    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
    except Exception as err:
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise PretrainError(f"cannot read checkpoint {ckpt}: {msg}") from err
    if not isinstance(state, dict) or state.get("format") != "nerfcodec-pretrain-ckpt":
        raise PretrainError(f"{ckpt} is not a pretrain-codec checkpoint")
    old = state["config"]
    changed = [k for k, v in asdict(cfg).items() if k not in _RESUMABLE_CHANGES and old.get(k) != v]
    if changed:
        diffs = ", ".join(f"{k}: {old.get(k)!r} -> {getattr(cfg, k)!r}" for k in changed)
        raise PretrainError(f"cannot resume {ckpt}: settings differ from the checkpoint ({diffs})")
    if list(state["image_names"]) != list(image_names):
        raise PretrainError(f"cannot resume {ckpt}: the image folder's files differ from the ones it was "
                            f"trained on ({len(state['image_names'])} then, {len(image_names)} now)")
    if int(state["step"]) > cfg.steps:
        raise PretrainError(f"cannot resume {ckpt}: it is already at step {state['step']} "
                            f"> --steps {cfg.steps}")
    return state


def _init_state(cfg: PretrainConfig) -> Dict[str, torch.Tensor]:
    """The float32 state dict of the backbone file ``cfg.init``, checked against cfg's architecture."""
    from nerfcodec_ns.codec.backbone import read_backbone_file

    try:
        obj = read_backbone_file(cfg.init)
    except (FileNotFoundError, ValueError) as err:
        raise PretrainError(f"--init: {str(err).splitlines()[0]}") from err
    want = (cfg.architecture, int(cfg.N), _effective_M(cfg.architecture, cfg.N, cfg.M))
    got = (obj["architecture"], int(obj["N"]), int(obj["M"]))
    if want != got:
        raise PretrainError(f"--init {cfg.init} holds {got[0]} (N={got[1]}, M={got[2]}), but the run is "
                            f"{want[0]} (N={want[1]}, M={want[2]})")
    return obj["state_dict"]


def pretrain(images: Union[Path, Sequence[Path]], output: Path, cfg: Optional[PretrainConfig] = None, *, resume: bool = False,
             overwrite: bool = False, progress: bool = True, console=None,
             log_path: Optional[Path] = None, log_every: int = 50, stop_at: Optional[int] = None,
             max_seconds: Optional[float] = None) -> PretrainResult:
    """Train a backbone on the images of ``images`` and write it to ``output``.

    ``<output>.ckpt`` (model, both optimizers, step, RNG state, config) is written every
    ``cfg.checkpoint_every`` steps and at the end. If it exists: ``resume`` continues from it
    (same settings required, except steps/checkpoint_every/num_workers/half), ``overwrite``
    deletes it and starts again, neither is an error. An existing ``output`` is only replaced
    with ``overwrite``. ``stop_at`` (a step) and ``max_seconds`` (wall time of this call) end the run
    early, with a checkpoint and a backbone file, on the schedule of ``cfg.steps``: resuming it later
    continues exactly as an uninterrupted run (how a long pre-training spans several sessions). Raises PretrainError for user errors, before any training.
    torch's global RNG state is restored on return.
    """
    from nerfcodec_ns.malloc import tune_malloc

    cfg = cfg or PretrainConfig()
    cfg.validate()
    tune_malloc()  # the codec's training steps reuse freed memory (nerfcodec_ns/malloc.py)
    output = Path(output)
    ckpt = checkpoint_path(output)

    # All checks that can fail on the user's input come before the (long) training.
    if output.is_dir():
        raise PretrainError(f"output {output} is a folder; give a file name such as {output / 'backbone.pt'}")
    if output.exists() and not overwrite:
        extra = " with the resumed run" if resume else ""
        raise PretrainError(f"output {output} exists; pass --overwrite to replace it{extra}")
    if ckpt.exists() and not (resume or overwrite):
        raise PretrainError(f"checkpoint {ckpt} exists; pass --resume to continue it "
                            f"or --overwrite to start again")
    if resume and not ckpt.exists():
        raise PretrainError(f"--resume given but there is no checkpoint {ckpt}")
    names, pixels = load_images(images, min_side=cfg.crop)
    state = _load_checkpoint(ckpt, cfg, names) if resume else None
    init_state = _init_state(cfg) if (cfg.init and state is None) else None
    _check_writable_dir(output.parent)
    if not resume and ckpt.exists():
        ckpt.unlink()  # --overwrite: a stale checkpoint must not be resumed later by mistake

    compressai = _import_compressai()

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = build_model(cfg.architecture, cfg.N, cfg.M)
        if cfg.precision == "bfloat16":
            model = model.to(memory_format=torch.channels_last)
        net_opt, aux_opt = make_optimizers(model, cfg)
        step = 0
        if init_state is not None:
            model.load_state_dict(init_state)
        if state is not None:
            model.load_state_dict(state["model"])
            net_opt.load_state_dict(state["net_optimizer"])
            aux_opt.load_state_dict(state["aux_optimizer"])
            torch.set_rng_state(state["rng_state"])
            step = int(state["step"])
        start = step
        ema: Dict[str, float] = dict(state["stats"]) if state is not None and state.get("stats") else {}

        def write_checkpoint() -> None:
            payload = {
                "format": "nerfcodec-pretrain-ckpt", "step": step, "config": asdict(cfg),
                "image_names": names, "model": model.state_dict(),
                "net_optimizer": net_opt.state_dict(), "aux_optimizer": aux_opt.state_dict(),
                "rng_state": torch.get_rng_state(), "stats": dict(ema),
            }
            write_atomic(ckpt, lambda f: torch.save(payload, f), overwrite=True)

        batches = CropBatches(pixels, cfg.crop, cfg.batch_size, cfg.seed)
        last = cfg.steps if stop_at is None else max(step, min(cfg.steps, int(stop_at)))
        deadline = None if max_seconds is None else time.monotonic() + float(max_seconds)
        if cfg.num_workers > 0:
            loader = iter(torch.utils.data.DataLoader(
                batches, sampler=range(step, last), batch_size=None, num_workers=cfg.num_workers))
        else:
            loader = (batches[s] for s in range(step, last))
        bar = _progress(console) if progress else None
        task = None
        log = open(log_path, "a") if log_path is not None else None
        if bar is not None:
            bar.start()
            task = bar.add_task("pretrain-codec", total=cfg.steps, completed=step, stats="")
        try:
            for x in loader:
                stats = train_step(model, net_opt, aux_opt, x, cfg, step)
                if not math.isfinite(stats["loss"]):
                    last = f"; {ckpt} holds the last good state" if ckpt.exists() else ""
                    raise PretrainError(f"the loss became {stats['loss']} at step {step + 1}; "
                                        f"try a smaller --lr{last}")
                step += 1
                for k in ("loss", "bpp", "psnr"):
                    ema[k] = stats[k] if k not in ema else 0.95 * ema[k] + 0.05 * stats[k]
                out_of_time = deadline is not None and time.monotonic() > deadline
                if step % cfg.checkpoint_every == 0 or step in (cfg.steps, last) or out_of_time:
                    write_checkpoint()
                if bar is not None:
                    bar.update(task, completed=step, stats=(
                        f"loss {ema['loss']:.3f}  bpp {ema['bpp']:.3f}  PSNR {ema['psnr']:.2f} dB  "
                        f"lr {stats['lr']:.1e}"))
                if log is not None and (step % log_every == 0 or step == cfg.steps):
                    log.write(f"step {step} loss {ema['loss']:.4f} bpp {ema['bpp']:.4f} "
                              f"psnr {ema['psnr']:.3f} lr {stats['lr']:.3e} t {time.time():.0f}\n")
                    log.flush()
                if out_of_time:
                    break
        finally:
            if bar is not None:
                bar.stop()
            if log is not None:
                log.close()

    meta = {
        "images": ", ".join(str(f.resolve()) for f in _folders(images)),
        "num_images": len(names),
        "steps": int(step),
        "lmbda": float(cfg.lmbda),
        "crop": int(cfg.crop),
        "batch_size": int(cfg.batch_size),
        "lr": float(cfg.lr),
        "schedule": str(cfg.schedule),
        "min_lr": float(cfg.min_lr),
        "decay_start": float(cfg.decay_start),
        "precision": str(cfg.precision),
        "init": str(cfg.init),
        "seed": int(cfg.seed),
        "half": int(cfg.half),
        "final_loss": float(ema.get("loss", float("nan"))),
        "final_bpp": float(ema.get("bpp", float("nan"))),
        "final_psnr": float(ema.get("psnr", float("nan"))),
        "torch": str(torch.__version__),  # a TorchVersion, which weights_only loading refuses
        "compressai": str(compressai.__version__),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    save_backbone(model, output, cfg.architecture, cfg.N, cfg.M, meta, half=cfg.half)
    return PretrainResult(model=model, output=output, checkpoint=ckpt, step=step, resumed_from=start,
                          meta=meta)


# ---------------------------------------------------------------------------------------------
# evaluation


def _code(model, xp: torch.Tensor, gain: float):
    """(strings, decoded x_hat, likelihood bits) of one padded image with latent gain ``gain``.

    gain 1 is the model's own ``compress``/``decompress``; another gain codes y as round(gain * y) /
    gain with the Gaussian scales (and means) multiplied by the same gain, as the plane codec does
    (``CodecConfig.latent_gain``): one trained model, several rates.
    """
    from compressai.models import MeanScaleHyperprior, ScaleHyperprior

    if gain == 1.0 or not isinstance(model, ScaleHyperprior):
        if gain != 1.0:
            raise PretrainError("a latent gain other than 1 needs a hyperprior architecture")
        out = model(xp)
        bits = sum(torch.log(lk).sum() for lk in out["likelihoods"].values()) / (-math.log(2))
        enc = model.compress(xp)
        dec = model.decompress(enc["strings"], enc["shape"])
        return enc["strings"], dec["x_hat"], float(bits), out["x_hat"]
    gc, eb = model.gaussian_conditional, model.entropy_bottleneck
    mean_scale = isinstance(model, MeanScaleHyperprior)
    y = model.g_a(xp)
    z = model.h_a(y if mean_scale else torch.abs(y))
    z_strings = eb.compress(z)
    z_hat = eb.decompress(z_strings, z.shape[-2:])
    params = model.h_s(z_hat)
    scales, means = params.chunk(2, 1) if mean_scale else (params, None)
    means_g = means * gain if means is not None else None
    indexes = gc.build_indexes(scales * gain)
    y_strings = gc.compress(y * gain, indexes, means=means_g)
    y_hat = gc.decompress(y_strings, indexes, means=means_g) / gain
    _, y_lk = gc(y * gain, scales * gain, means=means_g)
    _, z_lk = eb(z)
    bits = float((torch.log(y_lk).sum() + torch.log(z_lk).sum()) / (-math.log(2)))
    x_hat = model.g_s(y_hat)
    return [y_strings, z_strings], x_hat, bits, x_hat


@torch.no_grad()
def evaluate(model, images: Path, progress: bool = False, console=None, gain: float = 1.0) -> Dict[str, Any]:
    """Code every image of ``images`` (full size) with the real entropy coder.

    Each image is zero-padded (centred, ``compressai.ops.compute_padding``) to a multiple of 64,
    compressed, decompressed and cropped back. ``gain``: the latent quantization gain (see
    :func:`_code`; 1 = the model as trained). Returns ``{"rows": [...], "mean": {...}}``; a row
    has name, width, height, bytes, bpp (real: 8 * bytes of all strings / original pixels),
    bpp_est (from the eval-mode likelihoods, same pixel count), psnr (dB, decoded vs original,
    both in [0, 1]), psnr_est (eval-mode forward) and encode_s/decode_s. The model needs its
    CDF tables (``update()``), as a loaded backbone has.
    """
    from compressai.ops import compute_padding

    files = list_images(images)
    model.eval()
    rows = []
    bar = _progress(console) if progress else None
    task = bar.add_task("eval-codec", total=len(files), stats="") if bar is not None else None
    if bar is not None:
        bar.start()
    try:
        for path in files:
            x = _read_rgb(path).float().div_(255.0).unsqueeze(0)
            h, w = x.shape[-2:]
            pad, unpad = compute_padding(h, w, min_div=DOWNSAMPLING)
            xp = F.pad(x, pad, mode="constant", value=0)
            t0 = time.perf_counter()
            strings, x_dec, est_bits, x_fwd = _code(model, xp, float(gain))
            t1 = time.perf_counter()
            x_hat = F.pad(x_dec, unpad).clamp(0, 1)
            x_est = F.pad(x_fwd, unpad).clamp(0, 1)
            nbytes = sum(len(s) for group in strings for s in group)
            rows.append({
                "name": path.name, "width": int(w), "height": int(h), "bytes": int(nbytes),
                "bpp": 8.0 * nbytes / (h * w), "bpp_est": float(est_bits) / (h * w),
                "psnr": _psnr(float(F.mse_loss(x_hat, x))), "psnr_est": _psnr(float(F.mse_loss(x_est, x))),
                "code_s": t1 - t0,
            })
            if bar is not None:
                bar.update(task, advance=1, stats=f"{path.name}: {rows[-1]['psnr']:.2f} dB "
                                                  f"{rows[-1]['bpp']:.3f} bpp")
    finally:
        if bar is not None:
            bar.stop()
    keys = ("bytes", "bpp", "bpp_est", "psnr", "psnr_est", "code_s")
    mean = {k: sum(r[k] for r in rows) / len(rows) for k in keys}
    mean["images"] = len(rows)
    mean["gain"] = float(gain)
    return {"rows": rows, "mean": mean}
