"""Decoding scene files: exactness against training-time evaluation, determinism, the decoded run
folder (loads without the original images), and every kind of bad input."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import eval_psnr

from nerfcodec_ns.cli import entrypoint
from nerfcodec_ns.scenefile.container import Bitstream, Section, pack, read_file, unpack
from nerfcodec_ns.scenefile.decode import DecodeError, build_model, decode_bitstream, decode_file
from nerfcodec_ns.scenefile.header import BitstreamError


@pytest.fixture(scope="session")
def trained(tiny_run):
    """The tiny run's pipeline in eval mode (the compressed field as evaluated at the end of training)."""
    from nerfstudio.utils.eval_utils import eval_setup

    _, pipeline, _, _ = eval_setup(tiny_run, test_mode="inference")
    return pipeline.eval()


@pytest.fixture(scope="session")
def decoded_run(tiny_nfc, tiny_backbone, tmp_path_factory):
    from nerfcodec_ns.scenefile.decode import write_run

    out = tmp_path_factory.mktemp("decoded") / "run"
    return write_run(tiny_nfc[0], out, weights=tiny_backbone, view_size=16)


def test_decode_equals_training_time_quantized_planes_exactly(trained, tiny_nfc, tiny_backbone):
    scene = decode_file(tiny_nfc[0], tiny_backbone)
    with torch.no_grad():
        expected = trained.model.render_planes()
    assert expected is not None, "the run ended in the joint stage: evaluation renders decoded planes"
    assert len(scene.planes) == len(expected)
    for got, want in zip(scene.planes, expected):
        assert torch.equal(got, want.cpu())
    from nerfcodec_ns.field.field import transmitted_mlp_values

    bits = trained.model.config.mlp_bits
    assert bits == 8 and scene.header.field.mlp_bits == 8  # the default: int8 rows
    params = trained.model.field.mlp_parameters()
    for got, want in zip(scene.mlp, transmitted_mlp_values([p.cpu() for p in params], bits)):
        assert torch.equal(got, want)
    # the grid the decoder derived is the one the last training step derived (the default grid_source)
    assert scene.header.render.grid_source == "derived"
    assert torch.equal(scene.grid, trained.model.sampler.level_binaries.cpu())
    assert torch.equal(scene.occupancy, trained.model.sampler.estimator.occs.cpu())


def test_sent_grid_decodes_to_the_checkpoint_grid(tiny_sent_run, tiny_sent_nfc, tiny_backbone):
    from nerfstudio.utils.eval_utils import eval_setup

    _, pipeline, _, _ = eval_setup(tiny_sent_run, test_mode="inference")
    scene = decode_file(tiny_sent_nfc[0], tiny_backbone)
    assert scene.header.render.grid_source == "sent" and scene.occupancy is None
    assert torch.equal(scene.grid, pipeline.model.sampler.level_binaries.cpu())
    model = build_model(scene)
    cams = pipeline.datamanager.train_dataparser_outputs.cameras
    with torch.no_grad():
        want = pipeline.eval().model.get_outputs_for_camera(cams[0:1])["rgb"]
        assert (model.get_outputs_for_camera(cams[0:1])["rgb"] - want).abs().max().item() <= 1e-6


def test_decoded_model_renders_what_training_evaluation_renders(trained, tiny_nfc, tiny_backbone):
    model = build_model(decode_file(tiny_nfc[0], tiny_backbone))
    cams = trained.datamanager.train_dataparser_outputs.cameras
    with torch.no_grad():
        for i in range(2):
            want = trained.model.get_outputs_for_camera(cams[i : i + 1])["rgb"]
            got = model.get_outputs_for_camera(cams[i : i + 1])["rgb"]
            assert (got - want).abs().max().item() <= 1e-6


def test_decoding_is_deterministic_across_runs_and_thread_counts(tiny_nfc, tiny_backbone):
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = decode_file(tiny_nfc[0], tiny_backbone).planes
        torch.set_num_threads(max(2, threads))
        many = decode_file(tiny_nfc[0], tiny_backbone).planes
        again = decode_file(tiny_nfc[0], tiny_backbone).planes
    finally:
        torch.set_num_threads(threads)
    for a, b, c in zip(one, many, again):
        assert torch.equal(a, b) and torch.equal(b, c)


