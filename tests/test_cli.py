"""`nerfcodec` command line: user errors give one line on stderr and exit code 2, nothing half-written."""

from __future__ import annotations

import json

from conftest import BIN, run_cli


def test_make_scene_writes_dataset(tmp_path):
    out = tmp_path / "scene"
    res = run_cli([str(BIN / "nerfcodec"), "make-scene", "--output", str(out), "--resolution", "16",
                   "--num-train", "2", "--num-val", "1"])
    assert res.returncode == 0, res.stderr
    frames = json.loads((out / "transforms_train.json").read_text())["frames"]
    assert len(frames) == 2 and (out / "val" / "r_0.png").exists() and (out / "test" / "r_0.png").exists()


def test_make_scene_refuses_to_overwrite(tmp_path):
    out = tmp_path / "scene"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    res = run_cli([str(BIN / "nerfcodec"), "make-scene", "--output", str(out), "--resolution", "16"])
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nerfcodec: error:") and str(out) in lines[0]
    assert "Traceback" not in res.stderr
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_make_scene_bad_value(tmp_path):
    res = run_cli([str(BIN / "nerfcodec"), "make-scene", "--output", str(tmp_path / "s"), "--resolution", "0"])
    assert res.returncode == 2
    assert len(res.stderr.strip().splitlines()) == 1 and "resolution" in res.stderr
    assert not (tmp_path / "s").exists()


def test_demo_refuses_existing_output(tmp_path):
    (tmp_path / "old.txt").write_text("x")
    res = run_cli([str(BIN / "nerfcodec"), "demo", "--output-dir", str(tmp_path)])
    assert res.returncode == 2 and "--overwrite" in res.stderr and "Traceback" not in res.stderr
