"""The entropy-coding tables every CPU chooses the same (nerfcodec_ns/codec/exact.py).

The fixed-point hyper-synthesis is compared with the float ``h_s`` it replaces (its pure-torch
reference), and its exactness is shown the way it is argued: a different summation order gives
bit-identical results. The subprocess test across instruction sets is in
tests/scenefile/test_cross_isa.py.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from test_codec import make_codec

from nerfcodec_ns.codec.exact import (
    GAUSSIAN_TABLES_FILE,
    GAUSSIAN_TABLES_SHA256,
    BottleneckTables,
    ExactHyperSynthesis,
    ExactRangeError,
    bottleneck_tables,
    check_bottleneck_tables,
    computed_gaussian_tables,
    gaussian_tables,
    load_bottleneck_tables,
)
from nerfcodec_ns.codec.plane import MAX_TABLE_LENGTH

ARCHS = ["bmshj2018-hyperprior", "mbt2018-mean"]


def _z(codec, seed=0, spread=4.0):
    """A decoded-z-like input: integers plus the bottleneck's medians, [2, N, 4, 6]."""
    codec.eval()
    codec.update(force=True)
    gen = torch.Generator().manual_seed(seed)
    medians = codec.entropy_bottleneck.quantiles.detach()[:, 0, 1]
    z = torch.round(spread * torch.randn(2, codec.N, 4, 6, generator=gen)) + medians[None, :, None, None]
    assert float(z.abs().max()) > 1
    return z


@pytest.mark.parametrize("arch", ARCHS)
def test_exact_hyper_synthesis_matches_the_float_network(arch):
    codec = make_codec(arch, C=4, resolutions=(64,))
    z_hat = _z(codec)
    with torch.no_grad():
        ref = codec.h_s(z_hat)
    out = ExactHyperSynthesis(codec.h_s)(z_hat)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    err = (out - ref).abs()
    assert float(err.max()) < 2e-3 * float(ref.abs().max()) + 1e-3, float(err.max())
    assert float(err.mean()) < 1e-4 * float(ref.abs().mean()) + 2e-4
    # the scale indexes agree almost everywhere (they may differ only where a scale is within the
    # fixed-point error of a table boundary)
    gc = codec.gaussian_conditional
    scales = (out, ref) if arch == "bmshj2018-hyperprior" else (out.chunk(2, 1)[0], ref.chunk(2, 1)[0])
    same = (gc.build_indexes(scales[0]) == gc.build_indexes(scales[1])).float().mean()
    assert float(same) > 0.99


@pytest.mark.parametrize("arch", ARCHS)
def test_exact_hyper_synthesis_is_independent_of_summation_order(arch):
    """Permuting the input channels (with the weights) reorders every sum: float results change in
    their last bits, the fixed-point ones must not change at all."""
    codec = make_codec(arch, C=4, resolutions=(64,))
    z_hat = _z(codec)
    exact = ExactHyperSynthesis(codec.h_s)
    out = exact(z_hat)
    perm = torch.randperm(z_hat.shape[1], generator=torch.Generator().manual_seed(3))
    permuted = ExactHyperSynthesis(codec.h_s)
    first = permuted.layers[0]
    w = first.weight[perm] if first.kind == "deconv" else first.weight[:, perm]
    permuted.layers[0] = first._replace(weight=w.contiguous())
    assert torch.equal(permuted(z_hat[:, perm].contiguous()), out)
    # one thread or two: the same bits
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert torch.equal(exact(z_hat), out)
    finally:
        torch.set_num_threads(previous)


def test_exact_hyper_synthesis_refuses_what_it_cannot_hold_exactly():
    codec = make_codec(C=4, resolutions=(64,))
    z_hat = _z(codec)
    with pytest.raises(ExactRangeError, match="too large"):
        ExactHyperSynthesis(codec.h_s)(torch.full_like(z_hat, 1e9))


def test_exact_hyper_synthesis_rejects_unknown_layers():
    with pytest.raises(TypeError, match="Sigmoid"):
        ExactHyperSynthesis(torch.nn.Sequential(torch.nn.Conv2d(2, 2, 3), torch.nn.Sigmoid()))


def test_shipped_gaussian_tables_are_intact_and_are_compressais():
    """The shipped constant is the file the code pins, and it is what CompressAI computes: the same
    table shapes and offsets, and CDF entries within one count (the float erfc on another CPU may
    differ in its last bits; that is why the constant is shipped)."""
    assert hashlib.sha256(GAUSSIAN_TABLES_FILE.read_bytes()).hexdigest() == GAUSSIAN_TABLES_SHA256
    shipped, computed = gaussian_tables(), computed_gaussian_tables()
    assert torch.equal(shipped.cdf_length, computed.cdf_length.int())
    assert torch.equal(shipped.offset, computed.offset.int())
    assert float((shipped.scale_table - computed.scale_table).abs().max()) < 1e-5
    assert int((shipped.quantized_cdf - computed.quantized_cdf).abs().max()) <= 1
    assert shipped.quantized_cdf.shape == computed.quantized_cdf.shape


def test_codec_with_exact_tables_uses_the_shipped_gaussian_tables():
    codec = make_codec(C=4, resolutions=(64,))
    codec.update(force=True)
    gc, shipped = codec.gaussian_conditional, gaussian_tables()
    assert torch.equal(gc._quantized_cdf, shipped.quantized_cdf) and torch.equal(gc.scale_table, shipped.scale_table)


def test_bottleneck_tables_round_trip_and_code_the_same():
    codec = make_codec(C=4, resolutions=(64,))
    z_hat = _z(codec)
    eb = codec.entropy_bottleneck
    tables = bottleneck_tables(eb)
    check_bottleneck_tables(tables, eb.channels, MAX_TABLE_LENGTH)
    strings = eb.compress(z_hat)
    other = make_codec(C=4, resolutions=(64,), seed=5).entropy_bottleneck  # different parameters, no update
    load_bottleneck_tables(other, tables)
    assert torch.equal(other.decompress(strings, z_hat.shape[-2:]), eb.decompress(strings, z_hat.shape[-2:]))
    assert other.compress(z_hat) == strings
    assert sum(a.nbytes for a in tables.arrays()) == codec.transmitted_sizes()["entropy_bottleneck"]


def test_bottleneck_table_checks():
    codec = make_codec(C=4, resolutions=(64,))
    _z(codec)
    good = bottleneck_tables(codec.entropy_bottleneck)
    C = codec.entropy_bottleneck.channels

    def bad(**change):
        arrays = {k: getattr(good, k).copy() for k in ("medians", "offset", "lengths", "freqs")}
        arrays.update(change)
        with pytest.raises(ValueError):
            check_bottleneck_tables(BottleneckTables(**arrays), C, MAX_TABLE_LENGTH)

    bad(medians=good.medians.astype(np.float32))
    bad(lengths=good.lengths[:-1])
    freqs = good.freqs.copy()
    freqs[0], freqs[1] = freqs[0] + freqs[1], 0
    bad(freqs=freqs)
    bad(freqs=good.freqs[:-1])
    with pytest.raises(ValueError, match="channels|expected"):
        check_bottleneck_tables(good, C + 1, MAX_TABLE_LENGTH)
