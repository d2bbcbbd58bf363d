"""Benchmarks (DESIGN.md §6): ratios measured side by side in one run, written to JSON.

    sitf-ray bench engines     vLLM vs HF generate: raw decode and the Monte-Carlo rollout workload
    sitf-ray bench actors      GeneratorPool of R replicas vs one in-process engine
    sitf-ray bench weightsync  seconds to push a new policy to every replica: full state vs LoRA adapter
    sitf-ray bench labeling    binary search vs per-step MC: rollouts, seconds, agreement, F1 vs oracle
    sitf-ray bench orpo        our Ray Train ORPO vs TRL's ORPOTrainer: loss curves and throughput
    sitf-ray bench fit         fits through the Ray Train session vs a plain torch loop: start-up, steps/s
    sitf-ray bench pipeline    stage times per iteration of a run directory

Each engine measurement runs in its own subprocess (same environment, same threads) so that neither
engine inherits the other's state; the numbers are for this machine, printed and saved with its facts.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

from sitf_ray.runs.artifacts import read_json, write_json

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def machine() -> dict:
    """Facts of the machine a benchmark ran on; 'cpu': model name, ISA flags (avx512_bf16, amx_bf16, avx512f,
    avx2, ...), native bf16 or not (precision.cpu_record)."""
    import torch

    from sitf_ray.cluster.precision import cpu_record
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "cuda": torch.cuda.is_available(), "cpu": cpu_record(),
            "date": time.strftime("%Y-%m-%d %H:%M")}


def _kv(overrides: list[str]) -> dict:
    out = {}
    for o in overrides or []:
        k, _, v = o.partition("=")
        out[k] = v
    return out


# ---------------------------------------------------------------------------------------------- models

def tiny_model(cache: Path = ROOT / ".cache" / "bench") -> Path:
    """A tiny arith Llama trained briefly (in-process, plain torch): task-like text, fp32."""
    out = cache / "tiny-policy"
    if (out / "config.json").exists():
        return out
    import torch

    from sitf_ray import config as C
    from sitf_ray.train.model_sources import build_tiny, save_model
    from sitf_ray.train.policy_objectives import collate, encode_example, sft_loss
    from sitf_ray.tasks import get_task
    from transformers import AutoModelForCausalLM, AutoTokenizer
    cfg = C.build()
    init = build_tiny(cfg, cache / "tiny-init", seed=0)
    tok, model = AutoTokenizer.from_pretrained(init), AutoModelForCausalLM.from_pretrained(init)
    task = get_task("arith")
    rows = [encode_example(tok, task.prompt(r), task.target(r), 256, 200) for r in task.load("sft", cfg.task)]
    rows = [{"input_ids": a, "labels": b} for a, b in rows]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    torch.manual_seed(0)
    for epoch in range(3):
        for i in range(0, len(rows), 64):
            loss, _ = sft_loss(model, collate(rows[i:i + 64], tok.pad_token_id))
            loss.backward()
            opt.step()
            opt.zero_grad()
    return save_model(model, tok, out)


def smollm_model() -> Optional[Path]:
    try:
        from sitf_ray.train.model_sources import smollm2_folder
        return smollm2_folder(ROOT / ".cache" / "models")
    except Exception as e:   # the smollm extra is optional
        print(f"[bench] SmolLM2 unavailable: {e}")
        return None


def workload(model: Path, kind: str, n_prompts: int) -> list[str]:
    """Prompts of the model's task: arith for the tiny model, GSM8K for SmolLM2. Rollouts use long
    shared prefixes (question + the first steps of its gold solution), as the MC labeler does."""
    from sitf_ray import config as C
    from sitf_ray.tasks import get_task
    if "tiny" in model.name:
        task, cfg = get_task("arith"), C.build().task
        rows = task.load("test", cfg)
    else:
        task, cfg = get_task("gsm8k"), C.build(overrides=["task.name=gsm8k"]).task
        rows = task.load("test", cfg)
    rows = rows[:n_prompts]
    if kind == "raw":
        return [task.prompt(r) for r in rows]
    out = []
    for r in rows:
        steps = task.split_steps(task.target(r) or "")
        out.append(task.prompt(r) + "\n".join(steps[:max(1, len(steps) - 1)]) + "\n")
    return out


# ------------------------------------------------------------------------------------------- engines

WARMUP_SEQUENCES = 8      # the warm-up decodes about this many sequences (prompts x n), 16 tokens each
CALIBRATION_FRACTION = 8  # budgeted runs time one pass of all prompts at 1/8 of max_tokens first


def _measure_engine(spec: dict) -> dict:
    """Runs in a subprocess: build one engine, warm it up, time generate() (median of repeats).

    The warm-up (WARMUP_SEQUENCES sequences of 16 tokens) takes the engine's one-time costs (kernel set-up,
    allocations). spec['budget_s'] (optional) bounds the timed part: a calibration pass
    over all prompts at 1/CALIBRATION_FRACTION of max_tokens (same batch, so batching is accounted for)
    estimates one full pass; above the budget, passes decode fewer tokens per sequence (same batch, so
    tokens/s stays comparable; at least half the tokens, so the prefill does not dominate) and, past that,
    fewer prompts; repeats stop once the next one would take the timed total past the budget (at least one
    pass is timed). What was cut is recorded under 'shortened' ({'max_tokens': [asked, used], 'prompts':
    [asked, used], 'repeats': [asked, done], 'reason'}); 'pass_seconds' lists every pass."""
    from dataclasses import replace

    from sitf_ray.rollout.engines import make_engine
    from sitf_ray.rollout.engines.base import EngineSpec, GenParams
    es = EngineSpec(**spec["engine"])
    t0 = time.time()
    eng = make_engine(es)
    if spec.get("adapter"):      # a LoRA policy: hot-loaded as an adapter, or merged into full weights
        from sitf_ray.rollout.weights import policy_payload
        kind, payload = policy_payload(spec["adapter"], merge_adapter=spec.get("merge", False))
        (eng.load_adapter if kind == "adapter" else eng.load_state)(payload, 1)
    build_s = time.time() - t0
    prompts = spec["prompts"]
    p = GenParams(**spec["params"])
    kw: dict = {"dtype": getattr(eng, "precision", None) and eng.precision.dtype}
    t = time.time()
    eng.generate(prompts[:max(1, WARMUP_SEQUENCES // p.n)], replace(p, max_tokens=min(p.max_tokens, 16)), seed=0)
    warm_s = time.time() - t
    budget, repeats, cut = spec.get("budget_s"), int(spec.get("repeats", 3)), {}
    if budget:
        cal = max(1, p.max_tokens // CALIBRATION_FRACTION)
        t = time.time()
        eng.generate(prompts, replace(p, max_tokens=cal), seed=0)
        kw["calibration_seconds"] = time.time() - t
        est = kw["calibration_seconds"] * p.max_tokens / cal       # prefill counted again per slice: an over-estimate
        if est > budget:
            # fewer tokens per sequence first (same batch), but at least half of them so that decoding, not the
            # prefill, still dominates; then fewer prompts for the rest
            f = budget / est
            short = max(cal, p.max_tokens // 2, int(p.max_tokens * f))
            n = max(1, min(len(prompts), round(len(prompts) * f * p.max_tokens / short)))
            cut = {"max_tokens": [p.max_tokens, short], "reason": f"one pass estimated at {est:.0f} s (from a "
                   f"pass at {cal} tokens), over the {budget:.0f} s budget"}
            if n < len(prompts):
                cut["prompts"] = [len(prompts), n]
                prompts = prompts[:n]
            p = replace(p, max_tokens=short)
    times, toks = [], 0
    for r in range(repeats):
        t = time.time()
        out = eng.generate(prompts, p, seed=r)
        times.append(time.time() - t)
        toks = sum(c.n_tokens for o in out for c in o)
        if budget and r + 1 < repeats and sum(times) + times[-1] > budget:
            why = f"another pass would take the timed total over the {budget:.0f} s budget"
            cut.update(repeats=[repeats, r + 1], reason="; ".join(filter(None, [cut.get("reason"), why])))
            break
    if cut:
        kw["shortened"] = cut
    s = statistics.median(times)
    return {"seconds": s, "tokens": toks, "tokens_per_s": toks / s, "build_seconds": build_s,
            "warmup_seconds": warm_s, "prompts": len(prompts), "max_tokens": p.max_tokens, "repeats": len(times),
            "pass_seconds": times, **kw}


def run_engine_subprocess(spec: dict, threads: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), VLLM_ENABLE_V1_MULTIPROCESSING="0",
               VLLM_LOGGING_LEVEL="ERROR", TOKENIZERS_PARALLELISM="false")
    p = subprocess.run([sys.executable, "-m", "sitf_ray.bench", "_engine", json.dumps(spec)], env=env,
                       capture_output=True, text=True, timeout=1800)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    if p.returncode or not lines:
        raise RuntimeError(f"engine benchmark failed: {p.stderr[-2000:]}")
    return json.loads(lines[-1][7:])


def bench_engines(opts: dict) -> dict:
    """vLLM vs HF generate on this machine, SmolLM2 in both float32 and bfloat16 (the tiny model in float32,
    the quickstart's dtype), plus the LoRA decode comparison in the dtype `model.dtype: auto` picks here.
    opts: threads, repeats (3), budget_s (30: timed seconds per measurement, see _measure_engine; 0 = no
    bound), dtypes (comma list, default 'float32,bfloat16'), smollm ('1'), cases ('lora': that one only).
    Returns the JSON record; the CPU's model and flags are in 'machine' (run_bench) and 'cpu'."""
    from sitf_ray.cluster.precision import cpu_record, resolve
    t_start = time.time()
    threads = int(opts.get("threads", os.cpu_count() or 1))
    budget = float(opts.get("budget_s", 30)) or None
    auto = resolve("auto", "cpu")
    cases = []
    models = [(tiny_model(), "float32")]
    if opts.get("smollm", "1") == "1" and (sm := smollm_model()) is not None:
        models += [(sm, d) for d in opts.get("dtypes", "float32,bfloat16").split(",")]
    lora_only = opts.get("cases") == "lora"      # just the LoRA decode comparison (SmolLM2)
    for model, dtype in models:
        tiny = "tiny" in model.name
        raw_tokens = 96 if tiny else 128
        for name, prompts, params in () if lora_only else (
                ("raw_decode", workload(model, "raw", 64),
                 {"n": 1, "temperature": 0.0, "max_tokens": raw_tokens, "ignore_eos": True}),
                ("mc_rollouts", workload(model, "rollout", 32 if tiny else 16),
                 {"n": 8, "temperature": 1.0, "max_tokens": 48 if tiny else 96})):
            row = {"model": model.name, "dtype": dtype, "workload": name, "prompts": len(prompts), **params}
            for kind in ("vllm", "hf"):
                spec = {"engine": {"model": str(model), "kind": kind, "dtype": dtype, "threads": threads,
                                   "max_model_len": 256 if tiny else 1024, "kv_cache_bytes": 512 << 20,
                                   "device": "cpu"},
                        "prompts": prompts, "params": params, "repeats": int(opts.get("repeats", 3)),
                        "budget_s": budget}
                row[kind] = run_engine_subprocess(spec, threads)
                cut = " (shortened)" if "shortened" in row[kind] else ""
                print(f"[bench engines] {model.name} {dtype} {name} {kind}: {row[kind]['tokens_per_s']:.0f} tok/s"
                      f"{cut}", flush=True)
            row["ratio_vllm_over_hf"] = row["vllm"]["tokens_per_s"] / row["hf"]["tokens_per_s"]
            cases.append(row)
        if not tiny and dtype == auto.dtype:
            cases.append(lora_decode(model, dtype, threads, int(opts.get("repeats", 3)), budget))
    return {"benchmark": "engines", "threads": threads, "cpu": cpu_record(), "dtype_auto": auto.as_dict(),
            "budget_s": budget, "seconds": time.time() - t_start, "cases": cases,
            "notes": "SmolLM2 in float32 and bfloat16, the tiny model in float32 (model.dtype auto is float32 for "
                     "it); lora_decode in the dtype auto picks on this CPU. A measurement whose timed part would "
                     "exceed budget_s is shortened (fewer tokens per sequence, down to half; then fewer prompts; "
                     "fewer repeats) and says so under 'shortened'",
            "targets": {"raw_decode": ">= 3x", "mc_rollouts": ">= 5x",
                        "lora_decode": "informs cluster.lora_generation (merged on CPU when faster)"}}


def lora_adapter(model: Path, dtype: str, target_modules: list[str], name: str, random_b: bool = True) -> Path:
    """A saved r=16 LoRA policy folder on `model` (random B changes the output; peft's zero B does not)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sitf_ray.rollout.policy_folder import POLICY_META
    ad = ROOT / ".cache" / "bench" / name
    torch.manual_seed(0)
    peft = get_peft_model(AutoModelForCausalLM.from_pretrained(model, dtype=getattr(torch, dtype)),
                          LoraConfig(r=16, lora_alpha=32, target_modules=target_modules,
                                     init_lora_weights=not random_b))
    peft.save_pretrained(ad)
    AutoTokenizer.from_pretrained(model).save_pretrained(ad)
    (ad / POLICY_META).write_text(json.dumps({"kind": "adapter", "base": str(model)}))
    return ad


def lora_decode(model: Path, dtype: str, threads: int, repeats: int, budget: Optional[float] = None) -> dict:
    """vLLM sampling with a LoRA policy (all 7 linear layers, as the recipes train it): hot-loaded adapter
    vs the same adapter merged into full weights."""
    ad = lora_adapter(model, dtype, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                      f"{model.name}-lora-all")
    params = {"n": 4, "temperature": 1.0, "max_tokens": 128, "ignore_eos": True}
    prompts = workload(model, "raw", 24)
    row = {"model": model.name, "dtype": dtype, "workload": "lora_decode", "prompts": len(prompts), **params}
    for name, merge in (("adapter", False), ("merged", True)):
        spec = {"engine": {"model": str(model), "kind": "vllm", "dtype": dtype, "threads": threads,
                           "max_model_len": 1024, "kv_cache_bytes": 512 << 20, "device": "cpu",
                           "lora_rank": 0 if merge else 16},
                "adapter": str(ad), "merge": merge, "prompts": prompts, "params": params, "repeats": repeats,
                "budget_s": budget}
        row[name] = run_engine_subprocess(spec, threads)
        print(f"[bench engines] {model.name} lora_decode {name}: {row[name]['tokens_per_s']:.0f} tok/s", flush=True)
    row["ratio_merged_over_adapter"] = row["merged"]["tokens_per_s"] / row["adapter"]["tokens_per_s"]
    return row


# -------------------------------------------------------------------------------------------- actors

def bench_actors(opts: dict) -> dict:
    """Same sampling workload: one in-process engine vs pools of 1 and R replicas (1 thread each)."""
    from sitf_ray.rollout.generators import GeneratorPool
    from sitf_ray.cluster.ray_init import init_ray
    from sitf_ray.rollout.engines.base import EngineSpec, GenParams
    model = tiny_model()
    prompts = workload(model, "raw", 256)
    params = {"n": 4, "temperature": 1.0, "max_tokens": 64}
    engine = {"model": str(model), "kind": "vllm", "dtype": "float32", "threads": 1, "max_model_len": 256,
              "device": "cpu"}
    inproc = run_engine_subprocess({"engine": engine, "prompts": prompts, "params": params, "repeats": 3}, 1)
    init_ray(8)
    rows = {"in_process_1_thread": inproc}
    for r in (1, int(opts.get("replicas", 2))):
        pool = GeneratorPool(EngineSpec(**engine), replicas=r, cpus=1, chunk_size=64)
        try:
            pool.generate(prompts[:8], GenParams(**params), seed=0)
            times, toks = [], 0
            for rep in range(3):
                t = time.time()
                out = pool.generate(prompts, GenParams(**params), seed=rep)
                times.append(time.time() - t)
                toks = sum(c.n_tokens for o in out for c in o)
            s = statistics.median(times)
            rows[f"pool_{r}_replicas"] = {"seconds": s, "tokens": toks, "tokens_per_s": toks / s,
                                          "start_seconds": pool.start_seconds}
        finally:
            pool.shutdown()
        print(f"[bench actors] pool of {r}: {rows[f'pool_{r}_replicas']['tokens_per_s']:.0f} tok/s", flush=True)
    r = int(opts.get("replicas", 2))
    one, many = rows["pool_1_replicas"]["tokens_per_s"], rows[f"pool_{r}_replicas"]["tokens_per_s"]
    return {"benchmark": "actors", "cpus": os.cpu_count(), "workload": {"prompts": len(prompts), **params},
            "results": rows, "overhead_pool1_vs_in_process": 1 - one / inproc["tokens_per_s"],
            "scaling": many / one, "replicas": r,
            "targets": {"overhead": "<= 10 %", "scaling": f">= {0.8 * r:.1f} where cores allow"}}


# ---------------------------------------------------------------------------------------- weightsync

def bench_weightsync(opts: dict) -> dict:
    """Push a new policy to every replica and serve one prompt with it: full state vs LoRA adapter."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sitf_ray.rollout.generators import GeneratorPool
    from sitf_ray.cluster.ray_init import init_ray
    from sitf_ray.rollout.engines.base import EngineSpec, GenParams
    from sitf_ray.rollout.weights import push_policy, record_wire_digest
    init_ray(8)
    out = {"benchmark": "weightsync", "cases": []}
    models = [(tiny_model(), "float32", 256)]
    if opts.get("smollm", "1") == "1" and (sm := smollm_model()) is not None:
        models.append((sm, "bfloat16", 512))
    work = ROOT / ".cache" / "bench" / "weightsync"
    for model, dtype, max_len in models:
        tok = AutoTokenizer.from_pretrained(model)
        base = AutoModelForCausalLM.from_pretrained(model, dtype=getattr(torch, dtype))
        full = work / f"{model.name}-full"
        with torch.no_grad():
            for p in base.parameters():
                p.mul_(1.001)
        base.save_pretrained(full)
        tok.save_pretrained(full)
        record_wire_digest(full)      # as a fit's final save does (train/worker.save_final)
        ad = lora_adapter(model, dtype, ["q_proj", "v_proj"], f"weightsync/{model.name}-adapter", random_b=False)
        replicas = int(opts.get("replicas", 2))
        pool = GeneratorPool(EngineSpec(model=str(model), kind="vllm", dtype=dtype, max_model_len=max_len,
                                        lora_rank=16, kv_cache_bytes=128 << 20), replicas=replicas, cpus=1)
        row = {"model": model.name, "replicas": replicas}
        try:
            one = GenParams(n=1, temperature=0.0, max_tokens=1)
            for kind, folder in (("full", full), ("adapter", ad)):
                push_s, serve_s, size, phases = [], [], 0, []
                for rep in range(5):      # median of 5: two replicas share the 2 cores
                    t = time.time()
                    r = push_policy(pool, folder, pool.version + 1)
                    push_s.append(time.time() - t)
                    phases.append(r.phases)
                    pool.generate(["Hello"] * replicas, one, seed=0)     # the adapter loads lazily: count it
                    serve_s.append(time.time() - t)
                    size = r.bytes
                row[kind] = {"push_seconds": statistics.median(push_s), "push_and_first_token_seconds":
                             statistics.median(serve_s), "bytes": size, "pushes_seconds": push_s,
                             "phases_seconds": {p: statistics.median(x[p] for x in phases) for p in phases[0]}}
                print(f"[bench weightsync] {model.name} {kind}: {row[kind]['push_seconds']:.3f} s", flush=True)
        finally:
            pool.shutdown()
        row["adapter_speedup"] = row["full"]["push_and_first_token_seconds"] / row["adapter"]["push_and_first_token_seconds"]
        out["cases"].append(row)
    out["targets"] = {"full_135m_seconds": "<= 1", "adapter_speedup": ">= 10x"}
    return out


# ------------------------------------------------------------------------------------------- labeling

def bench_labeling(opts: dict) -> dict:
    """Per-step MC vs binary search on one set of sampled arith paths, both against the exact oracle."""
    from sitf_ray import config as C
    from sitf_ray.rollout.generators import GeneratorPool
    from sitf_ray.cluster.ray_init import init_ray
    from sitf_ray.feedback.labeling import agreement, label_samples, versus_oracle
    from sitf_ray.train.stages import build_m0
    from sitf_ray.rollout.stages import engine_spec
    from sitf_ray.runs.context import prepare
    from sitf_ray.pipeline import shutdown
    from sitf_ray.rollout.sampling import sample_paths
    from sitf_ray.tasks import get_task
    init_ray(8)
    overrides = [o for o in opts.get("_overrides", []) if not o.startswith(("k=", "questions=", "run="))]
    run_dir = Path(opts.get("run", ROOT / ".cache" / "bench" / "labeling-m0"))
    # an existing run (e.g. runs/quickstart) lends its M_0 and its own config; else build one
    cfg = C.load(run_dir / "config.yaml") if (run_dir / "config.yaml").exists() else C.build(overrides=overrides)
    ctx = prepare(cfg, run_dir, resume=(run_dir / "config.yaml").exists())
    try:
        build_m0(ctx)
    finally:
        shutdown(ctx)
    task = get_task("arith")
    rows = ctx.splits["train"][:int(opts.get("questions", 300))]
    by_id = {r["id"]: r for r in rows}
    lc = cfg.labeling
    pool = GeneratorPool(engine_spec(cfg, str(ctx.m0)), cfg.cluster.generator_replicas, 1, 0, "PACK", 256)
    sim = pool
    res = {"benchmark": "labeling", "questions": len(rows), "simulator": lc.simulator, "cases": [],
           "temperature": lc.temperature, "skip_correct_paths": lc.skip_correct_paths}
    try:
        samples, st = sample_paths(pool, task, rows, cfg.sampling.n, 1.0, 1.0, cfg.sampling.max_tokens, seed=0)
        res["samples"] = st
        if lc.simulator == "verifier":    # the run's own simulator (the policy generators above otherwise)
            from sitf_ray.feedback.verifier import ensure_verifier
            sim = GeneratorPool(engine_spec(cfg, str(ensure_verifier(cfg, str(run_dir / "ray_train")))),
                                cfg.cluster.generator_replicas, 1, 0, "PACK", 256)
        for k in [int(x) for x in str(opts.get("k", "4,8")).split(",")]:
            row = {"k": k}
            for mode in ("mc", "binary"):
                labels, ls = label_samples(samples, by_id, task, mode, sim, k=k, temperature=lc.temperature,
                                           max_tokens=cfg.labeling.max_tokens, seed=1,
                                           skip_correct_paths=lc.skip_correct_paths, answer_probe=lc.answer_probe)
                row[mode] = {"rollouts": ls.rollouts, "seconds": ls.seconds, "vs_oracle": versus_oracle(labels),
                             "labels": labels}
            row["rollout_ratio_mc_over_binary"] = row["mc"]["rollouts"] / max(1, row["binary"]["rollouts"])
            row["agreement"] = agreement(row["mc"].pop("labels"), row["binary"].pop("labels"))
            print(f"[bench labeling] K={k}: rollouts mc {row['mc']['rollouts']} / binary {row['binary']['rollouts']}"
                  f" = {row['rollout_ratio_mc_over_binary']:.2f}x, agreement {row['agreement']:.3f}", flush=True)
            res["cases"].append(row)
    finally:
        if sim is not pool:
            sim.shutdown()
        pool.shutdown()
    res["targets"] = {"rollout_ratio": ">= 2x", "agreement": ">= 0.95"}
    return res


# ----------------------------------------------------------------------------------------------- ORPO

def bench_orpo(opts: dict) -> dict:
    """Same model, same pairs in the same order, same optimizer and steps: per-step loss and speed."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    import ray.data

    from sitf_ray.cluster.ray_init import init_ray
    from sitf_ray.tasks import get_task
    from sitf_ray.train.session import FitJob, fit
    from sitf_ray import config as C
    init_ray(8)
    model = tiny_model()
    task, cfg = get_task("arith"), C.build()
    rows = task.load("train", cfg.task)[:int(opts.get("pairs", 256))]
    pairs = []
    for r in rows:   # chosen = gold, rejected = gold with the last result off by one
        gold = task.target(r)
        wrong = gold.rsplit(" ", 1)[0] + f" {int(r['answer']) + 1}"
        pairs.append({"prompt": task.prompt(r), "chosen": gold, "rejected": wrong})
    bs, lr, beta = 16, 1e-4, 0.1
    work = ROOT / ".cache" / "bench" / "orpo"
    tok = AutoTokenizer.from_pretrained(model)
    torch.manual_seed(0)
    trl_model = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    args = ORPOConfig(output_dir=str(work / "trl"), beta=beta, max_length=256, learning_rate=lr,
                      per_device_train_batch_size=bs, num_train_epochs=1, lr_scheduler_type="constant",
                      warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, logging_steps=1, save_strategy="no",
                      use_cpu=True, bf16=False, report_to=[], remove_unused_columns=False,
                      dataloader_num_workers=0, train_sampling_strategy="sequential", disable_dropout=True)
    torch.set_num_threads(1)
    trainer = ORPOTrainer(model=trl_model, args=args, train_dataset=Dataset.from_list(pairs), processing_class=tok)
    t = time.time()
    trainer.train()
    trl_s = time.time() - t
    trl_losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    hp = {"lr": lr, "epochs": 1, "batch_size": bs, "warmup_steps": 0, "beta": beta, "min_lr_ratio": 1.0,
          "max_grad_norm": 1.0, "nll_on_prompt": True, "shuffle": False, "log_steps": True, "max_len": 256,
          "max_prompt_len": 255}
    job = FitJob(name=f"bench-orpo-{int(time.time())}", storage=str(work / "rt"), init_model=str(model),
                 out_dir=str(work / "ours"), objective="orpo", hp=hp, seed=0, workers=1, threads=1)
    t = time.time()
    res = fit(job, {"train": ray.data.from_items(pairs)})
    ours_total = time.time() - t
    ours_losses = res.history[0]["step_losses"]
    ours_train = res.history[0]["seconds"]
    n = min(len(ours_losses), len(trl_losses))
    diff = max(abs(a - b) for a, b in zip(ours_losses[:n], trl_losses[:n]))
    print(f"[bench orpo] {n} steps: max |loss ours - TRL| = {diff:.2e}; train seconds ours {ours_train:.1f} "
          f"(with Ray Train start-up {ours_total:.1f}) vs TRL {trl_s:.1f}", flush=True)
    return {"benchmark": "orpo", "model": model.name, "pairs": len(pairs), "batch_size": bs, "steps": n,
            "threads_per_trainer": 1, "max_abs_loss_diff": diff, "loss_ours": ours_losses[:n],
            "loss_trl": trl_losses[:n], "seconds_ours_train_loop": ours_train,
            "seconds_ours_with_ray_train_startup": ours_total, "seconds_trl": trl_s,
            "throughput_ratio_train_loop": trl_s / ours_train, "throughput_ratio_with_startup": trl_s / ours_total,
            "targets": {"max_abs_loss_diff": "<= 1e-5", "throughput_ratio": ">= 1.0"}}


# ------------------------------------------------------------------------------------------------ fit

def _plain_torch_fit(model_dir: Path, rows: list[dict], hp: dict, threads: int) -> dict:
    """The reference: the same SFT steps (same tokenisation, batches, AdamW, schedule) as one plain
    in-process torch loop; steps per second after the first step."""
    import random

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, get_cosine_with_min_lr_schedule_with_warmup

    from sitf_ray.train.policy_objectives import collate, sft_loss
    from sitf_ray.train.worker import encode, length_grouped_batches
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    enc = encode("sft", rows, tok, hp)
    lens = [len(r["input_ids"]) for r in enc]
    bs, epochs = int(hp["batch_size"]), int(hp["epochs"])
    total = epochs * -(-len(enc) // bs)
    opt = torch.optim.AdamW(model.parameters(), lr=float(hp["lr"]))
    sched = get_cosine_with_min_lr_schedule_with_warmup(opt, num_warmup_steps=int(hp["warmup_steps"]),
                                                        num_training_steps=total, min_lr_rate=0.1)
    model.train()
    steps, first, t_call = 0, None, time.time()
    for epoch in range(epochs):
        for idx in length_grouped_batches(lens, bs, random.Random(epoch)):
            loss, _ = sft_loss(model, collate([enc[i] for i in idx], tok.pad_token_id))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            steps += 1
            if first is None:
                first = time.time()
    last = time.time()
    return {"steps": steps, "startup_s": first - t_call, "steps_per_s": (steps - 1) / (last - first)}


def bench_fit(opts: dict) -> dict:
    """Fits of the tiny model through the real trainer (one Ray Train session) vs a plain torch loop.

    startup_s: mean seconds from calling fit() to the first optimizer step, over the fits run once the
    run's session is up (the pipeline starts it with Ray, before its first fit); the session's own start
    and the first fit's cold figure are reported beside it.
    """
    import statistics

    import ray.data

    from sitf_ray import config as C
    from sitf_ray.cluster.ray_init import init_ray
    from sitf_ray.tasks import get_task
    from sitf_ray.train.session import FitJob, close_session, fit, session
    n_fits, workers = int(opts.get("fits", 3)), int(opts.get("workers", 2))
    threads, epochs = int(opts.get("threads", 1)), int(opts.get("epochs", 3))
    init_ray(8)
    model = tiny_model()
    task, cfg = get_task("arith"), C.build()
    rows = [{"prompt": task.prompt(r), "completion": task.target(r)} for r in task.load("sft", cfg.task)]
    hp = {"lr": 1e-4, "epochs": epochs, "batch_size": 32, "warmup_steps": 10, "min_lr_ratio": 0.1,
          "max_grad_norm": 1.0, "max_len": 256, "max_prompt_len": 160}
    work = ROOT / ".cache" / "bench" / "fit"
    shutil.rmtree(work, ignore_errors=True)
    close_session()
    fits, t_session = [], time.time()
    for i in range(n_fits + 1):        # fit 0 starts the session (cold); fits 1..n reuse it, as a run does
        job = FitJob(name=f"bench-fit-{i}", storage=str(work / "rt"), init_model=str(model),
                     out_dir=str(work / f"out{i}"), objective="sft", hp=hp, seed=i, workers=workers, threads=threads)
        t = time.time()
        res = fit(job, {"train": ray.data.from_items(rows)})
        fits.append({"fit": i, "cold": i == 0, "steps": res.steps, "startup_s": res.first_step_at - t,
                     "steps_per_s": (res.steps - 1) / (res.last_step_at - res.first_step_at),
                     "total_s": res.seconds})
        if i == 0:
            session_start = ray.get(session(str(work / "rt"), workers).board.ready_at.remote()) - t_session
    close_session()
    ref = _plain_torch_fit(model, rows, hp, workers * threads)
    warm = [f for f in fits if not f["cold"]]
    ours_sps = statistics.mean(f["steps_per_s"] for f in warm)
    out = {"benchmark": "fit", "model": model.name, "rows": len(rows), "workers": workers,
           "threads_per_worker": threads, "batch_size": hp["batch_size"], "epochs": epochs,
           "startup_s": statistics.mean(f["startup_s"] for f in warm), "steps_per_s": ours_sps,
           "reference_steps_per_s": ref["steps_per_s"], "steps_per_s_ratio": ours_sps / ref["steps_per_s"],
           "session_start_s": session_start, "cold_fit_startup_s": fits[0]["startup_s"], "fits": fits,
           "reference": ref | {"threads": workers * threads},
           "targets": {"startup_s": "<= 5", "steps_per_s_ratio": ">= 0.8"}}
    print(f"[bench fit] startup {out['startup_s']:.2f} s (cold fit {out['cold_fit_startup_s']:.1f} s, session "
          f"{session_start:.1f} s); {ours_sps:.1f} vs {ref['steps_per_s']:.1f} steps/s = "
          f"{out['steps_per_s_ratio']:.2f}x", flush=True)
    return out


# ------------------------------------------------------------------------------------------- pipeline

def bench_pipeline(opts: dict) -> dict:
    d = Path(opts.get("run", "runs/quickstart"))
    t = read_json(d / "timings.json")
    per_stage: dict = {}
    for it, stages in t["stages"].items():
        for s, sec in stages.items():
            if sec is not None:
                per_stage.setdefault(s, []).append(sec)
    return {"benchmark": "pipeline", "run": str(d), "total_seconds": t["total_seconds"], "iterations": t["stages"],
            "stage_totals": {s: sum(v) for s, v in per_stage.items()},
            "note": "stages run one after another on purpose: on a 2-core machine generation beside training "
                    "runs ~5x slower, so nothing overlaps; on a cluster the roles sit on separate nodes"}


BENCHES = {"engines": bench_engines, "actors": bench_actors, "weightsync": bench_weightsync,
           "labeling": bench_labeling, "orpo": bench_orpo, "fit": bench_fit, "pipeline": bench_pipeline}


def run_bench(name: str, out: Optional[str], overrides: list[str]) -> int:
    opts = _kv(overrides) | {"_overrides": overrides}
    res = BENCHES[name](opts)
    res["machine"] = machine()
    path = Path(out) if out else RESULTS / f"{name}.json"
    write_json(path, res)
    print(f"wrote {path}")
    return 0


def best_of_n(run_dir: Path, n: int = 8, questions: int = 200) -> dict:
    """On the test split: N samples from the policy that the last PRM scored, then pick one by PRM reward,
    by majority vote over final answers, or at random (expected accuracy); pass@N is the ceiling."""
    from collections import Counter

    from sitf_ray import config as C
    from sitf_ray.rollout.generators import GeneratorPool
    from sitf_ray.cluster.ray_init import init_ray
    from sitf_ray.rollout.stages import engine_spec
    from sitf_ray.feedback.prm import PRMModel
    from sitf_ray.feedback.scoring import path_scores
    from sitf_ray.rollout.sampling import sample_paths
    from sitf_ray.tasks import get_task
    cfg = C.load(run_dir / "config.yaml")
    prms = sorted(run_dir.glob("iter_*/prm/config.json"))
    if not prms:
        raise FileNotFoundError(f"{run_dir}: no trained PRM (iter_*/prm) to rerank with")
    it = prms[-1].parent.parent
    k = int(it.name.split("_")[1])
    policy = run_dir / f"iter_{k - 1:02d}" / "policy"
    task = get_task(cfg.task.name)
    rows = task.load("test", cfg.task)[:questions]
    init_ray(8)
    pool = GeneratorPool(engine_spec(cfg, str(policy)), cfg.cluster.generator_replicas, 1, 0, "PACK", 256)
    try:
        from sitf_ray.rollout.weights import push_policy
        push_policy(pool, policy, 1)
        samples, _ = sample_paths(pool, task, rows, n, 1.0, 1.0, cfg.sampling.max_tokens, seed=123, dedupe=False)
    finally:
        pool.shutdown()
    prm = PRMModel(str(it / "prm"), max_len=cfg.prm.max_len)
    by_q: dict = {}
    scores = prm.score([{"prompt": task.prompt(next(r for r in rows if r["id"] == s["qid"])), "steps": s["steps"]}
                        for s in samples])
    for s, (_, reward) in zip(samples, path_scores(task, [s["steps"] for s in samples], scores, cfg.prm)):
        by_q.setdefault(s["qid"], []).append((reward, s))
    acc = {"prm_rerank": 0, "majority_vote": 0, "random_pick": 0.0, "pass_at_n": 0}
    for q, cands in by_q.items():
        acc["prm_rerank"] += int(max(cands, key=lambda c: c[0])[1]["correct"])
        votes = Counter(c[1]["answer"] for c in cands if c[1]["answer"] is not None)
        if votes:
            top = votes.most_common(1)[0][0]
            acc["majority_vote"] += int(next(c[1]["correct"] for c in cands if c[1]["answer"] == top))
        acc["random_pick"] += sum(c[1]["correct"] for c in cands) / len(cands)
        acc["pass_at_n"] += int(any(c[1]["correct"] for c in cands))
    return {"n": n, "questions": len(by_q), "prm": str(it / "prm"), "policy": str(policy),
            **{k2: v / len(by_q) for k2, v in acc.items()}}


def eval_prm(run_dir: str, out: Optional[str]) -> int:
    """Label and PRM quality of a finished run, per iteration, and PRM best-of-N on the test split."""
    from sitf_ray.runs.artifacts import Ledger
    d = Path(run_dir)
    rows = []
    for it in sorted(d.glob("iter_*/stages.json")):
        led = Ledger(it.parent)
        lab, sc = led.get("label"), led.get("score")
        if lab:
            rows.append({"iteration": it.parent.name, "label_vs_oracle": lab.get("vs_oracle"),
                         "rollouts": lab.get("rollouts"), "label_seconds": lab.get("seconds"),
                         "prm_holdout_auc_vs_mc": sc.get("holdout_auc_vs_mc"),
                         "prm_holdout_auc_vs_oracle": sc.get("holdout_auc_vs_oracle")})
    res = {"run": str(d), "iterations": rows, "best_of_n": best_of_n(d)}
    print(json.dumps(res, indent=2))
    write_json(out or d / "eval_prm.json", res)
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "_engine":
        print("RESULT " + json.dumps(_measure_engine(json.loads(sys.argv[2]))), flush=True)
