"""Freed memory kept in the process, so the next batch reuses its pages.

PyTorch on a CPU allocates activations, logits and KV caches of tens to hundreds of
MB at every step. glibc serves blocks over its mmap threshold (at most 32 MB) with
fresh mmaps and unmaps them on free, and trims the heap's free top; every step then
faults its working set in again, page by page. On a VM where first touch is slow that
is minutes of a study (`bench/allocators.py` measures it against jemalloc and
TCMalloc). `keep_freed_memory` tells glibc to serve every block from its heap and
keep what is freed: the process's peak stays resident, and later steps reuse it.

On by default where `alignscope` runs (the CLI calls this first); `ALIGNSCOPE_MALLOC=system`
leaves glibc as it is. Chosen by `bench/allocators.py` run alone on the demo's own steps
(docs/results/2026-12-06-demo-costs.md): a DPO step took 0.86x glibc's wall time kept, an SFT step
0.76x, with a thirtieth of the page faults; jemalloc and TCMalloc with retention did about as well
or a little better but need a library preloaded. The cost: a process keeps its peak resident until
it exits. Elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

from alignscope.io import InputError

MALLOC_ENV = "ALIGNSCOPE_MALLOC"
# mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_MAX = -1, -2, -4
# mallopt takes a C int: the largest free top the heap keeps before trimming
KEEP_TOP = 2**31 - 1
# grow the heap in steps of this much, fewer brk calls for a process that keeps growing
TOP_PAD = 64 * 2**20
_setting: str | None = None


def glibc():
    """The C library when it is glibc (it has mallopt and gnu_get_libc_version), else None."""
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.gnu_get_libc_version
        libc.mallopt
    except (OSError, AttributeError):
        return None
    return libc


def allocator() -> str:
    """What this process allocates with, for a run's manifest."""
    return _setting or "system allocator (keep_freed_memory not called)"


def keep_freed_memory() -> str:
    """Set glibc to keep freed memory; returns what was done, for a run's record."""
    global _setting
    _setting = _keep_freed_memory()
    return _setting


def _keep_freed_memory() -> str:
    setting = os.environ.get(MALLOC_ENV, "keep")
    if setting not in ("keep", "system"):
        raise InputError(f"{MALLOC_ENV}={setting!r}: expected keep (the default) or system")
    if setting == "system":
        return f"system allocator ({MALLOC_ENV}=system)"
    preloaded = os.environ.get("LD_PRELOAD", "")
    if "jemalloc" in preloaded or "tcmalloc" in preloaded:
        return f"preloaded {os.path.basename(preloaded.split(':')[0])}"
    libc = glibc()
    if libc is None:
        return "system allocator (not glibc)"
    ok = all(libc.mallopt(param, value) == 1 for param, value in
             ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, KEEP_TOP), (M_TOP_PAD, TOP_PAD)))
    return "glibc, freed memory kept (mallopt)" if ok else "system allocator (mallopt refused)"
