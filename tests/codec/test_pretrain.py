"""`nerfcodec pretrain-codec` / `eval-codec` and nerfcodec_ns.codec.pretrain: file format, exact resume,
round trip of the saved backbone, real entropy coding, and one-line user errors.

Tiny models (N=8, M=12) on 64x64 crops of a few small synthetic images: the whole file runs in
well under a minute on a 2-core CPU.
"""

from __future__ import annotations

import copy
import os
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import BIN, run_cli

# One thread: these models are far too small to gain from two, and on a loaded machine the
# second thread mostly waits (this file ran 2-3x slower with two threads while a benchmark ran).
ONE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
TINY = dict(N=8, M=12, crop=64, batch_size=2, steps=8, checkpoint_every=4, seed=0)


def _write_images(folder, count=4, size=(80, 72), seed=0):
    """Smooth colour gradients plus noise, as PNGs; plus one image smaller than the crop."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    sizes = [size] * count + [(56, 48)]
    for i, (w, h) in enumerate(sizes):
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        phase = rng.uniform(0, 2 * np.pi, 3)
        img = np.stack([127 + 100 * np.sin(xx / w * 3 + phase[0]), 127 + 100 * np.cos(yy / h * 2 + phase[1]),
                        255 * (xx + yy) / (w + h) + 20 * np.sin(phase[2])], -1)
        img += rng.normal(0, 8, img.shape)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"img_{i:02d}.png")
    return folder


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return _write_images(tmp_path_factory.mktemp("pretrain_images") / "imgs")


@pytest.fixture(scope="module")
def straight(images, tmp_path_factory):
    """8 steps in one go."""
    from nerfcodec_ns.codec.pretrain import PretrainConfig, pretrain

    out = tmp_path_factory.mktemp("straight") / "backbone.pt"
    return pretrain(images, out, PretrainConfig(**TINY), progress=False)


def _rounded(model):
    """Copy of ``model`` with float16-rounded parameters, in eval mode (what --half stores)."""
    model = copy.deepcopy(model).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())
    return model


def test_backbone_file_format(straight):
    out = straight.output
    assert out.exists() and straight.checkpoint.exists() and straight.step == 8
    obj = torch.load(out, map_location="cpu", weights_only=True)
    assert set(obj) == {"format", "version", "architecture", "N", "M", "state_dict", "meta"}
    assert obj["format"] == "nerfcodec-backbone" and obj["version"] == 1
    assert obj["architecture"] == "bmshj2018-hyperprior" and obj["N"] == 8 and obj["M"] == 12
    meta = obj["meta"]
    assert meta["steps"] == 8 and meta["crop"] == 64 and meta["lmbda"] == pytest.approx(0.013)
    assert meta["num_images"] == 5 and isinstance(meta["images"], str)
    assert all(type(v) in (str, int, float) for v in meta.values())
    sd = obj["state_dict"]
    assert all(isinstance(v, torch.Tensor) for v in sd.values())
    params = {n for n, _ in straight.model.named_parameters()}
    assert all(sd[n].dtype == torch.float16 for n in params)
    # CDF tables are not stored (loaders rebuild them from the stored weights); float buffers stay float32.
    assert sd["entropy_bottleneck._quantized_cdf"].numel() == 0
    assert sd["gaussian_conditional._quantized_cdf"].numel() == 0
    assert all(sd[n].dtype == torch.float32 for n, _ in straight.model.named_buffers()
               if sd[n].is_floating_point() and sd[n].numel() > 0)
    assert out.stat().st_size < 3e6
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask, "written with the umask's permissions (not mkstemp's 0600)"


def test_loaded_backbone_matches_in_memory_model(straight):
    from nerfcodec_ns.codec.pretrain import load_backbone_file

    loaded, meta = load_backbone_file(straight.output)
    assert meta["architecture"] == "bmshj2018-hyperprior" and meta["N"] == 8 and meta["M"] == 12
    assert not loaded.training
    assert loaded.entropy_bottleneck._quantized_cdf.numel() > 0, "the loader builds the CDF tables"
    ref = _rounded(straight.model)
    x = torch.rand(2, 3, 64, 128, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = ref(x), loaded(x)
    torch.testing.assert_close(a["x_hat"], b["x_hat"], rtol=0, atol=1e-6)
    for k in ("y", "z"):
        torch.testing.assert_close(a["likelihoods"][k], b["likelihoods"][k], rtol=0, atol=1e-6)
    # float16 rounding of the weights changes the output only a little.
    full = copy.deepcopy(straight.model).eval()
    with torch.no_grad():
        assert (full(x)["x_hat"] - b["x_hat"]).abs().max() < 0.05


def test_resume_equals_straight_run(straight, images, tmp_path):
    from nerfcodec_ns.codec.pretrain import PretrainConfig, pretrain

    out = tmp_path / "backbone.pt"
    first = pretrain(images, out, PretrainConfig(**{**TINY, "steps": 4}), progress=False)
    assert first.step == 4
    second = pretrain(images, out, PretrainConfig(**TINY), resume=True, overwrite=True, progress=False)
    assert second.resumed_from == 4 and second.step == 8
    a, b = straight.model.state_dict(), second.model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)
    fa = torch.load(straight.output, weights_only=True)["state_dict"]
    fb = torch.load(out, weights_only=True)["state_dict"]
    assert all(torch.equal(fa[k], fb[k]) for k in fa)


def test_resume_rejects_changed_settings(straight, images):
    from nerfcodec_ns.codec.pretrain import PretrainConfig, PretrainError, pretrain

    with pytest.raises(PretrainError, match="lmbda"):
        pretrain(images, straight.output, PretrainConfig(**{**TINY, "lmbda": 0.1}), resume=True,
                 overwrite=True, progress=False)


def test_refuses_to_overwrite(straight, images):
    from nerfcodec_ns.codec.pretrain import PretrainConfig, PretrainError, pretrain

    before = straight.output.read_bytes()
    with pytest.raises(PretrainError, match="--overwrite"):
        pretrain(images, straight.output, PretrainConfig(**TINY), progress=False)
    # Output gone but checkpoint still there: needs --resume or --overwrite.
    other = straight.output.with_name("moved.pt")
    shutil.copy(straight.checkpoint, other.with_name("moved.pt.ckpt"))
    with pytest.raises(PretrainError, match="--resume"):
        pretrain(images, other, PretrainConfig(**TINY), progress=False)
    assert straight.output.read_bytes() == before


def test_crops_are_deterministic_and_workers_agree(images):
    from nerfcodec_ns.codec.pretrain import CropBatches, load_images

    names, pixels = load_images(images, min_side=64)
    assert len(names) == 5 and min(min(p.shape[1:]) for p in pixels) == 64  # small image resized up
    batches = CropBatches(pixels, 64, 2, seed=3)
    assert batches[5].shape == (2, 3, 64, 64) and 0 <= batches[5].min() and batches[5].max() <= 1
    assert torch.equal(batches[5], CropBatches(pixels, 64, 2, seed=3)[5])
    loader = torch.utils.data.DataLoader(batches, sampler=range(2, 5), batch_size=None, num_workers=1)
    for step, batch in zip(range(2, 5), loader):
        assert torch.equal(batch, batches[step])


def test_evaluate_real_coding(straight, images):
    from nerfcodec_ns.codec.pretrain import evaluate, load_backbone_file

    model, _ = load_backbone_file(straight.output)
    res = evaluate(model, images)
    assert len(res["rows"]) == 5 and res["mean"]["images"] == 5
    for row in res["rows"]:
        assert row["bpp"] > 0 and row["bytes"] > 0 and np.isfinite(row["psnr"]) and row["psnr"] > 0
        pixels = row["width"] * row["height"]
        real_bits, est_bits = row["bpp"] * pixels, row["bpp_est"] * pixels
        # The rANS strings (2 per image) cost a few bytes of overhead beyond the estimate.
        assert est_bits - 64 <= real_bits <= 1.1 * est_bits + 32 * 8, row
        # Decoding reproduces the eval-mode forward pass.
        assert row["psnr"] == pytest.approx(row["psnr_est"], abs=0.05)


@pytest.mark.parametrize("architecture", ["mbt2018-mean", "cheng2020-anchor"])
def test_other_architectures_round_trip(architecture, images, tmp_path):
    from nerfcodec_ns.codec.pretrain import PretrainConfig, evaluate, load_backbone_file, pretrain

    one = tmp_path / "one"
    one.mkdir()
    shutil.copy(images / "img_00.png", one / "img_00.png")
    cfg = PretrainConfig(**{**TINY, "steps": 1, "architecture": architecture})
    res = pretrain(one, tmp_path / "b.pt", cfg, progress=False)
    loaded, meta = load_backbone_file(res.output)
    assert meta["architecture"] == architecture
    assert meta["M"] == (8 if architecture == "cheng2020-anchor" else 12)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(_rounded(res.model)(x)["x_hat"], loaded(x)["x_hat"], rtol=0, atol=1e-6)
    row = evaluate(loaded, one)["rows"][0]
    assert row["bpp"] > 0 and row["psnr"] == pytest.approx(row["psnr_est"], abs=0.05)


def _cli(argv, capsys):
    from nerfcodec_ns.cli import entrypoint

    code = entrypoint(argv)
    return code, capsys.readouterr().err.strip().splitlines()


def test_cli_user_errors(images, tmp_path, capsys):
    tiny = ["--N", "8", "--M", "12", "--crop", "64", "--batch-size", "2", "--steps", "1"]
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not an image")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.png").write_bytes(b"this is not a png")
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    existing = tmp_path / "existing.pt"
    existing.write_text("keep")
    cases = [
        (["--images", str(tmp_path / "missing"), "--output", str(tmp_path / "o.pt")], "does not exist"),
        (["--images", str(empty), "--output", str(tmp_path / "o.pt")], "no images"),
        (["--images", str(broken), "--output", str(tmp_path / "o.pt")], "cannot read image"),
        (["--images", str(images), "--output", str(existing)], "--overwrite"),
        (["--images", str(images), "--output", str(blocker / "o.pt")], "not writable"),
        (["--images", str(images), "--output", str(tmp_path / "o.pt"), "--crop", "100"], "crop"),
    ]
    for args, needle in cases:
        code, err = _cli(["pretrain-codec", *tiny, *args], capsys)
        assert code == 2, (args, err)
        assert len(err) == 1 and err[0].startswith("nerfcodec: error:") and needle in err[0], err
    assert existing.read_text() == "keep" and not (tmp_path / "o.pt").exists()
    code, err = _cli(["eval-codec", "--weights", str(tmp_path / "nope.pt"), "--images", str(images)], capsys)
    assert code == 2 and len(err) == 1 and "not found" in err[0]
    code, err = _cli(["eval-codec", "--weights", str(existing), "--images", str(images)], capsys)
    assert code == 2 and len(err) == 1 and "not a readable nerfcodec backbone file" in err[0] and len(err[0]) < 400


def test_cli_end_to_end(images, tmp_path):
    out = tmp_path / "models" / "bb.pt"
    res = run_cli([str(BIN / "nerfcodec"), "pretrain-codec", "--images", str(images), "--output", str(out),
                   "--N", "8", "--M", "12", "--crop", "64", "--batch-size", "2", "--steps", "3",
                   "--checkpoint-every", "2"], env=ONE_THREAD_ENV)
    assert res.returncode == 0, res.stderr[-3000:]
    assert out.exists() and out.with_name("bb.pt.ckpt").exists()
    assert "pretrain-codec" in res.stdout and "Traceback" not in res.stderr
    js = tmp_path / "eval.json"
    res = run_cli([str(BIN / "nerfcodec"), "eval-codec", "--weights", str(out), "--images", str(images),
                   "--json", str(js)], env=ONE_THREAD_ENV)
    assert res.returncode == 0, res.stderr[-3000:]
    data = json.loads(js.read_text())
    assert data["architecture"] == "bmshj2018-hyperprior" and len(data["rows"]) == 5
    assert data["mean"]["bpp"] > 0 and "PSNR" in res.stdout


def test_loader_reads_nested_and_several_folders(tmp_path):
    from nerfcodec_ns.codec.pretrain import PretrainError, list_images, load_images

    root = tmp_path / "photos"
    _write_images(root / "set_a" / "deep", count=2, seed=1)
    _write_images(root / "set_b", count=1, seed=2)
    _write_images(root / ".cache", count=1, seed=3)  # hidden folders are skipped
    other = _write_images(tmp_path / "more", count=1, seed=4)
    files = list_images([root, other])
    names, pixels = load_images([root, other])
    assert len(files) == len(names) == len(pixels) == 3 + 2 + 2  # each _write_images adds one small image
    assert names[0].startswith("photos/set_a/deep/") and names[-1].startswith("more/")
    assert not any(".cache" in n for n in names)
    assert list_images(root) == files[:5]
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(PretrainError, match="no images"):
        list_images(tmp_path / "empty")


def test_learning_rate_schedule():
    from nerfcodec_ns.codec.pretrain import PretrainConfig, learning_rate

    cfg = PretrainConfig(steps=101, lr=1e-3, min_lr=1e-5, schedule="cosine", decay_start=0.5)
    assert learning_rate(cfg, 0) == learning_rate(cfg, 49) == 1e-3
    assert learning_rate(cfg, 100) == pytest.approx(1e-5)
    mid = learning_rate(cfg, 75)
    assert mid == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5), rel=1e-6)
    lrs = [learning_rate(cfg, s) for s in range(101)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    assert learning_rate(PretrainConfig(steps=10, lr=2e-4), 9) == 2e-4  # constant


def test_resume_equals_straight_with_cosine_schedule_and_bfloat16(images, tmp_path):
    from nerfcodec_ns.codec.pretrain import PretrainConfig, pretrain

    cfg = {**TINY, "schedule": "cosine", "decay_start": 0.25, "precision": "bfloat16", "lr": 1e-3}
    straight = pretrain(images, tmp_path / "a" / "b.pt", PretrainConfig(**cfg), progress=False)
    out = tmp_path / "r" / "b.pt"
    first = pretrain(images, out, PretrainConfig(**cfg), progress=False, stop_at=3)  # mid-schedule stop
    assert first.step == 3 and out.exists()
    resumed = pretrain(images, out, PretrainConfig(**cfg), resume=True, overwrite=True, progress=False)
    assert resumed.resumed_from == 3 and resumed.step == 8
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)
    assert straight.meta["precision"] == "bfloat16" and straight.meta["schedule"] == "cosine"


def test_init_starts_from_a_backbone_file(straight, images, tmp_path):
    from nerfcodec_ns.codec.pretrain import PretrainConfig, PretrainError, pretrain

    # a learning rate of ~0 keeps the network where --init put it
    cfg = PretrainConfig(**{**TINY, "steps": 1, "lr": 1e-30, "min_lr": 1e-30, "init": str(straight.output)})
    result = pretrain(images, tmp_path / "init.pt", cfg, progress=False)
    start = torch.load(straight.output, weights_only=True)["state_dict"]
    got = result.model.state_dict()
    for k, v in start.items():
        if k.endswith(("quantiles",)) or not v.is_floating_point() or k not in got:
            continue  # the aux optimizer still moves the quantiles
        torch.testing.assert_close(got[k].float(), v.float(), rtol=0, atol=1e-6, msg=k)
    with pytest.raises(PretrainError, match="--init"):
        pretrain(images, tmp_path / "bad.pt", PretrainConfig(**{**TINY, "N": 16, "init": str(straight.output)}),
                 progress=False)
