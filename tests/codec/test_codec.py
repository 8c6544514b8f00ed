"""Tests of the NeRFCodec plane codec (nerfcodec_ns.codec: settings, backbone, quant, entropy,
plane) with tiny random backbones on CPU."""

from __future__ import annotations

import copy
import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nerfcodec_ns.codec import backbone as backbone_module
from nerfcodec_ns.codec.backbone import frozen_weights_sha256, load_backbone, save_backbone_file
from nerfcodec_ns.codec.plane import PlaneCodec, plane_stats
from nerfcodec_ns.codec.quant import fake_quantize, quantize_int
from nerfcodec_ns.codec.settings import ARCHITECTURES, CodecConfig
from nerfcodec_ns.field.field import PLANE_AXES

HYPERPRIORS = ["bmshj2018-hyperprior", "mbt2018-mean"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny convolutions are much faster single-threaded (and the CI machine has 2 busy cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_backbone(arch: str = "bmshj2018-hyperprior", seed: int = 0):
    torch.manual_seed(seed)
    return load_backbone(CodecConfig(backbone=arch, weights="random", N=16, M=24))


def make_codec(arch="bmshj2018-hyperprior", C=4, resolutions=(17, 33), seed=0, backbone=None, **cfg):
    cfg.setdefault("train_precision", "float32")  # the same arithmetic on every test machine
    cfg.setdefault("adapt_heads", True)  # these tests are about the C-channel heads (mixing: test_mixing)
    cfg.setdefault("mix_images", 0)
    config = CodecConfig(backbone=arch, weights="random", N=16, M=24, **cfg)
    backbone = backbone or tiny_backbone(arch, seed)
    torch.manual_seed(seed + 1)
    return PlaneCodec(config, C, resolutions, backbone=backbone)


def spread_latents(codec: PlaneCodec, factor: float = 20.0) -> None:
    """Scale the last g_a layer so the random codec's latents span many quantization bins."""
    with torch.no_grad():
        for p in codec.g_a[-1].parameters():
            p.mul_(factor)


def calibrate_hyperprior(codec: PlaneCodec, planes: torch.Tensor) -> None:
    """Make the (frozen, random) h_s predict scales matching the latents, as a trained one would,
    so the likelihoods are a realistic rate model (not clamped at 1e-9 for far-out symbols)."""
    with torch.no_grad():
        y = codec.g_a(codec._normalize(planes, *plane_stats(planes)))
        last = [m for m in codec.h_s if isinstance(m, nn.Conv2d)][-1]  # scales (then means, for mbt)
        last.weight.mul_(0.01)
        last.bias.zero_()
        last.bias[: codec.M] = y.std()


def randomize_vectors(codec: PlaneCodec, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for v in codec.vectors:
            v.copy_(0.2 * torch.randn(v.shape, generator=gen))


def smooth_planes(C: int, R: int, seed: int = 0) -> torch.Tensor:
    """Structured [3, C, R, R] planes (sinusoids + a little noise), values around [-0.5, 0.5]."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.linspace(0, 1, R)
    freq = 1 + 4 * torch.rand(3, C, 2, generator=gen)
    phase = 6.3 * torch.rand(3, C, 2, generator=gen)
    u = torch.sin(freq[..., 0, None] * 6.3 * t + phase[..., 0, None])  # [3, C, R]
    v = torch.cos(freq[..., 1, None] * 6.3 * t + phase[..., 1, None])
    return 0.4 * v[..., :, None] * u[..., None, :] + 0.05 * torch.randn(3, C, R, R, generator=gen)


# ----------------------------------------------------------------------------------------------


def test_import_does_not_load_compressai():
    code = "import sys, nerfcodec_ns.codec.plane; assert 'compressai' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_shapes_and_padding_for_odd_resolutions(arch):
    codec = make_codec(arch, C=4, resolutions=(17, 33, 50))
    for level, R in enumerate((17, 33, 50)):
        planes = smooth_planes(4, R).contiguous(memory_format=torch.channels_last)
        out = codec(planes, level)
        assert out.x_hat.shape == (3, 4, R, R)
        assert out.likelihoods["y"].shape == (3, codec.M, 4, 4)  # padded to 64 -> /16
        assert out.likelihoods["z"].shape == (3, codec.N, 1, 1)  # -> /64
        assert out.bits.ndim == 0 and out.bits > 0
    with pytest.raises(ValueError, match="expects planes"):
        codec(smooth_planes(4, 17), 1)


@pytest.mark.parametrize("gain", [1.0, 4.0])
@pytest.mark.parametrize("arch", HYPERPRIORS)
def test_eval_forward_equals_decompress_and_rate_matches(arch, gain):
    codec = make_codec(arch, C=8, resolutions=(17, 40), latent_gain=gain)
    spread_latents(codec)
    calibrate_hyperprior(codec, smooth_planes(8, 40))
    randomize_vectors(codec)
    codec.eval()
    for level, R in enumerate((17, 40)):
        planes = smooth_planes(8, R, seed=level)
        compressed = codec.compress(planes, level)  # calls update(force=True)
        with torch.no_grad():
            out = codec(planes, level)
        decoded = codec.decompress(compressed, level)
        assert decoded.shape == planes.shape
        torch.testing.assert_close(decoded, out.x_hat, atol=1e-5, rtol=0)
        assert compressed.padded_shape == (64, 64) and compressed.stats_min.dtype == torch.float16

        real, estimate = compressed.num_bytes(), float(out.bits) / 8
        n_strings = len(compressed.y_strings) + len(compressed.z_strings)
        assert estimate > 100  # the test is meaningful only when there is content to code
        assert abs(real - estimate) <= 0.1 * estimate + 8 * n_strings, (real, estimate)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_decoder_side_codec_from_transmitted_state(arch):
    """A codec rebuilt from the same frozen backbone + transmitted state decodes identically."""
    backbone = tiny_backbone(arch)
    encoder = make_codec(arch, C=4, resolutions=(20,), backbone=backbone)
    spread_latents(encoder, 5.0)
    randomize_vectors(encoder)
    opt = torch.optim.Adam(encoder.parameter_groups()["codec"], lr=1e-2)  # move away from the init
    planes = smooth_planes(4, 20)
    for _ in range(2):
        opt.zero_grad()
        out = encoder(planes, 0)
        (F.mse_loss(out.x_hat, planes) + 1e-4 * out.bits).backward()
        opt.step()
    encoder.eval()
    compressed = encoder.compress(planes, 0)
    expected = encoder.decompress(compressed, 0)

    decoder = make_codec(arch, C=4, resolutions=(20,), backbone=backbone, seed=7)  # different new layers
    decoder.load_transmitted_state(encoder.transmitted_state(), encoder.bottleneck_tables() if encoder.exact_tables else None)
    decoder.eval()
    assert torch.equal(decoder.decompress(compressed, 0), expected)
    assert torch.isfinite(expected).all()
    if arch == "cheng2020-anchor":  # AR decoding differs slightly from the parallel eval forward
        with torch.no_grad():
            approx = encoder(planes, 0).x_hat
        assert (approx - expected).abs().mean() < 0.5 * (planes - expected).abs().mean() + 0.05


def test_latent_gain_trades_rate_for_reconstruction():
    """A larger latent gain quantizes y more finely: more bits, smaller reconstruction error."""
    planes = smooth_planes(8, 40)
    bits, errs = [], []
    for gain in (1.0, 8.0):
        codec = make_codec(C=8, resolutions=(40,), latent_gain=gain)
        spread_latents(codec, 2.0)
        calibrate_hyperprior(codec, planes)
        codec.eval()
        with torch.no_grad():
            out = codec(planes, 0)
            y = codec.g_a(codec._normalize(planes, *plane_stats(planes)))
            ref = codec._denormalize(codec.g_s(y), 40, *plane_stats(planes), 0)  # unquantized latent
        bits.append(float(out.bits))
        errs.append(float((out.x_hat - ref).pow(2).mean()))
    assert bits[1] > bits[0] and errs[1] < errs[0], (bits, errs)


def test_clipped_normalisation_range_and_exact_decode():
    """clip_sigmas narrows the range to mean -/+ k std (inside min..max); decode still equals eval forward."""
    planes = smooth_planes(8, 40)
    planes[0, 0, 0, 0] = 50.0  # an outlier
    lo, hi = plane_stats(planes)
    lo4, hi4 = plane_stats(planes, clip_sigmas=4.0)
    assert (lo4 >= lo).all() and (hi4 <= hi).all() and float(hi4[0, 0]) < 50.0
    codec = make_codec(C=8, resolutions=(40,), clip_sigmas=4.0)
    spread_latents(codec)
    calibrate_hyperprior(codec, planes)
    codec.eval()
    compressed = codec.compress(planes, 0)
    with torch.no_grad():
        out = codec(planes, 0)
    torch.testing.assert_close(codec.decompress(compressed, 0), out.x_hat, atol=1e-5, rtol=0)
    torch.testing.assert_close(compressed.stats_max, hi4)


def test_latent_gain_validation():
    with pytest.raises(ValueError, match="latent_gain"):
        CodecConfig(latent_gain=0.0)
    with pytest.raises(ValueError, match="latent_gain"):
        CodecConfig(backbone="cheng2020-anchor", latent_gain=2.0)


def test_rate_decreases_when_lambda_increases():
    planes = smooth_planes(4, 33)

    def train(lam: float) -> float:
        codec = make_codec(C=4, resolutions=(33,), compensation=False)
        spread_latents(codec, 5.0)
        opt = torch.optim.Adam(codec.parameter_groups()["codec"], lr=3e-3)
        torch.manual_seed(123)
        for _ in range(30):
            opt.zero_grad()
            out = codec(planes, 0)
            (F.mse_loss(out.x_hat, planes) + lam * out.bits).backward()
            opt.step()
        codec.eval()
        with torch.no_grad():
            return float(codec(planes, 0).bits)

    small, big = train(1e-7), train(1e-3)
    assert big < 0.8 * small, (small, big)


@pytest.mark.parametrize("arch", ["bmshj2018-hyperprior", "cheng2020-anchor"])
def test_gradients_reach_trainable_parts_only(arch):
    codec = make_codec(arch, C=4, resolutions=(17,))
    planes = smooth_planes(4, 17).requires_grad_(True)
    out = codec(planes, 0)
    (F.mse_loss(out.x_hat, planes.detach()) + 1e-3 * out.bits).backward()

    def has_grad(p):
        return p.grad is not None and p.grad.abs().sum() > 0

    assert planes.grad is not None and planes.grad.abs().sum() > 0
    assert all(has_grad(p) for p in codec.g_a.parameters())
    assert has_grad(codec.g_s_head.layer.weight) and has_grad(codec.g_s_head.layer.bias)
    assert has_grad(codec.vectors[0])
    assert all(has_grad(p) for p in codec.h_a.parameters())
    if arch == "cheng2020-anchor":
        assert has_grad(codec.context_prediction.weight) and has_grad(codec.entropy_parameters[0].weight)

    frozen = codec.frozen_parameters()
    expected = [p for m in list(codec.g_s[:-1]) + [codec.h_s] for p in m.parameters()]
    assert {id(p) for p in frozen} == {id(p) for p in expected}
    assert all(p.grad is None and not p.requires_grad for p in frozen)
    groups = codec.parameter_groups()
    assert groups["codec_aux"] == [codec.entropy_bottleneck.quantiles]
    trainable = {id(p) for g in groups.values() for p in g}
    assert trainable.isdisjoint(id(p) for p in frozen)
    assert len(trainable) + len(frozen) == len(list(codec.parameters()))
    split = codec.parameter_groups(split_heads=True)
    heads = [*codec.g_s_head.parameters(), *codec.vectors]
    assert {id(p) for p in split["codec_heads"]} == {id(p) for p in heads}


def test_frozen_weights_unchanged_after_optimizer_steps():
    codec = make_codec(C=4, resolutions=(17,))
    frozen_before = [p.detach().clone() for p in codec.frozen_parameters()]
    head_before = codec.g_s_head.layer.weight.detach().clone()
    groups = codec.parameter_groups()
    opt = torch.optim.Adam(groups["codec"], lr=1e-2)
    aux_opt = torch.optim.Adam(groups["codec_aux"], lr=1e-2)
    planes = smooth_planes(4, 17)
    for _ in range(3):
        opt.zero_grad()
        aux_opt.zero_grad()
        out = codec(planes, 0)
        (F.mse_loss(out.x_hat, planes) + 1e-3 * out.bits).backward()
        codec.aux_loss().backward()
        opt.step()
        aux_opt.step()
    assert all(torch.equal(a, p) for a, p in zip(frozen_before, codec.frozen_parameters()))
    assert not torch.equal(head_before, codec.g_s_head.layer.weight)


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("arch", ["bmshj2018-hyperprior", "cheng2020-anchor"])
def test_head_and_vector_quantization_round_trip_exactly(arch, bits):
    codec = make_codec(arch, C=4, resolutions=(17, 24), head_bits=bits, vector_bits=bits)
    randomize_vectors(codec)
    qmax = 2 ** (bits - 1) - 1

    ints, scales, bias = codec.quantize_head()
    assert ints.dtype == torch.int8 and ints.abs().max() == qmax and scales.dtype == torch.float32
    used = codec.g_s_head.dequantized_weight()
    out_dim = 1 if arch != "cheng2020-anchor" else 0
    shape = [1] * ints.ndim
    shape[out_dim] = -1
    rebuilt = ints.float() * scales.view(shape)
    assert torch.equal(used, rebuilt)
    assert (used - codec.g_s_head.layer.weight).abs().max() <= scales.max() / 2

    other = make_codec(arch, C=4, resolutions=(17, 24), head_bits=bits, vector_bits=bits, seed=5)
    other.load_quantized_head(ints, scales, bias)
    assert torch.equal(other.g_s_head.dequantized_weight(), used)
    assert all(torch.equal(a, b) for a, b in zip(other.quantize_head(), (ints, scales, bias)))

    for level in range(2):
        v_ints, v_scales = codec.quantize_vectors(level)
        assert v_ints.dtype == torch.int8 and v_scales.shape == (3, 4)
        other.load_quantized_vectors(level, v_ints, v_scales)
        torch.testing.assert_close(other.compensation(level), codec.compensation(level), atol=0, rtol=0)
        assert all(torch.equal(a, b) for a, b in zip(other.quantize_vectors(level), (v_ints, v_scales)))


def test_compensation_is_rank_one_per_plane_and_starts_at_zero():
    codec = make_codec(C=2, resolutions=(9,))
    assert torch.equal(codec.compensation(0), torch.zeros(3, 2, 9, 9))
    randomize_vectors(codec)
    comp, v = codec.compensation(0), codec.vectors[0].detach()
    for p, (a, b) in enumerate(PLANE_AXES):  # W (last dim) indexes axis a, H indexes axis b
        torch.testing.assert_close(comp[p, 1, 3, 5], v[b, 1, 3] * v[a, 1, 5], atol=0.01, rtol=0.02)


def test_fake_quantize_passes_gradient_to_every_element():
    # constant slices (every element is the slice's absmax) and each slice's largest element must
    # still get the straight-through gradient; a clamp at the bounds used to block both
    x = torch.cat([torch.full((2, 5), 0.1), torch.randn(3, 5)]).requires_grad_(True)
    weights = torch.randn(5, 5)
    (fake_quantize(x, 8, dims=(1,)) * weights).sum().backward()
    torch.testing.assert_close(x.grad, weights, rtol=1e-6, atol=0)


def test_compensation_vectors_learn_a_non_constant_correction():
    # fit the vectors alone to a rank-1 residual: all three axes must move, away from a constant
    torch.manual_seed(0)
    codec = make_codec(C=2, resolutions=(16,))
    codec.eval()  # deterministic decode; the vectors still get gradients
    t = torch.linspace(0, 3, 16)
    target_v = torch.stack([torch.sin(t + k) for k in range(3)])[:, None, :].expand(3, 2, 16)
    target = torch.stack([target_v[b][:, :, None] * target_v[a][:, None, :] for a, b in PLANE_AXES])
    planes = smooth_planes(2, 16)
    with torch.no_grad():
        base = codec(planes, 0).x_hat - codec.compensation(0)
    opt = torch.optim.Adam(list(codec.vectors), lr=3e-2)
    errors = []
    for _ in range(150):
        loss = (codec.compensation(0) - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        errors.append(float(loss))
    assert errors[-1] < 0.05 * errors[0], (errors[0], errors[-1])
    v = codec.vectors[0].detach()
    assert (v.std(dim=2) > 0.1).all(), v.std(dim=2)  # every axis and channel has a shape, not a constant
    assert base.shape == planes.shape


def test_transmitted_sizes():
    C, res = 4, (17, 24)
    codec = make_codec(C=C, resolutions=res)
    sizes = codec.transmitted_sizes()
    assert sizes["head"] == 16 * C * 25 + 4 * C + 4 * C  # int8 deconv N->C 5x5, scales, bias
    assert sizes["vectors.0"] == 3 * C * 17 + 4 * 3 * C and sizes["vectors.1"] == 3 * C * 24 + 4 * 3 * C
    assert sizes["norm_stats"] == len(res) * 2 * 3 * C * 2
    # exact tables: the transmitted tables' raw bytes, predicted from the quantiles without building them
    assert sizes["entropy_bottleneck"] == sum(a.nbytes for a in codec.bottleneck_tables().arrays())
    codec.exact_tables = False  # float tables: the float16 parameters
    eb_params = sum(p.numel() for p in codec.entropy_bottleneck.parameters())
    assert codec.transmitted_sizes()["entropy_bottleneck"] == 2 * eb_params
    assert "vectors.0" not in make_codec(C=C, resolutions=res, compensation=False).transmitted_sizes()
    cheng = make_codec("cheng2020-anchor", C=C, resolutions=res).transmitted_sizes()
    assert 0 < cheng["context_model"] < 2 * sum(
        p.numel() for m in ("context_prediction", "entropy_parameters") for p in getattr(make_codec(
            "cheng2020-anchor", C=C, resolutions=res), m).parameters())


def test_frozen_pretrained_heads_ablation():
    backbone = tiny_backbone()
    codec = make_codec(C=5, resolutions=(17,), backbone=backbone, adapt_heads=False)
    head, first = codec.g_s_head, codec.g_a[0]
    frozen = {id(p) for p in codec.frozen_parameters()}
    assert all(id(p) in frozen and not p.requires_grad for p in [*head.parameters(), *first.parameters()])
    assert codec.transmitted_sizes()["head"] == 0
    rgb_head, rgb_first = backbone[0].g_s[-1], backbone[0].g_a[0]
    for c in range(5):  # channel tiling of the pretrained RGB layers
        assert torch.equal(head.layer.weight[:, c], rgb_head.weight[:, c % 3])
        torch.testing.assert_close(first.weight[:, c], rgb_first.weight[:, c % 3] * 3 / 5)
    assert torch.equal(head.dequantized_weight(), head.layer.weight)  # not quantized: not transmitted
    out = codec(smooth_planes(5, 17).requires_grad_(True), 0)
    out.x_hat.sum().backward()
    assert head.layer.weight.grad is None and first.weight.grad is None


def test_state_dict_round_trip_after_update_in_parent_module():
    """nerfstudio loads checkpoints through the parent module: CDF buffers must be resized."""
    backbone = tiny_backbone()
    parent = nn.Module()
    parent.codec = make_codec(C=4, resolutions=(17,), backbone=backbone)
    spread_latents(parent.codec)
    planes = smooth_planes(4, 17)
    compressed = parent.codec.compress(planes, 0)
    state = parent.state_dict()
    fresh = nn.Module()
    fresh.codec = make_codec(C=4, resolutions=(17,), backbone=backbone, seed=3)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.codec.decompress(compressed, 0), parent.codec.decompress(compressed, 0))


# --- backbone loading -------------------------------------------------------------------------


def _zoo_key(key: str) -> str:
    """The zoo files' (older CompressAI) naming of the entropy bottleneck parameters."""
    for new, old in (("matrices", "_matrices"), ("biases", "_biases"), ("factors", "_factors")):
        key = key.replace(f"entropy_bottleneck.{new}.", f"entropy_bottleneck.{old}.")
    return key


def test_load_zoo_weights_from_local_hub_cache(tmp_path, monkeypatch):
    from compressai.models import ScaleHyperprior
    from compressai.zoo.image import cfgs, model_urls

    def no_network(*args, **kwargs):
        raise AssertionError(f"attempted download: {args}")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    torch.manual_seed(0)
    reference = ScaleHyperprior(*cfgs["bmshj2018-hyperprior"][1])
    reference.update()
    url = model_urls["bmshj2018-hyperprior"]["mse"][1]
    target = tmp_path / "hub" / "checkpoints" / url.rsplit("/", 1)[-1]
    target.parent.mkdir(parents=True)
    torch.save({_zoo_key(k): v for k, v in reference.state_dict().items()}, target)
    assert any("._matrices.0" in k for k in torch.load(target, weights_only=True))

    model, info = load_backbone(CodecConfig(weights="zoo", quality=1))
    assert (info.architecture, info.N, info.M) == ("bmshj2018-hyperprior", 128, 192)
    assert target.name in info.source
    loaded, expected = model.state_dict(), reference.state_dict()
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)
    assert info.sha256 == frozen_weights_sha256(reference, "bmshj2018-hyperprior")


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_load_backbone_file(tmp_path, arch, dtype):
    model, info = tiny_backbone(arch)
    if dtype == torch.float16:
        model.update()  # also exercise a file saved after update()
    meta = {"steps": 3, "note": "x"}
    path = save_backbone_file(model, arch, info.N, info.M, tmp_path / "b.pt", meta=meta, dtype=dtype)
    assert [p.name for p in tmp_path.iterdir()] == ["b.pt"]  # no temporary left behind
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == "nerfcodec-backbone" and payload["meta"] == meta

    config = CodecConfig(backbone=arch, weights=str(path), N=999, M=999)
    loaded, loaded_info = load_backbone(config)
    assert (loaded_info.N, loaded_info.M) == (info.N, info.M) and loaded_info.source == f"file:{path}"
    params = dict(model.named_parameters())
    assert all(torch.equal(p, params[k].to(dtype).float()) for k, p in loaded.named_parameters())
    buffers, got = dict(model.named_buffers()), dict(loaded.named_buffers())
    assert got.keys() == buffers.keys()
    for k, b in buffers.items():
        if k.rsplit(".", 1)[-1] in ("_quantized_cdf", "_offset", "_cdf_length"):
            continue
        assert got[k].dtype == b.dtype and torch.equal(got[k], b), k  # e.g. GDN's 2^-36 pedestal
    if dtype == torch.float16:  # saved after update(): the stored tables match the stored weights
        fresh = copy.deepcopy(loaded)
        fresh.update(force=True)
        assert all(torch.equal(a, b) for a, b in zip(fresh.buffers(), loaded.buffers()))
        assert loaded.entropy_bottleneck._quantized_cdf.numel() > 0
    if dtype == torch.float32:
        assert loaded_info.sha256 == info.sha256
    codec = PlaneCodec(config, 4, (17,))
    assert codec.backbone_info.sha256 == loaded_info.sha256
    assert torch.equal(codec.h_s[0].weight, loaded.h_s[0].weight)


def test_random_backbone_uses_config_sizes():
    model, info = load_backbone(CodecConfig(weights="random", N=8, M=12))
    assert (info.N, info.M, info.source) == (8, 12, "random") and model.g_a[-1].weight.shape[0] == 12
    _, info = load_backbone(CodecConfig(backbone="cheng2020-anchor", weights="random", N=8, M=12))
    assert (info.N, info.M) == (8, 8)


def test_backbone_loading_errors(tmp_path, monkeypatch):
    monkeypatch.setattr(backbone_module, "EMBEDDED_BACKBONE", tmp_path / "weights" / "backbone.pt")
    with pytest.raises(FileNotFoundError, match="embedded backbone weights .* missing"):
        load_backbone(CodecConfig())
    with pytest.raises(FileNotFoundError, match="not found"):
        load_backbone(CodecConfig(weights=str(tmp_path / "nope.pt")))
    torch.save({"format": "something-else"}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a nerfcodec backbone file"):
        load_backbone(CodecConfig(weights=str(tmp_path / "other.pt")))
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(ValueError, match="not a readable nerfcodec backbone file"):
        load_backbone(CodecConfig(weights=str(tmp_path / "text.pt")))
    model, info = tiny_backbone("mbt2018-mean")
    save_backbone_file(model, "mbt2018-mean", info.N, info.M, tmp_path / "mbt.pt")
    with pytest.raises(ValueError, match="holds a mbt2018-mean backbone"):
        load_backbone(CodecConfig(weights=str(tmp_path / "mbt.pt")))
    with pytest.raises(ValueError, match="is not a"):
        save_backbone_file(model, "bmshj2018-hyperprior", info.N, info.M, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="head_bits"):
        CodecConfig(head_bits=9)


def test_quant_scale_makes_quantization_idempotent():
    gen = torch.Generator().manual_seed(0)
    for bits in (2, 5, 8):
        x = torch.randn(64, 33, generator=gen) * torch.logspace(-6, 3, 64)[:, None]
        once = fake_quantize(x, bits, dims=(1,))
        assert torch.equal(fake_quantize(once, bits, dims=(1,)), once)
        ints, scale = quantize_int(x, bits, dims=(1,))
        assert torch.equal(ints.float() * scale, once)
        assert ((once - x).abs() <= scale / 2 * (1 + 1e-6)).all()
        assert math.isclose(float(fake_quantize(torch.zeros(1, 3), bits, (1,)).abs().sum()), 0.0)


def test_adapted_heads_can_start_from_the_tiled_pretrained_layers():
    """head_init="pretrained": the adapted layers start as the frozen heads are, but train and are
    quantized and transmitted like any adapted head."""
    backbone = tiny_backbone()
    frozen = make_codec(C=5, resolutions=(17,), backbone=backbone, adapt_heads=False)
    codec = make_codec(C=5, resolutions=(17,), backbone=backbone, head_init="pretrained")
    torch.testing.assert_close(codec.g_s_head.layer.weight, frozen.g_s_head.layer.weight, atol=0, rtol=0)
    torch.testing.assert_close(codec.g_a[0].weight, frozen.g_a[0].weight, atol=0, rtol=0)
    assert codec.g_s_head.layer.weight.requires_grad and codec.g_a[0].weight.requires_grad
    assert codec.transmitted_sizes()["head"] == frozen.g_s_head.layer.weight.numel() + 4 * 5 + 4 * 5
    random = make_codec(C=5, resolutions=(17,), backbone=backbone)
    assert not torch.equal(random.g_s_head.layer.weight, codec.g_s_head.layer.weight)
    with pytest.raises(ValueError, match="head_init"):
        CodecConfig(head_init="zeros")


def test_run_configs_written_before_the_split_still_load():
    """A trained run's config.yml names the codec settings ``nerfcodec_ns.codec.CodecConfig`` (the
    module before the codec was split): that name still resolves."""
    import yaml

    old = "!!python/object:nerfcodec_ns.codec.CodecConfig\nbackbone: mbt2018-mean\nweights: random\n"
    config = yaml.load(old, Loader=yaml.Loader)
    assert isinstance(config, CodecConfig) and (config.backbone, config.weights) == ("mbt2018-mean", "random")


def test_old_run_configs_keep_the_codec_they_trained_with():
    """A config.yml written before a setting existed gets that setting's value of then (adapted
    C-channel heads, no channel mixing, float32), not today's defaults; a new config round-trips."""
    import yaml

    old = "!!python/object:nerfcodec_ns.codec.settings.CodecConfig\nbackbone: bmshj2018-hyperprior\nweights: embedded\n"
    config = yaml.load(old, Loader=yaml.Loader)
    assert (config.adapt_heads, config.mix_images, config.train_precision) == (True, 0, "float32")
    assert (config.head_init, config.latent_gain) == ("random", 1.0)
    new = CodecConfig(mix_images=3, adapt_heads=False)
    back = yaml.load(yaml.dump(new), Loader=yaml.Loader)
    assert back == new and CodecConfig().mix_images == 2 and not CodecConfig().adapt_heads


def test_bfloat16_training_forward_is_close_and_eval_unchanged():
    """train_precision="bfloat16" changes only the training forward (autocast): it stays close to the
    float32 one and passes gradients; eval mode (what files and decoding use) is identical."""
    planes = smooth_planes(4, 33)
    fp32 = make_codec(resolutions=(33,), seed=3)
    bf16 = make_codec(resolutions=(33,), seed=3, train_precision="bfloat16")
    bf16.load_state_dict(fp32.state_dict())
    torch.manual_seed(0)
    a = fp32.train()(planes, 0)
    torch.manual_seed(0)
    p = planes.clone().requires_grad_(True)
    b = bf16.train()(p, 0)
    rel = float((a.x_hat - b.x_hat).norm() / a.x_hat.norm())
    assert b.x_hat.dtype == torch.float32 and 0 < rel < 0.05, rel
    b.x_hat.square().mean().add(b.bits * 1e-6).backward()
    assert p.grad is not None and bool(torch.isfinite(p.grad).all()) and float(p.grad.abs().sum()) > 0
    fp32.eval(), bf16.eval()
    assert torch.equal(fp32(planes, 0).x_hat, bf16(planes, 0).x_hat)
    with pytest.raises(ValueError, match="train_precision"):
        CodecConfig(train_precision="float16")


@pytest.mark.parametrize("native", [False, True])
def test_auto_precision_follows_the_cpu(monkeypatch, native):
    """train_precision="auto" trains under bfloat16 autocast exactly where the CPU has native
    bfloat16 (its cpuinfo flags), and float32 elsewhere."""
    from nerfcodec_ns.codec import plane as plane_module

    monkeypatch.setattr(plane_module, "_cpu_has_native_bfloat16", lambda: native)
    auto = make_codec(resolutions=(33,), seed=3, train_precision="auto")
    assert auto.uses_bfloat16("cpu") is native
    assert make_codec(train_precision="bfloat16").uses_bfloat16("cpu")
    assert not make_codec(train_precision="float32").uses_bfloat16("cpu")
    ref = make_codec(resolutions=(33,), seed=3, train_precision="bfloat16" if native else "float32")
    ref.load_state_dict(auto.state_dict())
    planes = smooth_planes(4, 33)
    torch.manual_seed(0)
    got = auto(planes, 0).x_hat
    torch.manual_seed(0)
    assert torch.equal(got, ref(planes, 0).x_hat)


def test_cpu_flags_decide_native_bfloat16(tmp_path):
    from nerfcodec_ns.codec.plane import _cpu_has_native_bfloat16

    cases = (("fpu avx512f avx512_bf16 sse", True), ("fpu amx_bf16 amx_tile", True),
             ("fpu avx512f avx512bw", False), ("fpu avx512_bf16x", False))
    for i, (flags, expected) in enumerate(cases):
        info = tmp_path / f"cpuinfo{i}"
        info.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
        assert _cpu_has_native_bfloat16(str(info)) is expected
    assert _cpu_has_native_bfloat16(str(tmp_path / "absent")) is False
