"""Progress bars for long stages (counts and rates), and the one-line stage summaries."""
from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager

from tqdm.auto import tqdm


def enabled() -> bool:
    return os.environ.get("SITF_PROGRESS", "1") != "0"


@contextmanager
def progress(total: int, desc: str, unit: str = "item"):
    """A tqdm bar on stderr; redraws at most every 2 s when stderr is not a terminal (job logs)."""
    interval = 0.2 if sys.stderr.isatty() else 2.0
    bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, mininterval=interval,
               disable=not enabled(), dynamic_ncols=True, leave=False)
    try:
        yield bar
    finally:
        bar.close()


def summary(stage: str, seconds: float, **figures) -> str:
    """'[sample] 4000 paths, 151k tokens, 6.9k tok/s in 21.7 s' style line, printed and returned."""
    parts = []
    for k, v in figures.items():
        if isinstance(v, float):
            v = f"{v:.4g}"
        parts.append(f"{k}={v}")
    line = f"[{stage}] {seconds:.1f} s  " + "  ".join(parts)
    print(line, flush=True)
    from . import metrics
    metrics.get().stage(stage.split()[0], seconds)
    return line


class Timer:
    def __init__(self):
        self.t0 = time.time()

    @property
    def seconds(self) -> float:
        return time.time() - self.t0
