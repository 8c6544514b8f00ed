"""The ``nerfcodec`` method registered with nerfstudio (entry point ``nerfstudio.method_configs``).

nerfstudio imports this module for every ``ns-*`` command, so it stays light: no compressai here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Type

from nerfstudio.configs.base_config import MachineConfig, ViewerConfig
from nerfstudio.data.datamanagers.base_datamanager import VanillaDataManagerConfig
from nerfstudio.data.dataparsers.blender_dataparser import BlenderDataParserConfig
from nerfstudio.engine.optimizers import AdamOptimizerConfig
from nerfstudio.engine.schedulers import ExponentialDecaySchedulerConfig
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.pipelines.base_pipeline import VanillaPipeline, VanillaPipelineConfig
from nerfstudio.plugins.types import MethodSpecification

from nerfcodec_ns.compat import default_device_type
from nerfcodec_ns.model import NerfcodecModelConfig, auto_contraction

# The exporter: its import also registers the scene-file sizer that the model's rate control measures
# with (nerfcodec_ns.codec.ratecontrol.register_file_sizer), so every `ns-train nerfcodec` has it.
from nerfcodec_ns.scenefile.export import graft_ns_export

@dataclass
class NerfcodecPipelineConfig(VanillaPipelineConfig):
    """nerfstudio's vanilla pipeline; a nerfcodec model's ``scene_contraction="auto"`` is resolved
    from the training cameras (``model.auto_contraction``) before the model is built."""

    _target: Type = field(default_factory=lambda: NerfcodecPipeline)


class NerfcodecPipeline(VanillaPipeline):
    """See :class:`NerfcodecPipelineConfig`. ``VanillaPipeline.__init__`` builds the data manager and then
    the model from ``config.model`` with no step in between, so the choice is made as the data manager
    is assigned."""

    def __setattr__(self, name: str, value: Any) -> None:
        model = getattr(self, "config", None) and self.config.model
        outputs = getattr(value, "train_dataparser_outputs", None) if name == "datamanager" else None
        if isinstance(model, NerfcodecModelConfig) and model.scene_contraction == "auto" and outputs is not None:
            model.scene_contraction = auto_contraction(outputs.cameras, outputs.scene_box)
        super().__setattr__(name, value)


#: Default number of training steps (also the learning-rate schedules' horizon).
MAX_STEPS = 10_000


def nerfcodec_trainer_config(max_steps: int = MAX_STEPS) -> TrainerConfig:
    """The default ``ns-train nerfcodec`` configuration."""
    return TrainerConfig(
        method_name="nerfcodec",
        steps_per_eval_batch=500,
        steps_per_eval_image=1000,
        steps_per_eval_all_images=1_000_000,  # full evaluation is ns-eval's job (slow on CPU)
        steps_per_save=2000,
        max_num_iterations=max_steps,
        mixed_precision=False,
        save_only_latest_checkpoint=True,
        machine=MachineConfig(device_type=default_device_type()),
        pipeline=NerfcodecPipelineConfig(
            datamanager=VanillaDataManagerConfig(
                dataparser=BlenderDataParserConfig(),
                train_num_rays_per_batch=4096,
                eval_num_rays_per_batch=4096,
            ),
            model=NerfcodecModelConfig(),
        ),
        optimizers={
            "planes": {
                "optimizer": AdamOptimizerConfig(lr=2e-2, eps=1e-15),
                "scheduler": ExponentialDecaySchedulerConfig(lr_final=2e-3, max_steps=max_steps),
            },
            "fields": {
                "optimizer": AdamOptimizerConfig(lr=1e-2, eps=1e-15),
                "scheduler": ExponentialDecaySchedulerConfig(lr_final=1e-3, max_steps=max_steps),
            },
            # the codec (used from model.codec_field_steps on): encoder and entropy model ...
            # (the reference's 1e-5 / 2e-4 for these two groups are 10x slower to converge here: docs/codec.md)
            "codec": {"optimizer": AdamOptimizerConfig(lr=1e-3, eps=1e-15), "scheduler": None},
            # ... the transmitted decoder head and compensation vectors ...
            "codec_heads": {"optimizer": AdamOptimizerConfig(lr=3e-3, eps=1e-15), "scheduler": None},
            # ... and CompressAI's auxiliary parameters (entropy-bottleneck quantiles)
            "codec_aux": {"optimizer": AdamOptimizerConfig(lr=1e-3), "scheduler": None},
        },
        viewer=ViewerConfig(num_rays_per_chunk=1 << 14),
        vis="viewer",
    )


nerfcodec_method = MethodSpecification(
    config=nerfcodec_trainer_config(),
    description="NeRFCodec: tri-plane field (fast on CPU) whose planes are compressed by a neural image codec.",
)

# `ns-export` imports this module while it starts: add the `nerfcodec-bitstream` subcommand.
graft_ns_export()
