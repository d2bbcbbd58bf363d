"""`ray job submit --working-dir . -- PYTHON jobs/evaluate.py RUN_DIR [--iteration K]`: test accuracy of a policy.
(PYTHON: the project's interpreter, see jobs/train.py)
"""
import sys

from _entry import run  # jobs/_entry.py: checks the interpreter first

if __name__ == "__main__":
    sys.exit(run("eval"))
