#!/usr/bin/env python
"""Screenshot of nerfstudio's web viewer (``ns-viewer``) showing a trained or decoded run, taken in
headless Chromium, saved as a PNG.

    .venv/bin/python scripts/viewer_screenshot.py --load-config RUN/config.yml --output docs/viewer.png

What it does:

1. starts ``ns-viewer --load-config CONFIG --viewer.websocket-port PORT`` in its own process group and
   waits until http://127.0.0.1:PORT/ answers;
2. starts Debian's headless ``chromium`` (WebGL through SwiftShader, so no GPU is needed) with the
   DevTools protocol on --debug-port;
3. over the DevTools protocol (``websockets``): opens the viewer, dollies the camera out with
   --zoom-out-steps mouse-wheel steps (the viewer's default camera sits close to the scene centre),
   then polls screenshots until the viewer shows its full-resolution frame and two consecutive
   screenshots agree (or --wait-s elapses);
4. writes the last screenshot to --output atomically (temporary file + ``os.replace``).

The viewer and Chromium are always stopped at the end, their whole process groups and any
descendants that left them, also on Ctrl-C or SIGTERM.

nerfstudio renders on the CPU here: the low-resolution preview takes about a second, the sharp frame
(512 px on the longer side, the viewer's default "Max res") can take a minute or more.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import tyro

# The viewer's "Max res" slider default (nerfstudio 1.1.5, viewer/control_panel.py). A frame whose longer
# side has "Max res" pixels is the viewer's final ("high") render of a camera pose.
VIEWER_MAX_RES = 512
# One wheel step: camera-controls (viser's camera) multiplies the camera distance by
# 0.95 ** -(deltaY / 30 * dollySpeed) with dollySpeed 0.3 (non-Mac, pixel deltas), so 790 gives x1.5.
WHEEL_DELTA_Y = 790
RESOLUTION_RE = re.compile(r"Resolution:\s*(\d+)\s*x\s*(\d+)\s*px")


class ScreenshotError(Exception):
    """A failure reported as one line (no traceback), exit code 1."""


def log(msg: str) -> None:
    print(f"viewer_screenshot: {msg}", file=sys.stderr, flush=True)


@dataclass
class ViewerScreenshot:
    """Screenshot of `ns-viewer` showing a run, taken in headless Chromium; saved as a PNG."""

    load_config: Path
    """config.yml of the run to show (a training run or a `nerfcodec decode` output)."""
    output: Path
    """PNG file to write (replaced atomically)."""
    port: int = 7010
    """Port for the viewer (must be free)."""
    wait_s: float = 90.0
    """Longest wait (after the page has loaded) for the viewer's final frame; then the latest one is saved."""
    # The viewer's camera starts 0.52 scene units from the origin (viser's default camera, scaled by
    # nerfstudio's 10x), inside most scenes; 5 steps put it at about 3.9, the distance of the training
    # cameras of Blender-format scenes (and of `nerfcodec make-scene`).
    zoom_out_steps: int = 5
    """Mouse-wheel steps that move the camera away from the scene centre, x1.5 each; 0: the default camera."""
    width: int = 1200
    """Screenshot width in pixels."""
    height: int = 800
    """Screenshot height in pixels."""
    max_res: int = 512
    """The viewer's "Max res" (64-2048): longer side of its sharp frame, in pixels. Lower renders faster."""
    hide_train_cams: bool = False
    """Click the viewer's "Hide Train Cams" button (the training-camera frustums are not drawn)."""
    startup_timeout_s: float = 300.0
    """Longest wait for ns-viewer to load the run and answer on --port."""
    debug_port: int = 9222
    """Chromium's remote-debugging (DevTools) port (must be free)."""
    chromium: Path = Path("/usr/bin/chromium")
    """Chromium executable (Debian package `chromium`)."""


# --------------------------------------------------------------------------------------------------
# processes


