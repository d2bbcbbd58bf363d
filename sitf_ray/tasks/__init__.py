"""Task registry: `get_task(name)` returns the task's functions (see base.Task)."""
from __future__ import annotations

import importlib

from sitf_ray.tasks.base import DataError, Task

_MODULES = {"arith": "arith", "gsm8k": "gsm8k", "mbpp": "mbpp", "humaneval": "humaneval",
            "mmlu_math": "mmlu_math"}


def get_task(name: str) -> Task:
    if name not in _MODULES:
        raise ValueError(f"unknown task {name!r}; expected one of {sorted(_MODULES)}")
    return importlib.import_module(f"{__name__}.{_MODULES[name]}").TASK


__all__ = ["Task", "DataError", "get_task"]
