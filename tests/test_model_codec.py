"""The codec inside the nerfstudio model: stages, losses, which parameters each stage trains, decoded rendering."""

from __future__ import annotations

import pytest
import torch

from nerfstudio.cameras.rays import RayBundle
from nerfstudio.data.scene_box import SceneBox

from nerfcodec_ns.codec.settings import CodecConfig
from nerfcodec_ns.model import NerfcodecModelConfig


def _model(codec=None, **overrides):
    """A tiny model; its codec has C-channel adapted heads unless ``codec`` is given."""
    torch.manual_seed(0)
    codec = codec or CodecConfig(weights="random", N=16, M=24, adapt_heads=True, mix_images=0, train_precision="float32")
    cfg = NerfcodecModelConfig(
        plane_resolutions=(16, 24), plane_channels=4, grid_resolution=16,
        codec=codec, codec_field_steps=5, codec_warmup_steps=5,
        lpips="off", **overrides,
    )
    box = SceneBox(aabb=torch.tensor([[-1.5, -1.5, -1.5], [1.5, 1.5, 1.5]]))
    model = cfg.setup(scene_box=box, num_train_data=4)
    model.sampler.estimator.binaries.fill_(True)
    return model


def _batch(n=64):
    g = torch.Generator().manual_seed(1)
    origins = torch.tensor([0.0, 0.0, -4.0]).expand(n, 3) + 0.3 * torch.randn(n, 3, generator=g)
    dirs = torch.nn.functional.normalize(torch.tensor([0.0, 0.0, 1.0]) + 0.2 * torch.randn(n, 3, generator=g), dim=-1)
    bundle = RayBundle(origins=origins, directions=dirs, pixel_area=torch.ones(n, 1), camera_indices=torch.zeros(n, 1, dtype=torch.long))
    return bundle, {"image": torch.rand(n, 3, generator=g)}


def _losses(model, stage):
    model.train()
    model.codec_stage.fill_(stage)
    model.zero_grad(set_to_none=True)
    bundle, batch = _batch()
    outputs = model.get_outputs(bundle)
    metrics = model.get_metrics_dict(outputs, batch)
    losses = model.get_loss_dict(outputs, batch, metrics)
    sum(losses.values()).backward()
    return losses, metrics


def _has_grad(params):
    return any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)


def test_stage_schedule_follows_the_step():
    model = _model()
    assert [model.stage_at(s) for s in (0, 4, 5, 9, 10, 1000)] == [0, 0, 1, 1, 2, 2]
    assert _model(codec_enabled=False).stage_at(1000) == 0


def test_field_stage_trains_the_field_only():
    model = _model()
    losses, _ = _losses(model, 0)
    assert set(losses) == {"rgb_loss", "plane_tv"}  # the plane TV penalty is on by default
    assert _has_grad(model.field.planes)
    assert not _has_grad(model.codec.parameters())


def test_warmup_trains_the_codec_on_frozen_planes():
    model = _model()
    losses, metrics = _losses(model, 1)
    assert {"rgb_loss", "codec_rate", "codec_aux", "codec_rec"} <= set(losses)
    assert not _has_grad(model.field.planes), "planes are frozen during the codec warm-up"
    assert _has_grad(model.codec.g_a.parameters()) and _has_grad(model.codec.g_s_head.parameters())
    assert _has_grad(model.field.mlp_parameters())
    assert metrics["codec_y_bytes"] > 0 and metrics["size_total_bytes"] > metrics["codec_y_bytes"]


def test_warmup_with_the_default_codec_starts_and_trains_the_mixers():
    """The default codec (channel mixing, frozen RGB layers): the first warm-up step starts each
    level's mixers from the planes' principal components, and both mixers train."""
    model = _model(codec=CodecConfig(weights="random", N=16, M=24))
    assert model.codec.mix_images == 2 and not model.codec.config.adapt_heads
    assert not bool(model.codec.mix_ready.any())
    _losses(model, 1)
    assert bool(model.codec.mix_ready.all())
    assert _has_grad(model.codec.mix_in.parameters()) and _has_grad(model.codec.mix_out.parameters())
    assert not _has_grad(model.codec.g_s_head.parameters()), "the backbone's RGB output layer is frozen"
    assert not _has_grad(model.field.planes)


def test_warmup_keeps_planes_frozen_even_with_plane_tv():
    model = _model(plane_tv_mult=0.1)
    losses, _ = _losses(model, 1)
    assert "plane_tv" not in losses and not _has_grad(model.field.planes)
    losses, _ = _losses(model, 0)
    assert "plane_tv" in losses


