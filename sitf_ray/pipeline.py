"""The SIPF loop: a single driver that runs each stage in order against the run directory.

    iter_00: build model -> SFT to convergence (M_0) -> eval
    iter_k : sample -> label -> PRM -> score -> pairs -> train (ORPO) -> broadcast -> eval -> DONE

Methods: sipf (process feedback + ORPO), sipf-dpo (DPO instead of ORPO: "w/o OR"), outcome (pairs ranked
by final-answer correctness: "w/o PF"), rft (SFT on own correct samples), sft (M_0; as a baseline, M_0
given the same extra update steps on gold data as the main method). Baselines live in
DIR/baselines/<method>/ and share DIR/iter_00. Every stage writes its artifacts atomically and records
their checksums in iter_k/stages.json, so `resume` skips finished stages and recomputes corrupted ones;
all randomness comes from seeds derived from (seed, method, iteration, stage), so a resumed run gives the
same files as an uninterrupted one.
"""
from __future__ import annotations

import hashlib
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from . import config as C
from .artifacts import Ledger, RunClock, atomic_write_text, read_json, read_jsonl, write_json, write_jsonl
from .progress import summary
from .tasks import get_task
from .tasks.base import Task

POLICY_METHODS = ("sipf", "sipf-dpo", "outcome", "rft", "sft")


def stage_seed(seed: int, *parts) -> int:
    h = hashlib.sha256("|".join(str(p) for p in (seed,) + parts).encode()).digest()
    return int.from_bytes(h[:4], "little") & 0x7FFFFFFF


@dataclass
class Context:
    cfg: C.SIPFConfig
    root: Path
    task: Task
    splits: dict
    by_id: dict
    pool: object = None          # GeneratorPool of the policy
    scorers: object = None       # ReplicaPool of PRMScorer
    simulator: object = None     # GeneratorPool of a separate simulator model (if configured)
    loaded: str = ""             # policy folder currently in the generators
    version: int = 0
    sync_log: list = field(default_factory=list)

    @property
    def metrics(self):
        from . import metrics
        return metrics.get()

    @property
    def m0(self) -> Path:
        return self.root / "iter_00" / "policy"


# ---------------------------------------------------------------------------------------------- setup

def load_splits(cfg: C.SIPFConfig, task: Task) -> dict:
    splits = {}
    for split in ("sft", "train", "val", "test"):
        splits[split] = task.load(split, cfg.task)
    if cfg.eval.n:      # the split every iteration is scored on
        splits[cfg.eval.split] = splits[cfg.eval.split][:cfg.eval.n]
    return splits


def prepare(cfg: C.SIPFConfig, out: str | Path, resume: bool = False) -> Context:
    root = Path(out).resolve()   # absolute: Ray workers and actors run in other working directories
    saved = root / "config.yaml"
    if resume:
        if not saved.exists():
            raise C.ConfigError(f"{root}: no config.yaml here; nothing to resume")
    elif saved.exists() and saved.read_text() != C.dump(cfg):
        raise C.ConfigError(f"{root} already holds a run with a different config; use `sitf-ray resume {root}` "
                            f"or another --out")
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(saved, C.dump(cfg))
    task = get_task(cfg.task.name)
    splits = load_splits(cfg, task)
    by_id = {r["id"]: r for rows in splits.values() for r in rows}
    return Context(cfg=cfg, root=root, task=task, splits=splits, by_id=by_id)


def engine_spec(cfg: C.SIPFConfig, model_dir: str):
    from .engines.base import EngineSpec
    from .policy_folder import read_policy_meta
    meta = read_policy_meta(model_dir)
    base = meta.get("base", model_dir) if meta["kind"] == "adapter" else model_dir
    max_len = cfg.model.tiny.max_len if cfg.model.source == "tiny" else cfg.train.max_len + cfg.sampling.max_tokens
    return EngineSpec(model=str(base), kind=cfg.cluster.engine, dtype=cfg.model.run_dtype(), max_model_len=max_len,
                      kv_cache_bytes=cfg.cluster.kv_cache_bytes, max_num_seqs=cfg.cluster.max_num_seqs,
                      seed=cfg.seed, threads=cfg.cluster.generator_threads,
                      lora_rank=cfg.model.lora.r if cfg.model.lora.enabled and not cfg.cluster.merge_lora else 0,
                      extra={"weight_sync": "nccl"} if cfg.cluster.weight_sync == "nccl" else {})


def make_pool(cfg: C.SIPFConfig, folder: str | Path):
    """Generators holding `folder`: built on its weights, or on its base with the adapter pushed as v1
    (an engine built on the base alone would silently generate with the base model)."""
    from .actors import GeneratorPool
    from .policy_folder import read_policy_meta
    from .weights import push_policy
    cl = cfg.cluster
    pool = GeneratorPool(engine_spec(cfg, str(folder)), cl.generator_replicas, cl.generator_cpus,
                         cl.generator_gpus, cl.placement_strategy, cl.chunk_size)
    if read_policy_meta(folder)["kind"] == "adapter":
        try:
            push_policy(pool, folder, 1, cfg.cluster.merge_lora)
        except BaseException:
            pool.shutdown()
            raise
    return pool


