"""Helpers shared by the benchmark scripts: one training step exactly as nerfstudio's Trainer runs
it (it lives in the package, :func:`nerfcodec_ns.bench.bench.train_step`), and an offline stand-in for
the LPIPS weights stock nerfstudio models download at start-up."""

import tempfile
from pathlib import Path

from nerfcodec_ns.bench.bench import train_step  # noqa: F401


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