def test_joint_stage_renders_decoded_planes_and_trains_everything_but_the_frozen_backbone():
    model = _model()
    losses, metrics = _losses(model, 2)
    assert "codec_rec" not in losses and {"codec_rate", "codec_aux"} <= set(losses)
    assert _has_grad(model.field.planes), "rendering loss reaches the planes through the codec"
    assert _has_grad(model.codec.g_a.parameters()) and _has_grad(model.codec.g_s_head.parameters())
    assert _has_grad(model.codec.vectors)
    assert all(p.grad is None for p in model.codec.frozen_parameters())
    expected = {"size_head_bytes", "size_vectors_0_bytes", "size_vectors_1_bytes", "size_norm_stats_bytes",
                "size_entropy_bottleneck_bytes", "size_mlp_bytes", "size_total_bytes"}
    assert expected <= set(metrics)
    parts = sum(float(v) for k, v in metrics.items() if k.startswith("size_") and k != "size_total_bytes")
    total = float(metrics["codec_y_bytes"] + metrics["codec_z_bytes"]) + parts
    assert float(metrics["size_total_bytes"]) == pytest.approx(total)


def test_param_groups_cover_trainable_parameters_once_and_no_frozen_ones():
    model = _model()
    groups = model.get_param_groups()
    assert set(groups) == {"fields", "planes", "codec", "codec_heads", "codec_aux"}
    ids = [id(p) for ps in groups.values() for p in ps]
    assert len(ids) == len(set(ids))
    frozen = {id(p) for p in model.codec.frozen_parameters()}
    assert frozen and not frozen & set(ids)
    trainable = {id(p) for n, p in model.named_parameters() if p.requires_grad and n != "device_indicator_param"}
    assert trainable == set(ids)


def test_eval_renders_decoded_planes_cached_until_parameters_change():
    model = _model()
    model.eval()
    assert model.render_planes() is None, "before the joint stage the field's own planes are rendered"
    model.codec_stage.fill_(2)
    first = model.render_planes()
    assert first is not None and model.render_planes() is first
    raw = model.field.plane_list()
    assert all(d.shape == p.shape for d, p in zip(first, raw))
    assert not all(torch.equal(d, p) for d, p in zip(first, raw))
    with torch.no_grad():
        model.field.planes[0].add_(0.01)
    assert model.render_planes() is not first


def test_codec_disabled_has_no_codec_parameters():
    model = _model(codec_enabled=False)
    assert model.codec is None and set(model.get_param_groups()) == {"fields", "planes"}
    losses, _ = _losses(model, 0)
    assert set(losses) == {"rgb_loss", "plane_tv"}  # the plane TV penalty is on by default


def test_no_grad_render_in_training_mode_returns_only_per_ray_outputs():
    """nerfstudio's evaluation leaves the model in training mode; a no-grad camera render must still work."""
    model = _model()
    model.train()
    model.codec_stage.fill_(2)
    bundle, _ = _batch(32)
    with torch.no_grad():
        outputs = model.get_outputs(bundle)
    assert all(v.shape[0] == 32 for v in outputs.values())


def test_landing_on_a_size_target_keeps_the_gain_in_the_header_range(monkeypatch):
    """A target the file can only reach with a latent gain above what a scene-file header holds
    (256) ends at 256 at most, so the export after training cannot fail (it did, on a tiny run whose
    file needed a gain of 304)."""
    import nerfcodec_ns.model as model_module
    from nerfcodec_ns.scenefile.header import MAX_LATENT_GAIN

    model = _model(codec_target_bytes=10**9, codec_lambda=1e-3)
    model.codec.latent_gain.fill_(200.0)
    monkeypatch.setattr(model_module, "measured_file_size", lambda m, _outputs: int(1000 * m.codec.gain))
    gain, size = model.land_on_target(None)
    assert gain <= MAX_LATENT_GAIN and model.codec.gain <= MAX_LATENT_GAIN
    assert gain > 200.0 and size == int(1000 * gain)  # it did move up, as far as allowed


@pytest.mark.parametrize("background", ["white", "black"])
def test_rgba_targets_are_composited_over_the_background(background):
    """Masked captures (RGBA that nerfstudio-data leaves unblended) train against the colour the
    renderer composites the field over; RGB targets are used as they are."""
    model = _model(background_color=background)
    g = torch.Generator().manual_seed(2)
    rgba = torch.rand(32, 4, generator=g)
    bg = 1.0 if background == "white" else 0.0
    expected = rgba[:, :3] * rgba[:, 3:] + bg * (1 - rgba[:, 3:])
    assert torch.allclose(model.ground_truth({"image": rgba}), expected)
    assert torch.equal(model.ground_truth({"image": rgba[:, :3]}), rgba[:, :3])
    bundle, batch = _batch(32)
    model.eval()
    with torch.no_grad():
        outputs = model.get_outputs(bundle)
    loss = model.get_loss_dict(outputs, {"image": rgba})["rgb_loss"]
    assert torch.allclose(loss, torch.nn.functional.mse_loss(outputs["rgb"], expected))


