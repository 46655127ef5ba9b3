"""Evaluate models against a reference with an LLM judge (Lion's Vicuna-80 protocol).

    python jobs/evaluate.py --config configs/eval-demo.yaml        # a local Ray cluster, tiny models
    ray job submit --working-dir . -- python jobs/evaluate.py --config configs/eval-vicuna80.yaml

Run again with the same run_dir to resume after the last completed stage.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from lion_distill.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
