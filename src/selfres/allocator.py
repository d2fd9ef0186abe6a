"""The process's memory allocator: one setting the ``selfres`` command makes for every stage.

Kept apart from :mod:`selfres.infer` so that the stages without a network (normalise, crop,
qc, report, summary) start without importing torch.
"""

from __future__ import annotations

import functools
import os


@functools.lru_cache(maxsize=1)
def keep_freed_memory() -> bool:
    """Ask glibc's allocator to keep freed blocks of up to 32 MiB for reuse (once per process).

    By default glibc gives every block above 128 KiB–32 MiB straight back to the kernel,
    so each tile's activations are fresh pages that fault in again: measured here, that
    cost 15–30 % of CPU inference (the per-tile tensors are 10–30 MiB). Raising the mmap
    and trim thresholds keeps them in the heap; peak memory is unchanged (the same
    blocks are reused). A no-op off glibc, and with ``SELFRES_MALLOC_TUNE=0``.
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
        m_trim_threshold, m_mmap_threshold = -1, -3
        ok = libc.mallopt(m_mmap_threshold, 32 * 2**20) == 1
        return ok and libc.mallopt(m_trim_threshold, 256 * 2**20) == 1
    except (OSError, AttributeError):
        return False
