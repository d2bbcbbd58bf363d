"""Accuracy / pass@1 on a task's test split: greedy decoding through the generator pool; for tasks with an
exact step oracle (arith) also strict accuracy, the share whose answer and every step are right.

Math tasks compare the final answer; code tasks (MBPP, HumanEval) run the completion with the tests in
the sandbox (task.is_correct does that), many programs at a time.
"""
from __future__ import annotations

import time

from sitf_ray.rollout.engines.base import GenParams
from sitf_ray.rollout.sampling import check_all, strict_all
from sitf_ray.tasks.base import Task


def evaluate(pool, task: Task, rows: list[dict], max_tokens: int, seed: int = 0) -> dict:
    t0 = time.time()
    params = GenParams(n=1, temperature=0.0, max_tokens=max_tokens, stop=tuple(task.stop))
    outs = pool.generate([task.prompt(r) for r in rows], params, seed=seed, desc="eval (greedy)")
    texts = [o[0].text for o in outs]
    ok = check_all(task, rows, texts)
    strict = strict_all(task, rows, texts, ok)
    preds = [{"qid": r["id"], "completion": t, "answer": task.extract_answer(t), "correct": c}
             for r, t, c in zip(rows, texts, ok)]
    res = {"task": task.name, "n": len(rows), "correct": sum(ok), "accuracy": sum(ok) / max(1, len(rows))}
    if strict is not None:   # tasks with a step oracle: answer and every step right
        for p, st in zip(preds, strict):
            p["strict"] = st
        res |= {"strict_correct": sum(strict), "strict_accuracy": sum(strict) / max(1, len(rows))}
    return res | {"seconds": time.time() - t0, "predictions": preds}
