"""`ray job submit --working-dir . -- python jobs/resume.py RUN_DIR_OR_URI`: continue a run after a crash."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sitf_ray.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["resume", *sys.argv[1:]]))
