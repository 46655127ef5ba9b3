"""Distillation of a pool: the teacher answers it, the student distils the answers (distill.mode: sft | logit_kd).

    python jobs/distill.py --config configs/distill-smol.yaml [--set distill.mode=logit_kd ...]   # a local Ray cluster
    ray job submit --working-dir . -- python jobs/distill.py --config configs/distill-smol.yaml
    RAY_ADDRESS=HOST:6379 python jobs/distill.py ...                                 # an existing cluster

Run again with the same run_dir to resume after the last completed stage.
"""

import sys
from pathlib import Path

# `lion-distill lion ...` needs no file; this one serves `ray job submit` and a checkout. Run
# from a checkout, the checkout's own lion_distill wins over any installed copy (an editable install
# of another worktree included); an installed package alone needs no path at all.
if (Path(__file__).resolve().parent.parent / "lion_distill" / "cli.py").is_file():
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lion_distill.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["distill", *sys.argv[1:]]))
