"""`nerfcodec upgrade`: a float-tables file (formats 1/2) re-coded with exact tables, losslessly."""

from __future__ import annotations

import torch
from conftest import BIN, run_cli

from nerfcodec_ns.scenefile.container import read_file
from nerfcodec_ns.scenefile.decode import decode_file, decode_latents


def test_upgrade_keeps_the_symbols_and_the_decoded_scene(tiny_float_nfc, tiny_backbone, tmp_path):
    out = tmp_path / "upgraded.nfc"
    res = run_cli([str(BIN / "nerfcodec"), "upgrade", str(tiny_float_nfc), str(out), "--weights", str(tiny_backbone)])
    assert res.returncode == 0, res.stderr[-2000:]
    old, new = read_file(tiny_float_nfc), read_file(out)
    assert old.header.codec.tables == "float" and new.header.codec.tables == "exact"
    # bmshj2018: y_hat = symbols / gain, so equal latents mean equal symbols
    for (z0, y0), (z1, y1) in zip(decode_latents(old, tiny_backbone), decode_latents(new, tiny_backbone)):
        assert torch.equal(z0, z1) and torch.equal(y0, y1)
    a, b = decode_file(tiny_float_nfc, tiny_backbone), decode_file(out, tiny_backbone)
    assert all(torch.equal(p, q) for p, q in zip(a.planes, b.planes))
    assert all(torch.equal(p, q) for p, q in zip(a.mlp, b.mlp)) and torch.equal(a.grid, b.grid)
    # the z strings and everything but y and the bottleneck section are carried over unchanged
    same = [s.name for s in old.sections if not s.name.startswith("y.") and s.name != "entropy_bottleneck"]
    assert all(old.section(n) == new.section(n) for n in same)


def test_upgrade_refuses_exact_files_and_existing_outputs(tiny_nfc, tiny_float_nfc, tiny_backbone, tmp_path):
    path, _ = tiny_nfc
    res = run_cli([str(BIN / "nerfcodec"), "upgrade", str(path), str(tmp_path / "x.nfc"), "--weights", str(tiny_backbone)])
    assert res.returncode == 2 and "exact tables already" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.nfc").exists()
    existing = tmp_path / "keep.nfc"
    existing.write_bytes(b"keep")
    res = run_cli([str(BIN / "nerfcodec"), "upgrade", str(tiny_float_nfc), str(existing), "--weights", str(tiny_backbone)])
    assert res.returncode == 2 and "output exists" in res.stderr and existing.read_bytes() == b"keep"
