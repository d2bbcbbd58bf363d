"""Progress bars for long stages (counts and rates), and the one-line stage summaries."""
from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager

from tqdm.auto import tqdm
from tqdm.std import tqdm as std_tqdm

from sitf_ray.runs import telemetry

# Not a terminal (ray job logs, CI, a pipe): one plain line at most this often, none for short stages.
LOG_INTERVAL_S = 30.0


def enabled() -> bool:
    return os.environ.get("SITF_PROGRESS", "1") != "0"


class LineBar(std_tqdm):
    """tqdm for logs: each redraw is one whole line (no carriage returns, no cursor moves, no bar glyphs);
    nothing is printed before the first item is done, and closing prints nothing (the stage's summary
    line follows)."""

    def display(self, msg=None, pos=None):
        line = (msg if msg is not None else self.__str__()).strip()
        if not line or self.n == 0 or line == getattr(self, "_last", None):
            return False
        self._last = line
        self.fp.write(line + "\n")
        self.fp.flush()
        return True

    def clear(self, nolock=False):
        pass

    def moveto(self, n):
        pass


@contextmanager
def progress(total: int, desc: str, unit: str = "item"):
    """A tqdm bar on stderr when it is a terminal; otherwise LineBar lines every LOG_INTERVAL_S."""
    if sys.stderr.isatty():
        bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, mininterval=0.2,
                   disable=not enabled(), dynamic_ncols=True, leave=False)
    else:
        # maxinterval too: tqdm's monitor thread otherwise redraws a bar every 10 s (its default maxinterval)
        bar = LineBar(total=total, desc=desc, unit=unit, file=sys.stderr, mininterval=LOG_INTERVAL_S,
                      maxinterval=LOG_INTERVAL_S, disable=not enabled(), leave=False,
                      bar_format="{desc}: {n_fmt}/{total_fmt} {unit} [{elapsed}<{remaining}, {rate_fmt}{postfix}]")
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
    telemetry.get().stage(stage.split()[0], seconds)
    return line


class Timer:
    def __init__(self):
        self.t0 = time.time()

    @property
    def seconds(self) -> float:
        return time.time() - self.t0
