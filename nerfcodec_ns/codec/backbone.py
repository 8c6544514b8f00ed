"""Backbone files and loading: the pre-trained CompressAI model whose frozen parts a decoder needs.

A *backbone file* (``torch.save`` of plain values, loaded with ``weights_only=True``) is written by
:func:`save_backbone_file` (the pre-training command, :mod:`nerfcodec_ns.codec.pretrain`) and read by
:func:`read_backbone_file`; :func:`load_backbone` picks the embedded file, CompressAI's zoo or a
given file from a :class:`~nerfcodec_ns.codec.settings.CodecConfig`, and fingerprints the frozen
decoder-side weights (:func:`frozen_weights_sha256`, the SHA-256 a scene file names).

compressai is imported inside functions only.
"""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from nerfcodec_ns.atomic import write_atomic
from nerfcodec_ns.codec.settings import ARCHITECTURES, CodecConfig

#: Backbone shipped with the package (``weights="embedded"``); written by the pretraining command.
EMBEDDED_BACKBONE = Path(__file__).resolve().parent / "weights" / "backbone.pt"


def embedded_backbones() -> List[Path]:
    """Every backbone file shipped with the package: the current one (``weights="embedded"``) first,
    then earlier ones (``weights/backbone-*.pt``), kept so that scene files made with them still decode."""
    folder = EMBEDDED_BACKBONE.parent
    older = sorted(folder.glob("backbone-*.pt"), reverse=True)
    return ([EMBEDDED_BACKBONE] if EMBEDDED_BACKBONE.is_file() else []) + older


BACKBONE_FORMAT = "nerfcodec-backbone"
BACKBONE_VERSION = 1
#: Entropy-model buffers whose shapes change on ``update()`` (resized before loading a state dict).
DYNAMIC_BUFFERS = ("_quantized_cdf", "_offset", "_cdf_length", "scale_table")


class BackboneInfo(NamedTuple):
    """Where a backbone came from, and a fingerprint of its frozen (decoder-side) weights."""

    architecture: str
    N: int
    M: int
    source: str
    """"random", "zoo:<arch>/mse/q<quality> (<file name>)", or "file:<path>"."""
    sha256: str
    """Hex SHA-256 of the frozen ``g_s``/``h_s`` tensors as float32 (:func:`frozen_weights_sha256`)."""


def build_backbone(architecture: str, N: int, M: int) -> nn.Module:
    """A randomly initialised CompressAI model of ``architecture`` (cheng2020-anchor ignores M)."""
    from compressai.models import Cheng2020Anchor, MeanScaleHyperprior, ScaleHyperprior

    if architecture == "bmshj2018-hyperprior":
        return ScaleHyperprior(N, M)
    if architecture == "mbt2018-mean":
        return MeanScaleHyperprior(N, M)
    if architecture == "cheng2020-anchor":
        return Cheng2020Anchor(N)
    raise ValueError(f"unknown backbone architecture {architecture!r}; expected one of {ARCHITECTURES}")