def ensure_pool(ctx: Context):
    if ctx.pool is None:
        cl = ctx.cfg.cluster
        t0 = time.time()
        ctx.pool = make_pool(ctx.cfg, ctx.m0)
        ctx.loaded, ctx.version = str(ctx.m0), ctx.pool.version
        summary("generators", time.time() - t0, replicas=cl.generator_replicas, engine=cl.engine)
    return ctx.pool


def load_policy(ctx: Context, folder: Path):
    """Make the generators hold `folder` (a versioned broadcast unless they already do)."""
    ensure_pool(ctx)
    if ctx.loaded == str(folder):
        return
    ctx.version += 1
    if ctx.cfg.cluster.weight_sync == "nccl":   # GPU generators: adapters stay adapters (object store, inside)
        from .weights_nccl import push_policy_nccl
        rep = push_policy_nccl(ctx.pool, folder, ctx.version)
    else:
        from .weights import push_policy
        rep = push_policy(ctx.pool, folder, ctx.version, ctx.cfg.cluster.merge_lora)
    ctx.loaded = str(folder)
    ctx.sync_log.append(asdict(rep))
    ctx.metrics.sync(rep)
    summary("broadcast", rep.seconds, version=rep.version, kind=rep.kind, MB=rep.bytes / 2**20,
            replicas=rep.replicas)


def warm_trainer(ctx: Context):
    """Start the run's Ray Train session now: its workers come up while the driver does other work."""
    from .trainer import session
    cl = ctx.cfg.cluster
    session(train_storage(ctx), cl.train_workers, cl.train_cpus, cl.train_gpus)


def shutdown(ctx: Context):
    from .trainer import close_session
    close_session()
    for p in (ctx.pool, ctx.simulator):
        if p is not None:
            p.shutdown()
    if ctx.scorers is not None:
        ctx.scorers.shutdown()
    ctx.pool = ctx.simulator = ctx.scorers = None
    from . import tracking
    tracking.close(ctx.root)


# ------------------------------------------------------------------------------------------ M_0 (SFT)

def sft_rows(ctx: Context) -> list[dict]:
    out = []
    for r in ctx.splits["sft"]:
        tgt = ctx.task.target(r)
        if tgt:
            out.append({"prompt": ctx.task.prompt(r), "completion": tgt})
    if not out:
        raise ValueError(f"task {ctx.task.name}: the sft split has no gold solutions to train M_0 on")
    return out


def fit_policy(ctx: Context, name: str, init: Path, out: Path, objective: str, hp: dict, ds_rows_or_ds,
               validate: Optional[dict] = None, init_adapter: Optional[str] = None):
    """SFT / ORPO / DPO on Ray Train over a Ray Dataset of text rows (each worker tokenises its shard)."""
    import ray.data

    from .trainer import FitJob, fit
    cfg = ctx.cfg
    ds = ds_rows_or_ds if not isinstance(ds_rows_or_ds, list) else ray.data.from_items(ds_rows_or_ds)
    hp = {"max_len": cfg.train.max_len, "max_prompt_len": cfg.train.max_prompt_len} | hp
    lora = None
    if cfg.model.lora.enabled and not init_adapter:
        lc = cfg.model.lora
        lora = {"r": lc.r, "lora_alpha": lc.alpha, "lora_dropout": lc.dropout, "target_modules": lc.target_modules}
    job = FitJob(name=name, storage=train_storage(ctx), init_model=str(init), out_dir=str(out),
                 objective=objective, hp=hp, seed=stage_seed(cfg.seed, name),
                 workers=cfg.cluster.train_workers,
                 cpus_per_worker=cfg.cluster.train_cpus, gpus_per_worker=cfg.cluster.train_gpus,
                 threads=cfg.cluster.train_threads, lora=lora, init_adapter=init_adapter, validate=validate,
                 extra={"load_in_4bit": cfg.model.load_in_4bit, "dtype": cfg.model.run_dtype()})
    return fit(job, {"train": ds})


def train_storage(ctx: Context) -> str:
    """Ray Train checkpoints: beside the run, or in the bucket when the run is mirrored to one."""
    return f"{ctx.cfg.storage.rstrip('/')}/ray_train" if ctx.cfg.storage else str(ctx.root / "ray_train")


