"""``nerfcodec``: the plugin's own command line (scene generation, demo, codec pre-training and
evaluation, export, decode, info, the rate-distortion bench).

Errors a user can cause (bad paths, existing outputs) end with a one-line message and exit code 2,
never a traceback.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Optional, Tuple, Union

import tyro

# Cheap: torch is already imported by the package; compressai is imported only when a command runs.
from nerfcodec_ns.bench.bench import BenchConfig
from nerfcodec_ns.codec.pretrain import PretrainConfig
from nerfcodec_ns.scenefile.export import ExportBitstream


class UserError(Exception):
    """A problem with the user's input: reported as one line, exit code 2."""


@dataclass
class MakeScene:
    """Write the procedural demo scene as a Blender-format data set (no download needed)."""

    output: Path
    """Folder to create (must not exist or be empty, unless --overwrite)."""
    seed: int = 0
    """Random seed: the same seed always gives the same files."""
    resolution: int = 100
    """Image width and height in pixels."""
    num_train: int = 40
    """Training views."""
    num_val: int = 8
    """Validation views (also written as the test split)."""
    overwrite: bool = False
    """Replace an existing data set at --output."""

    def main(self) -> None:
        from nerfcodec_ns.scene import SceneSpec, write_blender_scene

        try:
            spec = SceneSpec(
                seed=self.seed, resolution=self.resolution, num_train=self.num_train,
                num_val=self.num_val, num_test=self.num_val,
            )
            out = write_blender_scene(self.output, spec, overwrite=self.overwrite)
        except (ValueError, FileExistsError) as err:
            raise UserError(str(err)) from err
        print(f"wrote {out}")


@dataclass
class Demo:
    """The main job: make the procedural scene, train `ns-train nerfcodec` on it, evaluate, summarise."""

    output_dir: Path = Path("demo-output")
    """Everything the demo makes goes here (scene/, runs/, summary.json)."""
    steps: int = 1000
    """Training steps."""
    resolution: int = 100
    """Image size of the procedural scene."""
    seed: int = 0
    """Scene seed."""
    overwrite: bool = False
    """Delete an existing --output-dir first (otherwise the demo refuses to mix old and new results)."""

    def main(self) -> None:
        from nerfcodec_ns.demo import run_demo

        run_demo(self.output_dir, steps=self.steps, resolution=self.resolution, seed=self.seed,
                 overwrite=self.overwrite)


@dataclass
class PretrainCodec:
    """Pre-train a CompressAI image codec (the NeRFCodec backbone) on a folder of images.

    Writes OUTPUT (the backbone file the codec loads) and OUTPUT.ckpt (to --resume an interrupted
    or finished run with more --steps).
    """

    images: Tuple[Path, ...]
    """Folders of training images (png/jpg/jpeg, sub-folders included); all are loaded into memory."""
    output: Path
    """Backbone file to write, e.g. backbone.pt (also OUTPUT.ckpt, resumable, and OUTPUT.log)."""
    config: Annotated[PretrainConfig, tyro.conf.OmitArgPrefixes] = field(default_factory=PretrainConfig)
    resume: bool = False
    """Continue from OUTPUT.ckpt (same settings; --steps may grow)."""
    overwrite: bool = False
    """Replace an existing OUTPUT; without --resume also discard an existing OUTPUT.ckpt."""
    stop_at: Optional[int] = None
    """End at this step (checkpoint and backbone file written), on the schedule of --steps; --resume
    later continues exactly as if uninterrupted."""
    max_minutes: Optional[float] = None
    """End after this many minutes of training in this call (same as --stop-at, by time)."""

    def main(self) -> None:
        from rich.console import Console

        from nerfcodec_ns.codec.pretrain import PretrainError, pretrain

        try:
            result = pretrain(self.images, self.output, self.config, resume=self.resume,
                              overwrite=self.overwrite, progress=True, console=Console(stderr=True),
                              log_path=self.output.with_name(self.output.name + ".log"), stop_at=self.stop_at,
                              max_seconds=None if self.max_minutes is None else 60.0 * self.max_minutes)
        except PretrainError as err:
            raise UserError(str(err)) from err
        except KeyboardInterrupt:
            from nerfcodec_ns.codec.pretrain import checkpoint_path

            ckpt = checkpoint_path(self.output)
            if ckpt.exists():
                print(f"nerfcodec: the last checkpoint is {ckpt}; continue with --resume", file=sys.stderr)
            raise
        meta = result.meta
        rows = [
            ("architecture", f"{self.config.architecture} (N={self.config.N}, M={self.config.M})"),
            ("images", f"{meta['num_images']} in {meta['images']}"),
            ("steps", f"{result.resumed_from} -> {result.step}" if result.resumed_from else str(result.step)),
            ("final loss (EMA)", f"{meta['final_loss']:.4f}"),
            ("final bpp (EMA, crops)", f"{meta['final_bpp']:.4f}"),
            ("final PSNR (EMA, crops)", f"{meta['final_psnr']:.2f} dB"),
            ("backbone file", f"{result.output} ({result.output.stat().st_size / 1e6:.2f} MB)"),
            ("checkpoint", str(result.checkpoint)),
        ]
        _print_table("pretrain-codec", ["", "value"], rows)


