"""Scene file round trip of a trained run: export, size accounting, decode, and decoded vs trained renders.

Measures, for a run trained with ``ns-train nerfcodec`` (it should have reached the joint stage):

* export time and the file's size == sum of its sections == ``nerfcodec info``'s total;
* the size the training metrics report for the same state (estimated y/z bits from the eval-mode
  likelihoods + the exact sizes of the other parts) against the file, part by part, and the last
  ``size_total_bytes`` logged to TensorBoard during training, when the run has events;
* decode time in-process (median of ``--repeats``, after one warm-up) and of the
  ``nerfcodec decode`` command (wall clock, including Python start-up and rendering the views);
* bit-identical planes with 1 and 2 threads, and over repeated decodes;
* every val image rendered by the decoded field vs the trained (compressed) field: max abs
  difference and PSNR of both; the size of the decoded run folder.

Usage:
    python benchmarks/bitstream_roundtrip.py --load-config outputs/.../config.yml --out docs/bench/bitstream_lego200.json
"""

from __future__ import annotations

import json
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import tyro


@dataclass
class Args:
    load_config: Path
    """config.yml of the trained run."""
    out: Path = Path("docs/bench/bitstream_roundtrip.json")
    """JSON results."""
    repeats: int = 5
    """In-process decodes to time (after one warm-up)."""
    eval_images: int = 0
    """Val images to compare (0: all)."""
    work_dir: Optional[Path] = None
    """Where the scene file and decoded runs go (default: a temporary folder, deleted)."""


def logged_size(config_path: Path) -> Optional[dict]:
    """The last ``size_total_bytes`` (and its step) in the run's TensorBoard events, if any."""
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:
        return None
    files = sorted(config_path.parent.glob("events.out.tfevents.*"))
    if not files:
        return None
    acc = EventAccumulator(str(config_path.parent), size_guidance={"scalars": 0})
    acc.Reload()
    tags = [t for t in acc.Tags()["scalars"] if t.endswith("size_total_bytes")]
    if not tags:
        return None
    last = acc.Scalars(tags[0])[-1]
    parts = {}
    for tag in acc.Tags()["scalars"]:
        if "size_" in tag or "codec_y_bytes" in tag or "codec_z_bytes" in tag:
            parts[tag.rsplit("/", 1)[-1]] = acc.Scalars(tag)[-1].value
    return {"step": last.step, "size_total_bytes": last.value, "parts": parts}


def main(args: Args) -> None:
    from nerfstudio.utils.eval_utils import eval_setup

    from nerfcodec_ns.metrics import psnr
    from nerfcodec_ns.scenefile.container import section_sizes, unpack
    from nerfcodec_ns.scenefile.decode import build_model, decode_file
    from nerfcodec_ns.scenefile.export import export_run
    from nerfcodec_ns.scenefile.payload import decode_strings

    work = Path(tempfile.mkdtemp()) if args.work_dir is None else args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    nfc = work / "scene.nfc"
    result = {"machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, cpu",
              "command": "python " + " ".join(sys.argv), "config": str(args.load_config)}

    exported = export_run(args.load_config, nfc, overwrite=True)
    data = nfc.read_bytes()
    sections = section_sizes(data)
    info = subprocess.run([str(Path(sys.executable).parent / "nerfcodec"), "info", str(nfc), "--json"],
                          capture_output=True, text=True, check=True)
    info_total = json.loads(info.stdout)["total_bytes"]
    bs = unpack(data)
    actual_latents = sum(v for k, v in sections.items() if k.startswith(("y.", "z.")))
    strings = sum(len(s) for k in sections if k.startswith(("y.", "z.")) for s in decode_strings(bs.section(k)))
    est = exported.estimated
    est_total = sum(est.values())
    result["size"] = {
        "file_bytes": nfc.stat().st_size,
        "sum_of_sections": sum(sections.values()),
        "info_total_bytes": info_total,
        "sections": sections,
        "estimated_parts": {k: round(v, 1) for k, v in est.items()},
        "estimated_total_bytes": round(est_total, 1),
        "estimated_latent_bytes": round(est["y"] + est["z"], 1),
        "actual_latent_string_bytes": strings,
        "actual_latent_section_bytes": actual_latents,
        "latent_estimate_error": round((strings - (est["y"] + est["z"])) / (est["y"] + est["z"]), 5),
        "file_vs_estimate": round(nfc.stat().st_size / est_total - 1, 5),
        "logged_at_end_of_training": logged_size(args.load_config),
    }
    result["export_s"] = round(exported.seconds, 3)

    # decode timing and determinism
    decode_file(nfc)  # warm-up (imports, first-call allocations)
    times, planes = [], None
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        scene = decode_file(nfc)
        times.append(time.perf_counter() - t0)
        if planes is None:
            planes = scene.planes
        assert all(torch.equal(a, b) for a, b in zip(planes, scene.planes)), "repeated decodes differ"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    one = decode_file(nfc).planes
    one_thread_s = time.perf_counter() - t0
    torch.set_num_threads(threads)
    result["decode"] = {
        "in_process_median_s": round(statistics.median(times), 3),
        "in_process_all_s": [round(t, 3) for t in times],
        "one_thread_s": round(one_thread_s, 3),
        "bit_identical_1_vs_%d_threads" % threads: all(torch.equal(a, b) for a, b in zip(one, planes)),
        "bit_identical_over_repeats": True,
    }
    dec_dir = work / "decoded"
    shutil.rmtree(dec_dir, ignore_errors=True)
    t0 = time.perf_counter()
    subprocess.run([str(Path(sys.executable).parent / "nerfcodec"), "decode", str(nfc), "--output-dir", str(dec_dir)],
                   check=True, capture_output=True, text=True)
    result["decode"]["cli_wall_s"] = round(time.perf_counter() - t0, 2)
    run_bytes = sum(f.stat().st_size for f in dec_dir.rglob("*") if f.is_file())
    result["decoded_run_folder_bytes"] = run_bytes

    # decoded vs trained renders on the val split
    _, pipeline, _, _ = eval_setup(args.load_config, test_mode="val")
    trained = pipeline.model.eval()
    decoded = build_model(scene).to(trained.device)
    ds = pipeline.datamanager.eval_dataset
    n = len(ds) if args.eval_images <= 0 else min(args.eval_images, len(ds))
    max_diff, p_trained, p_decoded = 0.0, [], []
    with torch.no_grad():
        for i in range(n):
            cam = ds.cameras[i : i + 1].to(trained.device)
            gt = ds.get_image_float32(i)[..., :3].to(trained.device)
            a = trained.get_outputs_for_camera(cam)["rgb"]
            b = decoded.get_outputs_for_camera(cam)["rgb"]
            max_diff = max(max_diff, float((a - b).abs().max()))
            p_trained.append(float(psnr(a.clamp(0, 1), gt)))
            p_decoded.append(float(psnr(b.clamp(0, 1), gt)))
    planes_bytes = sum(p.numel() * 4 for p in trained.field.plane_list())
    result["render"] = {
        "split": "val", "images": n, "max_abs_diff": max_diff,
        "psnr_trained_compressed": round(statistics.mean(p_trained), 4),
        "psnr_decoded_from_file": round(statistics.mean(p_decoded), 4),
        "codec_stage": int(trained.codec_stage),
    }
    result["planes_float32_bytes"] = planes_bytes
    result["compression_ratio_vs_planes"] = round(planes_bytes / nfc.stat().st_size, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    if args.work_dir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main(tyro.cli(Args))
