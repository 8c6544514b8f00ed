"""The method is registered with nerfstudio and its config module stays light."""

from __future__ import annotations

import subprocess
import sys

from conftest import BIN, run_cli


def test_method_is_discovered():
    from nerfstudio.plugins.registry import discover_methods

    methods, descriptions = discover_methods()
    assert "nerfcodec" in methods
    assert methods["nerfcodec"].method_name == "nerfcodec"
    assert "NeRFCodec" in descriptions["nerfcodec"]


def test_ns_train_help_lists_nerfcodec():
    res = run_cli([str(BIN / "ns-train"), "--help"], timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "nerfcodec" in res.stdout


def test_config_module_does_not_import_compressai():
    code = "import sys, nerfcodec_ns.config; print('compressai' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_device_is_chosen_automatically():
    import torch

    from nerfcodec_ns.config import nerfcodec_trainer_config

    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert nerfcodec_trainer_config().machine.device_type == expected
