"""`ray job submit --working-dir . -- python jobs/evaluate.py RUN_DIR [--iteration K]`: test accuracy of a policy."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sitf_ray.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["eval", *sys.argv[1:]]))
