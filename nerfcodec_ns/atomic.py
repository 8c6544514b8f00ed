"""Atomic file writing, the one helper the whole package uses (scene files, backbone files,
pre-training checkpoints, bench results).

:func:`write_atomic` writes a temporary file in the destination folder, fsyncs it, gives it the
permissions of a normally created file (``0o666 & ~umask``; ``mkstemp`` makes it 0600), then moves it
into place: ``os.replace`` when overwriting, ``os.link`` otherwise (so a file that appeared meanwhile
is never clobbered), and fsyncs the folder. A reader sees the old file or the complete new one, never
a partial one, and a failure leaves no temporary file behind.

No torch here (the scene-file format modules use it and must stay torch-free).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import IO, Any, Callable, Union

__all__ = ["current_umask", "write_atomic"]

#: What :func:`write_atomic` writes: the bytes, or a function that writes them to a binary file
#: (e.g. ``lambda f: torch.save(obj, f)``, which avoids a copy of large objects in memory).
Data = Union[bytes, bytearray, memoryview, Callable[[IO[bytes]], Any]]


def current_umask() -> int:
    """The process's file-mode creation mask (read without changing it for longer than a call)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable; best effort (not every platform can fsync a folder)."""
    try:
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def write_atomic(path: Union[str, os.PathLike], data: Data, overwrite: bool = False) -> Path:
    """Write ``data`` to ``path`` all-or-nothing: a temp file in the same folder, fsync, then rename.

    ``data``: bytes, or a function called with the open binary temp file that writes the content.
    Refuses an existing ``path`` unless ``overwrite`` (``FileExistsError``, one line; the existing
    file is untouched). The folder must exist (``FileNotFoundError``). On any failure no partial file
    and no temp file is left. Returns the path.
    """
    path = Path(path)
    if not (isinstance(data, (bytes, bytearray, memoryview)) or callable(data)):
        kind = type(data).__name__
        raise TypeError(f"write_atomic expects bytes or a function writing a binary file, got {kind}")
    folder = path.parent
    if not folder.is_dir():
        raise FileNotFoundError(f"cannot write {path}: folder {folder} does not exist")
    if path.is_dir():
        raise IsADirectoryError(f"cannot write {path}: it is a directory")
    exists = f"{path} already exists (pass overwrite=True to replace it)"
    if path.exists() and not overwrite:
        raise FileExistsError(exists)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())
        if overwrite:
            os.replace(tmp, path)
        else:
            try:  # link() fails if path appeared meanwhile, so a racing writer is never clobbered
                os.link(tmp, path)
            except FileExistsError:
                raise FileExistsError(exists) from None
            except OSError:  # file systems without hard links
                if path.exists():
                    raise FileExistsError(exists) from None
                os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.unlink(missing_ok=True)
    _fsync_folder(folder)
    return path
