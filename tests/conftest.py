# Session-wide fixtures live in tests/fixtures/, one module each; import them here.
from tests.fixtures.ray_cluster import ray_cluster  # noqa: F401
from tests.fixtures.tiny_models import tiny_models  # noqa: F401
from tests.fixtures.vllm_server import vllm_server  # noqa: F401
