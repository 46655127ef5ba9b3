# Session-wide fixtures live in tests/fixtures/, one module each; import them here.
import os

# Before any cluster starts: Ray Data's usage poller queries a Prometheus server a local cluster
# lacks and logs a traceback per poll from a thread; on CPython 3.11 formatting a traceback uses
# `ast`, whose recursion counter is shared by every thread, and a test's own `ast.parse` then
# fails with "AST constructor recursion depth mismatch" (CI, 2026-12-07).
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from tests.fixtures.gpu_cluster import gpu_cluster  # noqa: F401
from tests.fixtures.ray_cluster import ray_cluster  # noqa: F401
from tests.fixtures.s3_server import s3_bucket, s3_server  # noqa: F401  (sets the S3 endpoint before any cluster starts)
from tests.fixtures.smol_models import smol_models  # noqa: F401
from tests.fixtures.thinking_server import thinking_server  # noqa: F401
from tests.fixtures.tiny_models import tiny_models  # noqa: F401
from tests.fixtures.two_nodes import two_nodes  # noqa: F401
from tests.fixtures.vllm_server import vllm_server  # noqa: F401


def pytest_collection_modifyitems(items):
    """A test that uses the session's Ray cluster or vLLM server is marked so, whether or not its
    file says it: `-m "not ray and not vllm"` is then really the fast subset."""
    import pytest

    for item in items:
        if {"ray_cluster", "two_nodes"} & set(item.fixturenames):
            item.add_marker(pytest.mark.ray)
        if {"vllm_server", "thinking_server"} & set(item.fixturenames):
            item.add_marker(pytest.mark.vllm)
        if "smol_models" in item.fixturenames:
            item.add_marker(pytest.mark.smol)
