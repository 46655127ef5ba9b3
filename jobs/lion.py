"""Lion adversarial distillation, end to end.

    python jobs/lion.py --config configs/demo.yaml [--set lion.iterations=1 ...]   # a local Ray cluster
    ray job submit --working-dir . -- python jobs/lion.py --config configs/lion-7b.yaml
    RAY_ADDRESS=HOST:6379 python jobs/lion.py ...                                 # an existing cluster

Run again with the same run_dir to resume after the last completed stage.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from engine.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["lion", *sys.argv[1:]]))
