"""``CodecConfig.synthesis_input``: what g_s sees of the latent in training (additive noise, or the
rounded latent with a straight-through gradient) while the rate keeps the noise proxy."""

from __future__ import annotations

import pytest
import torch

from nerfcodec_ns.codec.settings import LEGACY_DEFAULTS, CodecConfig

from test_codec import _one_thread  # noqa: F401 (autouse: tiny convolutions on one thread)
from test_codec import make_codec, smooth_planes, spread_latents

ARCHS = ["bmshj2018-hyperprior", "mbt2018-mean", "cheng2020-anchor"]


def _codec(arch: str, synthesis_input: str, **cfg):
    codec = make_codec(arch, C=4, resolutions=(24,), synthesis_input=synthesis_input, **cfg)
    spread_latents(codec)
    return codec


@pytest.mark.parametrize("arch", ARCHS)
def test_rounded_training_forward_decodes_what_evaluation_decodes(arch):
    """In training mode with "round" (y and z rounded, z around its medians), the decoded planes are
    the eval-mode decode; with
    "noise" they are not. The rate term is the same noisy-proxy estimate in both modes."""
    planes = smooth_planes(4, 24)
    codec = _codec(arch, "round")
    codec.eval()
    with torch.no_grad():
        reference = codec(planes, 0).x_hat
    codec.train()
    torch.manual_seed(5)
    with torch.no_grad():
        rounded = codec(planes, 0)
    torch.testing.assert_close(rounded.x_hat, reference, rtol=0, atol=1e-5)

    noisy_codec = _codec(arch, "noise")
    noisy_codec.load_state_dict(codec.state_dict())
    noisy_codec.train()
    torch.manual_seed(5)
    with torch.no_grad():
        noisy = noisy_codec(planes, 0)
    assert (noisy.x_hat - reference).abs().max() > 1e-3


@pytest.mark.parametrize("arch", ["bmshj2018-hyperprior", "mbt2018-mean"])
@pytest.mark.parametrize("term", ["distortion", "rate"])
def test_rounded_latent_passes_gradients_to_the_encoder(arch, term):
    """The straight-through rounding lets the reconstruction loss reach g_a; the rate (noisy y) does too."""
    planes = smooth_planes(4, 24)
    codec = _codec(arch, "round")
    codec.train()
    out = codec(planes, 0)
    loss = (out.x_hat - planes).pow(2).mean() if term == "distortion" else out.bits
    loss.backward()
    grads = [p.grad for p in codec.g_a[1:].parameters() if p.grad is not None]
    assert grads and sum(float(g.abs().sum()) for g in grads) > 0


def test_validation_and_legacy_default():
    with pytest.raises(ValueError, match="synthesis_input"):
        CodecConfig(synthesis_input="ste")  # type: ignore[arg-type]
    assert CodecConfig().synthesis_input == "noise"
    # a run saved before the setting existed trained with the noise proxy
    assert LEGACY_DEFAULTS["synthesis_input"] == "noise"
    old = CodecConfig.__new__(CodecConfig)
    old.__setstate__({"mix_images": 2})
    assert old.synthesis_input == "noise"
