"""What the decoder's safety checks cost: time and peak memory of a valid decode, before and after.

For each scene file, a fresh process per decoder version imports the package, decodes the file once
(warm-up: backbone loading, imports), then ``--repeats`` more times, and reports the fastest
``decode_file`` time, the peak RSS of the process and a SHA-256 of the decoded planes, MLP, grid and
poses (both versions must decode the same scene bit for bit). ``--before-src`` is a checkout of the
package before the checks (``git worktree add /tmp/before 3dacda1``); the process then imports it
instead of the installed (editable) package.

    python benchmarks/decode_safety.py --files a.nfc b.nfc --before-src /tmp/before \\
        --out docs/bench/decode_safety.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import hashlib, json, resource, sys, time
src, path, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3])
if src:
    # use the checkout in `src`, not the editable install of the working tree
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in type(f).__module__.lower()
                        and "editable" not in repr(f).lower()]
    sys.path.insert(0, src)
import torch
torch.set_num_threads(1)
import nerfcodec_ns
try:  # the package layout since issue 14, then the flat one before it
    from nerfcodec_ns.scenefile.decode import decode_file
except ImportError:
    from nerfcodec_ns.decode import decode_file
assert (not src) or nerfcodec_ns.__file__.startswith(src), nerfcodec_ns.__file__
scene = decode_file(path)  # warm-up
times = []
for _ in range(repeats):
    t = time.perf_counter()
    scene = decode_file(path)
    times.append(time.perf_counter() - t)
ab = None
if not src:  # in-process A/B: the same decoder with CompressAI's own (unbounded) entropy decoding
    import nerfcodec_ns.codec.plane as plane
    bounded = (plane.bounded_decompress, plane.bounded_bottleneck_decompress)
    plain = (lambda m, s, i, dtype=torch.float, means=None: m.decompress(s, i, dtype, means),
             lambda m, s, size: m.decompress(s, size))
    ab = {"bounded": [], "plain": []}
    for _ in range(repeats):
        for name, fns in (("plain", plain), ("bounded", bounded)):
            plane.bounded_decompress, plane.bounded_bottleneck_decompress = fns
            t = time.perf_counter()
            decode_file(path)
            ab[name].append(time.perf_counter() - t)
    plane.bounded_decompress, plane.bounded_bottleneck_decompress = bounded
    ab = {k: min(v) for k, v in ab.items()}
    ab["entropy_checks_share"] = (ab["bounded"] - ab["plain"]) / ab["bounded"]
h = hashlib.sha256()
for t in [*scene.planes, *scene.mlp, scene.grid]:
    h.update(t.contiguous().numpy().tobytes())
h.update(scene.poses.tobytes())
print(json.dumps({"decode_s_min": min(times), "decode_s_all": times, "in_process_ab_s": ab,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "digest": h.hexdigest(), "package": nerfcodec_ns.__file__}))
"""


def measure(src: str, path: Path, repeats: int) -> dict:
    res = subprocess.run([sys.executable, "-c", CHILD, src, str(path), str(repeats)], capture_output=True,
                         text=True, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    if res.returncode != 0:
        raise SystemExit(f"decode of {path} with {src or 'the working tree'} failed:\n{res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", nargs="+", type=Path, required=True)
    ap.add_argument("--before-src", default="", help="checkout of the package before the checks")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    rows = []
    for path in args.files:
        row = {"file": str(path), "bytes": path.stat().st_size, "after": measure("", path, args.repeats)}
        if args.before_src:
            row["before"] = measure(str(Path(args.before_src).resolve()), path, args.repeats)
            b, a = row["before"], row["after"]
            row["time_ratio"] = a["decode_s_min"] / b["decode_s_min"]
            row["peak_rss_delta_mib"] = a["peak_rss_mib"] - b["peak_rss_mib"]
            row["identical_scene"] = a["digest"] == b["digest"]
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k not in ("before", "after")}))
        print("  in-process A/B (bounded vs CompressAI's entropy decoding):", row["after"]["in_process_ab_s"])
        for k in ("before", "after"):
            if k in row:
                print(f"  {k}: {row[k]['decode_s_min'] * 1000:.1f} ms, peak RSS {row[k]['peak_rss_mib']:.0f} MiB")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"repeats": args.repeats, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
