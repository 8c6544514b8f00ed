"""LPIPS is optional: offline it is reported unavailable once and never stops evaluation."""

from __future__ import annotations

import logging
import urllib.error

import pytest
import torch

from nerfcodec_ns.metrics import LazyLPIPS, psnr, ssim


def _offline_factory():
    raise urllib.error.URLError("[Errno -2] Name or service not known")


class _FakeLPIPS(torch.nn.Module):
    """Stands in for AlexNet-LPIPS: mean absolute difference (no weights to download)."""

    def forward(self, a, b):
        return (a - b).abs().mean()


def test_lpips_offline_warns_once_and_returns_none(caplog):
    lp = LazyLPIPS(factory=_offline_factory)
    img = torch.rand(8, 8, 3)
    with caplog.at_level(logging.WARNING):
        assert lp(img, img) is None
        assert lp(img, img * 0.5) is None
    warnings = [r for r in caplog.records if "LPIPS unavailable" in r.getMessage()]
    assert len(warnings) == 1
    assert "URLError" in lp.unavailable_reason
    assert lp.available is False


def test_lpips_loaded_lazily_when_available():
    calls = []

    def factory():
        calls.append(1)
        return _FakeLPIPS()

    lp = LazyLPIPS(factory=factory)
    assert lp.available is None and not calls  # nothing built at construction
    a, b = torch.zeros(4, 4, 3), torch.ones(4, 4, 3)
    assert lp(a, b) == pytest.approx(1.0)
    assert lp(a, a) == pytest.approx(0.0)
    assert calls == [1] and lp.available is True


def test_lpips_disabled():
    lp = LazyLPIPS(enabled=False, factory=lambda: pytest.fail("must not be built"))
    assert lp(torch.zeros(4, 4, 3), torch.zeros(4, 4, 3)) is None


def test_model_eval_metrics_without_lpips(tiny_scene):
    """The model's evaluation works offline and keeps LPIPS out of its state_dict."""
    from nerfstudio.data.scene_box import SceneBox

    from nerfcodec_ns.model import NerfcodecModelConfig

    cfg = NerfcodecModelConfig(plane_resolutions=(16,), plane_channels=4, grid_resolution=16)
    model = cfg.setup(scene_box=SceneBox(torch.tensor([[-1.5] * 3, [1.5] * 3])), num_train_data=1)
    model._lpips = LazyLPIPS(factory=_offline_factory)
    outputs = {"rgb": torch.rand(16, 12, 3), "accumulation": torch.rand(16, 12, 1), "depth": torch.rand(16, 12, 1)}
    metrics, images = model.get_image_metrics_and_images(outputs, {"image": torch.rand(16, 12, 3)})
    assert set(metrics) == {"psnr", "ssim"}
    assert images["img"].shape == (16, 24, 3)
    assert not any("lpips" in k for k in model.state_dict())


def test_psnr_and_ssim_values():
    a = torch.zeros(16, 16, 3)
    b = torch.full((16, 16, 3), 0.1)
    assert float(psnr(a, b)) == pytest.approx(20.0, abs=1e-4)
    assert float(ssim(a + 0.3, a + 0.3)) == pytest.approx(1.0, abs=1e-3)
    assert float(ssim(torch.rand(32, 32, 3), torch.rand(32, 32, 3))) < 0.5