def _proc_stat(pid: int) -> Optional[tuple[int, int, int]]:
    """(ppid, pgid, starttime) of a live process, or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode("utf-8", "replace")
    except OSError:
        return None
    # the command name (field 2) is in parentheses and may contain spaces
    fields = data[data.rfind(")") + 2 :].split()
    # fields[0] is the state (field 3): ppid is field 4, pgrp field 5, starttime field 22
    if fields[0] == "Z":
        return None
    return int(fields[1]), int(fields[2]), int(fields[19])


def _all_procs() -> dict[int, tuple[int, int, int]]:
    procs = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _proc_stat(int(name))
            if st is not None:
                procs[int(name)] = st
    return procs


def _tree(root: int, pgid: int) -> dict[int, int]:
    """pid -> starttime of the processes in process group ``pgid`` and of all descendants of ``root``
    (including ``multiprocess``/``multiprocessing`` children that started their own session)."""
    procs = _all_procs()
    found = {pid: st[2] for pid, st in procs.items() if st[1] == pgid}
    frontier = [root]
    seen = {root}
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, _, start) in procs.items():
            if ppid == parent and pid not in seen:
                seen.add(pid)
                found[pid] = start
                frontier.append(pid)
    if root in procs:
        found[root] = procs[root][2]
    found.pop(os.getpid(), None)
    return found


class Group:
    """A child process started in its own session (so its own process group), stopped as a whole."""

    def __init__(self, name: str, args: list[str], log_path: Optional[Path] = None, env=None):
        self.name = name
        self.log_path = log_path
        out = open(log_path, "wb") if log_path is not None else subprocess.DEVNULL
        try:
            self.proc = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, env=env,
            )
        finally:
            if log_path is not None:
                out.close()
        self.pgid = self.proc.pid  # start_new_session: the child leads its own group
        self._known: dict[int, int] = {}

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        if self.log_path is None:
            return ""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.rstrip().splitlines()[-lines:])

    def _signal_all(self, sig: int) -> None:
        try:
            os.killpg(self.pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        for pid, start in list(self._known.items()):
            st = _proc_stat(pid)
            if st is None or st[2] != start:  # gone, or the pid was reused
                self._known.pop(pid)
                continue
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                self._known.pop(pid)

    def stop(self, grace_s: float = 5.0) -> None:
        # remember the whole tree first: children that outlive the leader get re-parented
        self._known.update(_tree(self.proc.pid, self.pgid))
        self._signal_all(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            self._known.update(_tree(self.proc.pid, self.pgid))
            self.proc.poll()
            _reap(pid for pid in self._known if pid != self.proc.pid)
            if not any(_proc_stat(pid) is not None for pid in self._known):
                break
            time.sleep(0.1)
        self._signal_all(signal.SIGKILL)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            log(f"warning: {self.name} (pid {self.proc.pid}) did not exit after SIGKILL")
        time.sleep(0.2)
        _reap(pid for pid in self._known if pid != self.proc.pid)


def _become_subreaper() -> None:
    """Have orphaned descendants (Chromium's zygote processes, multiprocess workers) re-parented to this
    process instead of init, so that `Group.stop` can reap them: no zombies are left behind."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        pass


def _reap(pids) -> None:
    for pid in pids:
        try:
            os.waitpid(pid, os.WNOHANG)
        except (ChildProcessError, OSError):
            pass


def _sweep_orphans() -> None:
    """Kill and reap what was re-parented to this (subreaper) process: the children it started itself are
    all stopped by then, so anything left is an orphan of theirs (e.g. Chromium's crash handler)."""
    me = os.getpid()
    for _ in range(3):
        orphans = []
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    data = f.read().decode("utf-8", "replace")
            except OSError:
                continue
            fields = data[data.rfind(")") + 2 :].split()
            if int(fields[1]) == me:
                orphans.append(int(name))
                if fields[0] != "Z":
                    try:
                        os.kill(int(name), signal.SIGKILL)
                    except OSError:
                        pass
        if not orphans:
            return
        time.sleep(0.2)
        _reap(orphans)


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _http_get(url: str, timeout: float = 2.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return resp.read()


def _wait_http(url: str, group: Group, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            _http_get(url)
            return
        except (urllib.error.URLError, OSError):
            pass
        if not group.alive():
            tail = group.log_tail()
            raise ScreenshotError(
                f"{what} exited with code {group.proc.returncode} before answering on {url}"
                + (f"; last output:\n{tail}" if tail else "")
            )
        if time.monotonic() > deadline:
            raise ScreenshotError(f"{what} did not answer on {url} within {timeout_s:.0f} s")
        time.sleep(1.0)


# --------------------------------------------------------------------------------------------------
# DevTools protocol


class CDP:
    """A minimal Chrome DevTools Protocol client on one page target."""

    def __init__(self, ws):
        self.ws = ws
        self.next_id = 0
        self.pending: dict[int, asyncio.Future] = {}
        self.event_waiters: dict[str, list[asyncio.Future]] = {}
        self.reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                msg = json.loads(raw)
                if "id" in msg:
                    fut = self.pending.pop(msg["id"], None)
                    if fut is not None and not fut.done():
                        if "error" in msg:
                            fut.set_exception(ScreenshotError(f"DevTools error: {msg['error']}"))
                        else:
                            fut.set_result(msg.get("result", {}))
                elif "method" in msg:
                    for fut in self.event_waiters.pop(msg["method"], []):
                        if not fut.done():
                            fut.set_result(msg.get("params", {}))
        except Exception as err:  # connection lost: fail everything that waits
            for fut in self.pending.values():
                if not fut.done():
                    fut.set_exception(ScreenshotError(f"DevTools connection lost: {err!r}"))
            return
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(ScreenshotError("DevTools connection closed"))

    async def send(self, method: str, params: Optional[dict] = None, timeout: float = 60.0) -> dict:
        self.next_id += 1
        fut = asyncio.get_running_loop().create_future()
        self.pending[self.next_id] = fut
        await self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params or {}}))
        try:
            return await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            raise ScreenshotError(f"DevTools call {method} did not answer within {timeout:.0f} s") from None

    def expect_event(self, method: str) -> asyncio.Future:
        """A future for the next ``method`` event; create it before the call that triggers the event."""
        fut = asyncio.get_running_loop().create_future()
        self.event_waiters.setdefault(method, []).append(fut)
        return fut

    async def evaluate(self, expression: str) -> Any:
        res = await self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in res:
            return None
        return res.get("result", {}).get("value")

    async def screenshot(self) -> bytes:
        res = await self.send("Page.captureScreenshot", {"format": "png"}, timeout=120.0)
        return base64.b64decode(res["data"])

    async def close(self) -> None:
        self.reader.cancel()
        try:
            await self.ws.close()
        except Exception:
            pass


