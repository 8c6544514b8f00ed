"""Keep freed memory in the process: glibc's allocator settings for CPU training.

With glibc's defaults every tensor of more than a few MB is a fresh ``mmap``, handed back to the
kernel when it is freed, so each training step page-faults its large activations in again. On this
project's 2-core CPU machine that was a third of a joint step's time in the kernel
(docs/codec.md, "The allocator"). :func:`tune_malloc` sets, through glibc's ``mallopt``:

* ``M_MMAP_MAX`` 0: every allocation comes from the heap, which reuses freed blocks;
* ``M_TRIM_THRESHOLD`` 2 GiB: freed memory at the top of the heap is kept, not trimmed.

The price: the process keeps its peak heap for its lifetime (+15% peak RSS in the codec step
benchmark). Set ``NERFCODEC_MALLOC=default`` to leave the allocator alone. It does nothing elsewhere
than glibc (macOS, musl, Windows), nor under an address-space limit (``RLIMIT_AS``), where memory
kept in the heap would count against the limit.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from typing import Dict, Optional

#: glibc's mallopt parameter numbers (malloc.h).
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4

#: The settings :func:`tune_malloc` applies (parameter number -> value).
SETTINGS: Dict[int, int] = {M_MMAP_MAX: 0, M_TRIM_THRESHOLD: 2**31 - 1}

ENV = "NERFCODEC_MALLOC"

_applied: Optional[bool] = None


def _glibc():
    """glibc's handle, or None on another C library."""
    if not hasattr(os, "confstr"):
        return None
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return None
    except (ValueError, OSError):
        return None
    name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        return ctypes.CDLL(name)
    except OSError:
        return None


def _address_space_limited() -> bool:
    try:
        import resource
    except ImportError:  # not POSIX
        return False
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    return soft != resource.RLIM_INFINITY


def tune_malloc(libc=None) -> bool:
    """Apply :data:`SETTINGS` once per process; True if they are in force. ``libc``: the C library
    (default: glibc's, found at run time)."""
    global _applied
    if _applied is not None and libc is None:
        return _applied
    if os.environ.get(ENV, "").strip().lower() == "default" or _address_space_limited():
        ok = False
    else:
        libc = libc if libc is not None else _glibc()
        ok = libc is not None and all(libc.mallopt(ctypes.c_int(k), ctypes.c_int(v)) == 1 for k, v in SETTINGS.items())
    _applied = ok
    return ok
