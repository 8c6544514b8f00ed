"""Upgrade a scene file with float tables (formats 1 and 2) to exact tables (format 3 and later), losslessly.

The file's latent symbols are decoded with the float tables it was made with, then coded again with
the tables every CPU chooses the same (``nerfcodec_ns/codec/exact.py``): the shipped Gaussian tables
and the fixed-point ``h_s`` for y, and, for z, the bottleneck tables this machine derives from the
file's float16 parameters, now transmitted. The z strings stay as they are; the y strings change
(other tables, the same symbols). Every re-coded string is decoded back and must give the same
symbols. For bmshj2018-hyperprior the decoded scene is then bit-identical to the old file's decode
here; for mbt2018-mean the latents move by the difference between the float and fixed-point means
(about 1e-4).

Decode the old file on the machine that wrote it if you can: there its float tables are the
encoder's for sure.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import List, NamedTuple, Optional

import torch

from nerfcodec_ns.scenefile.container import Bitstream, Section
from nerfcodec_ns.scenefile.decode import DecodeError, _codec_for, _compressed_level, _first_line
from nerfcodec_ns.scenefile.header import BitstreamError
from nerfcodec_ns.scenefile.export import bottleneck_section
from nerfcodec_ns.scenefile.payload import encode_strings


class UpgradeResult(NamedTuple):
    bitstream: Bitstream
    levels: int
    symbols: int  # latent y symbols re-coded (all of them)


@torch.no_grad()
def upgrade_bitstream(bs: Bitstream, weights: Optional[Path] = None) -> UpgradeResult:
    """``bs`` (float tables) with exact tables; raises :class:`DecodeError` when it has them already,
    when its backbone has no exact path, or when a string does not decode back to its symbols."""
    from nerfcodec_ns.codec.entropy import bounded_bottleneck_decompress, bounded_decompress, reproducible_convolutions
    from nerfcodec_ns.codec.exact import load_gaussian_tables

    h = bs.header
    if h.codec.tables == "exact":
        raise DecodeError("the file has exact tables already (format 3 or later): nothing to upgrade")
    if h.backbone.architecture == "cheng2020-anchor":
        raise DecodeError("cheng2020-anchor files cannot have exact tables (its context model has no exact path)")
    try:
        codec = _codec_for(bs, weights)  # float tables, as the file was written
        gc, g = codec.gaussian_conditional, codec.gain

        def scales(params):
            return params if codec.architecture == "bmshj2018-hyperprior" else params.chunk(2, 1)[0]

        levels, decoded = [], []
        with reproducible_convolutions():
            for level in range(len(h.levels)):
                comp = _compressed_level(bs, level)
                z_hat = bounded_bottleneck_decompress(codec.entropy_bottleneck, comp.z_strings, comp.z_shape)
                symbols = bounded_decompress(gc, comp.y_strings, gc.build_indexes(scales(codec.h_s(z_hat)) * g))
                levels.append(comp)
                decoded.append((z_hat, symbols))
            codec.exact_tables = True
            load_gaussian_tables(gc)
            y_sections: List[Section] = []
            count = 0
            for level, (z_hat, symbols) in enumerate(decoded):
                indexes = gc.build_indexes(scales(codec.coding_params(z_hat)) * g)
                strings = gc.compress(symbols, indexes)
                if not torch.equal(bounded_decompress(gc, strings, indexes), symbols):
                    raise DecodeError(f"level {level}: the re-coded latents do not decode back to the same symbols")
                y_sections.append(Section(f"y.{level}", encode_strings(strings)))
                count += symbols.numel()
        tables = codec.bottleneck_tables()
    except (DecodeError, BitstreamError):
        raise
    except Exception as err:
        raise DecodeError(f"cannot upgrade the scene file ({type(err).__name__}: {_first_line(err)})") from None
    replaced = {s.name: s for s in y_sections}
    replaced["entropy_bottleneck"] = bottleneck_section(tables, h.codec.packing)
    sections = tuple(replaced.get(s.name, s) for s in bs.sections)
    header = replace(h, codec=replace(h.codec, tables="exact"))
    return UpgradeResult(Bitstream(header, sections), len(levels), count)