def _page_ws_url(debug_port: int, group: Group, timeout_s: float = 60.0) -> str:
    url = f"http://127.0.0.1:{debug_port}/json"
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            targets = json.loads(_http_get(url))
            pages = [t for t in targets if t.get("type") == "page" and t.get("webSocketDebuggerUrl")]
            if pages:
                return pages[0]["webSocketDebuggerUrl"]
        except (urllib.error.URLError, OSError, ValueError):
            pass
        if not group.alive():
            raise ScreenshotError(
                f"chromium exited with code {group.proc.returncode}; last output:\n{group.log_tail()}"
            )
        if time.monotonic() > deadline:
            raise ScreenshotError(f"chromium did not list a page on {url} within {timeout_s:.0f} s")
        time.sleep(0.5)


# --------------------------------------------------------------------------------------------------
# images

# JavaScript: the largest <canvas> (viser's three.js view) as [x, y, w, h] in CSS pixels, or null.
CANVAS_RECT_JS = """
(() => {
  let best = null;
  for (const c of document.querySelectorAll('canvas')) {
    const r = c.getBoundingClientRect();
    if (r.width > 0 && r.height > 0 && (!best || r.width * r.height > best[2] * best[3]))
      best = [r.x, r.y, r.width, r.height];
  }
  return best;
})()
"""

