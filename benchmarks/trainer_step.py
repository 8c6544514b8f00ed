"""Helpers shared by the benchmark scripts: one training step exactly as nerfstudio's Trainer runs
it (it lives in the package, :func:`nerfcodec_ns.bench.bench.train_step`), and an offline stand-in for
the LPIPS weights stock nerfstudio models download at start-up."""

import tempfile
from pathlib import Path
from typing import Any, Dict, Optional

from nerfcodec_ns.bench.bench import train_step  # noqa: F401


def cpu_trainer(method: str, data: Path, out_dir: Path, rays: Optional[int] = None, dataparser=None,
                model_settings: Optional[Dict[str, Any]] = None):
    """A set-up Trainer for a registered ``method`` on ``data`` as ``ns-train`` builds it, on the CPU,
    logging to tensorboard under ``out_dir``: ``rays`` per training batch, a data-parser config and
    model settings (``NerfcodecModelConfig``-style fields) when given."""
    from nerfstudio.configs.method_configs import all_methods

    cfg = all_methods[method]
    if dataparser is not None:
        cfg.pipeline.datamanager.dataparser = dataparser
    cfg.pipeline.datamanager.data = data
    if rays is not None:
        cfg.pipeline.datamanager.train_num_rays_per_batch = rays
    for key, value in (model_settings or {}).items():
        setattr(cfg.pipeline.model, key, value)
    cfg.machine.device_type = "cpu"
    cfg.output_dir = out_dir
    cfg.vis = "tensorboard"
    cfg.set_timestamp()
    trainer = cfg.setup(local_rank=0, world_size=1)
    trainer.setup()
    return trainer


def fake_alexnet_home() -> str:
    """A TORCH_HOME holding a random-weight AlexNet, so that stock models (tensorf, nerfacto), which
    build LPIPS while they are constructed, can be built offline. LPIPS is not used in training."""
    import torch
    import torchvision

    home = tempfile.mkdtemp(prefix="torch_home_")
    ckpt_dir = Path(home) / "hub" / "checkpoints"
    ckpt_dir.mkdir(parents=True)
    torch.save(torchvision.models.alexnet().state_dict(), ckpt_dir / "alexnet-owt-7be5be79.pth")
    return home