def build_m0(ctx: Context) -> dict:
    cfg, it = ctx.cfg, ctx.root / "iter_00"
    led = Ledger(it)
    if not led.done("init"):
        t0 = time.time()
        if cfg.model.source == "tiny":
            from .models import build_tiny
            build_tiny(cfg, it / "init", seed=stage_seed(cfg.seed, "init"))
            src = "init"                     # relative: the run directory can move
        else:
            from .models import resolve_source
            src = resolve_source(cfg.model.source, cfg.model.cache_dir)
        write_json(it / "init.json", {"source": cfg.model.source, "folder": src})
        led.mark("init", ["init.json"], seconds=time.time() - t0)
    init = it / read_json(it / "init.json")["folder"]   # absolute folders stay absolute
    if not led.done("sft"):
        t0 = time.time()
        s = cfg.sft
        hp = {"lr": s.lr, "epochs": s.max_epochs, "batch_size": s.batch_size, "warmup_steps": s.warmup_steps,
              "weight_decay": s.weight_decay, "min_lr_ratio": s.min_lr_ratio, "max_grad_norm": 1.0}
        val = {"task": cfg.task.name, "rows": ctx.splits["val"], "every": s.eval_every, "patience": s.patience,
               "min_delta": s.min_delta, "max_tokens": cfg.eval.max_tokens, "min_epochs": s.min_epochs}
        res = fit_policy(ctx, f"m0-sft-{cfg.seed}", init, it / "policy", "sft", hp, sft_rows(ctx), validate=val)
        write_json(it / "sft.json", {"steps": res.steps, "epochs": res.epochs, "max_epochs": s.max_epochs,
                                     "best": res.best, "history": res.history, "seconds": res.seconds})
        led.mark("sft", ["policy", "sft.json"], seconds=time.time() - t0, steps=res.steps)
        summary("sft M_0", time.time() - t0, epochs=res.epochs, steps=res.steps,
                best_val=(res.best or {}).get("val_accuracy"))
    return stage_eval(ctx, it, led, it / "policy", "M_0")


# ----------------------------------------------------------------------------------------- the stages

def stage_eval(ctx: Context, it: Path, led: Ledger, policy: Path, label: str) -> dict:
    if led.done("eval"):
        return read_json(it / "eval.json")
    from .evaluate import evaluate
    load_policy(ctx, policy)
    res = evaluate(ctx.pool, ctx.task, ctx.splits[ctx.cfg.eval.split], ctx.cfg.eval.max_tokens,
                   seed=stage_seed(ctx.cfg.seed, "eval"))
    preds = res.pop("predictions")
    res["split"] = ctx.cfg.eval.split
    write_jsonl(it / "eval_predictions.jsonl", preds)
    write_json(it / "eval.json", res)
    led.mark("eval", ["eval.json"], seconds=res["seconds"])
    ctx.metrics.eval(res["accuracy"])
    summary(f"eval {label}", res["seconds"], n=res["n"], accuracy=res["accuracy"],
            **({"strict": res["strict_accuracy"]} if "strict_accuracy" in res else {}))
    return res


def m0_samples(ctx: Context, it: Path) -> Optional[Path]:
    """Iteration 1 of every method samples M_0 on the same questions with the same seed: the first method's
    samples serve the others (same data, sampled once)."""
    for d in [ctx.root / "iter_01"] + sorted((ctx.root / "baselines").glob("*/iter_01")):
        if d != it and Ledger(d).done("sample"):
            return d
    return None


@contextmanager
def keep_partial(pool, folder: Path):
    """While a stage runs, its pool keeps every finished chunk in `folder` (ReplicaPool.partial_dir), so a
    call interrupted part-way resumes from them; the stage removes the folder once it is recorded."""
    rp = getattr(pool, "pool", pool)
    if rp is None:
        yield
        return
    rp.partial_dir = folder
    try:
        yield
    finally:
        rp.partial_dir = None


def drop_partial(folder: Path):
    """A recorded stage's kept chunks go, and the iteration's partial/ folder with the last of them."""
    shutil.rmtree(folder, ignore_errors=True)
    try:
        folder.parent.rmdir()
    except OSError:       # another stage's chunks are still there (or it is gone already)
        pass


