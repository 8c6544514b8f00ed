"""Re-make the report of a `nerfcodec bench` run from its results.json: BD table, Markdown tables
(stdout) and the rate-distortion plot.

    python benchmarks/bench_report.py outputs/bench_lego200/results.json --plot docs/rd_lego200.png

``--nerfcodec-from OTHER.json`` replaces the NeRFCodec points by those of another bench run on the
same base field and val images (e.g. one run with ``--no-baselines`` after a codec change), so the
baselines need not be re-run; the merged results can be written with ``--out``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

import tyro

from nerfcodec_ns.bench.bench import bd_table, markdown_report, plot


@dataclass
class Args:
    results: tyro.conf.Positional[Path]
    """results.json written by `nerfcodec bench`."""
    plot: Optional[Path] = None
    """Where to write the rate-distortion plot (PNG)."""
    title: str = "lego: val PSNR vs scene file size"
    """Plot title."""
    nerfcodec_from: Tuple[Path, ...] = ()
    """Take the NeRFCodec points (families nerfcodec*) from these results.json files instead (e.g. one
    run per lambda)."""
    out: Optional[Path] = None
    """Write the (merged) results, with the recomputed BD table, to this JSON file."""


def main(args: Args) -> None:
    result = json.loads(args.results.read_text())
    if args.nerfcodec_from:
        result["points"] = [p for p in result["points"] if not p["family"].startswith("nerfcodec")]
        result["nerfcodec_from"] = []
    for path in args.nerfcodec_from:
        other = json.loads(path.read_text())
        for key in ("base_config", "num_eval_images", "split"):
            mine, theirs = other.get(key), result.get(key)
            if key == "base_config":  # the same run, named relative to the repository or absolute
                mine, theirs = str(Path(mine).resolve()), str(Path(theirs).resolve())
            if mine != theirs:
                raise SystemExit(f"{path}: {key} is {other.get(key)!r}, the baselines' run has {result.get(key)!r}")
        if abs(other["reference"]["psnr"] - result["reference"]["psnr"]) > 1e-6:
            raise SystemExit(f"{path}: the uncompressed field scores differently: not the same field or images")
        result["points"] += [p for p in other["points"] if p["family"].startswith("nerfcodec")]
        result["nerfcodec_from"].append({"file": str(path), "config": other.get("config"), "times_s": other.get("times_s")})
    result["bd"] = bd_table(result["points"])
    print(markdown_report(result))
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    if args.plot is not None:
        plot(result["points"], result["reference"]["psnr"], args.plot, args.title)


if __name__ == "__main__":
    main(tyro.cli(Args))
