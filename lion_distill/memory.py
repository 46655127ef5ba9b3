"""The driver's memory: a pool of millions of rows passes through it as Arrow tables a stage at a
time, and what a stage frees should leave the process, not stay resident under the next stage.

    driver_allocator()   # once, where the driver starts (lion_distill.cli.init_ray)
    give_back_memory()   # after a stage, or a step that freed pool-sized tables

Arrow's buffers come from jemalloc on the driver where pyarrow is built with it (its Linux and
macOS wheels are): Arrow configures its jemalloc to return freed pages to the
system promptly, while mimalloc, pyarrow's default, keeps them until asked. A stage's
transient copies (an answer table put in the pool's order, a file's pages while it is read) then
do not add up to its peak: 0.19 GB less at the peak of one Lion iteration over 1M instructions,
in the same time (benchmarks/RESULTS.md). ARROW_DEFAULT_MEMORY_POOL, where set, is left to decide.
"""

from __future__ import annotations

import ctypes
import gc
import os

import pyarrow as pa


def driver_allocator() -> str:
    """Arrow's default memory pool set to jemalloc where pyarrow has it and the user chose none
    (ARROW_DEFAULT_MEMORY_POOL) -> the backend in use."""
    if "ARROW_DEFAULT_MEMORY_POOL" not in os.environ:
        try:
            pa.set_memory_pool(pa.jemalloc_memory_pool())
        except NotImplementedError:  # a pyarrow built without jemalloc (Windows wheels): its default stays
            pass
    return pa.default_memory_pool().backend_name


def give_back_memory() -> None:
    """The memory a finished stage freed, returned to the system. The allocators keep it otherwise
    (glibc's for Python's objects, Arrow's for its buffers), so each stage's pool-sized
    tables would stay in the driver's resident memory under the next stage's."""
    gc.collect()
    pa.default_memory_pool().release_unused()
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def _malloc_trim():
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim  # glibc's: what its heap holds freed, back to the system
    except (OSError, AttributeError):
        return None


_MALLOC_TRIM = _malloc_trim()
