"""``codec_pass_every``: one codec pass per window of joint-stage steps, with the window's plane
gradients summed into it. Its gradients must equal those of running every step of the window against
that one codec pass (the rate, aux and plane TV counted once per step)."""

from __future__ import annotations

import pytest
import torch

from nerfcodec_ns.model import LEGACY_MODEL_DEFAULTS, NerfcodecModelConfig

from test_model_codec import _batch, _model

JOINT_START = 10  # _model: 5 field steps + 5 warm-up steps


def _batches(k, n=64):
    out = []
    for i in range(k):
        torch.manual_seed(100 + i)
        bundle, batch = _batch(n)
        # different rays per step: shift the origins
        bundle.origins = bundle.origins + 0.05 * i
        batch["image"] = torch.rand_like(batch["image"])
        out.append((bundle, batch))
    return out


def _step(model, step, bundle, batch, retain=False):
    model._train_step = step
    outputs = model.get_outputs(bundle)
    metrics = model.get_metrics_dict(outputs, batch)
    losses = model.get_loss_dict(outputs, batch, metrics)
    sum(losses.values()).backward(retain_graph=retain)
    return losses


def _grads(model):
    named = [(f"plane{i}", p) for i, p in enumerate(model.field.planes)]
    named += [(f"mlp{i}", p) for i, p in enumerate(model.field.mlp_parameters())]
    named += [(f"codec.{n}", p) for n, p in model.codec.named_parameters() if p.requires_grad]
    return {n: (None if p.grad is None else p.grad.clone()) for n, p in named}


@pytest.mark.parametrize("k", [2, 3])
def test_a_window_sums_the_gradients_of_its_steps(k):
    """K steps of a window (no optimizer step between them, so the MLP stays put) leave on every
    parameter the gradient of the K steps' losses against the window's one codec pass."""
    model = _model(codec_pass_every=k)
    model.train()
    model.codec_stage.fill_(2)
    state = {n: v.clone() for n, v in model.state_dict().items()}
    batches = _batches(k)

    model.zero_grad(set_to_none=True)
    torch.manual_seed(7)
    for i, (bundle, batch) in enumerate(batches):
        losses = _step(model, JOINT_START + i, bundle, batch)
        if i < k - 1:  # nothing of the codec counts before the window's last step
            assert "codec_rate" not in losses and "plane_tv" not in losses
            assert all(p.grad is None for p in model.codec.parameters())
            assert all(p.grad is None for p in model.field.planes)
    assert {"codec_rate", "codec_aux", "codec_carried", "plane_tv"} <= set(losses)
    assert float(losses["codec_carried"].detach()) == 0.0
    window = _grads(model)

    # reference: the same codec pass (same noise: same seed, drawn first), each step rendered from its
    # decoded planes with the graph kept, the gradients accumulating over the K backward passes
    model.load_state_dict(state)
    model.config.codec_pass_every = 1
    model._window = None
    model.zero_grad(set_to_none=True)
    torch.manual_seed(7)
    outs = model.code_planes()
    model.code_planes = lambda detach_planes=False: outs  # every step reuses the one pass
    for i, (bundle, batch) in enumerate(batches):
        _step(model, JOINT_START + i, bundle, batch, retain=True)
    reference = _grads(model)

    assert window.keys() == reference.keys()
    checked = 0
    for name in reference:
        if reference[name] is None:
            assert window[name] is None, name
            continue
        assert window[name] is not None, name
        torch.testing.assert_close(window[name], reference[name], rtol=1e-4, atol=1e-7, msg=name)
        checked += reference[name].abs().sum() > 0
    assert checked > 10  # planes, MLP and codec parameters all had gradients


def test_the_codec_runs_once_per_window_and_again_after_a_change():
    model = _model(codec_pass_every=3)
    model.train()
    model.codec_stage.fill_(2)
    calls = []
    code_planes = model.code_planes
    model.code_planes = lambda detach_planes=False: calls.append(1) or code_planes(detach_planes)
    batches = _batches(1) * 7
    for i, (bundle, batch) in enumerate(batches[:6]):
        model.zero_grad(set_to_none=True)
        _step(model, JOINT_START + i, bundle, batch)
    assert len(calls) == 2  # steps 0-2 and 3-5
    # a parameter changed in the middle of a window (a restored checkpoint): the next step codes again
    _step(model, JOINT_START + 6, *batches[6])
    assert len(calls) == 3
    with torch.no_grad():
        model.codec.latent_gain.add_(0.0)  # any in-place change bumps the version
    model.zero_grad(set_to_none=True)
    _step(model, JOINT_START + 7, *batches[0])
    assert len(calls) == 4


def test_the_runs_last_step_closes_the_window():
    model = _model(codec_pass_every=4)
    model.train()
    model.codec_stage.fill_(2)
    model.zero_grad(set_to_none=True)
    (b0, t0), (b1, t1) = _batches(2)
    assert "codec_rate" not in _step(model, JOINT_START, b0, t0)
    model._train_last = True  # what the stage callback sets at the run's last step
    losses = _step(model, JOINT_START + 1, b1, t1)
    assert "codec_rate" in losses
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.codec.g_a.parameters())


def test_without_a_trainer_every_step_is_a_codec_pass():
    """Outside a trainer (no step known) the model codes every step, as with codec_pass_every 1."""
    model = _model(codec_pass_every=3)
    model.train()
    model.codec_stage.fill_(2)
    bundle, batch = _batch()
    outputs = model.get_outputs(bundle)
    losses = model.get_loss_dict(outputs, batch, model.get_metrics_dict(outputs, batch))
    assert "codec_rate" in losses and "codec_carried" not in losses


def test_legacy_runs_coded_every_step():
    assert NerfcodecModelConfig().codec_pass_every >= 1
    assert LEGACY_MODEL_DEFAULTS["codec_pass_every"] == 1
    old = NerfcodecModelConfig.__new__(NerfcodecModelConfig)
    old.__setstate__({"mlp_bits": 8})
    assert old.codec_pass_every == 1