@dataclass
class EvalCodec:
    """Code a folder of images with a pre-trained backbone: PSNR and bits per pixel (real and estimated)."""

    weights: Path
    """Backbone file written by pretrain-codec."""
    images: Path
    """Folder of images (png/jpg/jpeg, sub-folders included), coded at full size."""
    json: Optional[Path] = None
    """Also write the results (per image and mean) to this JSON file."""
    gain: float = 1.0
    """Latent quantization gain (y coded as round(gain * y) / gain): other rates from one model."""

    def main(self) -> None:
        import json

        from rich.console import Console

        from nerfcodec_ns.codec.pretrain import PretrainError, evaluate, list_images, load_backbone_file

        try:
            list_images(self.images)
            if self.json is not None:
                _check_output_file(self.json)
            model, meta = load_backbone_file(self.weights)
            if not (self.gain > 0 and math.isfinite(self.gain)):
                raise UserError(f"--gain must be a positive number, got {self.gain}")
            results = evaluate(model, self.images, progress=True, console=Console(stderr=True), gain=self.gain)
        except PretrainError as err:
            raise UserError(str(err)) from err
        rows = [(r["name"], f"{r['width']}x{r['height']}", f"{r['psnr']:.2f}", f"{r['bpp']:.4f}",
                 f"{r['bpp_est']:.4f}", str(r["bytes"])) for r in results["rows"]]
        m = results["mean"]
        rows.append((f"mean of {m['images']}", "", f"{m['psnr']:.2f}", f"{m['bpp']:.4f}",
                     f"{m['bpp_est']:.4f}", f"{m['bytes']:.0f}"))
        title = f"{self.weights.name}: {meta['architecture']} N={meta['N']} M={meta['M']}"
        _print_table(title, ["image", "size", "PSNR dB", "bpp", "bpp est.", "bytes"], rows)
        if self.json is not None:
            out = {"weights": str(self.weights), "images": str(self.images),
                   "architecture": meta["architecture"], "N": meta["N"], "M": meta["M"], **results}
            self.json.write_text(json.dumps(out, indent=2) + "\n")
            print(f"wrote {self.json}")


