"""nerfcodec_ns/atomic.py: the one atomic writer (scene files, backbone files, checkpoints, bench
results): all-or-nothing, no leftovers, normal permissions, bytes or a writer function."""

from __future__ import annotations

import os
import stat

import pytest

from nerfcodec_ns import atomic
from nerfcodec_ns.atomic import current_umask, write_atomic


def test_writes_bytes_with_normal_permissions(tmp_path):
    path = write_atomic(tmp_path / "out.bin", b"data")
    assert path == tmp_path / "out.bin" and path.read_bytes() == b"data"
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~current_umask()  # not mkstemp's 0600
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_writer_function_and_its_failure(tmp_path):
    path = tmp_path / "out.bin"
    write_atomic(path, lambda f: f.write(b"streamed"))
    assert path.read_bytes() == b"streamed"

    def half_then_fail(f):
        f.write(b"partial")
        raise RuntimeError("serialization failed")

    with pytest.raises(RuntimeError, match="serialization failed"):
        write_atomic(path, half_then_fail, overwrite=True)
    assert path.read_bytes() == b"streamed" and [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_current_umask_reads_without_changing_it():
    before = os.umask(0o027)
    try:
        assert current_umask() == 0o027 and current_umask() == 0o027
    finally:
        os.umask(before)


def test_argument_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_atomic(tmp_path / "no" / "out.bin", b"")
    with pytest.raises(IsADirectoryError):
        write_atomic(tmp_path, b"", overwrite=True)
    with pytest.raises(TypeError, match="expects bytes"):
        write_atomic(tmp_path / "out.bin", "text")  # type: ignore[arg-type]
    assert not os.path.exists(tmp_path / "no") and list(tmp_path.iterdir()) == []


def test_write_atomic_refuses_to_overwrite(tmp_path):
    path = tmp_path / "out.bin"
    path.write_bytes(b"mine")
    with pytest.raises(FileExistsError) as info:
        write_atomic(path, b"new")
    message = str(info.value)
    assert "\n" not in message and str(path) in message and "overwrite=True" in message
    assert path.read_bytes() == b"mine" and [p.name for p in tmp_path.iterdir()] == ["out.bin"]
    write_atomic(path, b"new", overwrite=True)
    assert path.read_bytes() == b"new" and [p.name for p in tmp_path.iterdir()] == ["out.bin"]


@pytest.mark.parametrize("overwrite", [False, True])
@pytest.mark.parametrize("failing", ["fsync", "replace_or_link"])
def test_write_atomic_leaves_nothing_on_failure(tmp_path, monkeypatch, overwrite, failing):
    path = tmp_path / "out.bin"
    if overwrite:
        path.write_bytes(b"old")

    def boom(*args, **kwargs):
        raise OSError("simulated disk failure")

    if failing == "fsync":
        monkeypatch.setattr(atomic.os, "fsync", boom)
    else:
        monkeypatch.setattr(atomic.os, "replace", boom)
        monkeypatch.setattr(atomic.os, "link", boom)
    with pytest.raises(OSError, match="simulated disk failure"):
        write_atomic(path, b"x" * 10000, overwrite=overwrite)
    assert sorted(p.name for p in tmp_path.iterdir()) == (["out.bin"] if overwrite else [])
    if overwrite:
        assert path.read_bytes() == b"old"

