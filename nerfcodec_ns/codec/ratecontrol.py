"""Rate control: adjust the rate-distortion weight lambda during training so that the exported scene
file lands on a size budget (``--pipeline.model.codec-target-bytes``).

The controlled quantity is the predicted size of the scene file, in bytes:

    predicted = training-time size estimate (``size_total_bytes``: y/z bits from the likelihoods
                + every other transmitted part, exact)
              + offset (what the estimate misses: header, framing, camera poses, and the gap
                between the noisy training likelihoods and the real entropy coder),

where ``offset`` is re-measured by building the real file every ``calibrate_every`` steps. The
controller integrates the log-ratio error into log lambda:

    log lambda  +=  gain * log(predicted / target)        (clipped to [log lambda_min, log lambda_max])

Too big a file raises lambda (more weight on the rate), too small lowers it. Working in log space
makes the step relative, so one gain serves lambdas over many decades. Pure Python, no torch.

The real file size comes from a function the scene-file layer registers here
(:func:`register_file_sizer`; :mod:`nerfcodec_ns.scenefile.export` does it when imported, and the
plugin config imports it), so neither the codec nor the model depends on the exporter:
:func:`measured_file_size` is all they call.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Optional

#: ``(model, dataparser_outputs) -> bytes`` of the scene file the model's current state exports to,
#: or None when no decodable file can be built (e.g. a randomly initialised backbone).
FileSizer = Callable[[Any, Any], Optional[int]]

_file_sizer: Optional[FileSizer] = None
_warned_unregistered = False


def register_file_sizer(sizer: FileSizer) -> None:
    """Set the function :func:`measured_file_size` calls (the last registration wins)."""
    global _file_sizer
    _file_sizer = sizer


def measured_file_size(model: Any, dataparser_outputs: Any) -> Optional[int]:
    """Exact size in bytes of the scene file ``model`` would export to now, from the registered
    :data:`FileSizer`; None when no file can be built, or when no sizer is registered (warned once:
    rate control then steers the training estimate alone)."""
    global _warned_unregistered
    if _file_sizer is None:
        if not _warned_unregistered:
            _warned_unregistered = True
            warnings.warn("no scene-file sizer registered (import nerfcodec_ns.scenefile.export): rate control "
                          "uses the training-time size estimate only", RuntimeWarning, stacklevel=2)
        return None
    return _file_sizer(model, dataparser_outputs)


@dataclass
class RateController:
    """Integral controller on log lambda (see the module docstring). Sizes in bytes."""

    target_bytes: float
    """The size budget of the exported scene file."""
    log_lambda: float
    """Current natural log of lambda (the loss weight per kilobyte of latents)."""
    gain: float = 0.05
    """Change of log lambda per step per unit of log size error."""
    lambda_min: float = 1e-9
    """Lower clip of lambda."""
    lambda_max: float = 1.0
    """Upper clip of lambda."""
    offset_bytes: Optional[float] = None
    """Exact file size minus the training estimate, from the last calibration (None: not yet)."""
    offset_smoothing: float = 0.5
    """Weight of the previous offset when a new calibration arrives (0: take the new one)."""

    def __post_init__(self) -> None:
        if not self.target_bytes > 0:
            raise ValueError(f"target_bytes must be > 0, got {self.target_bytes}")
        if not 0 < self.lambda_min < self.lambda_max:
            raise ValueError(f"need 0 < lambda_min < lambda_max, got {self.lambda_min}, {self.lambda_max}")
        if not self.gain > 0:
            raise ValueError(f"gain must be > 0, got {self.gain}")
        self.log_lambda = self._clip(self.log_lambda)

    @property
    def lmbda(self) -> float:
        """Current lambda."""
        return math.exp(self.log_lambda)

    def _clip(self, log_lambda: float) -> float:
        return min(max(log_lambda, math.log(self.lambda_min)), math.log(self.lambda_max))

    def calibrate(self, file_bytes: float, estimate_bytes: float) -> None:
        """Record a real file size against the training estimate of the same step."""
        new = float(file_bytes) - float(estimate_bytes)
        if self.offset_bytes is None:
            self.offset_bytes = new
        else:
            s = self.offset_smoothing
            self.offset_bytes = s * self.offset_bytes + (1.0 - s) * new

    def predicted(self, estimate_bytes: float) -> float:
        """The file size predicted from a training estimate."""
        return float(estimate_bytes) + (self.offset_bytes or 0.0)

    def error(self, estimate_bytes: float) -> float:
        """Log size error, log(predicted / target): > 0 means the file would be too big."""
        return math.log(max(self.predicted(estimate_bytes), 1.0) / self.target_bytes)

    def step(self, estimate_bytes: float) -> float:
        """One control step from this training step's estimate; returns the new lambda."""
        self.log_lambda = self._clip(self.log_lambda + self.gain * self.error(estimate_bytes))
        return self.lmbda