@dataclass
class Decode:
    """Decode a scene file into a run folder that ns-viewer, ns-render and ns-eval load."""

    scene: tyro.conf.Positional[Path]
    """The scene file (SCENE.nfc)."""
    output_dir: Path = Path("decoded")
    """Folder to create; the run's config is OUTPUT_DIR/scene/nerfcodec/decoded/config.yml."""
    data: Optional[Path] = None
    """The original data set, for ns-eval against the real images: read with the data parser (and its
    settings) the run was trained with, which the file records; its training cameras must be the
    file's. Default: use the cameras stored in the file and small images rendered from the decoded
    field (viewing only)."""
    dataparser: Optional[str] = None
    """With --data: the nerfstudio data parser to read it with (e.g. blender-data, nerfstudio-data,
    colmap, instant-ngp-data), instead of the one the file records (files from before the record:
    chosen from the folder's layout)."""
    weights: Optional[Path] = None
    """Backbone weights file, when the file's backbone is neither the embedded one nor CompressAI's zoo."""
    view_size: int = 64
    """Longer side (px) of the images rendered for the bitstream's cameras (without --data)."""
    overwrite: bool = False
    """Replace an existing OUTPUT_DIR."""

    def main(self) -> None:
        from nerfcodec_ns.scenefile.decode import write_run

        if self.view_size < 1:
            raise UserError(f"--view-size must be >= 1, got {self.view_size}")
        result = write_run(self.scene, self.output_dir, data=self.data, weights=self.weights,
                           overwrite=self.overwrite, view_size=self.view_size, dataparser=self.dataparser)
        rows = [
            ("scene file", f"{self.scene} ({self.scene.stat().st_size:,} bytes)"),
            ("decode (planes, MLP, grid)", f"{result.decode_seconds:.3f} s"),
            ("write run folder", f"{result.write_seconds:.2f} s"),
            ("run folder", f"{self.output_dir} ({result.run_bytes / 1e6:.1f} MB)"),
            ("config", str(result.config_path)),
        ]
        _print_table("nerfcodec decode", ["", "value"], rows)
        print(f"view it with: ns-viewer --load-config {result.config_path}")


@dataclass
class Upgrade:
    """Re-code a scene file with float tables (formats 1 and 2) with the tables every CPU chooses the
    same (format 3), losslessly: the same latent symbols, so the same decoded scene."""

    scene: tyro.conf.Positional[Path]
    """The old scene file."""
    output: tyro.conf.Positional[Path]
    """The upgraded scene file to write."""
    weights: Optional[Path] = None
    """Backbone weights file, when the file's backbone is neither the embedded one nor CompressAI's zoo."""
    overwrite: bool = False
    """Replace an existing OUTPUT."""

    def main(self) -> None:
        from nerfcodec_ns.atomic import write_atomic
        from nerfcodec_ns.scenefile.container import pack, read_file
        from nerfcodec_ns.scenefile.upgrade import upgrade_bitstream

        if self.output.exists() and not self.overwrite:
            raise UserError(f"output exists: {self.output} (pass --overwrite to replace it)")
        _check_output_file(self.output)
        result = upgrade_bitstream(read_file(self.scene), self.weights)
        data = pack(result.bitstream)
        write_atomic(self.output, data, overwrite=self.overwrite)
        old = self.scene.stat().st_size
        _print_table("nerfcodec upgrade", ["", "value"], [
            ("old file", f"{self.scene} ({old:,} bytes, float tables)"),
            ("new file", f"{self.output} ({len(data):,} bytes, exact tables, {len(data) - old:+,} bytes)"),
            ("latent symbols re-coded", f"{result.symbols:,} in {result.levels} levels (all decoded back and checked)"),
        ])


@dataclass
class Info:
    """Sizes of a scene file's parts: every byte of the file is in exactly one row."""

    scene: tyro.conf.Positional[Optional[Path]] = None
    """The scene file (SCENE.nfc)."""
    json: bool = False
    """Print one JSON object (total_bytes, sections, header) instead of tables."""
    limits: bool = False
    """Print the decoder's limits (what a scene file may contain, docs/bitstream.md) and exit."""

    def main(self) -> None:
        import json

        from nerfcodec_ns.scenefile.container import read_file, section_sizes
        from nerfcodec_ns.scenefile.header import header_json, limits

        if self.limits:
            if self.json:
                print(json.dumps(limits()))
            else:
                _print_table("decoder limits", ["limit", "value"], [(k, str(v)) for k, v in limits().items()])
            return
        if self.scene is None:
            raise UserError("give a scene file (or --limits)")
        bs = read_file(self.scene)
        data = self.scene.read_bytes()
        sizes = section_sizes(data)
        total = sum(sizes.values())
        if total != len(data):  # section_sizes partitions the file; anything else is a bug
            raise RuntimeError(f"section sizes add up to {total}, the file has {len(data)} bytes")
        if self.json:
            header = json.loads(header_json(bs.header))
            print(json.dumps({"path": str(self.scene), "total_bytes": total, "sections": sizes, "header": header}))
            return
        h = bs.header
        rows = [(name, f"{n:,}", f"{100 * n / total:.1f}%") for name, n in sizes.items()]
        rows.append(("total (= file size)", f"{total:,}", "100.0%"))
        _print_table(f"{self.scene}", ["part", "bytes", "share"], rows)
        planes = 4 * 3 * h.field.channels * sum(r * r for r in h.field.resolutions)
        meta = [
            ("model", h.model_id),
            ("backbone", f"{h.backbone.architecture} N={h.backbone.N} M={h.backbone.M} ({h.backbone.source}), "
                         f"sha256 {h.backbone.sha256[:16]}..."),
            ("planes", f"{len(h.field.resolutions)} levels {list(h.field.resolutions)} x {h.field.channels} channels"),
            ("float32 planes", f"{planes:,} bytes ({planes / total:.0f}x this file)"),
            ("cameras", f"{h.cameras.width}x{h.cameras.height} {h.cameras.camera_model}"),
            ("occupancy grid", f"{h.render.grid_levels} x {h.render.grid_resolution}^3, "
             + ("sent (section 'grid')" if h.render.grid_source == "sent" else
                f"derived by the decoder ({h.render.grid_points} points per cell and axis, "
                f"threshold {h.render.grid_threshold:g})")),
        ]
        _print_table("header", ["", "value"], meta)


