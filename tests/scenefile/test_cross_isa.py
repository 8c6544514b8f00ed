"""One scene file decodes to the same latents whatever instruction set the CPU kernels use.

Each decode runs in a subprocess with PyTorch's and oneDNN's kernels restricted by environment
variables (``ATEN_CPU_CAPABILITY``, ``ONEDNN_MAX_CPU_ISA``): no vector extensions, AVX2, and the
machine's best. The latents (``z_hat``, ``y_hat`` of every level, before ``g_s``) must be
bit-identical. The second test shows that this comparison can fail: a decoder whose scale path is
perturbed by 0.1% (the size of a table step's 1/100) decodes other latents or refuses the file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from nerfcodec_ns.codec.exact import isa_environment

SCRIPT = r"""
import hashlib, json, sys, warnings
warnings.simplefilter("ignore")
import torch
from nerfcodec_ns.scenefile.container import read_file
from nerfcodec_ns.scenefile.decode import decode_latents

path, weights, perturb = sys.argv[1], sys.argv[2] or None, float(sys.argv[3])
if perturb:
    from nerfcodec_ns.codec.plane import PlaneCodec
    exact = PlaneCodec.coding_params
    PlaneCodec.coding_params = lambda self, z_hat: exact(self, z_hat) * (1 + perturb)
digest = hashlib.sha256()
try:
    for z_hat, y_hat in decode_latents(read_file(path), weights):
        digest.update(z_hat.numpy().tobytes()); digest.update(y_hat.numpy().tobytes())
    result = digest.hexdigest()
except Exception as err:
    result = f"error: {err}"
print(json.dumps({"capability": torch.backends.cpu.get_cpu_capability(), "latents": result}))
"""


def _decode(path, isa, perturb=0.0, weights=""):
    env = isa_environment(isa, os.environ)
    res = subprocess.run([sys.executable, "-c", SCRIPT, str(path), str(weights), str(perturb)],
                         capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def reference(embedded_nfc):
    return _decode(embedded_nfc, "best")


def test_the_file_uses_many_tables(embedded_nfc):
    """Otherwise identical latents would prove little: the scales must spread over the table."""
    from nerfcodec_ns.scenefile import decode
    from nerfcodec_ns.scenefile.container import read_file

    bs = read_file(embedded_nfc)
    assert bs.header.codec.tables == "exact"
    codec = decode._codec_for(bs, None)
    z_hat, _ = codec.decode_latents(decode._compressed_level(bs, 1))
    indexes = codec.gaussian_conditional.build_indexes(codec.coding_params(z_hat) * codec.gain)
    assert len(indexes.unique()) >= 8, indexes.unique()


def test_latents_are_identical_under_every_instruction_set(embedded_nfc, reference):
    assert not reference["latents"].startswith("error"), reference
    seen = {"best": reference}
    for name in ("default", "avx2"):
        seen[name] = _decode(embedded_nfc, name)
    assert seen["default"]["capability"] == "DEFAULT"  # the restriction took effect
    assert {v["latents"] for v in seen.values()} == {reference["latents"]}, seen


def test_the_latent_comparison_fails_for_a_perturbed_scale_path(embedded_nfc, reference):
    perturbed = _decode(embedded_nfc, "best", perturb=1e-3)
    assert perturbed["latents"] != reference["latents"], perturbed