def test_auto_contraction_follows_where_the_cameras_stand():
    """Cameras outside the scene box (an object, Blender) keep the bounded field; cameras inside it
    (a capture of surroundings) get the L-inf contraction; explicit settings are kept."""
    from nerfstudio.cameras.cameras import Cameras

    from nerfcodec_ns.model import auto_contraction

    box = SceneBox(aabb=torch.tensor([[-1.5, -1.5, -1.5], [1.5, 1.5, 1.5]]))

    def cams(radius):
        c2w = torch.eye(4)[:3].expand(6, 3, 4).clone()
        c2w[:, :3, 3] = radius * torch.nn.functional.normalize(torch.randn(6, 3, generator=torch.Generator().manual_seed(0)), dim=-1)
        return Cameras(camera_to_worlds=c2w, fx=50.0, fy=50.0, cx=16.0, cy=16.0, width=32, height=32)

    assert auto_contraction(cams(4.0), box) == "none"
    assert auto_contraction(cams(1.0), box) == "linf"
    assert NerfcodecModelConfig(scene_contraction="auto").contraction() == "none"  # unresolved: bounded
    assert NerfcodecModelConfig(scene_contraction="l2").field_spec().contraction == "l2"
    cfg = NerfcodecModelConfig(scene_contraction="linf")
    assert cfg.sampler_settings(box.aabb) == (64, pytest.approx(3 * 3**0.5 / 128), 4, 1 / 64)
    assert NerfcodecModelConfig().sampler_settings(box.aabb) == (128, pytest.approx(3 * 3**0.5 / 512), 1, 0.0)


def _spiky(model):
    """Give every plane a few large outliers (values the codec's 4-sigma normalisation clips)."""
    with torch.no_grad():
        for p in model.field.planes:
            p.masked_fill_(torch.arange(p.numel()).reshape(p.shape) % 97 == 0, 25.0)


def test_field_clip_renders_the_planes_the_codec_keeps():
    """With field_clip the field stage renders (and back-propagates through) the planes clipped to
    exactly the float16 range the codec's normalisation uses; off, it renders the planes as they are."""
    from nerfcodec_ns.codec.plane import clip_to_stats, plane_stats

    bundle, _ = _batch()
    off, on = _model(), _model(field_clip=True)
    _spiky(off), _spiky(on)
    assert off.clipped_planes() is None and on.clipped_planes() is not None
    k = on.config.codec.clip_sigmas
    for raw, clipped in zip(on.field.plane_list(), on.clipped_planes()):
        lo, hi = plane_stats(raw, k)
        assert torch.equal(clipped, clip_to_stats(raw, lo, hi))
        assert (clipped.detach() < raw.detach()).any(), "the outliers are clipped"
        # the codec normalises both to the same [0, 1] image, so the field loses nothing the codec keeps
        assert torch.equal(on.codec._normalize(raw.detach(), lo, hi), on.codec._normalize(clipped.detach(), lo, hi))
    on.eval(), off.eval()
    with torch.no_grad():
        rgb_on = on.get_outputs(bundle)["rgb"]
        rgb_off = off.get_outputs(bundle)["rgb"]
    assert not torch.allclose(rgb_on, rgb_off), "clipping the outliers changes the rendering"
    # a model whose planes ARE the clipped ones renders the same image without field_clip
    plain = _model()
    with torch.no_grad():
        for dst, src in zip(plain.field.planes, on.clipped_planes()):
            dst.copy_(src)
    plain.eval()
    with torch.no_grad():
        assert torch.allclose(plain.get_outputs(bundle)["rgb"], rgb_on, atol=1e-6)


def test_field_clip_gives_no_gradient_to_clipped_values():
    model = _model(field_clip=True)
    _spiky(model)
    _losses(model, 0)
    lo, hi = plane_stats_of(model)
    for p, l, h in zip(model.field.planes, lo, hi):
        outside = (p.detach() > h[..., None, None].float()) | (p.detach() < l[..., None, None].float())
        assert outside.any() and p.grad[outside].abs().sum() > 0, "plane TV still reaches the outliers"
    model.config.plane_tv_mult = 0.0  # rendering alone: no gradient outside the range
    _losses(model, 0)
    for p, l, h in zip(model.field.planes, lo, hi):
        outside = (p.detach() > h[..., None, None].float()) | (p.detach() < l[..., None, None].float())
        assert p.grad[outside].abs().max() == 0
        assert p.grad[~outside].abs().sum() > 0


def plane_stats_of(model):
    from nerfcodec_ns.codec.plane import plane_stats

    stats = [plane_stats(p, model.config.codec.clip_sigmas) for p in model.field.plane_list()]
    return [s[0] for s in stats], [s[1] for s in stats]
