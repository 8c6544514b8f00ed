"""Fuzz campaign against the scene-file decoder ("opening a scene file from anyone is safe").

Derives ``--count`` container-valid damaged files from ``--source`` (see :mod:`nerfcodec_ns.scenefile.fuzz`),
decodes each in a forked child under an address-space limit and a timeout, and writes the JSON
report (totals per outcome and family, every case that was not cleanly rejected or decoded).

Usage:
    python benchmarks/fuzz_campaign.py --source scene.nfc --weights backbone.pt --count 2000 \\
        --out docs/bench/fuzz_campaign.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from nerfcodec_ns.scenefile.fuzz import FAMILIES, GOOD_OUTCOMES, OUTCOMES, campaign


def outcome_table(report: dict) -> Table:
    """Outcomes per family (rows) as a rich table; failing outcomes in red when non-zero."""
    table = Table(title=f"fuzz campaign: {report['count']} cases of {Path(report['source']).name}")
    table.add_column("family")
    for outcome in OUTCOMES:
        table.add_column(outcome, justify="right")
    rows = list(report["families"].items()) + [("total", report["totals"])]
    for family, counts in rows:
        cells = []
        for outcome in OUTCOMES:
            n = counts.get(outcome, 0)
            cells.append(f"[red]{n}[/red]" if n and outcome not in GOOD_OUTCOMES else str(n))
        table.add_row(f"[bold]{family}[/bold]" if family == "total" else family, *cells)
    return table


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, required=True, help="a valid scene file (.nfc)")
    parser.add_argument("--count", type=int, default=2000, help="number of mutated files")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per decode")
    parser.add_argument(
        "--memory-limit-gib",
        type=float,
        default=1.0,
        help="address space each decode may add to the fork server's, GiB",
    )
    parser.add_argument("--weights", type=Path, default=None, help="backbone file the scene file needs")
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    parser.add_argument("--out", type=Path, default=Path("docs/bench/fuzz_campaign.json"), help="JSON report")
    parser.add_argument(
        "--keep-failures",
        action="store_true",
        help="copy failing files to <out folder>/failures/ for reproduction",
    )
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    report = campaign(
        args.source,
        args.out.parent,
        count=args.count,
        seed=args.seed,
        timeout_s=args.timeout,
        memory_limit_bytes=int(args.memory_limit_gib * (1 << 30)),
        progress=not args.no_progress,
        weights=args.weights,
        report_name=args.out.name,
        keep_failures=args.keep_failures,
        families=args.families,
    )
    console = Console()
    if not console.is_terminal:  # a log file: wide enough for the table
        console = Console(width=140)
    console.print(outcome_table(report))
    console.print(
        f"baseline (unmodified file): {report['baseline']['outcome']}; {len(report['failures'])} "
        f"failing cases; {report['wall_s']} s; report: {args.out}"
    )
    for f in report["failures"][:50]:
        console.print(
            f"  #{f['id']} [{f['family']}] {f['outcome']}: {f['description']} -> "
            f"{(f['error_type'] or '')} {f['message'][:160]}",
            markup=False,
            highlight=False,
        )
    return 0 if report["baseline"]["outcome"] == "decoded" else 1


if __name__ == "__main__":
    sys.exit(main())
