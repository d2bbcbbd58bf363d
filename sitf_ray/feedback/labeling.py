"""Process reward estimation: Monte-Carlo step labels (the paper's rule), binary search, or the oracle.

For a sampled path with steps s_1..s_n, prefix i is s_1..s_i. The simulator (a generator pool: the policy
itself or a stronger model) completes a prefix K times; the step is correct when more than delta of the
K completions reach the gold answer (hard label) or, as a soft label, the fraction that do.

* With `skip_correct_paths`, a path whose own final answer is right counts as right all along: no rollouts
  (Math-Shepherd's rule). Without it, answer-correct paths are probed too, because a small policy often
  lands on the right answer through wrong steps ("lucky" paths, 33-75 % of its answer-correct samples on
  arith): their last step is labelled right only when the steps before it are.
* The complete path of a wrong answer needs no rollout: its last step is wrong.
* Prefixes are deduplicated across the N paths of a question (they share beginnings).
* `binary` mode assumes labels fall from right to wrong once and finds the first wrong step with
  O(log n) prefix probes instead of n (all paths probe in lock-step rounds, one batched call per round).
* With `check_rollouts` (tasks with a step checker, `Task.step_check`), a rollout reaches the gold answer
  only if its whole text (prefix + completion) passes the checker: "26 - 21 = 4" on the way to the right
  answer is not a hit. The sampled path itself is one rollout of each of its prefixes, so an
  answer-correct path that fails the checker is labelled like a wrong answer (its last step wrong).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional

from sitf_ray.rollout.engines.base import GenParams
from sitf_ray.rollout.sampling import check_all
from sitf_ray.tasks.base import Task, passes_step_check


@dataclass
class LabelStats:
    paths: int = 0
    steps: int = 0
    prefixes_probed: int = 0
    rollouts: int = 0
    rollout_tokens: int = 0
    seconds: float = 0.0
    positives: int = 0
    extra: dict = field(default_factory=dict)


def rollout_hits(task: Task, rows: list[dict], texts: list[str], check: bool = False) -> list[bool]:
    """Which rollouts (whole solution texts: prefix steps + completion) count as hits: the right final answer
    and, with `check`, every equation true by the task's step checker (tasks without one: answer only)."""
    ok = check_all(task, rows, texts)
    if check and task.step_check is not None:
        ok = [o and passes_step_check(task, t) for o, t in zip(ok, texts)]
    return ok


def prefix_text(task: Task, row: dict, steps: list[str]) -> str:
    """What the simulator continues: the question and the first steps, each closed by a newline.

    For code the steps are lossless (`base.split_code_lines`: blank lines travel with the next line), so
    the prefix is exactly the beginning of the program the model wrote."""
    return task.prompt(row) + task.join_steps(steps) + "\n"


class Prober:
    """Runs K rollouts per distinct (question, prefix), caching every answer it has seen."""

    def __init__(self, task: Task, rows: dict, pool, k: int, temperature: float, max_tokens: int, seed: int,
                 check: bool = False, partial_dir=None):
        self.task, self.rows, self.pool, self.k = task, rows, pool, k
        self.partial_dir = partial_dir   # the simulator's finished chunks are kept there (resume part-way)
        self.check = check               # a hit must also pass the task's step checker
        self.failed_check = 0            # rollouts with the right answer that the checker turned into misses
        self.params = GenParams(n=k, temperature=temperature, max_tokens=max_tokens, stop=tuple(task.stop))
        # an answer is a few tokens: stop at the end of its line
        self.answer_params = GenParams(n=k, temperature=temperature, max_tokens=min(16, max_tokens),
                                       stop=tuple(task.stop) + ("\n",))
        self.seed, self.calls = seed, 0
        self.cache: dict[tuple, int] = {}      # (qid, steps tuple) -> hits out of k
        self.tokens = 0

    def hits(self, keys: list[tuple], answer_now: bool = False) -> dict[tuple, int]:
        """Rollouts that reach the gold answer, out of k, per (qid, steps) prefix. answer_now: the simulator
        must answer right after the prefix (the prompt ends with the task's answer_prefix, e.g.
        'The answer is'): is the prefix complete, so that answering now is right?"""
        tag = ("answer",) if answer_now else ()
        todo = sorted({k for k in keys if k + tag not in self.cache})
        if todo:
            forced = self.task.answer_prefix if answer_now else ""
            prompts = [prefix_text(self.task, self.rows[q], list(st)) + forced for q, st in todo]
            params = self.answer_params if answer_now else self.params
            outs = self.pool.generate(prompts, params, seed=self.seed + 7919 * self.calls,
                                      desc=f"rollouts x{self.k}", partial_dir=self.partial_dir)
            self.calls += 1
            flat_rows, flat_texts = [], []
            for (q, st), prompt_outs in zip(todo, outs):
                done = self.task.join_steps(list(st)) + "\n" + forced
                flat_rows += [self.rows[q]] * len(prompt_outs)
                flat_texts += [done + c.text for c in prompt_outs]
                self.tokens += sum(c.n_tokens for c in prompt_outs)
            answered = rollout_hits(self.task, flat_rows, flat_texts)
            ok = answered
            if self.check and self.task.step_check is not None:
                ok = [a and passes_step_check(self.task, t) for a, t in zip(answered, flat_texts)]
                self.failed_check += sum(answered) - sum(ok)
            for i, key in enumerate(todo):
                self.cache[key + tag] = sum(ok[i * self.k:(i + 1) * self.k])
        return {k: self.cache[k + tag] for k in keys}


