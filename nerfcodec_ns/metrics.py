"""Image-quality metrics: PSNR, SSIM and an LPIPS that never blocks training when offline."""

from __future__ import annotations

import logging
from typing import Callable, Optional

import torch
from jaxtyping import Float
from torch import Tensor, nn

logger = logging.getLogger(__name__)


def psnr(pred: Float[Tensor, "*b 3"], gt: Float[Tensor, "*b 3"]) -> Tensor:
    """Peak signal-to-noise ratio in dB for images in [0, 1]."""
    mse = torch.mean((pred - gt) ** 2)
    return -10.0 * torch.log10(mse.clamp(min=1e-12))


def _to_nchw(img: Float[Tensor, "H W 3"]) -> Float[Tensor, "1 3 H W"]:
    return img.permute(2, 0, 1)[None]


def ssim(pred: Float[Tensor, "H W 3"], gt: Float[Tensor, "H W 3"]) -> Tensor:
    """Structural similarity (Gaussian window 11, as torchmetrics and nerfstudio compute it)."""
    from torchmetrics.functional import structural_similarity_index_measure

    return structural_similarity_index_measure(_to_nchw(pred), _to_nchw(gt), data_range=1.0)


def _default_lpips_factory() -> nn.Module:
    from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

    return LearnedPerceptualImagePatchSimilarity(normalize=True)


class LazyLPIPS:
    """LPIPS (AlexNet) built on first use; if its weights cannot be loaded (offline), it reports
    "unavailable" once, with one warning, and returns None from then on.

    It is deliberately not an ``nn.Module`` so that it never enters a model's ``state_dict``.
    """

    def __init__(self, enabled: bool = True, factory: Callable[[], nn.Module] = _default_lpips_factory) -> None:
        self.enabled = enabled
        self._factory = factory
        self._fn: Optional[nn.Module] = None
        self.unavailable_reason: Optional[str] = None if enabled else "disabled in the config"

    @property
    def available(self) -> Optional[bool]:
        """True once loaded, False once it failed or is disabled, None before the first try."""
        if self._fn is not None:
            return True
        return False if self.unavailable_reason else None

    @torch.no_grad()
    def __call__(self, pred: Float[Tensor, "H W 3"], gt: Float[Tensor, "H W 3"]) -> Optional[float]:
        """LPIPS between two images in [0, 1], or None when unavailable."""
        if self.unavailable_reason is not None:
            return None
        if self._fn is None:
            try:
                self._fn = self._factory().eval()
            except Exception as err:  # offline, missing weights, ...: never stop training for a metric
                self.unavailable_reason = f"{type(err).__name__}: {err}".splitlines()[0]
                logger.warning("LPIPS unavailable (%s); evaluation continues without it.", self.unavailable_reason)
                return None
        self._fn = self._fn.to(pred.device)
        return float(self._fn(_to_nchw(pred).clamp(0, 1), _to_nchw(gt).clamp(0, 1)))
