"""Channel mixing (``CodecConfig.mix_images``): PCA-started 1x1 mixers around the backbone's own RGB
layers, k RGB images per plane, and a transmitted decoder-side mixer."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nerfcodec_ns.codec.plane import PlaneCodec
from nerfcodec_ns.codec.settings import MAX_MIX_IMAGES, CodecConfig

from test_codec import _one_thread  # noqa: F401 (autouse: tiny convolutions on one thread)
from test_codec import HYPERPRIORS, make_codec, smooth_planes, spread_latents, tiny_backbone


def low_rank_planes(C: int, R: int, rank: int, seed: int = 0) -> torch.Tensor:
    """``[3, C, R, R]`` planes whose channels span exactly ``rank`` smooth patterns per plane."""
    gen = torch.Generator().manual_seed(seed)
    basis = smooth_planes(rank, R, seed=seed)  # [3, rank, R, R]
    mixing = torch.randn(3, C, rank, generator=gen)
    return torch.einsum("pcr,prhw->pchw", mixing, basis) + 0.1 * torch.randn(3, C, 1, 1, generator=gen)


def mixer_round_trip(codec: PlaneCodec, planes: torch.Tensor, level: int) -> torch.Tensor:
    """Planes through the two mixers only (no codec), back in plane units."""
    lo, span = codec._offset_span(*codec_stats(codec, planes))
    x = ((planes - lo) / span).clamp(0, 1)
    return codec._from_images(codec._to_images(x, level), level) * span + lo


def codec_stats(codec: PlaneCodec, planes: torch.Tensor):
    from nerfcodec_ns.codec.plane import plane_stats

    return plane_stats(planes, codec.config.clip_sigmas)


@pytest.mark.parametrize("k", [1, 2])
def test_pca_start_inverts_planes_of_low_rank(k):
    """Planes whose channels span 3k patterns pass the two mixers unchanged (up to the decoder
    mixer's 8-bit weights); planes of higher rank lose what the 3k leading components miss."""
    C, R = 8, 24
    codec = make_codec(C=C, resolutions=(R,), mix_images=k, adapt_heads=False, clip_sigmas=0.0)
    planes = low_rank_planes(C, R, rank=3 * k)
    codec.init_mixer(0, planes)
    assert bool(codec.mix_ready[0])
    with torch.no_grad():
        err = (mixer_round_trip(codec, planes, 0) - planes).pow(2).mean() / planes.var()
    assert err < 1e-3, err
    images = codec._to_images(torch.rand(3, C, R, R), 0)
    assert images.shape == (3 * k, 3, R, R)

    full = smooth_planes(C, R, seed=3)
    codec.init_mixer(0, full)
    with torch.no_grad():
        lossy = (mixer_round_trip(codec, full, 0) - full).pow(2).mean() / full.var()
    assert lossy > 10 * err  # rank 3k cannot hold 8 independent channels


def test_first_training_forward_starts_the_mixers_once():
    codec = make_codec(C=6, resolutions=(16, 20), mix_images=1, adapt_heads=False)
    before = codec.mix_in[1].weight.detach().clone()
    codec.train()
    codec(smooth_planes(6, 16), 0)
    assert codec.mix_ready.tolist() == [True, False]
    codec(smooth_planes(6, 20), 1)
    assert codec.mix_ready.tolist() == [True, True] and not torch.equal(codec.mix_in[1].weight, before)
    started = codec.mix_in[1].weight.detach().clone()
    codec(smooth_planes(6, 20, seed=5), 1)  # not restarted
    assert torch.equal(codec.mix_in[1].weight, started)
    state = codec.state_dict()
    assert "mix_ready" in state
    again = make_codec(C=6, resolutions=(16, 20), mix_images=1, adapt_heads=False, seed=4)
    again.load_state_dict(state)
    assert again.mix_ready.tolist() == [True, True] and torch.equal(again.mix_in[1].weight, started)


@pytest.mark.parametrize("adapt", [False, True])
@pytest.mark.parametrize("arch", HYPERPRIORS)
def test_mixed_codec_decodes_exactly_from_the_transmitted_state(arch, adapt):
    """3k strings per level; the eval forward gives what decoding gives (bit for bit for bmshj2018);
    a decoder rebuilt from the backbone + transmitted state (mixers included) decodes bit for bit
    what the encoder decodes."""
    C, R, k = 6, 20, 2
    backbone = tiny_backbone(arch)
    encoder = make_codec(arch, C=C, resolutions=(R,), backbone=backbone, mix_images=k, adapt_heads=adapt)
    planes = smooth_planes(C, R)
    encoder.train()
    opt = torch.optim.Adam([p for g in encoder.parameter_groups(split_heads=True).values() for p in g], lr=1e-2)
    for _ in range(2):  # starts the mixers, then moves every trainable part away from its start
        opt.zero_grad()
        out = encoder(planes, 0)
        (F.mse_loss(out.x_hat, planes) + 1e-4 * out.bits).backward()
        opt.step()
    spread_latents(encoder, 5.0)
    encoder.eval()
    compressed = encoder.compress(planes, 0)
    assert len(compressed.y_strings) == len(compressed.z_strings) == 3 * k
    with torch.no_grad():
        forward = encoder(planes, 0).x_hat
    expected = encoder.decompress(compressed, 0)
    if arch == "bmshj2018-hyperprior":
        assert torch.equal(expected, forward)
    else:  # mbt's means come from h_s: fixed point at decoding (exact tables), float in the forward
        torch.testing.assert_close(expected, forward, atol=1e-3, rtol=0)

    state = encoder.transmitted_state()
    assert state["mix.0.int8"].dtype == torch.int8 and state["mix.0.int8"].shape == (3 * C, 3 * k, 1, 1)
    decoder = make_codec(arch, C=C, resolutions=(R,), backbone=backbone, mix_images=k, adapt_heads=adapt, seed=9)
    decoder.load_transmitted_state(state, encoder.bottleneck_tables())
    decoder.eval()
    assert torch.equal(decoder.decompress(compressed, 0), expected)
    sizes = encoder.transmitted_sizes()
    assert sizes["mix"] == 3 * C * 3 * k + 4 * 3 * C + 4 * 3 * C
    assert (sizes["head"] > 0) == adapt


def test_mixers_train_and_only_the_decoder_mixer_is_sent():
    codec = make_codec(C=6, resolutions=(16,), mix_images=1, adapt_heads=False)
    groups = codec.parameter_groups(split_heads=True)
    heads, rest = {id(p) for p in groups["codec_heads"]}, {id(p) for p in groups["codec"]}
    assert all(id(p) in heads for p in codec.mix_out.parameters())
    assert all(id(p) in rest for p in codec.mix_in.parameters())
    codec.train()
    out = codec(smooth_planes(6, 16), 0)
    (out.x_hat.square().mean() + 1e-4 * out.bits).backward()
    for p in [*codec.mix_in.parameters(), *codec.mix_out.parameters()]:
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert not any(k.startswith("mix_in") for k in codec.transmitted_state())


def test_mixing_validation():
    for bad in (-1, MAX_MIX_IMAGES + 1, 1.5):
        with pytest.raises(ValueError, match="mix_images"):
            CodecConfig(mix_images=bad)
    assert make_codec(C=4, resolutions=(16,)).transmitted_sizes()["mix"] == 0


def test_pca_start_beats_tiling_with_the_embedded_backbone():
    """With the shipped backbone and no training, coding the planes' leading components as one RGB
    image reconstructs correlated channels better than the tiled frozen layers."""
    from nerfcodec_ns.codec.backbone import load_backbone

    C, R = 9, 64
    backbone = load_backbone(CodecConfig())
    planes = low_rank_planes(C, R, rank=3, seed=1)
    errs = {}
    for k in (0, 1):
        codec = PlaneCodec(CodecConfig(mix_images=k, adapt_heads=False, compensation=False), C, (R,), backbone=backbone)
        if k:
            codec.init_mixer(0, planes)
        codec.eval()
        with torch.no_grad():
            errs[k] = float((codec(planes, 0).x_hat - planes).pow(2).mean() / planes.var())
    assert errs[1] < 0.8 * errs[0], errs  # measured: 0.45 against 0.70
