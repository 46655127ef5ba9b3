import gc
import os

import numpy as np
import pyarrow as pa
import pytest

from lion_distill.memory import driver_allocator, give_back_memory


def _own_heap_mb() -> int:
    with open("/proc/self/status") as status:
        return int(next(line for line in status if line.startswith("RssAnon:")).split()[1]) // 1024


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads the process's RssAnon from /proc")
def test_the_memory_a_finished_stage_freed_goes_back_to_the_system():
    # What a stage on a pool of millions leaves freed: Arrow tables built a chunk at a time, Python rows.
    tables = [
        pa.table({"id": pa.array([f"{i:016x}" for i in range(k, k + 8192)]), "n": pa.array(np.arange(8192))})
        for k in range(0, 2_000_000, 8192)
    ]
    rows = [{"id": i, "text": str(i)} for i in range(500_000)]
    pool = pa.concat_tables(tables).combine_chunks()
    del tables, rows, pool
    gc.collect()
    freed = _own_heap_mb()
    give_back_memory()
    assert _own_heap_mb() < freed - 80  # measured: 155 MB freed but kept, 31 MB after


@pytest.fixture
def arrow_pool(monkeypatch):
    """Arrow's default pool as it was before the test, and no ARROW_DEFAULT_MEMORY_POOL."""
    before = pa.default_memory_pool()
    monkeypatch.delenv("ARROW_DEFAULT_MEMORY_POOL", raising=False)
    yield
    pa.set_memory_pool(before)


def _has_jemalloc() -> bool:
    try:
        pa.jemalloc_memory_pool()
    except NotImplementedError:
        return False
    return True


@pytest.mark.skipif(not _has_jemalloc(), reason="this pyarrow is built without jemalloc")
def test_the_driver_allocates_arrow_buffers_with_jemalloc(arrow_pool):
    pa.set_memory_pool(pa.mimalloc_memory_pool())
    assert driver_allocator() == "jemalloc"
    jemalloc = pa.jemalloc_memory_pool()
    before = jemalloc.bytes_allocated()
    rows = pa.array([f"row {i}" for i in range(100_000)])  # new buffers: from jemalloc
    assert jemalloc.bytes_allocated() >= before + rows.nbytes


def test_an_allocator_the_user_chose_is_kept(arrow_pool, monkeypatch):
    pa.set_memory_pool(pa.system_memory_pool())
    monkeypatch.setenv("ARROW_DEFAULT_MEMORY_POOL", "system")
    assert driver_allocator() == "system"
