"""`ray job submit --working-dir . -- PYTHON jobs/train.py CONFIG.yaml [--out DIR] [key=value ...]`

Runs a whole SIPF run on the cluster the job was submitted to (RAY_ADDRESS is set by `ray job submit`).
Artifacts go to --out (a path on the head node) and, with `storage=<uri>` in the config, are mirrored
to that bucket after every iteration so `jobs/resume.py` can continue on a fresh head node.
PYTHON is the interpreter of the project's environment: `$PWD/.venv/bin/python` on one machine, `python3`
on cluster.yaml's nodes (its setup_commands install sitf-ray there); _entry.py says so when it is not.
"""
import sys

from _entry import run  # jobs/_entry.py: checks the interpreter first

if __name__ == "__main__":
    sys.exit(run("run"))
