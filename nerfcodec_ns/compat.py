"""Compatibility shims for nerfstudio 1.1.5 on current torch.

torch >= 2.6 loads checkpoints with ``weights_only=True``. nerfstudio's training checkpoints hold
numpy scalars (``numpy.float64`` learning rates in optimizer and scheduler state), which the
weights-only unpickler rejects (nerfstudio issue #3683), so ``ns-viewer``, ``ns-eval``, ``ns-render``
and resuming fail. Registering the few numpy types involved as safe globals fixes it without
turning the safety check off. nerfstudio imports this plugin (entry point) before any
``torch.load``, so registering at import time is early enough.
"""

from __future__ import annotations

import numpy as np
import torch


def _numpy_checkpoint_globals() -> list:
    """numpy objects that appear in pickled nerfstudio optimizer/scheduler state."""
    try:  # numpy >= 2
        from numpy._core.multiarray import scalar  # type: ignore[import-not-found]
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import scalar  # type: ignore[no-redef]
    dtype_classes = {type(np.dtype(name)) for name in ("float64", "float32", "int64", "int32", "bool")}
    return [scalar, np.dtype, *sorted(dtype_classes, key=lambda c: c.__name__)]


def register_checkpoint_safe_globals() -> None:
    """Allow the numpy scalar types of nerfstudio checkpoints under ``torch.load(weights_only=True)``."""
    add = getattr(torch.serialization, "add_safe_globals", None)
    if add is not None:  # torch < 2.4 has no weights-only allow-list and needs nothing
        add(_numpy_checkpoint_globals())


def default_device_type() -> str:
    """``"cuda"`` when a CUDA device is usable, else ``"cpu"`` (nerfstudio defaults to cuda)."""
    return "cuda" if torch.cuda.is_available() else "cpu"
