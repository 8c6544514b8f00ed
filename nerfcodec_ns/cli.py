"""``nerfcodec``: the plugin's own command line (scene generation, demo; later export/decode/info).

Errors a user can cause (bad paths, existing outputs) end with a one-line message and exit code 2,
never a traceback.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Union

import tyro


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


Commands = Union[
    Annotated[MakeScene, tyro.conf.subcommand(name="make-scene")],
    Annotated[Demo, tyro.conf.subcommand(name="demo")],
]


def entrypoint(argv: list[str] | None = None) -> int:
    """Console-script entry point; returns the process exit code."""
    cmd = tyro.cli(Commands, args=argv)
    try:
        cmd.main()
    except UserError as err:
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