def stage_sample(ctx: Context, it: Path, led: Ledger, method: str, k: int) -> list[dict]:
    if led.done("sample"):
        return read_jsonl(it / "samples.jsonl")
    from .sampling import sample_paths
    cfg, t0 = ctx.cfg, time.time()
    if k == 1 and (src := m0_samples(ctx, it)) is not None:
        samples = read_jsonl(src / "samples.jsonl")
        write_jsonl(it / "samples.jsonl", samples)
        shared = str(src.relative_to(ctx.root))
        figs = {key: v for key, v in Ledger(src).get("sample").items() if key != "seconds"}
        led.mark("sample", ["samples.jsonl"], seconds=time.time() - t0, **(figs | {"shared_from": shared}))
        summary("sample", time.time() - t0, paths=len(samples), shared_from=shared)
        return samples
    # the paper's filter: drop a sample whose text fails the task's step checker (a false equation), before
    # labelling, pairs and RFT data of every method (all read these samples); tasks without one: no filter
    valid = ctx.task.step_check if cfg.sampling.require_valid_equations else None
    s = cfg.sampling
    with keep_partial(ctx.pool, it / "partial" / "sample"):
        samples, st = sample_paths(ctx.pool, ctx.task, ctx.splits["train"], s.n, s.temperature, s.top_p,
                                   s.max_tokens, seed=stage_seed(cfg.seed, "m0" if k == 1 else method, k, "sample"),
                                   dedupe=s.dedupe, valid=valid)
    write_jsonl(it / "samples.jsonl", samples)
    dt = time.time() - t0
    led.mark("sample", ["samples.jsonl"], seconds=dt, **st)
    drop_partial(it / "partial" / "sample")
    ctx.metrics.sampled(st, dt)
    summary("sample", dt, paths=st["kept"], generated=st["generated"], correct=st["correct"],
            **({"false_positives": st["false_positive_rate"]} if "false_positive_rate" in st else {}),
            tok_per_s=st["tokens"] / max(dt, 1e-9))
    return samples


def stage_label(ctx: Context, it: Path, led: Ledger, samples: list[dict], method: str, k: int) -> list[dict]:
    if led.done("label"):
        return read_jsonl(it / "labels.jsonl")
    from .labeling import label_samples, trl_stepwise, versus_oracle
    cfg, lc = ctx.cfg, ctx.cfg.labeling
    pool = None
    if lc.mode != "oracle":
        pool = ensure_simulator(ctx)
    if lc.max_paths and len(samples) > lc.max_paths:   # label (and train the PRM on) a seeded subset
        key = stage_seed(cfg.seed, method, k, "label-subset")
        keep = set(sorted((hashlib.sha256(f"{key}|{s['id']}".encode()).hexdigest(), s["id"]) for s in samples)
                   [i][1] for i in range(lc.max_paths))
        samples = [s for s in samples if s["id"] in keep]
    with keep_partial(pool, it / "partial" / "label"):
        rows, stats = label_samples(samples, ctx.by_id, ctx.task, lc.mode, pool, k=lc.k, delta=lc.delta,
                                    temperature=lc.temperature, max_tokens=lc.max_tokens,
                                    seed=stage_seed(cfg.seed, method, k, "label"),
                                    skip_correct_paths=lc.skip_correct_paths, answer_probe=lc.answer_probe,
                                    check_rollouts=lc.check_rollouts)
    write_jsonl(it / "labels.jsonl", rows)
    write_jsonl(it / "labels_trl.jsonl", trl_stepwise(rows, {q: ctx.task.prompt(r) for q, r in ctx.by_id.items()}))
    quality = versus_oracle(rows)
    figs = asdict(stats) | {"vs_oracle": quality}
    led.mark("label", ["labels.jsonl"], **figs)
    drop_partial(it / "partial" / "label")
    ctx.metrics.labeled(stats)
    summary("label", stats.seconds, mode=lc.mode, steps=stats.steps, rollouts=stats.rollouts,
            positives=stats.positives, f1_vs_oracle=quality.get("f1", "n/a (the task has no step oracle)"),
            **({"path_precision": quality["path_precision"]} if "path_precision" in quality else {}))
    return rows


def model_source(ctx: Context, name: str) -> str:
    """A model named in the config: 'verifier' (built once and cached), 'smollm2', or a folder / hub id."""
    if name == "verifier":
        from .verifier import ensure_verifier
        return str(ensure_verifier(ctx.cfg, train_storage(ctx)))
    from .models import resolve_source
    return resolve_source(name, ctx.cfg.model.cache_dir)


def ensure_simulator(ctx: Context):
    lc = ctx.cfg.labeling
    if lc.simulator == "policy":
        return ensure_pool(ctx)
    if ctx.simulator is None:
        t0 = time.time()
        ctx.simulator = make_pool(ctx.cfg, model_source(ctx, lc.simulator))
        summary("simulator", time.time() - t0, model=lc.simulator, replicas=ctx.cfg.cluster.generator_replicas)
    return ctx.simulator