def test_decoded_run_loads_through_eval_setup_without_the_original_images(decoded_run, tiny_scene):
    config_text = decoded_run.config_path.read_text()
    assert str(tiny_scene) not in config_text, "the decoded run must not refer to the original data"
    assert "NfcDataParser" in config_text
    code = (
        "import torch\nfrom pathlib import Path\nfrom nerfstudio.utils.eval_utils import eval_setup\n"
        f"_, p, _, step = eval_setup(Path({str(decoded_run.config_path)!r}), test_mode='test')\n"
        "cams = p.datamanager.train_dataset.cameras\n"
        "out = p.model.get_outputs_for_camera(cams[0:1])\n"
        "print('OK', len(p.datamanager.train_dataset), tuple(out['rgb'].shape))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         cwd=decoded_run.config_path.parents[4])
    assert res.returncode == 0, res.stderr[-3000:]
    line = [l for l in res.stdout.splitlines() if l.startswith("OK")][-1]
    assert line == "OK 8 (16, 16, 3)", line


def test_decoded_run_with_original_data_gives_the_training_psnr(tiny_run, tiny_nfc, tiny_backbone, tiny_scene, tmp_path):
    from nerfcodec_ns.scenefile.decode import write_run

    result = write_run(tiny_nfc[0], tmp_path / "with_data", data=tiny_scene, weights=tiny_backbone)
    assert eval_psnr(result.config_path) == pytest.approx(eval_psnr(tiny_run), abs=1e-4)


# ---------------------------------------------------------------------------------------- bad input


def _mutations(data: bytes, count: int, seed: int = 0):
    rng = random.Random(seed)
    for _ in range(count):
        b = bytearray(data)
        kind = rng.randrange(3)
        if kind == 0:  # flip bytes
            for _ in range(rng.randint(1, 8)):
                b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        elif kind == 1:  # truncate
            b = b[: rng.randrange(len(b))]
        else:  # insert garbage
            pos = rng.randrange(len(b) + 1)
            b[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        yield bytes(b)


def test_thousands_of_mutated_files_are_rejected_cleanly(tiny_nfc):
    """Every mutation of a real scene file is caught by the container checks (CRCs, lengths)."""
    data = tiny_nfc[0].read_bytes()
    for mutated in _mutations(data, 3000):
        if mutated == data:
            continue
        with pytest.raises(BitstreamError):
            unpack(mutated)


def test_mutated_payloads_with_valid_crcs_never_crash_the_decoder(tiny_nfc, tiny_backbone):
    """Past the CRCs (payloads changed, then re-packed), decoding either works or raises a clean error."""
    bs = read_file(tiny_nfc[0])
    rng = random.Random(1)
    for _ in range(40):
        sections = list(bs.sections)
        k = rng.randrange(len(sections))
        payload = bytearray(sections[k].payload)
        if rng.random() < 0.3:
            payload = payload[: rng.randrange(len(payload) + 1)]
        for _ in range(rng.randint(1, 4)):
            if payload:
                payload[rng.randrange(len(payload))] = rng.randrange(256)
        sections[k] = Section(sections[k].name, bytes(payload))
        try:
            decode_bitstream(Bitstream(bs.header, tuple(sections)), tiny_backbone)
        except (BitstreamError, DecodeError):
            pass


def _write(tmp_path, data: bytes) -> Path:
    p = tmp_path / "bad.nfc"
    p.write_bytes(data)
    return p


def _header_variant(bs: Bitstream, **changes) -> bytes:
    import dataclasses

    return pack(Bitstream(dataclasses.replace(bs.header, **changes), bs.sections))


@pytest.mark.parametrize("case", ["truncated", "flipped", "magic", "version", "hash", "missing_weights",
                                  "no_such_file", "output_exists", "model_id"])
def test_decode_bad_input_one_line_error_and_no_output(case, tiny_nfc, tiny_backbone, tmp_path, capsys):
    import dataclasses

    data = tiny_nfc[0].read_bytes()
    bs = unpack(data)
    out = tmp_path / "out"
    weights = [str(tiny_backbone)]
    scene = tiny_nfc[0]
    if case == "truncated":
        scene = _write(tmp_path, data[: len(data) // 2])
    elif case == "flipped":
        scene = _write(tmp_path, data[:200] + bytes([data[200] ^ 0x10]) + data[201:])
    elif case == "magic":
        scene = _write(tmp_path, b"XYZ\x00" + data[4:])
    elif case == "version":
        scene = _write(tmp_path, data[:4] + (99).to_bytes(2, "little") + data[6:])
    elif case == "hash":
        backbone = dataclasses.replace(bs.header.backbone, sha256="0" * 64)
        scene = _write(tmp_path, _header_variant(bs, backbone=backbone))
    elif case == "missing_weights":
        weights = []  # a file-trained backbone: only --weights can provide it
    elif case == "no_such_file":
        scene = tmp_path / "nope.nfc"
    elif case == "output_exists":
        out.mkdir()
        (out / "keep.txt").write_text("keep")
    elif case == "model_id":
        scene = _write(tmp_path, _header_variant(bs, model_id="someone-else/v9"))
    argv = ["decode", str(scene), "--output-dir", str(out)] + (["--weights", *weights] if weights else [])
    code = entrypoint(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("nerfcodec: error:"), err
    expected = {"truncated": "truncated", "flipped": "CRC", "magic": "magic", "version": "version",
                "hash": "hash mismatch", "missing_weights": "missing weights", "no_such_file": "not found",
                "output_exists": "exists", "model_id": "unsupported model"}[case]
    assert expected.lower() in err[0].lower(), err[0]
    if case == "output_exists":
        assert [p.name for p in out.iterdir()] == ["keep.txt"]
    else:
        assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")], "no temporary folder left"


def test_info_bad_file_one_line(tmp_path, capsys):
    bad = _write(tmp_path, b"NFC\x00garbage")
    assert entrypoint(["info", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(bad) in err[0]


@pytest.mark.parametrize("occupied_cells", [1, None])
def test_decoded_sampler_uses_the_exported_opacity_threshold(tiny_sent_nfc, tiny_backbone, occupied_cells):
    """The sampler caps alpha_thre by the mean occupancy value (as nerfacc does); a sent grid must
    never change the threshold the file says, even when almost no cell is occupied."""
    from nerfcodec_ns.scenefile.export import effective_alpha_thre

    scene = decode_file(tiny_sent_nfc[0], tiny_backbone)
    if occupied_cells is not None:
        grid = torch.zeros_like(scene.grid)
        grid.view(-1)[:occupied_cells] = True
        scene = scene._replace(grid=grid)
    model = build_model(scene)
    assert effective_alpha_thre(model) == scene.header.render.alpha_thre
    assert torch.equal(model.sampler.level_binaries, scene.grid)


def test_derived_grid_caps_the_opacity_threshold_as_training_did(trained, tiny_nfc, tiny_backbone):
    """A derived grid's file names the configured alpha_thre; the decoder caps it by the mean of the
    occupancies it derived, as the trained model's sampler does."""
    from nerfcodec_ns.scenefile.export import effective_alpha_thre

    scene = decode_file(tiny_nfc[0], tiny_backbone)
    model = build_model(scene)
    assert scene.header.render.alpha_thre == trained.model.config.alpha_thre
    assert effective_alpha_thre(model) == effective_alpha_thre(trained.model)
    assert effective_alpha_thre(model) == min(scene.header.render.alpha_thre, float(scene.occupancy.mean()))


def test_a_derived_file_with_a_grid_section_is_refused(tiny_nfc, tiny_sent_nfc, tiny_backbone):
    derived, sent = read_file(tiny_nfc[0]), read_file(tiny_sent_nfc[0])
    bad = Bitstream(derived.header, derived.sections + (Section("grid", sent.section("grid")),))
    with pytest.raises(BitstreamError, match="grid is derived must not have a 'grid' section"):
        decode_bitstream(bad, tiny_backbone)


def test_ns_render_renders_the_decoded_run(decoded_run, tmp_path):
    from conftest import BIN, run_cli

    out = tmp_path / "renders"
    res = run_cli([str(BIN / "ns-render"), "dataset", "--load-config", str(decoded_run.config_path),
                   "--output-path", str(out), "--split", "train", "--rendered-output-names", "rgb"], timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert len(list((out / "train" / "rgb").glob("*.jpg"))) == 8, "one image per camera stored in the file"
