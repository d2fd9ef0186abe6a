"""The process's memory allocator: one setting the ``selfres`` command makes for every stage.

Kept apart from :mod:`selfres.infer` so that the stages without a network (normalise, crop,
qc, report, summary) start without importing torch.
"""

from __future__ import annotations

import contextlib
import functools
import os


@functools.lru_cache(maxsize=1)
def keep_freed_memory() -> bool:
    """Ask glibc's allocator to keep freed blocks of up to 32 MiB for reuse (once per process).

    By default glibc gives every block above 128 KiB–32 MiB straight back to the kernel,
    so each tile's activations are fresh pages that fault in again: measured here, that
    cost 15–30 % of CPU inference. Raising the mmap and trim thresholds keeps blocks of up
    to 32 MiB (glibc's largest threshold) in the heap; larger ones, the activations of a
    float32 pass of the default tile (~60 MiB) among them, stay in the heap only inside a
    network pass (:func:`heap_only`). A no-op off glibc, and with ``SELFRES_MALLOC_TUNE=0``.
    Returns whether the thresholds were set.

    It changes the whole process's allocator, so library functions never call it: the
    ``selfres`` command does, once, for every subcommand (and the ``bench/`` scripts);
    a program that imports selfres decides for itself.
    """
    if os.environ.get("SELFRES_MALLOC_TUNE", "1").strip() == "0":
        return False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(_M_MMAP_THRESHOLD, 32 * 2**20) == 1
        ok = ok and libc.mallopt(_M_TRIM_THRESHOLD, 256 * 2**20) == 1
    except (OSError, AttributeError):
        return False
    global _LIBC
    _LIBC = libc if ok else None
    return ok


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4
#: glibc's default M_MMAP_MAX (blocks it may map at once)
_MMAP_MAX_DEFAULT = 65536
#: libc, once :func:`keep_freed_memory` tuned this process (else None: :func:`heap_only` does nothing)
_LIBC = None


@contextlib.contextmanager
def heap_only():
    """Inside: glibc maps no block, so a network pass's activations above the 32 MiB threshold
    come from the heap and are reused by the next pass instead of faulting in afresh. Measured
    on a 64×1024×1024 volume at ``1,2,2`` on 2 threads without native bf16 (a reviewer's,
    default tile): the network's 128 tiles took 105 s instead of 161 s (the job 2 min 16 s
    instead of 3 min 12 s, system time 45 s instead of 141 s; peak memory 5.9 GB either way,
    the same output). Outside a pass blocks are mapped again: the whole volume's
    back-projection (GB-sized arrays) kept in the heap as well took the peak to 8.7 GB.
    Only where :func:`keep_freed_memory` tuned the process."""
    libc = _LIBC
    if libc is None:
        yield
        return
    libc.mallopt(_M_MMAP_MAX, 0)
    try:
        yield
    finally:
        libc.mallopt(_M_MMAP_MAX, _MMAP_MAX_DEFAULT)
