"""`ray job submit --working-dir . -- PYTHON jobs/resume.py RUN_DIR_OR_URI`: continue a run after a crash.
(PYTHON: the project's interpreter, see jobs/train.py)
"""
import sys

from _entry import run  # jobs/_entry.py: checks the interpreter first

if __name__ == "__main__":
    sys.exit(run("resume"))