@dataclass
class Bench(BenchConfig):
    """Rate-distortion of NeRFCodec against the alternatives (raw, quantization + zlib/lzma/zstd, PNG,
    JPEG, WebP, AVIF, non-adapted CompressAI) from one trained field: results.json, rd.png, BD-rates."""

    def main(self) -> None:
        from nerfcodec_ns.bench.bench import BenchError, run_bench

        try:
            run_bench(self)
        except BenchError as err:
            raise UserError(str(err)) from err


def _check_output_file(path: Path) -> None:
    """An output file's folder must exist and be writable (a real probe: this also holds for root)."""
    import tempfile

    if path.is_dir():
        raise UserError(f"{path} is a folder, not a file name")
    try:
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".write-probe-"):
            pass
    except OSError as err:
        raise UserError(f"cannot write {path}: {err.strerror or err}") from err


def _print_table(title: str, columns: list, rows: list) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    Console().print(table)


Commands = Union[
    Annotated[MakeScene, tyro.conf.subcommand(name="make-scene")],
    Annotated[Demo, tyro.conf.subcommand(name="demo")],
    Annotated[PretrainCodec, tyro.conf.subcommand(name="pretrain-codec")],
    Annotated[EvalCodec, tyro.conf.subcommand(name="eval-codec")],
    Annotated[ExportBitstream, tyro.conf.subcommand(name="export")],
    Annotated[Decode, tyro.conf.subcommand(name="decode")],
    Annotated[Info, tyro.conf.subcommand(name="info")],
    Annotated[Upgrade, tyro.conf.subcommand(name="upgrade")],
    Annotated[Bench, tyro.conf.subcommand(name="bench")],
]


def entrypoint(argv: list[str] | None = None) -> int:
    """Console-script entry point; returns the process exit code."""
    import warnings

    # compressai 1.2.8 uses torch.jit.script, which torch >= 2.9 warns about on every import: noise
    # that would turn the commands' one-line errors into three lines
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)
    cmd = tyro.cli(Commands, args=argv)
    try:
        cmd.main()
    except UserError as err:
        print(f"nerfcodec: error: {err}", file=sys.stderr)
        return 2
    except Exception as err:
        # each layer's own error type (the demo, the scene-file format, export, decode): one line
        from nerfcodec_ns.demo import DemoError
        from nerfcodec_ns.scenefile.decode import DecodeError
        from nerfcodec_ns.scenefile.export import ExportError
        from nerfcodec_ns.scenefile.header import BitstreamError

        one_line = (DemoError, BitstreamError, DecodeError, ExportError, FileNotFoundError, IsADirectoryError)
        if not isinstance(err, one_line):
            raise
        print(f"nerfcodec: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nerfcodec: interrupted", file=sys.stderr)
        return 130
    return 0


def main() -> None:
    sys.exit(entrypoint())


if __name__ == "__main__":
    main()
