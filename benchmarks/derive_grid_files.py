"""Re-write scene files so that the decoder derives the occupancy grid instead of reading it (format 7).

Every section but ``grid`` is copied; the header says ``grid_source="derived"`` with the threshold
and points per cell given here. No retraining: the field was fitted under the sent grid, so this
measures what deriving costs a trained file (a run trained with ``grid_source="derived"`` is fitted
under the derived grid itself). Score the outputs with ``benchmarks/score_files.py``.

    python benchmarks/derive_grid_files.py docs/scenes/lego_200/*.nfc --out-dir outputs/derived --points 1
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Tuple

import tyro

from nerfcodec_ns.atomic import write_atomic
from nerfcodec_ns.scenefile.container import Bitstream, pack, read_file


@dataclass
class Args:
    files: tyro.conf.Positional[Tuple[Path, ...]]
    """Scene files with a sent grid."""
    out_dir: Path
    """Where the re-written files go (same names)."""
    points: int = 1
    """Points per cell and axis of the derived grid."""
    threshold: float = 0.01
    """Occupancy threshold (the model's default occ_thre)."""


def derive_bitstream(bs: Bitstream, points: int, threshold: float) -> Bitstream:
    """``bs`` without its grid section, its header naming a derived grid."""
    render = replace(bs.header.render, grid_source="derived", grid_points=points, grid_threshold=threshold)
    return Bitstream(replace(bs.header, render=render), tuple(s for s in bs.sections if s.name != "grid"))


def main(args: Args) -> None:
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for path in args.files:
        bs = read_file(path)
        out = write_atomic(args.out_dir / path.name, pack(derive_bitstream(bs, args.points, args.threshold)),
                           overwrite=True)
        print(f"{path}: {path.stat().st_size:,} B -> {out}: {out.stat().st_size:,} B")


if __name__ == "__main__":
    main(tyro.cli(Args))
