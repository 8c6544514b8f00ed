"""Probe: what fewer bits for the compensation vectors would save and cost, on a decoded scene file.

The scene file stores each level's compensation vectors (``vectors.<level>``, ``[3 axes, C, R]``) as
``vector_bits``-bit integers (the header records the width) with a float32 scale per axis and channel,
LZMA-packed. This decodes a file, renders it
on evenly spaced val images, then re-quantizes the decoded vectors to fewer bits (per axis and
channel, as ``PlaneCodec`` does) WITHOUT retraining, swaps the rank-1 correction they add to every
decoded plane, renders again, and reports the PSNR change and the section bytes as the exporter would
pack them (``pack_smallest`` of the same arrays). A trained run at that ``vector_bits`` adapts to the
coarser vectors, so the PSNR change here is an upper bound of the loss.

    python benchmarks/vector_bits_probe.py SCENE.nfc --data ../shared/data/nerf_synthetic/lego_200 --bits 6 5 4
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

import torch
import tyro


@dataclass
class Args:
    scene: tyro.conf.Positional[Path]
    """A NeRFCodec scene file (compensation on)."""
    data: Path
    """Blender-format data set of the scene (val split)."""
    bits: List[int] = field(default_factory=lambda: [6, 5, 4])
    """Vector bits to try (2..8)."""
    eval_images: int = 20
    """Evenly spaced val images to render."""
    out: Optional[Path] = None
    """Write the rows as JSON here."""


def main(args: Args) -> None:
    from nerfstudio.data.dataparsers.blender_dataparser import BlenderDataParserConfig
    from nerfstudio.data.datasets.base_dataset import InputDataset

    from nerfcodec_ns.bench.bench import eval_indices, evaluate
    from nerfcodec_ns.scenefile.container import read_file
    from nerfcodec_ns.scenefile.decode import _codec_for, build_model, decode_bitstream
    from nerfcodec_ns.scenefile.export import _arrays
    from nerfcodec_ns.scenefile.payload import pack_smallest

    torch.set_num_threads(1)
    dataset = InputDataset(BlenderDataParserConfig(data=args.data).setup().get_dataparser_outputs("val"))
    indices = eval_indices(len(dataset), args.eval_images)
    bs = read_file(args.scene)
    if not bs.header.codec.compensation:
        raise SystemExit(f"{args.scene}: no compensation vectors in this file")
    scene = decode_bitstream(bs)
    codec = _codec_for(bs, None)
    sent = [codec.compensation(level).detach() for level in range(len(scene.planes))]  # what the decoder added

    def section_bytes(bits: int) -> int:
        """The vector sections as export.py writes them (``quantize_vectors``, then LZMA) at ``bits``."""
        codec.config.vector_bits = bits
        return sum(len(pack_smallest(_arrays(*codec.quantize_vectors(level)))) for level in range(len(codec.vectors)))

    def score(bits: int) -> float:
        codec.config.vector_bits = bits
        planes = [p - s + codec.compensation(level).detach() for level, (p, s) in enumerate(zip(scene.planes, sent))]
        model = build_model(scene._replace(planes=planes))
        model._lpips = lambda *a: None
        return evaluate(model, dataset, indices)["psnr"]

    stored = bs.header.codec.vector_bits
    base = score(stored)
    base_bytes = sum(len(bs.section(f"vectors.{level}")) for level in range(len(codec.vectors)))
    rows = [{"vector_bits": stored, "psnr": base, "section_bytes": base_bytes, "note": "as stored"}]
    for bits in args.bits:
        psnr, size = score(bits), section_bytes(bits)
        rows.append({"vector_bits": bits, "psnr": psnr, "psnr_change": round(psnr - base, 4),
                     "section_bytes": size, "bytes_saved": base_bytes - size})
        print(rows[-1], flush=True)
    out = {"command": "python benchmarks/vector_bits_probe.py " + " ".join(sys.argv[1:]), "scene": str(args.scene),
           "file_bytes": args.scene.stat().st_size, "eval_images": len(indices), "rows": rows}
    print(json.dumps(out, indent=1))
    if args.out:
        from nerfcodec_ns.atomic import write_atomic

        write_atomic(args.out, json.dumps(out, indent=1).encode(), overwrite=True)


if __name__ == "__main__":
    main(tyro.cli(Args))