def label_samples(samples: list[dict], rows: dict, task: Task, mode: str, pool=None, k: int = 8,
                  delta: int = 0, temperature: float = 1.0, max_tokens: int = 128, seed: int = 0,
                  skip_correct_paths: bool = True, answer_probe: bool = False,
                  check_rollouts: bool = False, partial_dir=None) -> tuple[list[dict], LabelStats]:
    """Label every step of every sample. Returns label rows (one per sample) and statistics.

    samples: dicts with id, qid, steps, correct.   rows: qid -> task row (prompt, answer, oracle data).
    answer_probe (with skip_correct_paths=False): the answer line of an answer-correct path counts as right
    only if the simulator, made to answer right after the steps before it, answers right (Prober.hits
    answer_now) -- a right answer given too early (a skipped step) is luck too.
    check_rollouts: a rollout, and the sampled path itself, is a hit only if it passes the task's step
    checker (see the module doc); label rows keep the path's own answer correctness in `correct`.
    partial_dir: the simulator's finished chunks are kept there, so a stage resumed after a crash reuses them.
    """
    t0 = time.time()
    stats = LabelStats(paths=len(samples), steps=sum(len(s["steps"]) for s in samples))
    check = check_rollouts and task.step_check is not None and mode != "oracle"
    given = samples
    if check:    # the path is its own rollout: a right answer reached through a false equation is no hit
        samples = [dict(s, correct=False) if s["correct"] and not passes_step_check(task, task.join_steps(s["steps"]))
                   else s for s in samples]
        stats.extra["paths_failing_check"] = sum(a["correct"] and not b["correct"] for a, b in zip(given, samples))
    prober = Prober(task, rows, pool, k, temperature, max_tokens, seed, check, partial_dir) if mode in ("mc", "binary") else None
    fractions: list[list[Optional[float]]] = []
    for s in samples:
        n = len(s["steps"])
        if s["correct"] and (skip_correct_paths or n == 1):
            fractions.append([1.0] * n)
        else:   # the complete path is its own rollout
            fractions.append([None] * (n - 1) + [1.0 if s["correct"] else 0.0])

    if mode == "oracle":
        if task.step_oracle is None:
            raise ValueError(f"labeling.mode=oracle: task {task.name!r} has no exact step oracle")
        fractions = [[float(x) for x in task.step_oracle(rows[s["qid"]], s["steps"])] for s in samples]
    elif mode == "mc":
        keys = [(s["qid"], tuple(s["steps"][:i + 1])) for s, fr in zip(samples, fractions)
                for i, f in enumerate(fr) if f is None]
        hits = prober.hits(keys)
        for s, fr in zip(samples, fractions):
            for i, f in enumerate(fr):
                if f is None:
                    fr[i] = hits[(s["qid"], tuple(s["steps"][:i + 1]))] / k
            if s["correct"] and any(f * k <= delta for f in fr[:-1]):
                fr[-1] = min(fr[:-1])    # a right answer after a wrong step is luck, not a right step
        if answer_probe and task.answer_prefix is not None:
            probe = [(s["qid"], tuple(s["steps"][:-1])) for s, fr in zip(samples, fractions)
                     if s["correct"] and not skip_correct_paths and len(s["steps"]) > 1 and fr[-1] == 1.0]
            answer = prober.hits(probe, answer_now=True)
            for s, fr in zip(samples, fractions):
                key = (s["qid"], tuple(s["steps"][:-1]))
                if key in answer and s["correct"] and fr[-1] == 1.0:
                    fr[-1] = answer[key] / k
    elif mode == "binary":
        _binary_search(samples, fractions, prober, delta, k, answer_probe and task.answer_prefix is not None)
    else:
        raise ValueError(f"labeling.mode must be mc, binary or oracle (got {mode!r})")

    out = []
    for s, fr in zip(given, fractions):
        hard = [int(f * k > delta) if mode != "oracle" else int(f) for f in fr]
        stats.positives += sum(hard)
        row = {"id": s["id"], "qid": s["qid"], "steps": s["steps"], "labels": hard, "soft": fr,
               "correct": bool(s["correct"]), "source": mode}
        if task.step_oracle is not None:
            row["oracle"] = [int(x) for x in task.step_oracle(rows[s["qid"]], s["steps"])]
        out.append(row)
    if prober is not None:
        stats.prefixes_probed = len(prober.cache)
        stats.rollouts = len(prober.cache) * k
        stats.rollout_tokens = prober.tokens
        if check:
            stats.extra["rollouts_failing_check"] = prober.failed_check
    stats.seconds = time.time() - t0
    return out, stats


