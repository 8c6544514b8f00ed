"""``nerfcodec decode`` on every damaged scene file of a folder: exit code, message, time, output left.

    python benchmarks/bad_scenes.py --folder ../shared/data/bad_scenes --out docs/bench/bad_scenes.json

Each file is decoded by the real command in its own process (1 thread, a 60 s timeout) into a fresh
folder; a correct decoder exits 2 with one line on stderr and leaves no output folder.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folder", type=Path, default=Path("../shared/data/bad_scenes"))
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    rows = []
    for path in sorted(args.folder.glob("*.nfc")):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "decoded"
            t = time.perf_counter()
            try:
                res = subprocess.run([str(BIN / "nerfcodec"), "decode", str(path), "--output-dir", str(out)],
                                     capture_output=True, text=True, timeout=args.timeout,
                                     env=dict(os.environ, OMP_NUM_THREADS="1"))
                rc, err = res.returncode, res.stderr.strip().splitlines()
            except subprocess.TimeoutExpired:
                rc, err = None, ["(timeout)"]
            rows.append({"file": path.name, "exit_code": rc, "stderr_lines": len(err),
                         "message": err[-1] if err else "", "seconds": round(time.perf_counter() - t, 2),
                         "output_left": out.exists()})
        r = rows[-1]
        print(f"{r['file']:28s} exit {r['exit_code']}  {r['seconds']:5.1f} s  {r['message'][:150]}")
    ok = all(r["exit_code"] == 2 and r["stderr_lines"] == 1 and not r["output_left"] for r in rows)
    print(f"{len(rows)} files, all rejected with one line, exit 2 and nothing left behind: {ok}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"all_rejected_cleanly": ok, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
