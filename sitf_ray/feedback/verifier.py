"""The arith verifier: a model stronger than the policy that labels steps and is the PRM's base, and never
writes text the policy trains on.

The paper takes its Monte-Carlo rollouts from DeepSeek-Math-7B-Instruct and its PRM from another 7B math
model (+ LoRA) for 1-2B policies: the simulator sees wrong steps the policy would repeat. Our stand-in is a
tiny Llama of the policy's family (its own size, `verifier.model`) trained by SFT on many more synthetic
gold solutions (`verifier.n_gold`) over a wider range of operations (`verifier.ops`) than the policy's gold
set, drawn from its own seeded stream. It is built once per verifier config on the run's Ray Train session
and cached under `<model.cache_dir>/verifier-<hash>`; later runs and other seeds reuse it. Select it with
`labeling.simulator=verifier` and `prm.base=verifier`. Only its judgements reach the policy: rollouts decide
step labels (their text is thrown away) and the PRM scores paths the policy wrote.
"""
from __future__ import annotations

import hashlib
import json
import random
import shutil
import time
from pathlib import Path

from sitf_ray.config import SIPFConfig
from sitf_ray.runs.progress import summary
from sitf_ray.tasks.arith import TASK, corpus, make_problem
from sitf_ray.train.model_sources import build_tokenizer, save_model, tiny_llama_config
from sitf_ray.train.session import fit
from sitf_ray.train.stages import fit_job

INFO = "verifier.json"


def verifier_key(cfg: SIPFConfig) -> str:
    """Hash of everything the verifier's weights depend on: its own config (model, data, training, seed), the
    arith problem space, and the version of this recipe. The run's seed is not in it: seeds share it."""
    spec = {"verifier": cfg.verifier.model_dump(mode="json"), "max_value": cfg.task.arith.max_value, "format": 1}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]


def verifier_folder(cfg: SIPFConfig) -> Path:
    return Path(cfg.model.cache_dir).resolve() / f"verifier-{verifier_key(cfg)}"


def gold_rows(cfg: SIPFConfig) -> tuple[list[dict], list[dict]]:
    """(training problems, held-out problems) from the verifier's own seeded stream, all distinct."""
    v = cfg.verifier
    rng = random.Random(10_007 + v.seed)
    seen, rows = set(), []
    while len(rows) < v.n_gold + v.n_holdout:
        p = make_problem(rng, v.ops[0], v.ops[1], cfg.task.arith.max_value)
        if p["question"] not in seen:
            seen.add(p["question"])
            rows.append(dict(p, id=f"verifier-{len(rows)}"))
    return rows[:v.n_gold], rows[v.n_gold:]


def ensure_verifier(cfg: SIPFConfig, storage: str) -> Path:
    """The cached verifier folder for this config, built first if missing (returns at once when cached).

    storage: Ray Train storage of the run (the build runs on the run's training session).
    """
    out = verifier_folder(cfg)
    if (out / INFO).exists():
        return out
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    v, t0 = cfg.verifier, time.time()
    init = out.with_name(out.name + ".init")
    # Its own tokenizer, trained on its own problem stream: seed-independent like everything else here.
    tok = build_tokenizer(corpus(cfg.task.arith.model_copy(update={"data_seed": 10_007 + v.seed,
                                                                    "sft_ops": v.ops, "train_ops": v.ops,
                                                                    "eval_ops": v.ops})), v.model.vocab_size)
    torch.manual_seed(v.seed)
    save_model(LlamaForCausalLM(tiny_llama_config(v.model, tok)), tok, init)
    train, held = gold_rows(cfg)
    rows = [{"prompt": TASK.prompt(r), "completion": TASK.target(r)} for r in train]
    hp = {"lr": v.lr, "epochs": v.epochs, "batch_size": v.batch_size, "warmup_steps": v.warmup_steps,
          "min_lr_ratio": 0.1, "max_grad_norm": 1.0, "max_len": v.model.max_len, "max_prompt_len": v.model.max_len // 2}
    val = {"task": "arith", "rows": held, "every": v.epochs, "patience": 1, "min_delta": 0.0,
           "max_tokens": 16 * v.ops[1] + 16, "min_epochs": v.epochs}
    tmp = out.with_name(out.name + ".tmp")
    # a tiny from-scratch Llama like the quickstart's: float32 whatever model.dtype says
    res = fit(fit_job(cfg, f"verifier-{verifier_key(cfg)}", storage, init, tmp, "sft", hp, seed=v.seed,
                      validate=val, dtype="float32"), {"train": rows})
    AutoTokenizer.from_pretrained(tmp)      # a complete folder, or fail before it is cached
    info = {"key": verifier_key(cfg), "config": v.model_dump(mode="json"), "build_seconds": time.time() - t0,
            "steps": res.steps, "holdout_accuracy": (res.best or {}).get("val_accuracy"),
            "holdout_problems": len(held), "train_problems": len(train)}
    (tmp / INFO).write_text(json.dumps(info, indent=1))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    shutil.rmtree(init, ignore_errors=True)
    summary("verifier built", info["build_seconds"], steps=res.steps, holdout_accuracy=info["holdout_accuracy"],
            folder=str(out))
    return out


def read_info(folder: str | Path) -> dict:
    p = Path(folder) / INFO
    return json.loads(p.read_text()) if p.exists() else {}
