# Session-wide fixtures live in tests/fixtures/, one module each; import them here.
from tests.fixtures.ray_cluster import ray_cluster  # noqa: F401
from tests.fixtures.smol_models import smol_models  # noqa: F401
from tests.fixtures.tiny_models import tiny_models  # noqa: F401
from tests.fixtures.vllm_server import vllm_server  # noqa: F401


def pytest_collection_modifyitems(items):
    """A test that uses the session's Ray cluster or vLLM server is marked so, whether or not its
    file says it: `-m "not ray and not vllm"` is then really the fast subset."""
    import pytest

    for item in items:
        if "ray_cluster" in item.fixturenames:
            item.add_marker(pytest.mark.ray)
        if "vllm_server" in item.fixturenames:
            item.add_marker(pytest.mark.vllm)
        if "smol_models" in item.fixturenames:
            item.add_marker(pytest.mark.smol)
