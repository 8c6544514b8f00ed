"""The ``mlp`` section (format 6, ``FieldArch.mlp_bits``): int8 rows round-trip bit for bit into
exactly what the trained model's evaluation renders with, and bad payloads are refused."""

from __future__ import annotations

import pytest
import torch

from nerfcodec_ns.field.field import (
    TriplaneField,
    TriplaneFieldSpec,
    dequantize_rows,
    mlp_payload_estimate,
    quantize_rows,
    transmitted_mlp_values,
)
from nerfcodec_ns.scenefile.decode import decode_mlp
from nerfcodec_ns.scenefile.export import mlp_payload
from nerfcodec_ns.scenefile.header import MLP_BITS, BitstreamError, FieldArch
from nerfcodec_ns.scenefile.payload import decode_strings, encode_strings, unpack_smallest


def _field(seed: int = 0) -> TriplaneField:
    torch.manual_seed(seed)
    field = TriplaneField(torch.tensor([[-1.0, -1, -1], [1, 1, 1]]), TriplaneFieldSpec(resolutions=(8,), num_channels=4))
    with torch.no_grad():
        for p in field.mlp_parameters():
            p.add_(0.3 * torch.randn_like(p))
        field.density_mlp[0].weight[3].zero_()  # an all-zero row
    return field


def test_mlp_bits_agree_between_field_and_format():
    from nerfcodec_ns.field import field as field_module

    assert tuple(field_module.MLP_BITS) == tuple(MLP_BITS)


def test_quantize_rows_bounds_and_error():
    w = torch.randn(17, 33) * torch.logspace(-3, 1, 17)[:, None]
    w[5] = 0
    q, scale = quantize_rows(w)
    assert q.dtype == torch.int8 and scale.dtype == torch.float32 and scale.shape == (17,)
    assert int(q.abs().max()) == 127 and int(q[5].abs().max()) == 0 and float(scale[5]) == 1.0
    err = (dequantize_rows(q, scale) - w).abs()
    assert bool((err <= scale[:, None] / 2 * (1 + 1e-5)).all())  # at most half a step per row


@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("packing", ["lzma", "raw"])
def test_section_decodes_to_the_values_evaluation_renders_with(bits, packing):
    field = _field()
    params = field.mlp_parameters()
    payload = mlp_payload(params, bits, packing)
    got = decode_mlp(payload, bits, params, packed=packing == "lzma")
    want = transmitted_mlp_values(params, bits)
    assert len(got) == len(want) == len(params)
    for g, w in zip(got, want):
        assert g.dtype == torch.float32 and torch.equal(g, w)
    with field.transmitted_mlp(bits):  # the model's eval context holds the same values
        for p, w in zip(field.mlp_parameters(), want):
            assert torch.equal(p.data, w)
    assert all(not torch.equal(p, w) for p, w in zip(params, want) if p.dim() == 2)  # really quantized


def test_int8_section_is_about_half_the_float16_one():
    params = _field().mlp_parameters()
    f16, i8 = mlp_payload(params, 16), mlp_payload(params, 8, "raw")
    assert mlp_payload_estimate(params, 16) <= len(f16) and mlp_payload_estimate(params, 8) <= len(i8)
    assert len(i8) < 0.6 * len(f16)


def test_bad_int8_sections_are_refused():
    params = _field().mlp_parameters()
    arrays = decode_strings(unpack_smallest(mlp_payload(params, 8, "lzma"), 1 << 20))
    with pytest.raises(BitstreamError, match="mlp"):  # one array missing
        decode_mlp(encode_strings(arrays[:-1]), 8, params, packed=False)
    with pytest.raises(BitstreamError, match="mlp"):  # float16 arrays where int8 rows belong
        decode_mlp(mlp_payload(params, 16), 8, params, packed=False)
    with pytest.raises(BitstreamError, match="mlp"):  # an int8 section read as float16
        decode_mlp(encode_strings(arrays), 16, params, packed=False)
    with pytest.raises(BitstreamError):
        decode_mlp(b"\x07garbage", 8, params, packed=True)


def test_header_mlp_bits():
    arch = dict(resolutions=(8,), channels=4, reduce="product", hidden_dim=8, geo_feat_dim=4, hidden_dim_color=8,
                sh_degree=2)
    assert FieldArch(**arch).mlp_bits == 16  # files before format 6
    assert FieldArch(**arch, mlp_bits=8).mlp_bits == 8
    for bad in (4, 12, 32, True, "8"):
        with pytest.raises(BitstreamError, match="mlp_bits"):
            FieldArch(**arch, mlp_bits=bad)


def test_run_configs_saved_before_mlp_bits_keep_float16():
    """A config.yml written before the setting existed loads with the storage it trained with (16);
    a new config keeps the default 8."""
    import yaml

    from nerfcodec_ns.model import NerfcodecModelConfig

    text = yaml.dump(NerfcodecModelConfig())
    assert "mlp_bits: 8" in text
    assert yaml.load(text, Loader=yaml.Loader).mlp_bits == 8
    old = "\n".join(line for line in text.splitlines() if "mlp_bits" not in line)
    assert yaml.load(old, Loader=yaml.Loader).mlp_bits == 16