# JavaScript: focus and select the text box of the "Max res" slider; true when found.
FOCUS_MAX_RES_JS = """
(() => {
  for (const el of document.querySelectorAll('label, div, span, p')) {
    if (el.childElementCount !== 0 || el.textContent.trim() !== 'Max res') continue;
    let box = el.parentElement;
    for (let i = 0; i < 5 && box; i++, box = box.parentElement) {
      const inputs = [...box.querySelectorAll('input')]
        .filter((x) => x.type !== 'range' && x.type !== 'hidden');
      if (inputs.length === 1) { inputs[0].focus(); inputs[0].select(); return true; }
    }
  }
  return false;
})()
"""

CLICK_BUTTON_JS = """
((label) => {
  for (const b of document.querySelectorAll('button')) {
    if (b.innerText.trim() === label) { b.click(); return true; }
  }
  return false;
})(%s)
"""


def _gray(png: bytes):
    import numpy as np
    from PIL import Image

    with Image.open(io.BytesIO(png)) as img:
        return np.asarray(img.convert("L"), dtype=np.float32)


def _center_std(png: bytes, rect: Optional[list]) -> float:
    """Standard deviation of the grey levels in the middle third of the canvas (or of the image)."""
    g = _gray(png)
    h, w = g.shape
    x, y, cw, ch = rect if rect else (0, 0, w, h)
    x0, x1 = int(x + cw / 3), int(x + 2 * cw / 3)
    y0, y1 = int(y + ch / 3), int(y + 2 * ch / 3)
    crop = g[max(0, y0) : min(h, y1), max(0, x0) : min(w, x1)]
    return float(crop.std()) if crop.size else 0.0


def _mean_abs_diff(a: bytes, b: bytes) -> float:
    ga, gb = _gray(a), _gray(b)
    if ga.shape != gb.shape:
        return float("inf")
    return float(abs(ga - gb).mean())


# --------------------------------------------------------------------------------------------------
# main flow


async def _drive(cfg: ViewerScreenshot, ws_url: str) -> tuple[bytes, float, bool]:
    """Returns (png, seconds waited after page load, settled?)."""
    from websockets.asyncio.client import connect

    async with connect(ws_url, max_size=None, open_timeout=30, ping_interval=None) as ws:
        cdp = CDP(ws)
        try:
            return await _drive_page(cfg, cdp)
        finally:
            await cdp.close()


async def _resolution(cdp: CDP) -> Optional[tuple[int, int]]:
    text = await cdp.evaluate("document.body ? document.body.innerText : ''") or ""
    m = RESOLUTION_RE.search(text)
    return (int(m.group(1)), int(m.group(2))) if m else None


async def _set_max_res(cdp: CDP, value: int) -> bool:
    """Type ``value`` into the number box of the viewer's "Max res" slider."""
    if not await cdp.evaluate(FOCUS_MAX_RES_JS):
        return False
    await cdp.send("Input.insertText", {"text": str(value)})
    await cdp.evaluate("document.activeElement && document.activeElement.blur()")
    return True


def _visible(rect: Optional[list], width: int, height: int) -> list:
    """The part of ``rect`` ([x, y, w, h]) inside the viewport, or the whole viewport."""
    if not rect:
        return [0, 0, width, height]
    x0, y0 = max(0.0, rect[0]), max(0.0, rect[1])
    x1, y1 = min(float(width), rect[0] + rect[2]), min(float(height), rect[1] + rect[3])
    if x1 <= x0 or y1 <= y0:
        return [0, 0, width, height]
    return [x0, y0, x1 - x0, y1 - y0]


