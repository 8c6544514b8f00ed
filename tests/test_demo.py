"""The demo's pieces that need no training run: its ns-train command, the stage split, and the
field-stage checkpoint it evaluates as "uncompressed" (the whole demo is `make demo`)."""

from __future__ import annotations

import pytest
import torch

from nerfcodec_ns.demo import (
    DEMO_PLANE_RESOLUTIONS,
    DemoError,
    field_checkpoint,
    field_stage_state,
    ns_train_command,
    stage_steps,
)


def _option(cmd, name):
    i = cmd.index(name)
    return cmd[i + 1]


@pytest.mark.parametrize("steps", [30, 1000, 1001])
def test_command_keeps_the_checkpoint_after_the_last_field_step(tmp_path, steps):
    split = stage_steps(steps)
    assert split["field"] + split["warmup"] + split["joint"] == steps and min(split.values()) > 0
    cmd = ns_train_command(tmp_path / "scene", tmp_path / "runs", steps)
    assert int(_option(cmd, "--pipeline.model.codec-field-steps")) == split["field"]
    assert int(_option(cmd, "--pipeline.model.codec-warmup-steps")) == split["warmup"]
    # nerfstudio saves after iteration s when s % steps_per_save == 0 (not at 0): the last field
    # iteration is split["field"] - 1, and no other save falls before the end of training
    every = int(_option(cmd, "--steps-per-save"))
    assert every == split["field"] - 1 and 2 * every >= steps
    assert _option(cmd, "--save-only-latest-checkpoint") == "False"
    i = cmd.index("--pipeline.model.plane-resolutions")
    assert tuple(int(r) for r in cmd[i + 1 : i + 1 + len(DEMO_PLANE_RESOLUTIONS)]) == DEMO_PLANE_RESOLUTIONS
    assert cmd[-1] == "blender-data"


def test_field_stage_state_swaps_in_the_checkpoint_and_restores(tmp_path):
    torch.manual_seed(0)
    pipeline, field = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    pipeline.register_buffer("codec_stage", torch.tensor(2))
    field.register_buffer("codec_stage", torch.tensor(0))
    final = {k: v.clone() for k, v in pipeline.state_dict().items()}
    folder = tmp_path / "run" / "nerfstudio_models"
    folder.mkdir(parents=True)
    torch.save({"step": 599, "pipeline": field.state_dict()}, folder / "step-000000599.ckpt")
    ckpt = field_checkpoint(tmp_path / "run" / "config.yml", 600)
    with field_stage_state(pipeline, ckpt):
        for k, v in field.state_dict().items():
            assert torch.equal(pipeline.state_dict()[k], v)
    for k, v in final.items():
        assert torch.equal(pipeline.state_dict()[k], v)
    with pytest.raises(DemoError, match="step-000000999.ckpt is missing"):
        field_checkpoint(tmp_path / "run" / "config.yml", 1000)
