"""What the driver's console shows: our progress bars and stage summaries, warnings that matter; Ray's own
INFO logs go to files in the Ray session directory (`log_dir()`, named in the last lines of a run).

Only Ray's own settings are used:
- Ray Data: `RAY_DATA_LOGGING_CONFIG` points at `ray_data_logging.yaml` (Ray's default config with the
  console handler at WARNING; the `ray-data.log` file keeps everything), and the DataContext turns off the
  per-dataset execution-plan lines and, on a terminal, Ray Data's own progress bars (ours cover the stages).
- Ray Data's usage collector (queries a Prometheus that local clusters do not run): off
  (`RAY_DATA_USAGE_DISABLED=1`).
- Ray Core: `ray.init(log_to_driver=False, logging_level=WARNING)` (worker output stays in
  `logs/worker-*.out`), set by cluster/ray_init.init_ray.
- The raylet's "N worker processes have been started ... Nx the maximum expected startup concurrency"
  warning: Ray caps worker start-up at min(physical cores, num_cpus), while a local cluster here declares
  more logical CPUs than cores on purpose (actors mostly wait on each other); a local cluster's start-up
  concurrency is set to its declared CPUs (`RAY_worker_maximum_startup_concurrency`), so the warning
  fires only well beyond what the pipeline starts. A cluster we join keeps its own setting.
A user's own value of any of these environment variables wins.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path
from typing import Optional

DATA_LOGGING = Path(__file__).with_name("ray_data_logging.yaml")
_LOG_DIR: Optional[str] = None


def before_init(num_cpus: Optional[int], local: bool, quiet: bool = True) -> None:
    """Environment for Ray's loggers; call before ray.init (the raylet and workers inherit it)."""
    if not quiet:
        return
    if "RAY_DATA_LOGGING_CONFIG" not in os.environ:
        os.environ["RAY_DATA_LOGGING_CONFIG"] = str(DATA_LOGGING)
        if "ray.data" in sys.modules:   # ray.data read its config when imported: have it read ours
            from ray.data._internal.logging import configure_logging
            configure_logging()
    # Ray Data's usage collector queries a Prometheus at localhost:9090 after every execution; a local
    # cluster runs none, and the failed queries' tracebacks have reached the console
    os.environ.setdefault("RAY_DATA_USAGE_DISABLED", "1")
    if local and num_cpus:
        os.environ.setdefault("RAY_worker_maximum_startup_concurrency", str(num_cpus))


def after_init(quiet: bool = True) -> None:
    """Ray Data settings of this driver, and where this session's logs are."""
    global _LOG_DIR
    import ray
    if quiet:
        from ray.data import DataContext
        ctx = DataContext.get_current()
        ctx.print_on_execution_start = False    # the execution plan of every small dataset
        # Ray Data draws tqdm bars per dataset on a terminal (off: ours cover the stages; Ray Data says so
        # once, as a warning); elsewhere it logs its progress at INFO, which goes to ray-data.log
        if sys.stdout.isatty():
            ctx.enable_progress_bars = False
    node = ray._private.worker._global_node   # no public accessor for the session directory
    _LOG_DIR = str(Path(node.get_session_dir_path()) / "logs") if node is not None else None


def log_dir() -> Optional[str]:
    """The session's log folder (on the head node for a joined cluster), or None before init_ray."""
    return _LOG_DIR


def log_lines() -> list[str]:
    """The closing lines that say where Ray's logs went."""
    d = log_dir()
    if not d:
        return []
    return [f"Ray's own logs (this console shows only sitf-ray's): {d}  (ray-data/, train/, worker-*.out)"]


# ------------------------------------------------------------------------------------------------ Ctrl-C

# A Ctrl-C is remembered as well as raised. Python raises KeyboardInterrupt wherever the main thread happens to
# be; raised inside a callback that C code runs (a finalizer, a library's callback), it is printed as
# "Exception ignored" and lost, and the run went on to the end (issue 29: exit 0 instead of 130). With the
# flag set, the next check (a pool's chunk, a fit's poll, a recorded stage) raises it again.
INTERRUPTED = threading.Event()


def on_sigint(signum, frame) -> None:
    """SIGINT handler of every sitf-ray command: remember the interrupt, then raise KeyboardInterrupt."""
    INTERRUPTED.set()
    raise KeyboardInterrupt


def install_sigint() -> None:
    """Make `on_sigint` the SIGINT handler (main thread only, as Python requires)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, on_sigint)


def check_interrupt() -> None:
    """Raise KeyboardInterrupt if a Ctrl-C arrived since the command started (even one a library swallowed)."""
    if INTERRUPTED.is_set():
        raise KeyboardInterrupt