def split_holdout(qids: list[str], frac: float, seed: int) -> set:
    """Questions held out from PRM training (by hash, so the split is stable)."""
    return {q for q in set(qids)
            if int(hashlib.sha256(f"{seed}|{q}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < frac}


def stage_prm(ctx: Context, it: Path, led: Ledger, labels: list[dict], policy: Path, method: str, k: int) -> Path:
    if led.done("prm"):
        return it / "prm"
    import ray.data

    from .policy_folder import read_policy_meta
    from .trainer import FitJob, fit
    cfg, pc, t0 = ctx.cfg, ctx.cfg.prm, time.time()
    held = split_holdout([r["qid"] for r in labels], pc.holdout, cfg.seed)
    train_rows = [{"prompt": ctx.task.prompt(ctx.by_id[r["qid"]]), "steps": r["steps"], "labels": r["labels"],
                   "soft": r["soft"]} for r in labels if r["qid"] not in held]
    if pc.base == "policy":
        meta = read_policy_meta(policy)
        base = meta.get("base", str(policy)) if meta["kind"] == "adapter" else str(policy)
    else:
        base = model_source(ctx, pc.base)
    ds = ray.data.from_items(train_rows)
    lora = None
    if pc.lora.enabled:
        lora = {"r": pc.lora.r, "lora_alpha": pc.lora.alpha, "lora_dropout": pc.lora.dropout,
                "target_modules": pc.lora.target_modules}
    name = f"prm-{method}-{k}-{cfg.seed}"
    job = FitJob(name=name, storage=train_storage(ctx), init_model=base, out_dir=str(it / "prm"),
                 objective="prm", hp={"lr": pc.lr, "epochs": pc.epochs, "batch_size": pc.batch_size,
                                      "warmup_steps": 10, "min_lr_ratio": 0.1, "max_len": pc.max_len,
                                      "soft": cfg.labeling.soft},
                 seed=stage_seed(cfg.seed, name), workers=cfg.cluster.train_workers,
                 cpus_per_worker=cfg.cluster.train_cpus, gpus_per_worker=cfg.cluster.train_gpus,
                 threads=cfg.cluster.train_threads, lora=lora,
                 extra={"load_in_4bit": pc.load_in_4bit, "dtype": cfg.model.run_dtype()})
    res = fit(job, {"train": ds})
    write_json(it / "prm_train.json", {"history": res.history, "steps": res.steps, "seconds": res.seconds,
                                       "train_paths": len(train_rows), "holdout_questions": sorted(held)})
    led.mark("prm", ["prm", "prm_train.json"], seconds=time.time() - t0, steps=res.steps,
             loss=res.history[-1].get("loss") if res.history else None)
    ctx.metrics.loss("prm", res.history[-1].get("loss", 0.0) if res.history else 0.0)
    summary("prm", time.time() - t0, paths=len(train_rows), steps=res.steps,
            loss=res.history[-1].get("loss") if res.history else float("nan"))
    return it / "prm"


def stage_score(ctx: Context, it: Path, led: Ledger, samples: list[dict], labels: list[dict], prm: Path,
                method: str, k: int) -> list[dict]:
    if led.done("score"):
        return read_jsonl(it / "scored.jsonl")
    from .actors import scorer_pool
    from .prm import aggregate
    cfg, t0 = ctx.cfg, time.time()
    if ctx.scorers is None:
        cl = cfg.cluster
        ctx.scorers = scorer_pool(cl.scorer_replicas, cl.scorer_cpus, 0.0, cl.train_threads, cl.placement_strategy,
                                  dtype=cfg.model.run_dtype())
    ctx.scorers.broadcast("load", str(prm), cfg.prm.max_len)
    items = [{"prompt": ctx.task.prompt(ctx.by_id[s["qid"]]), "steps": s["steps"]} for s in samples]
    step_scores = ctx.scorers.map("score", items, 64, desc="PRM score", unit="path")
    if cfg.prm.check_steps:
        step_scores = [checked_scores(ctx.task, s["steps"], sc) for s, sc in zip(samples, step_scores)]
    scored = []
    for s, sc in zip(samples, step_scores):
        scored.append({"id": s["id"], "qid": s["qid"], "prompt": ctx.task.prompt(ctx.by_id[s["qid"]]),
                       "path": s["path"], "steps": s["steps"], "correct": s["correct"], "step_scores": sc,
                       "reward": aggregate(sc, cfg.prm.aggregate)})
    write_jsonl(it / "scored.jsonl", scored)
    # PRM quality: step AUC on held-out questions against MC labels and the oracle (when there is one).
    held = set(read_json(it / "prm_train.json")["holdout_questions"])
    lab = {r["id"]: r for r in labels}
    q, why = {}, {}
    for key in ("labels", "oracle"):
        ys, ps = [], []
        for s in scored:
            r = lab.get(s["id"])
            if r is None or key not in r or s["qid"] not in held:
                continue
            ys += r[key]
            ps += s["step_scores"]
        name = f"holdout_auc_vs_{'mc' if key == 'labels' else key}"
        q[name], reason = auc_figure(ps, ys)
        if reason:
            why[name] = reason
    dt = time.time() - t0
    led.mark("score", ["scored.jsonl"], seconds=dt, paths=len(scored), **q)
    summary("score", dt, paths=len(scored), **(q | why))
    return scored


def checked_scores(task, steps: list[str], scores: list[float]) -> list[float]:
    """PRM step scores with the calculator's verdict on top (prm.check_steps): a step whose own text fails
    the task's step checker (tasks/equations.py) scores 0.0, the others keep the PRM's probability. The PRM
    of a 0.95M policy ranks paths by question more than by arithmetic (docs/RESULTS.md section 8.1); the
    official SIPF code drops GSM8K samples with a false calculator annotation for the same reason."""
    from .tasks.base import passes_step_check
    return [p if passes_step_check(task, st) else 0.0 for st, p in zip(steps, scores)]


def auc_figure(scores: list[float], labels: list[int]) -> tuple[float, Optional[str]]:
    """Step AUC (prm.auc) and, when it is nan, what the console shows instead and why: 'n/a (no held-out
    step)', 'n/a (no wrong held-out step)' or 'n/a (no right held-out step)' (results.json keeps nan)."""
    from .prm import auc
    value = auc(scores, labels) if labels else float("nan")
    if value == value:
        return value, None
    return value, ("n/a (no held-out step)" if not labels else "n/a (no wrong held-out step)" if all(labels)
                   else "n/a (no right held-out step)")


def outcome_scores(samples: list[dict], ctx: Context) -> list[dict]:
    return [{"id": s["id"], "qid": s["qid"], "prompt": ctx.task.prompt(ctx.by_id[s["qid"]]), "path": s["path"],
             "steps": s["steps"], "correct": s["correct"], "step_scores": [], "reward": 1.0 if s["correct"] else 0.0}
            for s in samples]


def stage_pairs(ctx: Context, it: Path, led: Ledger, scored: list[dict], method: str, k: int) -> dict:
    if led.done("pairs"):
        return led.get("pairs")
    from .pairs import build_pairs
    cfg, pc, t0 = ctx.cfg, ctx.cfg.pairs, time.time()
    eta = pc.eta if method != "outcome" else 0.5     # outcome rewards are 0/1: any right-vs-wrong pair
    # outcome feedback has no step scores: its pairs are whole paths (right vs wrong answer)
    strategy = "top_m" if method == "outcome" and pc.strategy == "first_error" else pc.strategy
    st = build_pairs(scored, it / "pairs", eta=eta, strategy=strategy, max_per_question=pc.max_per_question,
                     require_correct_chosen=pc.require_correct_chosen and method != "outcome",
                     seed=stage_seed(cfg.seed, method, k, "pairs"), iteration=k, num_shards=pc.num_shards,
                     step_threshold=pc.step_threshold,
                     min_chosen_reward=pc.min_chosen_reward if method != "outcome" else 0.0)
    dt = time.time() - t0
    led.mark("pairs", ["pairs"], seconds=dt, **st)
    ctx.metrics.pairs(st["pairs"])
    summary("pairs", dt, **st)
    return st


def stage_rft_data(ctx: Context, it: Path, led: Ledger, samples: list[dict]) -> dict:
    """RFT: the policy's own correct, distinct paths become SFT data (one parquet folder per iteration)."""
    if led.done("pairs"):
        return led.get("pairs")
    import pandas as pd
    t0 = time.time()
    rows = [{"pair_key": s["id"], "prompt": ctx.task.prompt(ctx.by_id[s["qid"]]), "completion": s["path"]}
            for s in samples if s["correct"]]
    d = it / "pairs"
    d.mkdir(parents=True, exist_ok=True)
    if rows:
        import ray.data
        ray.data.from_pandas(pd.DataFrame(rows).sort_values("pair_key")).write_parquet(str(d))
    led.mark("pairs", ["pairs"], seconds=time.time() - t0, pairs=len(rows))
    return {"pairs": len(rows)}


def method_dirs(ctx: Context, method: str) -> Path:
    return ctx.root if method == ctx.cfg.method else ctx.root / "baselines" / method


def main_steps(ctx: Context, k: int) -> Optional[int]:
    """Optimizer steps the run's main method took in iteration k (None before it trained): the update budget
    its baselines are matched to (the sft control always, the others with train.match_steps)."""
    f = ctx.root / f"iter_{k:02d}" / "train.json"
    return read_json(f)["steps"] if f.exists() else None


def stage_train(ctx: Context, it: Path, led: Ledger, method: str, k: int, prev: Path, mdir: Path) -> dict:
    if led.done("train"):
        return led.get("train")
    from .pairs import read_shards, training_dataset
    from .policy_folder import read_policy_meta
    cfg, tc, t0 = ctx.cfg, ctx.cfg.train, time.time()
    dirs = [mdir / f"iter_{j:02d}" / "pairs" for j in range(1, k + 1)] if cfg.pairs.accumulate else [it / "pairs"]
    objective = {"sipf": tc.loss, "sipf-dpo": "dpo", "outcome": tc.loss, "rft": "sft"}[method]
    if method == "rft":
        files = [str(f) for d in dirs for f in sorted(Path(d).glob("*.parquet"))]
        ds = read_shards(files, ["prompt", "completion"]) if files else None
    else:
        ds = training_dataset(dirs)
    max_steps = tc.max_steps
    if tc.match_steps and method != cfg.method and (main := main_steps(ctx, k)) is not None:
        max_steps = main                                # the main method's update budget this iteration
        if max_steps == 0:
            ds = None                                   # it did not train: neither does its control
    if ds is None:
        # No pairs at all: the policy stays as it was (recorded, not hidden).
        shutil.copytree(prev, it / "policy", dirs_exist_ok=True)
        led.mark("train", ["policy"], seconds=time.time() - t0, steps=0, rows=0, note="no training data")
        summary("train", time.time() - t0, note="no pairs; policy unchanged")
        return led.get("train")
    init = ctx.m0 if cfg.train.init_from == "m0" else prev
    meta = read_policy_meta(init)
    init_model, init_adapter = (Path(meta["base"]), str(init)) if meta["kind"] == "adapter" else (init, None)
    hp = {"lr": tc.lr, "epochs": tc.epochs, "batch_size": tc.batch_size, "grad_accum": tc.grad_accum,
          "warmup_steps": tc.warmup_steps, "weight_decay": tc.weight_decay, "max_grad_norm": tc.max_grad_norm,
          "beta": tc.beta, "nll_on_prompt": tc.nll_on_prompt, "min_lr_ratio": 0.1, "max_steps": max_steps}
    res = fit_policy(ctx, f"policy-{method}-{k}-{cfg.seed}", init_model, it / "policy", objective, hp, ds,
                     init_adapter=init_adapter)
    last = res.history[-1] if res.history else {}
    write_json(it / "train.json", {"objective": objective, "steps": res.steps, "epochs": res.epochs,
                                   "history": res.history, "seconds": res.seconds})
    led.mark("train", ["policy", "train.json"], seconds=time.time() - t0, steps=res.steps,
             loss=last.get("loss"), objective=objective)
    ctx.metrics.loss(objective, last.get("loss", 0.0))
    summary(f"train {objective}", time.time() - t0, steps=res.steps, loss=last.get("loss", float("nan")),
            log_odds=last.get("log_odds", float("nan")))
    return led.get("train")


def stage_sft_more(ctx: Context, it: Path, led: Ledger, k: int, prev: Path, steps: int) -> dict:
    """The `sft` baseline: M_0 given the same number of extra update steps, on its gold data."""
    if led.done("train"):
        return led.get("train")
    cfg, tc, t0 = ctx.cfg, ctx.cfg.train, time.time()
    if steps == 0:   # the main method did not train in this iteration: neither does its control
        shutil.copytree(prev, it / "policy", dirs_exist_ok=True)
        led.mark("train", ["policy"], seconds=time.time() - t0, steps=0, matched_steps=0)
        return led.get("train")
    rows = sft_rows(ctx)
    hp = {"lr": tc.lr, "epochs": 1, "max_steps": steps, "batch_size": tc.batch_size, "warmup_steps": tc.warmup_steps,
          "weight_decay": tc.weight_decay, "max_grad_norm": tc.max_grad_norm, "min_lr_ratio": 0.1}
    res = fit_policy(ctx, f"policy-sft-{k}-{cfg.seed}", prev, it / "policy", "sft", hp, rows)
    write_json(it / "train.json", {"objective": "sft", "steps": res.steps, "epochs": res.epochs,
                                   "matched_steps": steps, "history": res.history, "seconds": res.seconds})
    led.mark("train", ["policy", "train.json"], seconds=time.time() - t0, steps=res.steps, matched_steps=steps)
    summary("train sft (matched steps)", time.time() - t0, steps=res.steps, target_steps=steps)
    return led.get("train")


# ------------------------------------------------------------------------------------------ iterations

def run_method(ctx: Context, method: str) -> list[dict]:
    """Iterations 1..K of one method; returns per-iteration records (k=0 is M_0)."""
    cfg = ctx.cfg
    mdir = method_dirs(ctx, method)
    records = [iteration_record(ctx.root / "iter_00", 0)]
    from . import tracking
    tracking.update(ctx, method)    # M_0 and every finished iteration (a resumed run catches up)
    if method == "sft" and method == cfg.method:
        return records          # M_0 only
    prev = ctx.m0
    for k in range(1, cfg.iterations + 1):
        it = mdir / f"iter_{k:02d}"
        led = Ledger(it)
        if (it / "DONE").exists() and all(led.done(s) for s in led.data):
            records.append(iteration_record(it, k))
            prev = it / "policy"
            continue
        print(f"--- {method}: iteration {k}/{cfg.iterations} ---", flush=True)
        t_iter = time.time()
        if method == "sft":
            steps = main_steps(ctx, k) or 0
            stage_sft_more(ctx, it, led, k, prev, steps)
        else:
            load_policy(ctx, prev)
            samples = stage_sample(ctx, it, led, method, k)
            if method in ("sipf", "sipf-dpo"):
                labels = stage_label(ctx, it, led, samples, method, k)
                prm = stage_prm(ctx, it, led, labels, prev, method, k)
                scored = stage_score(ctx, it, led, samples, labels, prm, method, k)
                stage_pairs(ctx, it, led, scored, method, k)
            elif method == "outcome":
                stage_pairs(ctx, it, led, outcome_scores(samples, ctx), method, k)
            elif method == "rft":
                stage_rft_data(ctx, it, led, samples)
            stage_train(ctx, it, led, method, k, prev, mdir)
        tracking.update(ctx, method)    # the fits' step curves and the stage figures, before the eval
        stage_eval(ctx, it, led, it / "policy", f"{method} iter {k}")
        atomic_write_text(it / "DONE", f"{time.time() - t_iter:.1f}\n")
        records.append(iteration_record(it, k))
        tracking.update(ctx, method)
        if cfg.storage:
            mirror(ctx)
        prev = it / "policy"
    return records


def iteration_record(it: Path, k: int) -> dict:
    ev = read_json(it / "eval.json")
    led = Ledger(it)
    rec = {"k": k, "accuracy": ev["accuracy"], "n": ev["n"]}
    if ev.get("split", "test") != "test":      # tuning runs score on val (eval.split); the report says so
        rec["split"] = ev["split"]
    if "strict_accuracy" in ev:
        rec["strict_accuracy"] = ev["strict_accuracy"]
    for stage, keys in (("sample", ("kept", "correct", "strict", "false_positive_rate")),
                        ("label", ("rollouts", "positives")),
                        ("pairs", ("pairs",)), ("train", ("steps",))):
        figs = led.get(stage)
        for key in keys:
            if key in figs:
                rec[f"{stage}_{key}"] = figs[key]
    if k == 0 and (it / "sft.json").exists():   # did M_0's SFT stop on validation or at its epoch cap?
        sft = read_json(it / "sft.json")
        if "max_epochs" in sft:
            rec["sft_early_stopped"] = sft["epochs"] < sft["max_epochs"]
            rec["sft_epochs"] = sft["epochs"]
    if "vs_oracle" in led.get("label"):
        rec["label_f1_vs_oracle"] = led.get("label")["vs_oracle"].get("f1")
        if "path_precision" in led.get("label")["vs_oracle"]:
            rec["label_path_precision_vs_oracle"] = led.get("label")["vs_oracle"]["path_precision"]
    for key in ("holdout_auc_vs_mc", "holdout_auc_vs_oracle"):
        if key in led.get("score"):
            rec[f"prm_{key}"] = led.get("score")[key]
    return rec


def mirror(ctx: Context):
    from .artifacts import mirror_up
    t0 = time.time()
    mirror_up(ctx.root, ctx.cfg.storage)
    summary("mirror", time.time() - t0, to=ctx.cfg.storage)


def stage_timings(ctx: Context) -> dict:
    """{'<method>/iter_k': {stage: seconds}} from every ledger of the run."""
    out = {}
    for led_path in sorted(ctx.root.rglob("stages.json")):
        it = led_path.parent
        led = Ledger(it)
        out[str(it.relative_to(ctx.root))] = {s: e.get("figures", {}).get("seconds") for s, e in led.data.items()}
    return out


def run(cfg: C.SIPFConfig, out: str | Path, resume: bool = False) -> dict:
    from .actors import init_ray
    t0 = time.time()
    ctx = prepare(cfg, out, resume)   # config and data problems surface before any cluster work
    # timings.json: this call's seconds are added to every earlier call's, flushed as it goes
    clock = RunClock(ctx.root, ctx.sync_log, extra=lambda: {"stages": stage_timings(ctx)})
    try:
        init_ray(cfg.cluster.num_cpus)
        warm_trainer(ctx)
        build_m0(ctx)
        main = run_method(ctx, cfg.method)
        baselines = {}
        for m in cfg.baselines:
            if m == cfg.method:
                continue
            baselines[m] = {"iterations": run_method(ctx, m)}
        # results.json holds only what a same-seed re-run reproduces; wall-clock figures go to timings.json.
        results = {"task": cfg.task.name, "model": cfg.model.source, "method": cfg.method, "seed": cfg.seed,
                   "iterations": main, "baselines": baselines}
        write_json(ctx.root / "results.json", results)
        clock.flush()
        from .report import write_report
        write_report(ctx.root)
        from . import tracking
        tracking.finish(ctx)            # the report's plots as artifacts; runs marked finished
        if cfg.storage:
            mirror(ctx)
        results["seconds"] = time.time() - t0
        return results
    finally:
        clock.stop()
        shutdown(ctx)