async def _drive_page(cfg: ViewerScreenshot, cdp: CDP) -> tuple[bytes, float, bool]:
    await cdp.send("Page.enable")
    await cdp.send("Runtime.enable")
    await cdp.send(
        "Emulation.setDeviceMetricsOverride",
        {"width": cfg.width, "height": cfg.height, "deviceScaleFactor": 1, "mobile": False},
    )
    loaded = cdp.expect_event("Page.loadEventFired")
    url = f"http://127.0.0.1:{cfg.port}/"
    res = await cdp.send("Page.navigate", {"url": url})
    if res.get("errorText"):
        raise ScreenshotError(f"chromium could not open {url}: {res['errorText']}")
    try:
        await asyncio.wait_for(loaded, 60)
    except asyncio.TimeoutError:
        log("page load event not seen within 60 s; going on")
    t0 = time.monotonic()

    def waited() -> float:
        return time.monotonic() - t0

    # Wait until the viewer's GUI has arrived over its websocket (the stats line "Resolution: WxHpx")
    # and the three.js canvas has a size.
    rect = None
    while True:
        rect = await cdp.evaluate(CANVAS_RECT_JS)
        if rect and await _resolution(cdp) is not None:
            break
        if waited() > max(cfg.wait_s, 30):
            log("the viewer's controls did not appear; going on with what the page shows")
            break
        await asyncio.sleep(1.0)
    view = _visible(rect, cfg.width, cfg.height)
    log(f"viewer page up after {waited():.1f} s")

    if cfg.hide_train_cams and not await cdp.evaluate(CLICK_BUTTON_JS % json.dumps("Hide Train Cams")):
        log('warning: no "Hide Train Cams" button found')
    if cfg.max_res != VIEWER_MAX_RES and not await _set_max_res(cdp, cfg.max_res):
        log('warning: no "Max res" box found; the viewer keeps its default')

    before = await _resolution(cdp)
    if cfg.zoom_out_steps > 0:
        # the middle of the part of the canvas left of the control panel
        cx, cy = view[0] + view[2] / 2, view[1] + view[3] / 2
        await cdp.send("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": cx, "y": cy})
        for _ in range(cfg.zoom_out_steps):
            await cdp.send(
                "Input.dispatchMouseEvent",
                {"type": "mouseWheel", "x": cx, "y": cy, "deltaX": 0, "deltaY": WHEEL_DELTA_Y},
            )
            await asyncio.sleep(0.2)
        log(f"zoomed out by {cfg.zoom_out_steps} wheel steps")
    if cfg.zoom_out_steps > 0 or cfg.max_res != VIEWER_MAX_RES:
        # The change makes the viewer drop to a low-resolution preview before its sharp frame; wait for
        # that, briefly (where previews are already at full resolution, nothing changes).
        t_change = time.monotonic()
        while time.monotonic() - t_change < 20 and waited() < cfg.wait_s:
            if await _resolution(cdp) != before:
                break
            await asyncio.sleep(0.5)

    # Poll until the final frame: the viewer's full-resolution render, two consecutive screenshots
    # (nearly) the same, and a non-uniform centre of the view. A view that stays uniform (an empty
    # scene, or a camera inside an object) is accepted after three such polls, with a warning.
    await asyncio.sleep(2.0)
    prev = None
    shot = await cdp.screenshot()
    uniform_polls = 0
    while True:
        res = await _resolution(cdp)
        high = res is None or max(res) >= cfg.max_res
        std = _center_std(shot, view)
        diff = _mean_abs_diff(prev, shot) if prev is not None else float("inf")
        log(f"{waited():5.1f} s: viewer frame {res}, centre std {std:.1f}, change {diff:.2f}")
        if high and diff < 0.5:
            if std > 2.0:
                return shot, waited(), True
            uniform_polls += 1
            if uniform_polls >= 3:
                log("warning: the centre of the view is uniform (empty scene, or the camera inside an "
                    "object? try another --zoom-out-steps)")
                return shot, waited(), True
        else:
            uniform_polls = 0
        if waited() >= cfg.wait_s:
            return shot, waited(), False
        await asyncio.sleep(min(4.0, max(0.0, cfg.wait_s - waited())))
        prev, shot = shot, await cdp.screenshot()


