"""Distilling step-by-step, end to end (see lion_distill/step_by_step/job.py).

python jobs/step_by_step.py --config configs/step-by-step-demo.yaml [--set fractions=[1.0] ...]
ray job submit --working-dir . -- python jobs/step_by_step.py --config configs/step-by-step-cqa.yaml
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from lion_distill.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["step_by_step", *sys.argv[1:]]))
