"""What every job entry point does first: name the interpreter when it is not the project's environment.

`ray job submit -- python jobs/X.py` runs whatever `python` the Ray node's PATH gives (on one machine: the
PATH of the shell that ran `ray start`, often not the project's .venv). Without this check such a job ends in
a traceback (`No module named 'ray'`); with it, one line says which interpreter ran and which to name.
"""
import importlib.util
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # the submitted working dir

NEEDED = ("ray", "torch", "transformers", "vllm")


def run(command: str) -> int:
    """`sitf-ray <command> <argv...>` in this process, after the interpreter check (exit status 2 if it fails)."""
    missing = [m for m in NEEDED if importlib.util.find_spec(m) is None]
    if missing:
        script = Path(sys.argv[0]).name
        print(f"jobs/{script}: this interpreter ({sys.executable}) lacks sitf-ray's dependencies "
              f"({', '.join(missing)}); name the project's environment in the job's entrypoint: on one machine "
              f"`-- $PWD/.venv/bin/python jobs/{script} ...`, on cluster.yaml's nodes `-- python3 jobs/{script} ...` "
              f"(docs/CLUSTER.md)", file=sys.stderr)
        return 2
    from sitf_ray.cli import main
    return main([command, *sys.argv[1:]])
