"""What the exact tables (scene-file format 3) cost, and what the float synthesis still varies, across ISAs.

For each scene file given; a file with float tables (format 1/2, or ``tables="float"``) is also
re-coded with exact tables (``nerfcodec upgrade``: the same symbols), and both are measured:

* bytes of the file and of its ``entropy_bottleneck`` and ``y.*`` sections;
* decode time (in-process, one thread, the median of ``--repeats``);
* the file decoded in subprocesses under ``ATEN_CPU_CAPABILITY``/``ONEDNN_MAX_CPU_ISA`` = default
  (no vector extensions), AVX2 and the machine's best: SHA-256 of the latents, the largest difference
  of the decoded planes from the best-ISA decode, and the PSNR of the decoded scene rendered on
  ``--eval-images`` evenly spaced val images (when ``--data`` is given).

    python benchmarks/cross_isa.py outputs/bench/points/nerfcodec-l3e-05.nfc --data ../shared/data/nerf_synthetic/lego_200 \
        --out docs/bench/cross_isa_lego200.json
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import tyro

from nerfcodec_ns.codec.exact import ISA_ENVIRONMENTS as ISAS, isa_environment

CHILD = r"""
import hashlib, json, sys, warnings
warnings.simplefilter("ignore")
import torch
from nerfcodec_ns.scenefile.container import read_file
from nerfcodec_ns.scenefile.decode import build_model, decode_bitstream, decode_latents

path, weights, data, n_eval, planes_out = sys.argv[1], sys.argv[2] or None, sys.argv[3], int(sys.argv[4]), sys.argv[5]
bs = read_file(path)
digest = hashlib.sha256()
for z_hat, y_hat in decode_latents(bs, weights):
    digest.update(z_hat.numpy().tobytes()); digest.update(y_hat.numpy().tobytes())
scene = decode_bitstream(bs, weights)
torch.save([p.clone() for p in scene.planes], planes_out)
out = {"capability": torch.backends.cpu.get_cpu_capability(), "latents_sha256": digest.hexdigest()}
if data and n_eval:
    from nerfstudio.data.dataparsers.blender_dataparser import BlenderDataParserConfig
    from nerfstudio.data.datasets.base_dataset import InputDataset
    from nerfcodec_ns.bench.bench import eval_indices, evaluate
    dataset = InputDataset(BlenderDataParserConfig(data=__import__("pathlib").Path(data)).setup().get_dataparser_outputs("val"))
    model = build_model(scene)
    model._lpips = lambda *a: None
    out.update(evaluate(model, dataset, eval_indices(len(dataset), n_eval)))
print(json.dumps(out))
"""


@dataclass
class Args:
    files: tyro.conf.Positional[List[Path]]
    """Scene files (those with float tables are also upgraded to exact tables, for the comparison)."""
    data: Optional[Path] = None
    """Blender-format data set of the files' scene, for the rendered PSNR (val split)."""
    eval_images: int = 20
    """Evenly spaced val images to render per decode (0: none)."""
    weights: Optional[Path] = None
    """Backbone weights file, when the files' backbone is not embedded."""
    repeats: int = 5
    """Timed decodes per file (the median is reported)."""
    out: Path = Path("docs/bench/cross_isa.json")
    isas: List[str] = field(default_factory=lambda: list(ISAS))


def _section(bs, name: str) -> int:
    return len(bs.section(name))


def _decode_seconds(path: Path, weights: Optional[Path], repeats: int) -> float:
    import torch

    from nerfcodec_ns.scenefile.decode import decode_file

    torch.set_num_threads(1)
    decode_file(path, weights)  # warm caches (backbone file, tables)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        decode_file(path, weights)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _child(path: Path, args: Args, isa: str, planes_out: Path) -> Dict:
    env = isa_environment(isa, os.environ)
    res = subprocess.run([sys.executable, "-c", CHILD, str(path), str(args.weights or ""), str(args.data or ""),
                          str(args.eval_images if args.data else 0), str(planes_out)],
                         capture_output=True, text=True, env=env, timeout=3600)
    if res.returncode != 0:
        raise SystemExit(f"decode under {isa} failed: {res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(args: Args) -> None:
    import torch

    from nerfcodec_ns.atomic import write_atomic
    from nerfcodec_ns.scenefile.container import pack, read_file
    from nerfcodec_ns.scenefile.upgrade import upgrade_bitstream

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for src in args.files:
            bs = read_file(src)
            entry = {"file": str(src), "variants": {}}
            if bs.header.codec.tables == "float":  # also its lossless upgrade, for the cost
                exact_path = Path(tmp) / f"{src.stem}.exact.nfc"
                write_atomic(exact_path, pack(upgrade_bitstream(bs, args.weights).bitstream))
                variants = (("float", Path(src)), ("exact", exact_path))
            else:
                variants = (("exact", Path(src)),)
            for name, path in variants:
                b = read_file(path)
                v = {
                    "bytes": path.stat().st_size,
                    "entropy_bottleneck_bytes": _section(b, "entropy_bottleneck"),
                    "y_bytes": sum(_section(b, f"y.{l}") for l in range(len(b.header.levels))),
                    "decode_s": round(_decode_seconds(path, args.weights, args.repeats), 4),
                    "isas": {},
                }
                ref = None
                for isa in ("best", *[i for i in args.isas if i != "best"]):
                    planes_out = Path(tmp) / f"{name}.{isa}.pt"
                    r = _child(path, args, isa, planes_out)
                    planes = torch.load(planes_out)
                    ref = planes if ref is None else ref
                    r["planes_max_abs_diff_vs_best"] = max(float((p - q).abs().max()) for p, q in zip(planes, ref))
                    v["isas"][isa] = r
                    print(name, isa, r, flush=True)
                v["latents_identical_across_isas"] = len({r["latents_sha256"] for r in v["isas"].values()}) == 1
                entry["variants"][name] = v
            if "float" in entry["variants"]:
                f, e = entry["variants"]["float"], entry["variants"]["exact"]
                entry["exact_minus_float_bytes"] = e["bytes"] - f["bytes"]
                entry["exact_minus_float_decode_ms"] = round(1000 * (e["decode_s"] - f["decode_s"]), 1)
            results.append(entry)
    out = {
        "command": "python benchmarks/cross_isa.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
        "note": "decode_s: in-process, 1 thread, median; each ISA decode in its own subprocess (OMP_NUM_THREADS=1)",
        "results": results,
    }
    write_atomic(args.out, json.dumps(out, indent=1).encode(), overwrite=True)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main(tyro.cli(Args))
