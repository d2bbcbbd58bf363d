"""`ray job submit --working-dir . -- python jobs/train.py CONFIG.yaml [--out DIR] [key=value ...]`

Runs a whole SIPF run on the cluster the job was submitted to (RAY_ADDRESS is set by `ray job submit`).
Artifacts go to --out (a path on the head node) and, with `storage=<uri>` in the config, are mirrored
to that bucket after every iteration so `jobs/resume.py` can continue on a fresh head node.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # the submitted working dir

from sitf_ray.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