def _binary_search(samples, fractions, prober: Prober, delta: int, k: int, answer_probe: bool = False):
    """First wrong step per path by bisection; steps before it right, from it on wrong.

    Wrong answers: the last step is known wrong, the first error lies in [0, n-1]. Right answers (when
    probed): one probe of the path without its answer line decides whether every step is right; if not,
    the first error lies in [0, n-2] and the answer line is labelled wrong with it (a lucky answer)."""
    state, probed = {}, {}
    lucky = [j for j, (s, fr) in enumerate(zip(samples, fractions)) if s["correct"] and fr[0] is None]
    if lucky:
        keys = {j: (samples[j]["qid"], tuple(samples[j]["steps"][:-1])) for j in lucky}
        hits = prober.hits(list(keys.values()))
        answer = prober.hits(list(keys.values()), answer_now=True) if answer_probe else {}
        for j in lucky:
            n, h = len(samples[j]["steps"]), hits[keys[j]]
            probed[j] = {n - 2: h / k}
            if h > delta:     # the steps before the answer are right; is answering right after them?
                last = answer[keys[j]] / k if answer_probe else 1.0
                fractions[j][:] = [1.0] * (n - 2) + [h / k, last]
            else:
                state[j] = [0, n - 2]
    for j, (s, fr) in enumerate(zip(samples, fractions)):
        if fr[0] is None and not s["correct"]:   # not settled by the path's own correctness
            state[j], probed[j] = [0, len(s["steps"]) - 1], {}
    for j, (lo, hi) in list(state.items()):
        if lo >= hi:
            _settle(fractions[j], lo, probed[j])
            del state[j]
    while state:
        keys = {j: (samples[j]["qid"], tuple(samples[j]["steps"][:(lo + hi) // 2 + 1]))
                for j, (lo, hi) in state.items()}
        hits = prober.hits(list(keys.values()))
        for j in list(state):
            lo, hi = state[j]
            mid = (lo + hi) // 2
            h = hits[keys[j]]
            probed[j][mid] = h / k
            if h > delta:
                lo = mid + 1
            else:
                hi = mid
            if lo >= hi:
                _settle(fractions[j], lo, probed[j])
                del state[j]
            else:
                state[j] = [lo, hi]


def _settle(fr: list, first: int, probed: dict):
    """Labels of a path whose first wrong step is `first`: probed steps keep their measured fraction."""
    for i in range(len(fr)):
        if i in probed:
            fr[i] = probed[i]
        elif i >= first:
            fr[i] = 0.0
        else:
            fr[i] = 1.0


def agreement(labels_a: list[dict], labels_b: list[dict], key_a: str = "labels", key_b: str = "labels") -> float:
    """Fraction of steps on which two labelings agree (same samples, same order)."""
    same = total = 0
    for a, b in zip(labels_a, labels_b):
        for x, y in zip(a[key_a], b[key_b]):
            same += int(x == y)
            total += 1
    return same / max(1, total)


def prf(pred: list[int], gold: list[int]) -> dict:
    """Precision / recall / F1 of 'step is correct', plus accuracy."""
    tp = sum(p and g for p, g in zip(pred, gold))
    fp = sum(p and not g for p, g in zip(pred, gold))
    fn = sum((not p) and g for p, g in zip(pred, gold))
    acc = sum(int(p == g) for p, g in zip(pred, gold)) / max(1, len(gold))
    prec, rec = tp / max(1, tp + fp), tp / max(1, tp + fn)
    return {"precision": prec, "recall": rec, "f1": 2 * prec * rec / max(1e-9, prec + rec), "accuracy": acc,
            "n": len(gold), "positives": sum(gold)}


def versus_oracle(label_rows: list[dict]) -> dict:
    """Label quality against the exact oracle (tasks that have one): step precision / recall / F1, and path
    precision: of the answer-correct paths labelled right at every step, the fraction the oracle calls sound
    (what a PRM trained on these labels learns to call a good solution)."""
    pred = [x for r in label_rows if "oracle" in r for x in r["labels"]]
    gold = [x for r in label_rows if "oracle" in r for x in r["oracle"]]
    if not gold:
        return {}
    all_right = [r for r in label_rows if "oracle" in r and r["correct"] and all(r["labels"])]
    sound = sum(all(r["oracle"]) for r in all_right)
    return prf(pred, gold) | {"path_precision": sound / max(1, len(all_right)), "paths_all_right": len(all_right)}


def trl_stepwise(label_rows: list[dict], prompts: dict) -> list[dict]:
    """TRL PRMTrainer's stepwise-supervision format: prompt, completions (steps), labels (bools)."""
    return [{"prompt": prompts[r["qid"]], "completions": r["steps"], "labels": [bool(x) for x in r["labels"]]}
            for r in label_rows]
