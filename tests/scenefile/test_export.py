"""Export of a trained run to a scene file: `ns-export nerfcodec-bitstream`, `nerfcodec export`,
size accounting, and refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import BIN, run_cli
from nerfcodec_ns.cli import entrypoint
from nerfcodec_ns.scenefile.container import read_file, section_sizes
from nerfcodec_ns.scenefile.header import BitstreamError, CodecSettings
from nerfcodec_ns.scenefile.payload import (
    decode_array,
    decode_bits,
    decode_strings,
    encode_bits,
    pack_lzma,
    pack_smallest,
    unpack_lzma,
    unpack_smallest,
)


def _require_ns_export() -> None:
    """ns-export imports open3d, which needs the system library libusb-1.0 (scripts/setup.sh installs
    it when run as root); skip, saying so, where it cannot load."""
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-c", "import open3d"], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip("ns-export cannot start: open3d does not import (missing libusb-1.0-0? "
                    f"sudo apt-get install libusb-1.0-0): {res.stderr.strip().splitlines()[-1:]}")


def test_ns_export_help_lists_the_subcommand():
    _require_ns_export()
    res = run_cli([str(BIN / "ns-export"), "--help"], timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "nerfcodec-bitstream" in res.stdout
    assert "pointcloud" in res.stdout, "the stock subcommands are still there"


def test_ns_export_writes_the_same_file_as_the_plugin_command(tiny_run, tiny_nfc, tmp_path):
    _require_ns_export()
    out = tmp_path / "via_ns_export.nfc"
    res = run_cli([str(BIN / "ns-export"), "nerfcodec-bitstream", "--load-config", str(tiny_run),
                   "--output-path", str(out)], timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert out.read_bytes() == tiny_nfc[0].read_bytes(), "export is deterministic and both commands agree"
    # an existing output is kept: one-line error, exit 2
    before = out.read_bytes()
    res = run_cli([str(BIN / "ns-export"), "nerfcodec-bitstream", "--load-config", str(tiny_run),
                   "--output-path", str(out)], timeout=300)
    assert res.returncode == 2
    err = [l for l in res.stderr.splitlines() if l.startswith("error:")]
    assert len(err) == 1 and "output exists" in err[0] and "Traceback" not in res.stderr
    assert out.read_bytes() == before


def test_file_size_equals_sections_and_info(tiny_nfc, capsys):
    path, result = tiny_nfc
    data = path.read_bytes()
    assert result.num_bytes == len(data) == path.stat().st_size
    assert sum(section_sizes(data).values()) == len(data)
    assert entrypoint(["info", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["total_bytes"] == len(data)
    assert info["sections"] == section_sizes(data)
    assert {"y.0", "z.0", "y.1", "z.1", "head", "mlp", "cameras", "entropy_bottleneck"} <= set(info["sections"])
    assert "grid" not in info["sections"]  # the default: the decoder derives it


def test_sent_grid_is_a_section_of_the_file(tiny_sent_nfc, tiny_nfc):
    sent, derived = read_file(tiny_sent_nfc[0]), read_file(tiny_nfc[0])
    assert sent.header.render.grid_source == "sent" and derived.header.render.grid_source == "derived"
    assert sent.has_section("grid") and not derived.has_section("grid")
    assert derived.header.render.grid_points == 2 and derived.header.render.grid_threshold == 0.01
    assert tiny_sent_nfc[1].estimated["grid"] == len(sent.section("grid")) > 0


def test_info_table_total_is_the_file_size(tiny_nfc, capsys):
    path, _ = tiny_nfc
    assert entrypoint(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"{path.stat().st_size:,}" in out and "total (= file size)" in out
    assert "derived by" in out  # the occupancy-grid row (the table wraps the rest of it)


def _array_overhead(payload: bytes) -> int:
    """Bytes of a multi-array section that are framing, not array data."""
    arrays = [decode_array(p) for p in decode_strings(payload)]
    return len(payload) - sum(a.nbytes for a in arrays)


def test_training_size_accounting_matches_the_sections(tiny_nfc):
    """Every part the training metrics count is in the file with exactly that many data bytes (the
    codec's parameter sections once unpacked: the metrics count them before lossless packing)."""
    path, result = tiny_nfc
    bs = read_file(path)
    assert bs.header.codec.packing == "lzma"
    est = result.estimated
    for part, section in [("head", "head"), ("vectors_0", "vectors.0"), ("vectors_1", "vectors.1"),
                          ("entropy_bottleneck", "entropy_bottleneck"), ("mlp", "mlp")]:
        payload = bs.section(section)
        if section != "mlp" or bs.header.field.mlp_bits == 8:  # an int8 MLP is packed like the codec's parts
            payload = unpack_smallest(payload, 1 << 20)
        assert len(payload) - _array_overhead(payload) == est[part], part
        # per array: dtype, ndim and shape (2 + 4 * ndim bytes) and a length varint
        assert _array_overhead(payload) <= 20 * len(decode_strings(payload)) + 2
    assert est["grid"] == 0 and not bs.has_section("grid")  # derived by the decoder
    norm = sum(decode_array(bs.section(f"norm.{l}")).nbytes for l in range(2))
    assert norm == est["norm_stats"]


def test_export_refuses_codec_disabled_and_random_backbones():
    from nerfstudio.data.scene_box import SceneBox

    from nerfcodec_ns.codec.settings import CodecConfig
    from nerfcodec_ns.model import NerfcodecModelConfig
    from nerfcodec_ns.scenefile.export import ExportError, build_bitstream

    box = SceneBox(aabb=torch.tensor([[-1.0] * 3, [1.0] * 3]))
    tiny = dict(plane_resolutions=(8,), plane_channels=4, grid_resolution=8)
    plain = NerfcodecModelConfig(codec_enabled=False, **tiny).setup(scene_box=box, num_train_data=1, metadata={})
    with pytest.raises(ExportError, match="no codec"):
        build_bitstream(plain, None, torch.eye(4)[:3], 1.0)
    rand = NerfcodecModelConfig(codec=CodecConfig(weights="random", N=8, M=8), **tiny).setup(
        scene_box=box, num_train_data=1, metadata={})
    with pytest.raises(ExportError, match="randomly initialised"):
        build_bitstream(rand, None, torch.eye(4)[:3], 1.0)


@pytest.mark.parametrize("case", ["missing_config", "existing_output", "missing_folder"])
def test_export_bad_input_is_one_line_and_writes_nothing(case, tiny_run, tmp_path, capsys):
    out = tmp_path / "scene.nfc"
    config = tiny_run
    if case == "missing_config":
        config = tmp_path / "nope" / "config.yml"
    elif case == "existing_output":
        out.write_bytes(b"keep me")
    else:
        out = tmp_path / "no_such_folder" / "scene.nfc"
    code = entrypoint(["export", "--load-config", str(config), "--output-path", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("nerfcodec: error:"), err
    if case == "existing_output":
        assert out.read_bytes() == b"keep me"
    else:
        assert not out.exists()
    if out.parent.exists():
        assert not list(out.parent.glob(".*")), "no temporary file is left behind"


def test_lzma_packing_round_trips_and_refuses_oversize_or_broken_data():
    data = np.random.default_rng(0).integers(-20, 20, 5000).astype(np.int8).tobytes()
    packed = pack_lzma(data)
    assert len(packed) < len(data)  # 40 levels fit in under 8 bits per value
    assert unpack_lzma(packed, len(data)) == data
    with pytest.raises(BitstreamError, match="unpacks to more than 4999 bytes"):
        unpack_lzma(packed, len(data) - 1)
    with pytest.raises(BitstreamError, match="corrupt section 'head'"):
        unpack_lzma(packed[: len(packed) // 2], len(data), "section 'head'")
    with pytest.raises(BitstreamError, match="corrupt payload"):
        unpack_lzma(packed + b"x", len(data))
    noise = np.random.default_rng(1).bytes(300)
    assert pack_smallest(noise) == b"\x00" + noise and unpack_smallest(b"\x00" + noise, 300) == noise
    assert pack_smallest(data)[:1] == b"\x01" and unpack_smallest(pack_smallest(data), len(data)) == data
    for bad, msg in [(b"", "marker missing"), (b"\x07abc", "marker 07"), (b"\x00" + noise, "more than 299")]:
        with pytest.raises(BitstreamError, match=msg):
            unpack_smallest(bad, 299)
    with pytest.raises(BitstreamError, match="CodecSettings.packing"):
        CodecSettings(8, 8, True, True, 1.0, "zip")


def test_raw_and_lzma_packed_files_decode_to_the_same_scene(tiny_run, tiny_nfc, tiny_backbone):
    """The packing is lossless: a raw file of the same run decodes to identical planes and MLP, and
    the packed parameter sections are smaller; the other sections are byte-identical."""
    from nerfstudio.utils.eval_utils import eval_setup

    from nerfcodec_ns.scenefile.decode import decode_bitstream
    from nerfcodec_ns.scenefile.export import ExportError, build_bitstream

    _, pipeline, _, _ = eval_setup(tiny_run, test_mode="inference")
    outputs = pipeline.datamanager.train_dataparser_outputs
    args = (pipeline.model, outputs.cameras, outputs.dataparser_transform, outputs.dataparser_scale)
    raw, packed = build_bitstream(*args, packing="raw"), read_file(tiny_nfc[0])
    assert raw.header.codec.packing == "raw" and packed.header.codec.packing == "lzma"
    params = {"head", "vectors.0", "vectors.1", "entropy_bottleneck"} | ({"mlp"} if packed.header.field.mlp_bits == 8 else set())
    shrunk = []
    for a, b in zip(raw.sections, packed.sections):
        assert a.name == b.name
        if a.name in params:
            assert len(b.payload) <= len(a.payload) + 1, a.name  # incompressible: one marker byte
            assert unpack_smallest(b.payload, len(a.payload)) == a.payload
            shrunk += [a.name] if len(b.payload) < len(a.payload) else []
        else:
            assert a.payload == b.payload, a.name
    assert "vectors.0" in shrunk, shrunk
    x, y = decode_bitstream(raw, tiny_backbone), decode_bitstream(packed, tiny_backbone)
    assert all(torch.equal(p, q) for p, q in zip(x.planes + x.mlp, y.planes + y.mlp))
    with pytest.raises(ExportError, match="packing must be one of"):
        build_bitstream(*args, packing="zip")


def test_grid_bits_round_trip_and_reject_other_lengths():
    mask = np.random.default_rng(0).random((16, 16, 16)) < 0.1
    payload = encode_bits(mask)
    assert np.array_equal(decode_bits(payload, mask.shape), mask)
    with pytest.raises(BitstreamError):
        decode_bits(payload, (16, 16, 8))
    with pytest.raises(BitstreamError):
        decode_bits(payload[:-2], mask.shape)


def test_training_logs_the_exact_file_size_at_its_last_step(tiny_run, tiny_nfc):
    """The size logged at the end of training (size_file_bytes) is the size of the exported file."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tiny_run.parent), size_guidance={"scalars": 0})
    acc.Reload()
    tag = "Train Metrics Dict/size_file_bytes"
    assert tag in acc.Tags()["scalars"], acc.Tags()["scalars"]
    last = acc.Scalars(tag)[-1]
    assert last.step == 29
    assert int(last.value) == tiny_nfc[0].stat().st_size


def test_export_refuses_codec_parameters_the_decoder_would_reject(tiny_run):
    """The exporter runs the decoder's check on the transmitted codec state: a non-finite parameter
    is an ExportError before any file exists, not a file nobody can decode."""
    from nerfstudio.utils.eval_utils import eval_setup

    from nerfcodec_ns.scenefile.export import ExportError, build_bitstream

    _, pipeline, _, _ = eval_setup(tiny_run, test_mode="inference")
    outputs = pipeline.datamanager.train_dataparser_outputs
    with torch.no_grad():
        pipeline.model.codec.vectors[0][0, 0, 0] = float("nan")
    with pytest.raises(ExportError, match="cannot be sent: vectors.0.scale holds non-finite values"):
        build_bitstream(pipeline.model, outputs.cameras, outputs.dataparser_transform, outputs.dataparser_scale)
