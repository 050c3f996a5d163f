"""Giving freed memory back to the system."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
from typing import Any


@functools.cache
def _libc() -> Any:
    name = ctypes.util.find_library("c")
    return ctypes.CDLL(name) if name else None


def release_memory() -> None:
    """Return the heap's free pages to the system (glibc ``malloc_trim``; a no-op elsewhere).

    After a whole slide (many images' worth of pixels decoded, pickled and dropped) glibc keeps the freed
    arenas mapped, so the process stays at its peak; this brings it back to what it holds.
    """
    libc = _libc()
    if libc is not None:
        with contextlib.suppress(AttributeError, OSError):
            libc.malloc_trim(0)
