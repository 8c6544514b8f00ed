"""Re-code the ``mlp`` section of scene files as int8 rows (format 6, ``FieldArch.mlp_bits = 8``)
without retraining: every other section is copied byte for byte, the header changes only in
``field.mlp_bits``. What a file trained before session 11 would be with today's default MLP storage;
score the outputs with ``benchmarks/score_files.py`` (quality on the decoded file).

    python benchmarks/recode_mlp.py docs/scenes/lego_200/mix2-j2400-l1e-05.nfc --out-dir outputs/recoded
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Tuple

import torch
import tyro

from nerfcodec_ns.field.field import TriplaneField
from nerfcodec_ns.atomic import write_atomic
from nerfcodec_ns.scenefile.container import Bitstream, Section, pack, read_file
from nerfcodec_ns.scenefile.decode import decode_mlp, field_spec
from nerfcodec_ns.scenefile.export import mlp_payload


@dataclass
class Args:
    files: tyro.conf.Positional[Tuple[Path, ...]]
    """Scene files with a float16 MLP (``mlp_bits`` 16)."""
    out_dir: Path
    """Where the re-coded files go (same names; existing files are not overwritten)."""


def recode(bs: Bitstream) -> Bitstream:
    h = bs.header
    if h.field.mlp_bits != 16:
        raise SystemExit("the file's MLP is not float16: nothing to re-code")
    ref = TriplaneField(torch.zeros(2, 3), field_spec(h.field)).mlp_parameters()
    mlp = decode_mlp(bs.section("mlp"), 16, ref, packed=False)
    payload = mlp_payload(mlp, 8, h.codec.packing)
    sections = tuple(Section("mlp", payload) if s.name == "mlp" else s for s in bs.sections)
    return Bitstream(replace(h, field=replace(h.field, mlp_bits=8)), sections)


def main(args: Args) -> None:
    taken = [str(args.out_dir / p.name) for p in args.files if (args.out_dir / p.name).exists()]
    if taken:
        raise SystemExit(f"error: refusing to overwrite {', '.join(taken)} (choose another --out-dir)")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for path in args.files:
        bs = read_file(path)
        out = args.out_dir / path.name
        write_atomic(out, pack(recode(bs)))
        print(f"{path} ({path.stat().st_size:,} B) -> {out} ({out.stat().st_size:,} B)")


if __name__ == "__main__":
    main(tyro.cli(Args))