def frozen_weights_sha256(model: nn.Module, architecture: str) -> str:
    """SHA-256 of a backbone's decoder-side weights (every float ``g_s.*``/``h_s.*`` state entry).

    Tensors are hashed as little-endian float32 in sorted key order, each preceded by its key and
    shape, so a float16 file and its float32 copy give the same fingerprint.
    """
    digest = hashlib.sha256(architecture.encode())
    state = model.state_dict()
    for key in sorted(k for k in state if k.startswith(("g_s.", "h_s.")) and state[k].is_floating_point()):
        tensor = state[key].detach().to("cpu", torch.float32).contiguous()
        digest.update(f"{key}{tuple(tensor.shape)}".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def _check_meta(value: Any, where: str = "meta") -> None:
    """Raise TypeError unless ``value`` only holds types that ``torch.load(weights_only=True)`` reads."""
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"{where}: keys must be str, got {type(k).__name__}")
            _check_meta(v, f"{where}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_meta(v, f"{where}[{i}]")
    elif not (value is None or isinstance(value, (str, int, float, bool, Tensor))):
        raise TypeError(f"{where}: unsupported type {type(value).__name__}")


def save_backbone_file(
    model: nn.Module,
    architecture: str,
    N: int,
    M: int,
    path: Union[str, Path],
    meta: Optional[Dict[str, Any]] = None,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write a backbone file atomically (:func:`nerfcodec_ns.atomic.write_atomic`, replacing an
    existing file); ``model`` is left untouched.

    The file is ``torch.save`` of ``{"format": "nerfcodec-backbone", "version": 1, "architecture",
    "N", "M", "state_dict", "meta"}``; ``state_dict`` is the model's plain ``state_dict()`` (before or
    after ``update()``) with the *parameters* cast to ``dtype`` (float16 halves the file). Buffers
    keep their dtype (GDN's 2^-36 pedestal would underflow in float16); if the model was updated,
    its CDF tables are rebuilt from the ``dtype``-rounded parameters so they match the stored weights.
    """
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown backbone architecture {architecture!r}; expected one of {ARCHITECTURES}")
    if architecture == "cheng2020-anchor" and M != N:
        raise ValueError(f"cheng2020-anchor has M = N, got N={N}, M={M}")
    expected = build_backbone(architecture, N, M).state_dict()
    state = model.state_dict()
    bad = [k for k in expected if k not in state or (
        state[k].shape != expected[k].shape and k.rsplit(".", 1)[-1] not in DYNAMIC_BUFFERS)]
    if bad or set(state) - set(expected):
        raise ValueError(f"model is not a {architecture}(N={N}, M={M}): mismatched keys {bad[:5]}")
    meta = dict(meta or {})
    _check_meta(meta)
    model = copy.deepcopy(model).cpu()
    params = {name for name, _ in model.named_parameters()}
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(dtype).float())
    if model.entropy_bottleneck._offset.numel() > 0:
        model.update(force=True)
    payload = {
        "format": BACKBONE_FORMAT,
        "version": BACKBONE_VERSION,
        "architecture": architecture,
        "N": int(N),
        "M": int(M),
        "state_dict": {
            k: (v.to(dtype) if k in params else v).detach().clone() for k, v in model.state_dict().items()
        },
        "meta": meta,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(path, lambda f: torch.save(payload, f), overwrite=True)


def read_backbone_file(path: Union[str, Path]) -> Dict[str, Any]:
    """Load and validate a backbone file (``weights_only=True``); floating tensors become float32."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"backbone file not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle / zip errors: not a torch file we can read safely
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:120]
        raise ValueError(f"{path} is not a readable nerfcodec backbone file ({first})") from err
    if not isinstance(payload, dict) or payload.get("format") != BACKBONE_FORMAT:
        got = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise ValueError(
            f"{path} is not a nerfcodec backbone file (format {got!r}, expected {BACKBONE_FORMAT!r})"
        )
    if payload.get("version") != BACKBONE_VERSION:
        raise ValueError(f"{path}: unsupported backbone file version {payload.get('version')!r}")
    if payload.get("architecture") not in ARCHITECTURES:
        raise ValueError(f"{path}: unknown architecture {payload.get('architecture')!r}")
    state = payload.get("state_dict")
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path}: 'state_dict' must map names to tensors")
    payload["state_dict"] = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    return payload


def _load_zoo(architecture: str, quality: int) -> Tuple[nn.Module, str]:
    """CompressAI zoo model with official MSE weights (torch hub cache first, then download)."""
    from compressai.zoo import image_models
    from compressai.zoo.image import model_urls

    url = model_urls.get(architecture, {}).get("mse", {}).get(quality)
    if url is None:
        raise ValueError(f"CompressAI zoo has no MSE weights for {architecture} quality {quality}")
    model = image_models[architecture](quality=quality, metric="mse", pretrained=True, progress=False)
    return model, f"zoo:{architecture}/mse/q{quality} ({url.rsplit('/', 1)[-1]})"


def load_backbone(config: CodecConfig) -> Tuple[nn.Module, BackboneInfo]:
    """The CompressAI backbone model selected by ``config`` (float32, CPU), and its :class:`BackboneInfo`."""
    arch = config.backbone
    if config.weights == "random":
        N, M = config.N, (config.N if arch == "cheng2020-anchor" else config.M)
        model, source = build_backbone(arch, N, M), "random"
    elif config.weights == "zoo":
        model, source = _load_zoo(arch, config.quality)
    else:
        if config.weights == "embedded":
            path = EMBEDDED_BACKBONE
            if not path.is_file():
                raise FileNotFoundError(
                    f"the embedded backbone weights {path} are missing: this file is produced by the "
                    "backbone pretraining command and shipped with the package. Use "
                    "CodecConfig(weights='zoo') (CompressAI official weights), weights='random', or the "
                    "path of a backbone file instead."
                )
        else:
            path = Path(config.weights).expanduser()
        payload = read_backbone_file(path)
        if payload["architecture"] != arch:
            raise ValueError(
                f"{path} holds a {payload['architecture']} backbone but the config asks for {arch}"
            )
        model = build_backbone(arch, payload["N"], payload["M"])
        model.load_state_dict(payload["state_dict"])  # CompressionModel: resizes the CDF buffers first
        source = f"file:{path}"
    model = model.float().cpu()
    N, M = int(model.N), int(model.M)
    return model, BackboneInfo(arch, N, M, source, frozen_weights_sha256(model, arch))
