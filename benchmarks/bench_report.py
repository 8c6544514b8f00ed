"""Re-make the report of a `nerfcodec bench` run from its results.json: BD table, Markdown tables
(stdout) and the rate-distortion plot.

    python benchmarks/bench_report.py outputs/bench_lego200/results.json --plot docs/rd_lego200.png
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import tyro

from nerfcodec_ns.bench import bd_table, markdown_report, plot


@dataclass
class Args:
    results: tyro.conf.Positional[Path]
    """results.json written by `nerfcodec bench`."""
    plot: Optional[Path] = None
    """Where to write the rate-distortion plot (PNG)."""
    title: str = "lego: val PSNR vs scene file size"
    """Plot title."""


def main(args: Args) -> None:
    result = json.loads(args.results.read_text())
    result["bd"] = bd_table(result["points"])
    print(markdown_report(result))
    if args.plot is not None:
        plot(result["points"], result["reference"]["psnr"], args.plot, args.title)


if __name__ == "__main__":
    main(tyro.cli(Args))
