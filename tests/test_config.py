"""Config: YAML + overrides, and one-line errors that name the key (exit status 2 from the CLI)."""
import subprocess
import sys

import pytest

from sitf_ray import config as C


def test_defaults_and_overrides(tmp_path):
    cfg = C.build(overrides=["train.beta=0.25", "sampling.n=4", "baselines=[outcome,sft]", "storage=null"])
    assert cfg.train.beta == 0.25 and cfg.sampling.n == 4 and cfg.baselines == ["outcome", "sft"]
    y = tmp_path / "c.yaml"
    y.write_text("train:\n  lr: 1.0e-4\nlabeling:\n  mode: binary\n")
    cfg = C.load(y, ["labeling.k=3"])
    assert cfg.train.lr == 1e-4 and cfg.labeling.mode == "binary" and cfg.labeling.k == 3
    # the resolved config round-trips through YAML
    y2 = tmp_path / "resolved.yaml"
    y2.write_text(C.dump(cfg))
    assert C.load(y2) == cfg


@pytest.mark.parametrize("overrides, message", [
    (["train.bta=0.1"], "train.bta: unknown key (did you mean 'train.beta'?)"),
    (["sampling.temprature=1"], "sampling.temprature: unknown key (did you mean 'sampling.temperature'?)"),
    (["trian.beta=0.1"], "trian: unknown key (did you mean 'train'?)"),
    (["sampling.n=lots"], "sampling.n: Input should be a valid integer, unable to parse string as an integer (got 'lots')"),
    (["sampling.n=0"], "sampling.n: Input should be greater than or equal to 1 (got 0)"),
    (["sampling.top_p=1.5"], "sampling.top_p: Input should be less than or equal to 1 (got 1.5)"),
    (["labeling.mode=magic"], "labeling.mode: Input should be 'mc', 'binary' or 'oracle' (got 'magic')"),
    (["task.arith.sft_ops=[4,2]"], "task.arith: sft_ops must be [min, max] with 1 <= min <= max <= 12 (got [4, 2])"),
    (["cluster.weight_sync=nccl"], "cluster: weight_sync=nccl needs vLLM generators on GPUs (cluster.generator_gpus > 0)"),
    (["cluster.weight_sync=nccl", "cluster.generator_gpus=1", "cluster.lora_generation=merged"],
     "cluster: lora_generation=merged sends full weights through the object store; with "
     "weight_sync=nccl use lora_generation=adapter or auto"),
    (["task.max_gold_steps=2"], "task: max_gold_steps applies to gsm8k only, not 'arith'"),
    (["train.beta"], "override 'train.beta': expected key=value, e.g. orpo.beta=0.1"),
    (["train.max_len=256", "train.max_prompt_len=256"],
     "train: train.max_prompt_len (256) must be less than train.max_len (256): a training sequence is the prompt "
     "plus at least one response token"),
    (["train.max_prompt_len=300"],
     "train: train.max_prompt_len (300) must be less than train.max_len (256): a training sequence is the prompt "
     "plus at least one response token"),
])
def test_errors_name_the_key(overrides, message):
    with pytest.raises(C.ConfigError) as e:
        C.build(overrides=overrides)
    assert str(e.value) == message


def test_yaml_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(C.ConfigError, match=r"bad.yaml: not valid YAML"):
        C.load(bad)
    bad.write_text("- a\n- b\n")
    with pytest.raises(C.ConfigError, match="top level must be a mapping"):
        C.load(bad)
    with pytest.raises(C.ConfigError, match="config file not found"):
        C.load(tmp_path / "missing.yaml")


def test_cli_exits_2_with_one_line(tmp_path):
    p = subprocess.run([sys.executable, "-m", "sitf_ray.cli", "quickstart", "--out", str(tmp_path / "r"),
                        "train.bta=0.1"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert p.stderr.strip() == "config error: train.bta: unknown key (did you mean 'train.beta'?)"
    assert not (tmp_path / "r").exists()   # nothing written for a rejected config


def test_cli_help_lists_every_command():
    out = subprocess.run([sys.executable, "-m", "sitf_ray.cli", "--help"], capture_output=True, text=True,
                         timeout=60).stdout
    for cmd in ["quickstart", "run", "resume", "eval", "report", "compare", "serve", "bench", "eval-prm",
                "validate-cluster"]:
        assert cmd in out