def _write_atomic(path: Path, data: bytes) -> None:
    path = path.resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def run(cfg: ViewerScreenshot) -> None:
    if not cfg.load_config.is_file():
        raise ScreenshotError(f"{cfg.load_config} is not a file")
    if not 64 <= cfg.max_res <= 2048:
        raise ScreenshotError(f"--max-res {cfg.max_res} is outside the viewer's range 64-2048")
    if cfg.width < 100 or cfg.height < 100:
        raise ScreenshotError(f"--width/--height {cfg.width}x{cfg.height}: at least 100x100, please")
    chromium = shutil.which(str(cfg.chromium))
    if chromium is None:
        raise ScreenshotError(f"{cfg.chromium} not found: install the Debian package `chromium`")
    ns_viewer = Path(sys.executable).parent / "ns-viewer"
    if not ns_viewer.exists():
        found = shutil.which("ns-viewer")
        if found is None:
            raise ScreenshotError("ns-viewer not found (is nerfstudio installed in this environment?)")
        ns_viewer = Path(found)
    for port, what in ((cfg.port, "--port"), (cfg.debug_port, "--debug-port")):
        if _port_in_use(port):
            raise ScreenshotError(f"port {port} ({what}) is already in use")

    _become_subreaper()
    groups: list[Group] = []
    with tempfile.TemporaryDirectory(prefix="viewer_screenshot-") as tmp:
        tmpdir = Path(tmp)
        try:
            t_start = time.monotonic()
            viewer = Group(
                "ns-viewer",
                [str(ns_viewer), "--load-config", str(cfg.load_config),
                 "--viewer.websocket-port", str(cfg.port), "--viewer.websocket-host", "127.0.0.1"],
                log_path=tmpdir / "ns-viewer.log",
                env=dict(os.environ, PYTHONUNBUFFERED="1"),
            )
            groups.append(viewer)
            log(f"started ns-viewer (pid {viewer.proc.pid}), waiting for http://127.0.0.1:{cfg.port}/")
            _wait_http(f"http://127.0.0.1:{cfg.port}/", viewer, cfg.startup_timeout_s, "ns-viewer")
            log(f"ns-viewer up after {time.monotonic() - t_start:.1f} s")

            browser = Group(
                "chromium",
                [chromium, "--headless=new", "--no-sandbox", "--use-angle=swiftshader",
                 "--enable-unsafe-swiftshader", f"--remote-debugging-port={cfg.debug_port}",
                 f"--window-size={cfg.width},{cfg.height}", f"--user-data-dir={tmpdir / 'chromium'}",
                 "--no-first-run", "--no-default-browser-check", "--disable-extensions",
                 "--hide-scrollbars", "--mute-audio", "about:blank"],
                log_path=tmpdir / "chromium.log",
            )
            groups.append(browser)
            ws_url = _page_ws_url(cfg.debug_port, browser)
            png, waited, settled = asyncio.run(_drive(cfg, ws_url))
        finally:
            # a second Ctrl-C must not cut the clean-up short (it takes a few seconds at most)
            handlers = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                for group in reversed(groups):
                    group.stop()
                _sweep_orphans()
            finally:
                for sig, handler in handlers.items():
                    signal.signal(sig, handler)

    _write_atomic(cfg.output, png)
    if not settled:
        log(f"warning: the view did not settle within --wait-s {cfg.wait_s:.0f} s; saved the latest frame")
    total = time.monotonic() - t_start
    print(f"wrote {cfg.output} ({cfg.width}x{cfg.height}); waited {waited:.1f} s for the frame, "
          f"{total:.1f} s in all")


def _raise_on_signal(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Optional[list[str]] = None) -> int:
    cfg = tyro.cli(ViewerScreenshot, args=argv)
    # SIGTERM / SIGHUP unwind like Ctrl-C, so that the `finally` blocks stop the child processes.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_on_signal)
    try:
        run(cfg)
    except ScreenshotError as err:
        log(f"error: {err}")
        return 1
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
