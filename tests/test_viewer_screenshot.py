"""scripts/viewer_screenshot.py: a screenshot of ns-viewer in headless Chromium (slow: about a minute).

Run deliberately, on a decoded run (the config.yml written by `nerfcodec decode`):

    NERFCODEC_VIEWER_CONFIG=path/to/decoded/config.yml .venv/bin/python -m pytest -m slow \
        tests/test_viewer_screenshot.py
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "viewer_screenshot.py"
CHROMIUM = "/usr/bin/chromium"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.slow
def test_viewer_screenshot(tmp_path):
    config = os.environ.get("NERFCODEC_VIEWER_CONFIG")
    if not config:
        pytest.skip("NERFCODEC_VIEWER_CONFIG is not set (the config.yml of a decoded run to show)")
    if shutil.which(CHROMIUM) is None:
        pytest.skip(f"{CHROMIUM} not found (Debian package `chromium`)")
    assert Path(config).is_file(), f"NERFCODEC_VIEWER_CONFIG={config} is not a file"

    out = tmp_path / "viewer.png"
    width, height = 800, 600
    port, debug_port = _free_port(), _free_port()
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--load-config", config, "--output", str(out),
         "--width", str(width), "--height", str(height), "--port", str(port), "--debug-port", str(debug_port),
         # a smaller sharp frame than the viewer's default 512: the viewer renders on the CPU
         "--max-res", "256", "--wait-s", "240"],
        cwd=REPO, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, f"exit code {proc.returncode}\n{proc.stdout}\n{proc.stderr[-4000:]}"
    assert f"wrote {out}" in proc.stdout

    assert out.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["viewer.png"]  # no temporary file left
    with Image.open(out) as img:
        assert img.format == "PNG"
        assert img.size == (width, height)
        pixels = np.asarray(img.convert("RGB"), dtype=np.float32)
    assert pixels.reshape(-1, 3).std(axis=0).max() > 5.0, "the screenshot is (nearly) uniform"

    # ns-viewer and Chromium are gone: both ports are free again
    assert not _port_in_use(port)
    assert not _port_in_use(debug_port)
