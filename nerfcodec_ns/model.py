"""The nerfcodec nerfstudio model: a tri-plane field rendered with occupancy-grid ray marching,
trained jointly with the neural plane codec (NeRFCodec) in one ``ns-train`` run.

Training stages (set by the step; ``codec_stage`` is kept in the checkpoint):

0. ``field``: the field trains alone (``codec_field_steps`` steps).
1. ``warm-up``: the codec learns to reconstruct the frozen planes, with the rate term
   (``codec_warmup_steps`` steps); rays are rendered from the planes, which get no gradient.
2. ``joint``: rays are rendered from the DECODED planes; field, encoder, heads, compensation
   vectors and MLP train on rendering loss + ``codec_lambda`` x rate. From here on, evaluation
   and the viewer render the decoded planes (rounded latents), so reported PSNR is the
   compressed scene's.

With a size budget (``codec_target_bytes``), rate control measures the real scene file through
:func:`nerfcodec_ns.codec.ratecontrol.measured_file_size`, which the exporter fills in: the model
itself knows nothing about the exporter.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Dict, List, Literal, NamedTuple, Optional, Sequence, Tuple, Type

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import Parameter

from nerfstudio.cameras.rays import RayBundle
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes, TrainingCallbackLocation
from nerfstudio.models.base_model import Model, ModelConfig
from nerfstudio.utils import colormaps

from nerfcodec_ns.codec.plane import CodecOutput, clip_to_stats, plane_stats
from nerfcodec_ns.codec.ratecontrol import RateController, measured_file_size
from nerfcodec_ns.codec.settings import CodecConfig
from nerfcodec_ns.field.field import MLP_BITS, TriplaneField, TriplaneFieldSpec, mlp_payload_estimate
from nerfcodec_ns.field.rendering import accumulate_along_rays, render_weights
from nerfcodec_ns.field.sampler import OccupancySampler, PackedSamples, nerfacc_usable
from nerfcodec_ns.malloc import tune_malloc
from nerfcodec_ns.metrics import LazyLPIPS, psnr, ssim


#: What a setting missing from a saved run config meant when that run trained (its default then).
LEGACY_MODEL_DEFAULTS = {"mlp_bits": 16, "codec_pass_every": 1}


@dataclass
class NerfcodecModelConfig(ModelConfig):
    """Tri-plane field + occupancy-grid sampler (the codec is added on top in later stages)."""

    _target: Type = field(default_factory=lambda: NerfcodecModel)

    def __setstate__(self, state: dict) -> None:
        """Unpickling (nerfstudio's config.yml): settings a saved config lacks take the value they had
        when it was written (``LEGACY_MODEL_DEFAULTS``), so old runs evaluate and export as trained."""
        self.__dict__.update({**LEGACY_MODEL_DEFAULTS, **state})

    enable_collider: bool = False
    """Rays are clipped to the scene box by the sampler; nerfstudio's near/far collider is not needed."""
    eval_num_rays_per_chunk: int = 1 << 14
    """Rays rendered per chunk in evaluation and in the viewer."""
    plane_resolutions: Tuple[int, ...] = (64, 128, 256)
    """Side length of the feature planes of each resolution level."""
    plane_channels: int = 16
    """Feature channels per plane."""
    plane_reduce: Literal["product", "sum"] = "product"
    """How the three planes' features are combined (K-Planes product or EG3D-like sum)."""
    hidden_dim: int = 64
    """Width of the density MLP."""
    geo_feat_dim: int = 15
    """Geometry features passed from the density MLP to the colour MLP."""
    hidden_dim_color: int = 64
    """Width of the colour MLP."""
    sh_degree: int = 4
    """Spherical-harmonics levels of the view-direction encoding."""
    grid_resolution: Optional[int] = None
    """Occupancy grid cells per axis (per level); None: 128 for a bounded scene, 64 with a contraction
    (4 levels of 128^3 cells cost 8.4 M density evaluations per full grid update on a CPU)."""
    scene_contraction: Literal["auto", "none", "linf", "l2"] = "auto"
    """Unbounded scenes: "none" (the planes cover the scene box, nothing outside it), "linf" or "l2"
    (mip-NeRF 360's contraction of all space into twice the box, which the planes cover, as K-Planes
    does). "auto": "linf" when most training cameras are inside the scene box (a capture of
    surroundings, e.g. nerfstudio-data or COLMAP), else "none" (an object seen from outside, e.g. Blender)."""
    grid_levels: Optional[int] = None
    """Occupancy-grid levels (level l covers the scene box scaled by 2**l); None: 1 for a bounded
    scene, 4 with a contraction (nerfacc's unbounded setting)."""
    cone_angle: Optional[float] = None
    """Ray-marching step growth: step = max(t * cone_angle, render_step_size); None: 0 for a bounded
    scene, 1/64 with a contraction (steps grow with distance beyond about one box half-size)."""
    render_step_size: Optional[float] = None
    """Ray-marching step in world units; None: scene-box diagonal / 512 for a bounded scene, / 128 with a
    contraction (a capture fills its box: at / 512 a ray there took 250-420 samples, 7-20 s a step on
    this CPU; docs/real_captures.md)."""
    near_plane: float = 0.0
    """Rays start no closer than this to the camera (world units)."""
    alpha_thre: float = 0.01
    """Samples with opacity below this are skipped (capped by the mean grid occupancy, as nerfacc does)."""
    early_stop_eps: float = 1e-4
    """Samples behind a transmittance below this are skipped."""
    cull_invisible: bool = True
    """Evaluate density once without gradients to drop invisible samples before the full pass."""
    occ_update_every: int = 16
    """Update the occupancy grid every this many steps."""
    occ_warmup_steps: int = 64
    """Steps during which every grid cell is re-evaluated at each update."""
    occ_warmup_every: int = 4
    """Grid update interval during the warm-up steps (frequent updates prune empty space sooner)."""
    occ_thre: float = 0.01
    """Occupancy threshold on density * step size."""
    occ_sample_fraction: float = 0.125
    """After warm-up, the fraction of cells re-evaluated at each grid update (plus as many occupied ones)."""
    background_color: Literal["white", "black"] = "white"
    """Colour composited behind the field (must match the data set's alpha blending)."""
    plane_tv_mult: float = 0.01
    """Weight of a total-variation penalty on the feature planes (0 disables it), in the field and joint
    stages (not in the codec warm-up, where the planes are frozen). Smoother planes are easier to code:
    the codec warm-up converges about 2.5x faster (docs/codec.md)."""
    lpips: Literal["auto", "off"] = "auto"
    """LPIPS in evaluation: "auto" computes it when its AlexNet weights can be loaded, else reports it unavailable."""
    codec_enabled: bool = True
    """Train the neural plane codec after the field (False: the base field only)."""
    mlp_bits: int = 8
    """How the scene file stores the MLPs: 8 (default: weight matrices as int8 per output row with a
    float32 scale, biases float16; 10.4 kB smaller than float16 on lego_200 for -0.03 dB, docs/codec.md)
    or 16 (float16, as files before format 6). From the joint stage on, evaluation renders with
    exactly these values."""
    grid_source: Literal["sent", "derived"] = "derived"
    """How the scene file carries the occupancy grid: "derived" (default; format 7: no ``grid`` section,
    the decoder rebuilds the grid from the decoded field, ``OccupancySampler.derive``: 10 kB off a
    lego_200 file for -0.05..-0.09 dB without retraining, docs/codec.md) or "sent" (its bits, LZMA,
    as files before format 7). With "derived" the joint stage derives the grid the same way every
    ``grid_derive_every`` steps (from the planes and MLP evaluation renders), so the field is fitted
    under the grid the decoder rebuilds, and the last step of an ``ns-train`` run leaves exactly that
    grid in the checkpoint."""
    grid_points: int = 2
    """Points per cell and axis of a derived grid where it is refined (``OccupancySampler.derive``): 1
    (cell centres only) lost 0.45-0.5 dB on lego_200, 2 lost 0.05-0.09 dB."""
    grid_derive_every: int = 50
    """Joint-stage steps between grid derivations (one costs about 3.5 s on lego_200 at 2 threads)."""
    field_clip: bool = False
    """Field/codec co-design: before the joint stage (field stage and warm-up, in training, evaluation
    and occupancy updates), render from the planes clipped per plane and channel to the codec's
    normalisation range (``codec.clip_sigmas``: mean -/+ that many standard deviations, the same
    float16 stats the codec computes), so the field learns not to rely on values the codec will
    clip. Off (the planes as they are) when ``codec.clip_sigmas`` is 0."""
    codec: CodecConfig = field(default_factory=CodecConfig)
    """The plane codec: backbone, its weights, compensation, head quantization."""
    codec_field_steps: int = 7000
    """Stage 0: steps of field-only training before the codec starts."""
    codec_warmup_steps: int = 1000
    """Stage 1: steps of codec warm-up on the frozen planes (feature reconstruction + rate)."""
    codec_lambda: float = 1e-5
    """Rate-distortion trade-off: weight of the estimated latent size in kilobytes (y + z) in the loss."""
    codec_target_bytes: int = 0
    """Size budget of the exported scene file in bytes (0: off, lambda stays ``codec_lambda``). When set,
    training adjusts lambda, starting from ``codec_lambda``, so that the file lands on the budget
    (``nerfcodec_ns/codec/ratecontrol.py``); the current lambda is logged as ``codec_lambda``."""
    rate_control_gain: float = 0.05
    """Rate control: change of log lambda per step per unit of log size error."""
    rate_control_land_tolerance: float = 0.02
    """Rate control: at the last step, when the file is further than this fraction from the target,
    retune the latent quantization gain to land on it (see ``NerfcodecModel.land_on_target``)."""
    rate_control_calibrate_every: int = 100
    """Rate control: build the real scene file every this many steps to calibrate the size estimate."""
    codec_pass_every: int = 1
    """Joint stage: one codec pass (forward and backward through the codec) per this many training
    steps. The steps of a window render the same decoded planes; their gradients on those planes are
    summed and sent through the codec once, at the window's last step, with the rate (and plane TV)
    weighted by the window's length, so the codec, latents and planes step once per window with the
    summed gradient while the MLP steps every step. 1: a codec pass every step (docs/codec.md: not
    yet measured)."""
    codec_rec_mult: float = 1.0
    """Weight of the warm-up feature-reconstruction loss (MSE of the normalized planes)."""
    log_file_size_every: int = 1000
    """In the joint stage, build the scene file every this many steps and at the last step, and log
    its exact size as ``size_file_bytes`` (about 2 s on a CPU each time; 0 disables)."""

    def contraction(self) -> str:
        """The scene contraction in use ("auto" not resolved by the pipeline counts as "none")."""
        return "none" if self.scene_contraction == "auto" else self.scene_contraction

    def sampler_settings(self, aabb: Tensor) -> Tuple[int, float, int, float]:
        """Grid resolution, marching step (world units, for the ``[2, 3]`` scene box), grid levels and
        cone angle in use (the defaults follow the contraction)."""
        unbounded = self.contraction() != "none"
        res = self.grid_resolution if self.grid_resolution is not None else (64 if unbounded else 128)
        step = self.render_step_size
        if step is None:
            step = float((aabb[1] - aabb[0]).norm()) / (128.0 if unbounded else 512.0)
        levels = self.grid_levels if self.grid_levels is not None else (4 if unbounded else 1)
        cone = self.cone_angle if self.cone_angle is not None else (1.0 / 64 if unbounded else 0.0)
        return int(res), float(step), int(levels), float(cone)

    def field_spec(self) -> TriplaneFieldSpec:
        """The field architecture this config describes."""
        return TriplaneFieldSpec(
            resolutions=tuple(int(r) for r in self.plane_resolutions),
            num_channels=self.plane_channels,
            reduce=self.plane_reduce,
            hidden_dim=self.hidden_dim,
            geo_feat_dim=self.geo_feat_dim,
            hidden_dim_color=self.hidden_dim_color,
            sh_degree=self.sh_degree,
            contraction=self.contraction(),
        )


class NerfcodecModel(Model):
    """Tri-plane radiance field with empty-space skipping (nerfacc on CUDA, pure torch on CPU)."""

    config: NerfcodecModelConfig

    def populate_modules(self) -> None:
        super().populate_modules()
        tune_malloc()  # training and rendering reuse freed memory instead of page-faulting it back in
        if self.config.mlp_bits not in MLP_BITS:
            raise ValueError(f"mlp_bits must be one of {MLP_BITS}, got {self.config.mlp_bits!r}")
        aabb = self.scene_box.aabb.float()  # [2, 3]
        self.field = TriplaneField(aabb, self.config.field_spec())
        res, step, levels, cone = self.config.sampler_settings(aabb)
        self.sampler = OccupancySampler(aabb.reshape(-1), res, step, levels=levels, cone_angle=cone)
        bg = {"white": (1.0, 1.0, 1.0), "black": (0.0, 0.0, 0.0)}[self.config.background_color]
        self.register_buffer("background", torch.tensor(bg), persistent=False)
        # Not an nn.Module attribute: kept out of state_dict and checkpoints.
        self._lpips = LazyLPIPS(enabled=self.config.lpips == "auto")
        self.register_buffer("codec_stage", torch.tensor(0), persistent=True)
        self.codec = None
        if self.config.codec_enabled:
            from nerfcodec_ns.codec.plane import PlaneCodec

            spec = self.field.spec
            self.codec = PlaneCodec(self.config.codec, spec.num_channels, spec.resolutions)
        self._rate: Optional[RateController] = None
        self._last_size_estimate: Optional[float] = None
        if self.codec is not None and self.config.codec_target_bytes > 0:
            self._rate = RateController(float(self.config.codec_target_bytes), math.log(self.config.codec_lambda),
                                        gain=self.config.rate_control_gain)
            # kept in checkpoints, so a resumed run continues with the lambda it reached
            self.register_buffer("codec_log_lambda", torch.tensor(self._rate.log_lambda, dtype=torch.float64))
        self._decoded_cache: Optional[Tuple[tuple, List[Tensor]]] = None
        # the training step being run and whether it is the run's last (set by a callback; None outside a
        # trainer), and the open joint-stage window (codec_pass_every)
        self._train_step: Optional[int] = None
        self._train_last = False
        #: The last step of the current run of steps when a driver other than the Trainer's
        #: ``max_num_iterations`` decides where training stops (the bench): a window closes there too.
        self.segment_end: Optional[int] = None
        self._window: Optional[CodecWindow] = None
        self._grid_bytes: Optional[Tuple[Tensor, int, int]] = None
        #: The data-parser config the run trains with (set by training and export; the scene file records it).
        self.dataparser_config = None

    # ------------------------------------------------------------------ training plumbing
    def get_param_groups(self) -> Dict[str, List[Parameter]]:
        groups = {"fields": self.field.mlp_parameters(), "planes": list(self.field.planes)}
        if self.codec is not None:
            groups.update({k: v for k, v in self.codec.parameter_groups(split_heads=True).items() if v})
        return groups

    def stage_at(self, step: int) -> int:
        """Training stage at ``step``: 0 field, 1 codec warm-up, 2 joint (see the module docstring)."""
        if self.codec is None or step < self.config.codec_field_steps:
            return 0
        return 1 if step < self.config.codec_field_steps + self.config.codec_warmup_steps else 2

    def get_training_callbacks(self, training_callback_attributes: TrainingCallbackAttributes) -> List[TrainingCallback]:
        def update_grid(step: int) -> None:
            if self.config.grid_source == "derived" and self.stage_at(step) >= 2:
                first = step == self.config.codec_field_steps + self.config.codec_warmup_steps
                if first or step % max(1, self.config.grid_derive_every) == 0:
                    self.derive_grid()
                return
            self.sampler.update(
                step,
                lambda x: self.field.density(x, self.render_planes())[0],
                occ_thre=self.config.occ_thre,
                warmup_steps=self.config.occ_warmup_steps,
                every=self.config.occ_warmup_every if step < self.config.occ_warmup_steps else self.config.occ_update_every,
                sample_fraction=self.config.occ_sample_fraction,
            )

        trainer = training_callback_attributes.trainer

        def set_stage(step: int) -> None:
            self.codec_stage.fill_(self.stage_at(step))
            self._train_step, self._train_last = step, is_last(step) or step == self.segment_end

        if training_callback_attributes.pipeline is not None:
            self.dataparser_config = training_callback_attributes.pipeline.config.datamanager.dataparser
        file_sizes: Dict[tuple, Optional[int]] = {}

        def dataparser_outputs():
            return training_callback_attributes.pipeline.datamanager.train_dataparser_outputs

        def is_last(step: int) -> bool:
            return trainer is not None and step == getattr(trainer, "_start_step", 0) + trainer.config.max_num_iterations - 1

        def file_size(step: int) -> Optional[int]:
            """The exact scene-file size of this step's state (None: no decodable file, e.g. a random
            backbone); built once per step and quantization gain, however many callbacks ask."""
            key = (step, self.codec.latent_gain._version)
            if key not in file_sizes:
                file_sizes.clear()
                file_sizes[key] = measured_file_size(self, dataparser_outputs())
            return file_sizes[key]

        def log_file_size(step: int) -> None:
            every = self.config.log_file_size_every
            if self.codec is None or every <= 0 or self.stage_at(step) < 2 or not (is_last(step) or step % every == 0):
                return
            size = file_size(step)
            if size is not None:
                from nerfstudio.utils import writer

                writer.put_scalar(name="Train Metrics Dict/size_file_bytes", scalar=size, step=step)

        def control_rate(step: int) -> None:
            rate = self._rate
            if rate is None or self.stage_at(step) < 1 or self._last_size_estimate is None:
                return
            from nerfstudio.utils import writer

            estimate = self._last_size_estimate
            if rate.offset_bytes is None or step % max(1, self.config.rate_control_calibrate_every) == 0:
                size = file_size(step)
                if size is None:  # no file exists: control the estimate itself
                    rate.offset_bytes = 0.0
                else:
                    rate.calibrate(size, estimate)
                    writer.put_scalar(name="Train Metrics Dict/rate_control_file_bytes", scalar=size, step=step)
            rate.log_lambda = float(self.codec_log_lambda)  # the checkpoint's value after a resume
            rate.step(estimate)
            self.codec_log_lambda.fill_(rate.log_lambda)
            if is_last(step) and self.stage_at(step) >= 2:
                landed = self.land_on_target(dataparser_outputs())
                if landed is not None:
                    writer.put_scalar(name="Train Metrics Dict/rate_control_gain", scalar=landed[0], step=step)

        def derive_last(step: int) -> None:
            if self.config.grid_source == "derived" and self.stage_at(step) >= 2 and is_last(step):
                self.derive_grid()  # the checkpoint holds the grid a decoder of its file rebuilds

        return [
            TrainingCallback([TrainingCallbackLocation.BEFORE_TRAIN_ITERATION], set_stage),
            TrainingCallback([TrainingCallbackLocation.BEFORE_TRAIN_ITERATION], update_grid),
            TrainingCallback([TrainingCallbackLocation.AFTER_TRAIN_ITERATION], control_rate),  # may land the rate
            TrainingCallback([TrainingCallbackLocation.AFTER_TRAIN_ITERATION], derive_last),
            TrainingCallback([TrainingCallbackLocation.AFTER_TRAIN_ITERATION], log_file_size),
        ]

    @torch.no_grad()
    def derive_grid(self) -> None:
        """Rebuild the occupancy grid from the field as the decoder of a "derived"-grid scene file does
        (``OccupancySampler.derive`` on the planes and MLP that evaluation renders)."""
        was_training = self.training
        self.eval()
        try:
            with self.evaluated_mlp():
                self.sampler.derive(lambda x: self.field.density(x, self.render_planes())[0],
                                    occ_thre=self.config.occ_thre, points=self.config.grid_points)
        finally:
            self.train(was_training)

    def render_planes(self) -> Optional[Sequence[Tensor]]:
        """Planes to render from: None (the field's own) before the joint stage, then the decoded planes.

        Outside training-with-gradients the decoded planes are computed without gradients and cached
        until a plane or codec parameter changes (the viewer and evaluation render many chunks).
        """
        if self.codec is None or int(self.codec_stage) < 2:
            return self.clipped_planes()
        key = (self.training, self._codec_inputs_version())
        if self._decoded_cache is None or self._decoded_cache[0] != key:
            with torch.no_grad():
                decoded = [out.x_hat for out in self.code_planes()]
            self._decoded_cache = (key, decoded)
        return self._decoded_cache[1]

    def clipped_planes(self) -> Optional[List[Tensor]]:
        """With ``field_clip``, the field's planes clipped to the codec's normalisation range (with
        gradients; what the field renders before the joint stage), else None (the planes as they are)."""
        k = self.config.codec.clip_sigmas
        if not self.config.field_clip or k <= 0:
            return None
        return [clip_to_stats(p, *plane_stats(p, k)) for p in self.field.plane_list()]

    def field_planes(self) -> List[Tensor]:
        """The planes the field renders before the joint stage, ``[3, C, R, R]`` per level (what a
        classic codec in ``nerfcodec bench`` is given)."""
        clipped = self.clipped_planes()
        return self.field.plane_list() if clipped is None else clipped

    def code_planes(self, detach_planes: bool = False) -> List[CodecOutput]:
        """Run the codec on every plane level (noise proxy in training mode, rounding in eval mode)."""
        assert self.codec is not None
        planes = self.field.plane_list()
        return [self.codec(p.detach() if detach_planes else p, level) for level, p in enumerate(planes)]

    def _codec_inputs_version(self) -> tuple:
        """Versions of everything a codec pass reads (planes, codec parameters, latent gain): decoded
        planes (a cache, a joint-stage window's pass) are valid while none of them has changed."""
        assert self.codec is not None
        return tuple(p._version for p in (*self.field.planes, *self.codec.parameters(), self.codec.latent_gain))

    def _joint_pass(self) -> "JointPass":
        """The decoded planes one joint-stage training step renders (``codec_pass_every``).

        With a window of K steps, the first step of a window runs the codec (with its graph kept); every
        step but the last renders detached copies of the decoded planes (leaves that sum their
        gradients); the last step renders the decoded planes themselves and carries the summed gradient
        of the earlier steps into the one backward pass through the codec (``carried``: zero-valued, its
        gradient is that sum). The rate is counted once, at the last step, weighted by the window's
        length. A window whose inputs changed (a restored checkpoint) starts again.
        """
        k = max(1, int(self.config.codec_pass_every))
        step = self._train_step
        if k == 1 or step is None:
            outs = self.code_planes()
            return JointPass([o.x_hat for o in outs], *codec_bits(outs), 1, None)
        pos = (step - self.config.codec_field_steps - self.config.codec_warmup_steps) % k
        w, version = self._window, self._codec_inputs_version()
        if w is None or pos == 0 or not step - pos <= w.start < step or w.key != version:
            outs = self.code_planes()
            with torch.no_grad():
                bits = codec_bits(outs)
            w = self._window = CodecWindow(step, outs, [o.x_hat.detach().requires_grad_(True) for o in outs],
                                           bits, version)
        if pos < k - 1 and not self._train_last:
            return JointPass(w.leaves, *w.bits, 0, None)
        self._window = None
        planes = [o.x_hat for o in w.outs]
        carried = [(x * leaf.grad).sum() for x, leaf in zip(planes, w.leaves) if leaf.grad is not None]
        total = sum(carried) if carried else None
        return JointPass(planes, *codec_bits(w.outs), step - w.start + 1,
                         None if total is None else total - total.detach())

    # ------------------------------------------------------------------ rendering
    def evaluated_mlp(self):
        """Context in which the field's MLP holds what no-grad evaluation renders with: from the joint
        stage on, exactly the values the scene file stores (``mlp_bits``); before it, its own."""
        if not self.training and self.codec is not None and int(self.codec_stage) >= 2:
            return self.field.transmitted_mlp(self.config.mlp_bits)
        return contextlib.nullcontext()

    def get_outputs(self, ray_bundle: RayBundle) -> Dict[str, Tensor]:
        with self.evaluated_mlp():
            return self._render(ray_bundle)

    def _render(self, ray_bundle: RayBundle) -> Dict[str, Tensor]:
        origins = ray_bundle.origins.reshape(-1, 3)
        directions = ray_bundle.directions.reshape(-1, 3)
        n_rays = origins.shape[0]
        stage = int(self.codec_stage) if self.codec is not None else 0
        codec_outs: Optional[List[CodecOutput]] = None
        joint: Optional[JointPass] = None
        if self.training and torch.is_grad_enabled() and stage == 1:  # warm-up: render the frozen planes
            codec_outs = self.code_planes(detach_planes=True)
            planes = [p.detach() for p in self.field_planes()]
        elif self.training and torch.is_grad_enabled() and stage >= 2:  # joint: render the decoded planes
            joint = self._joint_pass()
            planes = joint.planes
        else:
            planes = self.render_planes()

        def sigma_fn(t_starts: Tensor, t_ends: Tensor, ray_indices: Tensor) -> Tensor:
            t = 0.5 * (t_starts + t_ends)
            return self.field.density(origins[ray_indices] + t[:, None] * directions[ray_indices], planes)[0]

        with torch.no_grad():
            samples: PackedSamples = self.sampler.sample(
                origins,
                directions,
                sigma_fn=sigma_fn if self.config.cull_invisible else None,
                near_plane=self.config.near_plane,
                stratified=self.training,
                alpha_thre=self.config.alpha_thre,
                early_stop_eps=self.config.early_stop_eps,
            )
        ri = samples.ray_indices
        t_mids = samples.t_mids
        positions = origins[ri] + t_mids[:, None] * directions[ri]
        sigmas, rgbs = self.field(positions, directions[ri], planes)
        if nerfacc_usable(origins.device):
            import nerfacc

            weights, _, _ = nerfacc.render_weight_from_density(
                samples.t_starts, samples.t_ends, sigmas, ray_indices=ri, n_rays=n_rays
            )
        else:
            weights, _, _ = render_weights(sigmas, samples.t_starts, samples.t_ends, ri, n_rays)
        rgb = accumulate_along_rays(weights, rgbs, ri, n_rays)
        acc = accumulate_along_rays(weights, torch.ones_like(t_mids)[:, None], ri, n_rays)
        depth = accumulate_along_rays(weights, t_mids[:, None], ri, n_rays) / acc.clamp(min=1e-10)
        rgb = rgb + (1.0 - acc) * self.background
        counts = torch.bincount(ri, minlength=n_rays).to(rgb.dtype)
        outputs = {"rgb": rgb, "accumulation": acc, "depth": depth, "num_samples_per_ray": counts[:, None]}
        if joint is not None:
            outputs["codec_bits_y"], outputs["codec_bits_z"] = joint.bits_y, joint.bits_z
            outputs["codec_window_steps"] = torch.tensor(float(joint.steps))
            if joint.carried is not None:
                outputs["codec_carried"] = joint.carried
        elif codec_outs is not None:
            outputs["codec_bits_y"], outputs["codec_bits_z"] = codec_bits(codec_outs)
            if stage == 1:
                outputs["codec_rec"] = sum(
                    normalized_mse(o.x_hat, p.detach()) for o, p in zip(codec_outs, self.field.plane_list())
                ) / len(codec_outs)
        return outputs

    def ground_truth(self, batch: Dict[str, Tensor]) -> Tensor:
        """The batch's RGB; RGBA images (e.g. masked captures a parser does not blend) are composited
        over the model's background colour, as the renderer composites the field."""
        image = batch["image"].to(self.device)
        if image.shape[-1] == 4:
            alpha = image[..., 3:4]
            return image[..., :3] * alpha + self.background * (1.0 - alpha)
        return image[..., :3]

    def get_rgba_image(self, outputs: Dict[str, Tensor], output_name: str = "rgb") -> Tensor:
        rgb = outputs[output_name]
        return torch.cat((rgb, torch.ones_like(rgb[..., :1])), dim=-1)

    # ------------------------------------------------------------------ losses and metrics
    def get_metrics_dict(self, outputs, batch) -> Dict[str, Tensor]:
        gt = self.ground_truth(batch)
        metrics = {
            "psnr": psnr(outputs["rgb"].detach(), gt),
            "samples_per_ray": outputs["num_samples_per_ray"].mean(),
            "occupied_fraction": self.sampler.level_binaries.float().mean(),
        }
        if self.codec is not None:
            metrics["codec_stage"] = self.codec_stage.float()
        if "codec_bits_y" in outputs:
            sizes = self.transmitted_sizes()
            y_bytes, z_bytes = outputs["codec_bits_y"].detach() / 8, outputs["codec_bits_z"].detach() / 8
            metrics.update({"codec_y_bytes": y_bytes, "codec_z_bytes": z_bytes})
            metrics.update({f"size_{k}_bytes": torch.tensor(float(v)) for k, v in sizes.items()})
            metrics["size_total_bytes"] = y_bytes + z_bytes + sum(sizes.values())
            metrics["codec_lambda"] = torch.tensor(self.codec_lambda())
            self._last_size_estimate = float(metrics["size_total_bytes"])
        return metrics

    def set_rate_target(self, target_bytes: int, lmbda: float) -> None:
        """Restart training towards a new budget (``target_bytes`` > 0, from ``lmbda``) or with a fixed
        ``lmbda`` (0). A budget needs a model built with ``codec_target_bytes`` > 0 (its lambda buffer)."""
        self.config.codec_lambda, self.config.codec_target_bytes = float(lmbda), int(target_bytes)
        if target_bytes <= 0:
            self._rate = None
            return
        if not hasattr(self, "codec_log_lambda"):
            raise ValueError("this model was built without rate control (codec_target_bytes = 0)")
        self._rate = RateController(float(target_bytes), math.log(lmbda), gain=self.config.rate_control_gain)
        self.codec_log_lambda.fill_(self._rate.log_lambda)

    @torch.no_grad()
    def land_on_target(self, dataparser_outputs, tolerance: Optional[float] = None) -> Optional[Tuple[float, int]]:
        """Final rate match of a rate-controlled run: the size still reacts to lambda only through
        training, so the last few percent are closed by retuning the latent quantization gain
        (``codec.latent_gain``, written to the file header): bisection on log(gain) within 8x of the
        current gain (and within the header's gain range) for the largest file not above the target.
        Does nothing when the file is already
        within ``tolerance`` (default ``rate_control_land_tolerance``) of the target. Returns
        ``(gain, file bytes)``, or None when nothing was changed."""
        target = float(self.config.codec_target_bytes)
        if self.codec is None or target <= 0 or self.codec.autoregressive:
            return None
        tol = self.config.rate_control_land_tolerance if tolerance is None else tolerance

        def size_at(gain: float) -> Tuple[float, Optional[int]]:
            self.codec.latent_gain.fill_(gain)  # float32: measure with exactly the gain a file would hold
            return self.codec.gain, measured_file_size(self, dataparser_outputs)

        g0 = self.codec.gain
        _, s0 = size_at(g0)
        if s0 is None:  # no file can be built (or measured): nothing to land
            return None
        if abs(s0 / target - 1.0) <= tol:
            return None
        # size grows with the gain: bisection between the current gain and 8x coarser (file too big)
        # or 8x finer (file too small) for the largest file not above the target
        lo, hi = (math.log(g0 / 8.0), math.log(g0)) if s0 > target else (math.log(g0), math.log(g0 * 8.0))
        # ... within the gains a scene-file header may hold (a file with any other cannot be written)
        from nerfcodec_ns.scenefile.header import MAX_LATENT_GAIN, MIN_LATENT_GAIN

        lo, hi = max(lo, math.log(MIN_LATENT_GAIN)), min(hi, math.log(MAX_LATENT_GAIN))
        best = (g0, s0) if s0 <= target else None
        for _ in range(12):
            gain, size = size_at(math.exp(0.5 * (lo + hi)))
            if size is None:  # not expected once g0 gave a file: keep the state as it was
                self.codec.latent_gain.fill_(g0)
                return None
            if size <= target:
                lo = math.log(gain)
                if best is None or size > best[1]:
                    best = (gain, size)
                if size >= target * (1.0 - tol / 2):
                    break
            else:
                hi = math.log(gain)
        if best is None:  # even 8x coarser is too big: keep the coarsest
            best = size_at(math.exp(lo))
        if best[1] is None:
            self.codec.latent_gain.fill_(g0)
            return None
        self.codec.latent_gain.fill_(best[0])
        return best

    def codec_lambda(self) -> float:
        """The rate weight in use: ``codec_lambda``, or the rate controller's current value."""
        if self._rate is None:
            return float(self.config.codec_lambda)
        return math.exp(float(self.codec_log_lambda))

    def transmitted_sizes(self) -> Dict[str, int]:
        """Bytes of every transmitted part other than the latent strings: the codec's content-specific
        decoder parts, the MLPs (``mlp_bits``, unpacked), and the occupancy grid (packed bits, LZMA; see
        :func:`nerfcodec_ns.scenefile.payload.encode_bits`)."""
        assert self.codec is not None
        sizes = {k.replace(".", "_"): v for k, v in self.codec.transmitted_sizes().items()}
        sizes["mlp"] = mlp_payload_estimate(self.field.mlp_parameters(), self.config.mlp_bits)
        sizes["grid"] = self.grid_payload_bytes() if self.config.grid_source == "sent" else 0
        return sizes

    def grid_payload_bytes(self) -> int:
        """Size of the coded occupancy grid (cached until the grid changes: LZMA takes ~0.1 s)."""
        from nerfcodec_ns.scenefile.payload import encode_bits

        b = self.sampler.estimator.binaries
        if self._grid_bytes is None or self._grid_bytes[0] is not b or self._grid_bytes[1] != b._version:
            self._grid_bytes = (b, b._version, len(encode_bits(self.sampler.level_binaries.cpu().numpy())))
        return self._grid_bytes[2]

    def get_loss_dict(self, outputs, batch, metrics_dict=None) -> Dict[str, Tensor]:
        gt = self.ground_truth(batch)
        loss = {"rgb_loss": F.mse_loss(outputs["rgb"], gt)}
        # a joint-stage window (codec_pass_every): the codec, the rate and the planes count at its last step
        window = float(outputs["codec_window_steps"]) if "codec_window_steps" in outputs else 1.0
        if self.training and "codec_bits_y" in outputs and self.codec is not None and window > 0:
            kbytes = (outputs["codec_bits_y"] + outputs["codec_bits_z"]) / 8000.0
            loss["codec_rate"] = window * self.codec_lambda() * kbytes
            loss["codec_aux"] = window * self.codec.aux_loss()
            if "codec_rec" in outputs:
                loss["codec_rec"] = self.config.codec_rec_mult * outputs["codec_rec"]
            if "codec_carried" in outputs:
                loss["codec_carried"] = outputs["codec_carried"]
        frozen_planes = self.codec is not None and int(self.codec_stage) == 1  # codec warm-up
        if self.training and self.config.plane_tv_mult > 0 and not frozen_planes and window > 0:
            loss["plane_tv"] = window * self.config.plane_tv_mult * sum(plane_tv(p) for p in self.field.plane_list())
        return loss

    def get_image_metrics_and_images(
        self, outputs: Dict[str, Tensor], batch: Dict[str, Tensor]
    ) -> Tuple[Dict[str, float], Dict[str, Tensor]]:
        gt = self.ground_truth(batch)
        pred = outputs["rgb"].clamp(0.0, 1.0)
        metrics: Dict[str, float] = {"psnr": float(psnr(pred, gt)), "ssim": float(ssim(pred, gt))}
        lp = self._lpips(pred, gt)
        if lp is not None:
            metrics["lpips"] = lp
        acc = colormaps.apply_colormap(outputs["accumulation"])
        depth = colormaps.apply_depth_colormap(outputs["depth"], accumulation=outputs["accumulation"])
        images = {"img": torch.cat([gt, pred], dim=1), "accumulation": acc, "depth": depth}
        return metrics, images


class JointPass(NamedTuple):
    """What one joint-stage training step renders and counts (``NerfcodecModel._joint_pass``)."""

    planes: List[Tensor]
    """Planes to render, ``[3, C, R, R]`` per level: the decoded planes, or detached copies of them."""
    bits_y: Tensor
    """Estimated bits of all latents y (a scalar; with gradients only at a window's last step)."""
    bits_z: Tensor
    """Estimated bits of all hyper-latents z (a scalar)."""
    steps: int
    """Steps the rate and the codec's gradient stand for: the window's length at its last step, else 0."""
    carried: Optional[Tensor]
    """Zero-valued scalar whose gradient on the decoded planes is the window's earlier steps' summed
    gradient (None: nothing to carry)."""


class CodecWindow(NamedTuple):
    """An open joint-stage window: the codec pass its steps share."""

    start: int
    outs: List[CodecOutput]
    leaves: List[Tensor]
    bits: Tuple[Tensor, Tensor]
    key: tuple


def codec_bits(outs: Sequence[CodecOutput]) -> Tuple[Tensor, Tensor]:
    """Estimated bits of the latents y and hyper-latents z of every level (two scalars)."""
    y = sum(o.likelihoods["y"].log2().sum() for o in outs).neg()
    z = sum(o.likelihoods["z"].log2().sum() for o in outs).neg()
    return y, z


def auto_contraction(cameras, scene_box) -> str:
    """The scene contraction for ``scene_contraction="auto"``: "linf" when most training cameras
    (nerfstudio ``Cameras``) stand inside the scene box (the capture surrounds them: nerfstudio-data,
    COLMAP), else "none" (an object seen from outside: Blender scenes' cameras are outside the box)."""
    origins = cameras.camera_to_worlds[..., :3, 3].reshape(-1, 3).float()
    lo, hi = scene_box.aabb[0].to(origins), scene_box.aabb[1].to(origins)
    inside = ((origins >= lo) & (origins <= hi)).all(dim=-1).float().mean()
    return "linf" if float(inside) >= 0.5 else "none"


def normalized_mse(x_hat: Tensor, x: Tensor) -> Tensor:
    """MSE of ``x_hat`` against ``x`` relative to ``x``'s variance averaged over channels (``[3, C, R, R]``;
    a per-channel variance would let nearly constant channels dominate)."""
    var = x.var(dim=(0, 2, 3)).mean().clamp_min(1e-12)
    return ((x_hat - x).pow(2) / var).mean()


def plane_tv(plane: Tensor) -> Tensor:
    """Mean squared difference between neighbouring texels of ``[3, C, R, R]`` planes."""
    dh = (plane[..., 1:, :] - plane[..., :-1, :]).pow(2).mean()
    dw = (plane[..., :, 1:] - plane[..., :, :-1]).pow(2).mean()
    return dh + dw
