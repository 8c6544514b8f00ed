"""`nerfcodec bench`: every point is a real file that decodes and renders; the report, plot and BD
table are written; bad input gives one line and exit code 2."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from conftest import BIN, REPO, run_cli


@pytest.fixture(scope="module")
def tiny_bench(tiny_run, tiny_scene, tiny_backbone, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "out"
    res = run_cli([
        str(BIN / "nerfcodec"), "bench", "--data", str(tiny_scene), "--base", str(tiny_run), "--output-dir", str(out),
        "--weights", str(tiny_backbone), "--train-rays", "256", "--warmup-steps", "3", "--joint-steps", "4",
        "--lambdas", "1e-5", "1e-3", "--budget", "60000", "--eval-images", "1", "--score-at", "2",
        "--baseline-families", "float32", "quant8", "png", "jpeg", "compressai",
    ], env={"OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return out, json.loads((out / "results.json").read_text()), res.stdout


def test_bench_writes_results_plot_and_tables(tiny_bench):
    out, result, stdout = tiny_bench
    assert (out / "rd.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "rate-distortion on" in stdout and "BD-rate" in stdout
    report = (out / "report.md").read_text()
    assert all(f"| {p['name']} |" in report or f"| **{p['name']}** |" in report for p in result["points"])
    families = {p["family"] for p in result["points"]}
    assert families == {"float32", "quant8", "png", "jpeg", "compressai", "nerfcodec", "nerfcodec-target",
                        "nerfcodec-j2"}
    assert set(result["bd"]) == {"float32", "quant8", "png", "jpeg", "compressai"}
    for row in result["bd"].values():  # a number, or the reason there is none
        assert (row["bd_rate_pct"] is not None) or row.get("note")
    assert set(result["times_s"]) >= {"field", "reference", "baselines", "nerfcodec", "total"}


def test_every_point_is_a_file_of_its_counted_size(tiny_bench):
    _, result, _ = tiny_bench
    for p in result["points"]:
        path = Path(p["file"])
        assert path.stat().st_size == p["bytes"], p["name"]
        assert 0 < p["psnr"] < 100 and 0 < p["ssim"] <= 1


def test_baseline_files_decode_to_the_rendered_planes(tiny_bench, tiny_backbone, tiny_run):
    """float32 is lossless: its decoded planes render exactly the reference; 8-bit ones render
    within a small PSNR distance of it."""
    from nerfcodec_ns.bench.baselines import QuantCoder, RawCoder
    from nerfcodec_ns.bench.bench import unpack_baseline

    _, result, _ = tiny_bench
    ref = result["reference"]["psnr"]
    points = {p["name"]: p for p in result["points"]}
    assert points["float32"]["psnr"] == pytest.approx(ref, abs=1e-4)
    assert abs(points["png"]["psnr"] - ref) < 0.5
    import torch
    import yaml

    from nerfcodec_ns.field.field import TriplaneField

    spec = yaml.load(tiny_run.read_text(), Loader=yaml.Loader).pipeline.model.field_spec()
    ref_mlp = TriplaneField(torch.zeros(2, 3), spec).mlp_parameters()
    name, payload, mlp, _ = unpack_baseline(Path(points["quant8-zlib"]["file"]).read_bytes(), ref_mlp)
    assert name == "quant8-zlib"
    levels = QuantCoder(8, "zlib").decode(payload)
    f32 = RawCoder("float32").decode(unpack_baseline(Path(points["float32"]["file"]).read_bytes(), ref_mlp)[1])
    for a, b in zip(levels, f32):
        step = (b.max(axis=(2, 3)) - b.min(axis=(2, 3))).max() / 255
        assert abs(a - b).max() <= step / 2 + 1e-6
    # the bench's default --mlp-bits 8: every weight row is its scale (max |row| / 127) times integers
    weights = [m for m in mlp if m.dim() == 2]
    assert weights and len(weights) + len([m for m in mlp if m.dim() == 1]) == len(ref_mlp)
    for w in weights:
        k = w / (w.abs().amax(dim=1, keepdim=True) / 127)
        assert torch.allclose(k, k.round(), atol=1e-3) and int(k.abs().max().round()) == 127


def test_nerfcodec_points_are_decodable_scene_files(tiny_bench, tiny_backbone):
    from nerfcodec_ns.scenefile.decode import decode_file

    _, result, _ = tiny_bench
    ours = [p for p in result["points"] if p["family"].startswith("nerfcodec")]
    assert len(ours) == 5  # two lambdas (each also scored after 2 of its 4 joint steps) and one budget
    for p in ours:
        scene = decode_file(Path(p["file"]), weights=tiny_backbone)
        assert len(scene.planes) == 2
    target = next(p for p in ours if p["family"] == "nerfcodec-target")
    assert target["target_bytes"] == 60000
    assert target["target_error"] == pytest.approx(target["bytes"] / 60000 - 1, abs=1e-4)


def test_a_point_scored_along_a_run_equals_the_shorter_run(tiny_run, tiny_scene, tiny_backbone, tmp_path):
    """``--score-at 2`` in a 4-step joint stage gives the same file, bit for bit, as a 2-step run.

    With the sent grid: in this tiny run the base field's grid leaves no sample to render in the joint
    stage, so the files depend on the codec's training alone. The rays of a training step are not
    the same in two processes (measured: nerfstudio's pixel sampling differs even with torch and
    Python seeded), so with the derived grid, whose joint stage renders, the two files differ."""
    def bench(out, *extra):
        res = run_cli([
            str(BIN / "nerfcodec"), "bench", "--data", str(tiny_scene), "--base", str(tiny_run), "--output-dir",
            str(out), "--weights", str(tiny_backbone), "--train-rays", "256", "--warmup-steps", "3",
            "--lambdas", "1e-5", "--eval-images", "1", "--no-baselines", "--grid-source", "sent", *extra,
        ], env={"OMP_NUM_THREADS": "1"})
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        return {p["name"]: p for p in json.loads((out / "results.json").read_text())["points"]}

    along = bench(tmp_path / "along", "--joint-steps", "4", "--score-at", "2")
    assert along["nerfcodec-l1e-05-j2"]["joint_steps"] == 2 and along["nerfcodec-l1e-05-j2"]["family"] == "nerfcodec-j2"
    assert along["nerfcodec-l1e-05"]["joint_steps"] == 4
    # training seconds of the joint stage so far (the scoring of the j2 point is not in them), and the warm-up's
    assert 0 <= along["nerfcodec-l1e-05-j2"]["train_s"] <= along["nerfcodec-l1e-05"]["train_s"]
    assert along["nerfcodec-l1e-05-j2"]["warmup_s"] == along["nerfcodec-l1e-05"]["warmup_s"] >= 0
    short = bench(tmp_path / "short", "--joint-steps", "2")
    assert Path(short["nerfcodec-l1e-05"]["file"]).read_bytes() == Path(along["nerfcodec-l1e-05-j2"]["file"]).read_bytes()
    assert short["nerfcodec-l1e-05"]["psnr"] == along["nerfcodec-l1e-05-j2"]["psnr"]


def test_bench_files_derive_their_grid(tiny_bench, tiny_run):
    """The default --grid-source derived: no NeRFCodec or baseline file carries grid bits."""
    import torch
    import yaml

    from nerfcodec_ns.bench.bench import unpack_baseline
    from nerfcodec_ns.field.field import TriplaneField
    from nerfcodec_ns.scenefile.container import read_file

    spec = yaml.load(tiny_run.read_text(), Loader=yaml.Loader).pipeline.model.field_spec()
    ref_mlp = TriplaneField(torch.zeros(2, 3), spec).mlp_parameters()
    _, result, _ = tiny_bench
    for p in result["points"]:
        path = Path(p["file"])
        if path.suffix == ".nfc":
            bs = read_file(path)
            assert bs.header.render.grid_source == "derived" and not bs.has_section("grid"), p["name"]
        else:
            assert unpack_baseline(path.read_bytes(), ref_mlp)[3] == b"", p["name"]


@pytest.mark.parametrize("case", ["missing-data", "unknown-family", "existing-output", "overwrite-foreign-folder",
                                  "score-past-the-end"])
def test_bench_bad_input_is_one_line_and_exit_2(case, tiny_run, tiny_scene, tmp_path):
    out = tmp_path / "out"
    args = [str(BIN / "nerfcodec"), "bench", "--data", str(tiny_scene), "--output-dir", str(out), "--eval-images", "1"]
    if case == "missing-data":
        args[3] = str(tmp_path / "nope")
    elif case == "unknown-family":
        args += ["--base", str(tiny_run), "--baseline-families", "jpeg", "gif", "--lambdas"]
    elif case == "score-past-the-end":
        args += ["--base", str(tiny_run), "--joint-steps", "4", "--score-at", "2", "4"]
    elif case == "existing-output":
        out.mkdir()
        (out / "results.json").write_text("{}")
    else:  # --overwrite must not delete a folder the bench did not make
        out.mkdir()
        (out / "thesis.tex").write_text("precious")
        args.append("--overwrite")
    res = run_cli(args, env={"OMP_NUM_THREADS": "1"})
    assert res.returncode == 2, res.stderr[-2000:]
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("nerfcodec: error:")]
    assert len(lines) == 1, res.stderr[-2000:]
    if case == "existing-output":
        assert (out / "results.json").read_text() == "{}"  # nothing lost
    if case == "overwrite-foreign-folder":
        assert (out / "thesis.tex").read_text() == "precious"


def test_bench_can_run_nerfcodec_with_frozen_pretrained_heads(tiny_run, tiny_backbone):
    """``--no-adapt-heads``: the codec stages use the frozen, tiled RGB layers (nothing transmitted for them)."""
    from nerfcodec_ns.bench.bench import BenchConfig, codec_trainer, load_base

    base_cfg, state, _ = load_base(tiny_run)
    for adapt in (True, False):
        cfg = BenchConfig(data=Path("."), weights=str(tiny_backbone), warmup_steps=1, adapt_heads=adapt, train_rays=64)
        codec = codec_trainer(cfg, base_cfg, state, 1e-5).pipeline.model.codec
        assert codec.config.adapt_heads is adapt
        assert (codec.transmitted_sizes()["head"] > 0) is adapt
        assert codec.g_s_head.layer.weight.requires_grad is adapt


def test_bench_joint_rays_sets_the_codec_stages_batch(tiny_run, tiny_backbone):
    from nerfcodec_ns.bench.bench import BenchConfig, codec_trainer, load_base

    base_cfg, state, _ = load_base(tiny_run)
    base_rays = base_cfg.pipeline.datamanager.train_num_rays_per_batch
    for joint_rays, expected in ((0, base_rays), (3 * base_rays, 3 * base_rays)):
        cfg = BenchConfig(data=Path("."), weights=str(tiny_backbone), warmup_steps=1, joint_rays=joint_rays)
        trainer = codec_trainer(cfg, base_cfg, state, 1e-5)
        assert trainer.pipeline.datamanager.config.train_num_rays_per_batch == expected


def test_bench_latent_gain_reaches_the_codec(tiny_run, tiny_backbone):
    from nerfcodec_ns.bench.bench import BenchConfig, codec_trainer, load_base

    base_cfg, state, _ = load_base(tiny_run)
    for gain in (1.0, 2.5):
        cfg = BenchConfig(data=Path("."), weights=str(tiny_backbone), warmup_steps=1, latent_gain=gain)
        trainer = codec_trainer(cfg, base_cfg, state, 1e-5)
        assert trainer.pipeline.model.codec.gain == gain


def test_joint_lr_decay_is_a_function_of_the_step(tiny_run, tiny_backbone):
    from nerfcodec_ns.bench.bench import BenchConfig, codec_trainer, joint_lr_multiplier, load_base, set_stage_lrs

    cfg = BenchConfig(data=Path("."), weights=str(tiny_backbone), warmup_steps=10, joint_steps=21, joint_lr_final=0.1)
    assert joint_lr_multiplier(cfg, 0) == joint_lr_multiplier(cfg, 10) == 1.0  # warm-up and first joint step
    assert abs(joint_lr_multiplier(cfg, 20) - 0.1 ** 0.5) < 1e-12
    assert abs(joint_lr_multiplier(cfg, 30) - 0.1) < 1e-12 and joint_lr_multiplier(cfg, 99) == joint_lr_multiplier(cfg, 30)
    constant = BenchConfig(data=Path("."), warmup_steps=10, joint_steps=21)
    assert joint_lr_multiplier(constant, 30) == 1.0
    base_cfg, state, _ = load_base(tiny_run)
    trainer = codec_trainer(cfg, base_cfg, state, 1e-5)
    set_stage_lrs(trainer, cfg, 30)
    for name, lr in (("planes", cfg.planes_lr), ("codec", cfg.codec_lr), ("codec_heads", cfg.heads_lr)):
        assert {g["lr"] for g in trainer.optimizers.optimizers[name].param_groups} == {lr * 0.1}
    set_stage_lrs(trainer, cfg, 5)
    assert {g["lr"] for g in trainer.optimizers.optimizers["fields"].param_groups} == {cfg.fields_lr}


def test_bench_codec_pass_every_closes_its_window_where_a_run_of_steps_ends(tiny_run, tiny_backbone):
    """``--codec-pass-every 4``: the model gets K; a run of 2 joint steps (a scored point, the end of a
    point's joint stage) closes the open window there, so the codec steps with the window's gradient
    instead of dropping it."""
    import torch

    from nerfcodec_ns.bench.bench import BenchConfig, _run_steps, codec_trainer, load_base

    base_cfg, state, _ = load_base(tiny_run)
    cfg = BenchConfig(data=Path("."), weights=str(tiny_backbone), warmup_steps=1, train_rays=64, codec_pass_every=4)
    trainer = codec_trainer(cfg, base_cfg, state, 1e-5)
    model = trainer.pipeline.model
    assert model.config.codec_pass_every == 4
    _run_steps(trainer, range(0, 1), "warm-up")
    before = [p.detach().clone() for p in model.codec.g_a.parameters()]
    _run_steps(trainer, range(1, 3), "joint", cfg)
    assert model.segment_end == 2 and model._window is None
    assert any(not torch.equal(a, p) for a, p in zip(before, model.codec.g_a.parameters()))


def test_bench_rejects_a_codec_pass_every_below_one():
    from nerfcodec_ns.bench.bench import BenchConfig, BenchError, run_bench

    with pytest.raises(BenchError, match="--codec-pass-every"):
        run_bench(BenchConfig(data=Path("."), base=Path("base.yml"), codec_pass_every=0))


def test_bench_rejects_a_joint_lr_final_out_of_range():
    from nerfcodec_ns.bench.bench import BenchConfig, BenchError, run_bench

    for bad in (0.0, -1.0, 1.5):
        with pytest.raises(BenchError, match="--joint-lr-final"):
            run_bench(BenchConfig(data=Path("."), base=Path("base.yml"), joint_lr_final=bad))


def test_run_steps_prints_progress_lines_into_a_log(monkeypatch, capsys):
    """Redirected to a file, rich shows no live bar: every log entry must also be a plain line."""
    from nerfcodec_ns.bench import bench

    from types import SimpleNamespace

    monkeypatch.setattr(bench, "train_step", lambda trainer, step: (0.0, {}, {"psnr": 20.0 + step / 100}))
    label = "nerfcodec-l1e-05 (to 600 joint steps of a long-named point)"
    trainer = SimpleNamespace(pipeline=SimpleNamespace(model=SimpleNamespace()))
    log = bench._run_steps(trainer, range(100, 160), label)
    assert [e["step"] for e in log] == [100, 150, 159]
    assert trainer.pipeline.model.segment_end == 159  # where a codec window closes
    out = capsys.readouterr().out
    lines = [ln[len(label) + 1:] for ln in out.splitlines() if re.match(re.escape(label) + r" \d+/60 ", ln)]  # not the bar
    assert [ln.split()[0] for ln in lines] == ["1/60", "51/60", "60/60"]
    assert "train_psnr 21.5" in lines[1]
    assert all(re.search(r"\(\d+ s\)$", ln) for ln in lines), "a progress line was wrapped"


def test_joint_steps_report_reads_the_segment_times_of_a_bench_log(monkeypatch, capsys):
    """benchmarks/joint_steps_report.py takes each scored point's training time from the bench log's
    progress lines: the format `_run_steps` prints must stay the one it parses."""
    import importlib.util

    from types import SimpleNamespace

    from nerfcodec_ns.bench import bench

    spec = importlib.util.spec_from_file_location("joint_steps_report", REPO / "benchmarks" / "joint_steps_report.py")
    report = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, report)  # its dataclass looks itself up there
    spec.loader.exec_module(report)
    monkeypatch.setattr(bench, "train_step", lambda trainer, step: (0.0, {}, {"psnr": 20.0}))
    trainer = SimpleNamespace(pipeline=SimpleNamespace(model=SimpleNamespace()))
    bench._run_steps(trainer, range(0, 3), "codec warm-up")
    bench._run_steps(trainer, range(3, 63), "nerfcodec-l1e-05 (to 60 joint steps)")
    bench._run_steps(trainer, range(63, 103), "nerfcodec-l1e-05")
    seconds = report.segment_seconds(capsys.readouterr().out, "nerfcodec-l1e-05")
    assert sorted(seconds) == [60, 100] and 0 <= seconds[60] <= seconds[100]
