"""Sampling N diverse step-by-step solutions per question with the policy (stage 1 of an iteration)."""
from __future__ import annotations

import difflib

from typing import Optional

from sitf_ray.rollout.engines.base import GenParams
from sitf_ray.tasks.base import Task


def normalize_steps(steps: list[str]) -> tuple:
    return tuple(" ".join(s.split()) for s in steps)


def sample_paths(pool, task: Task, rows: list[dict], n: int, temperature: float, top_p: float,
                 max_tokens: int, seed: int, dedupe: bool = True, valid=None,
                 code_similarity: float = 0.95, partial_dir=None) -> tuple[list[dict], dict]:
    """N completions per row -> sample dicts (id, qid, path, steps, answer, correct, n_tokens, finish).

    Dedupe: math paths by their normalised step sequence; code paths also when difflib similarity to a kept
    path is >= code_similarity (the paper dedupes code by edit distance). `valid(path) -> bool` drops paths
    (e.g. a false equation) before deduplication. partial_dir: GeneratorPool.generate's (resume part-way).
    """
    params = GenParams(n=n, temperature=temperature, top_p=top_p, max_tokens=max_tokens, stop=tuple(task.stop))
    outs = pool.generate([task.prompt(r) for r in rows], params, seed=seed, desc=f"sample x{n}",
                         partial_dir=partial_dir)
    samples, texts = [], []
    stats = {"generated": 0, "kept": 0, "duplicates": 0, "invalid": 0, "truncated": 0, "tokens": 0,
             "correct": 0, "questions_with_correct": 0}
    for row, comps in zip(rows, outs):
        seen, kept_code = set(), []
        for j, c in enumerate(comps):
            stats["generated"] += 1
            stats["tokens"] += c.n_tokens
            steps = task.split_steps(c.text)
            if not steps:
                steps = [c.text.strip() or "(empty)"]
            if valid is not None and not valid(c.text):
                stats["invalid"] += 1
                continue
            key = normalize_steps(steps)
            if dedupe and key in seen:
                stats["duplicates"] += 1
                continue
            if dedupe and task.is_code:
                code = "\n".join(key)
                if any(difflib.SequenceMatcher(None, code, k).ratio() >= code_similarity for k in kept_code):
                    stats["duplicates"] += 1
                    continue
                kept_code.append(code)
            seen.add(key)
            path = task.join_steps(steps)
            stats["truncated"] += int(c.finish_reason == "length")
            samples.append({"id": f"{row['id']}-s{j}", "qid": row["id"], "path": path, "steps": steps,
                            "answer": task.extract_answer(c.text), "correct": False, "n_tokens": c.n_tokens,
                            "finish": c.finish_reason})
            texts.append(c.text)
    by_id = {r["id"]: r for r in rows}
    # judged on the text the model wrote (for code, path is that text too: code steps are lossless)
    for s, ok in zip(samples, check_all(task, [by_id[s["qid"]] for s in samples], texts)):
        s["correct"] = ok
    stats["correct"] = sum(s["correct"] for s in samples)
    stats["questions_with_correct"] = len({s["qid"] for s in samples if s["correct"]})
    strict = strict_all(task, [by_id[s["qid"]] for s in samples], [s["path"] for s in samples],
                        [s["correct"] for s in samples])
    if strict is not None:      # how many answer-correct paths hold a wrong step (what outcome feedback misses)
        for s, ok in zip(samples, strict):
            s["strict"] = ok
        stats["strict"] = sum(strict)
        stats["false_positive_rate"] = (stats["correct"] - stats["strict"]) / max(1, stats["correct"])
    stats["kept"] = len(samples)
    return samples, stats


def strict_all(task: Task, rows: list[dict], texts: list[str], correct: list[bool]) -> Optional[list[bool]]:
    """Strictly correct: the final answer AND every step right by the task's exact step oracle (Uesato et
    al. 2022's trace error, inverted); None for tasks without an oracle. correct: check_all's answers."""
    if task.step_oracle is None:
        return None
    return [bool(ok) and all(task.step_oracle(r, task.split_steps(t))) for r, t, ok in zip(rows, texts, correct)]


def check_all(task: Task, rows: list[dict], texts: list[str]) -> list[bool]:
    """task.is_correct over many completions (code tasks run their sandboxed programs concurrently)."""
    if task.is_correct_many is not None:
        return [bool(x) for x in task.is_correct_many(rows, texts)]
    return [bool(task.is_correct(r, t)) for r, t in zip(rows, texts)]
