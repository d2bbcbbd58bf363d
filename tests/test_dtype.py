"""model.dtype 'auto': bf16 only where the hardware runs it natively (sitf_ray/cluster/precision.py).

The rule is a pure function of the capabilities, so every kind of hardware is covered here without it;
the real detection is checked against this machine's /proc/cpuinfo. No Ray, no vLLM.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from sitf_ray import config as C
from sitf_ray.cluster import precision as P

ROOT = Path(__file__).resolve().parents[1]

CPU_NATIVE_AVX512 = P.Capabilities("cpu", frozenset({"avx2", "avx512f", "avx512_bf16"}), "Xeon (Cooper Lake)")
CPU_NATIVE_AMX = P.Capabilities("cpu", frozenset({"avx2", "avx512f", "amx_tile", "amx_bf16"}), "Xeon (SPR)")
CPU_ARM_BF16 = P.Capabilities("cpu", frozenset({"fp", "asimd", "sve", "bf16"}), "Neoverse-V1")
CPU_AVX512_ONLY = P.Capabilities("cpu", frozenset({"avx2", "avx512f", "avx512bw", "avx512_vnni"}), "Xeon (Skylake)")
CPU_AVX2_ONLY = P.Capabilities("cpu", frozenset({"avx2", "fma"}), "Core i7")
CPU_UNKNOWN = P.Capabilities("cpu")
GPU_BF16 = P.Capabilities("cuda", cuda_bf16=True, cuda_name="NVIDIA A100", cuda_capability=(8, 0))
GPU_NO_BF16 = P.Capabilities("cuda", frozenset({"avx512_bf16"}), cuda_bf16=False, cuda_name="Tesla T4",
                             cuda_capability=(7, 5))

CASES = [  # (capabilities, what 'auto' picks, words the reason holds)
    (CPU_NATIVE_AVX512, "bfloat16", "avx512_bf16"),
    (CPU_NATIVE_AMX, "bfloat16", "amx_bf16"),
    (CPU_ARM_BF16, "bfloat16", "bf16"),
    (CPU_AVX512_ONLY, "float32", "no native bf16"),
    (CPU_AVX2_ONLY, "float32", "no native bf16"),
    (CPU_UNKNOWN, "float32", "no native bf16"),
    (GPU_BF16, "bfloat16", "A100 (compute capability 8.0) supports bf16"),
    # the GPU decides on a CUDA node, whatever its host CPU has
    (GPU_NO_BF16, "float32", "T4 (compute capability 7.5) has no bf16"),
]


@pytest.mark.parametrize("caps,want,why", CASES, ids=[f"{c.device}-{c.cuda_name or c.cpu_model or 'bare'}"
                                                    for c, _, _ in CASES])
def test_auto_follows_the_hardware(caps, want, why):
    d = P.choose_dtype("auto", caps)
    assert (d.dtype, d.requested, d.device) == (want, "auto", caps.device)
    assert why in d.reason
    assert d.line() == f"dtype auto -> {want}: {d.reason}"


@pytest.mark.parametrize("caps", [c for c, _, _ in CASES])
@pytest.mark.parametrize("explicit", P.DTYPES)
def test_an_explicit_dtype_always_wins(caps, explicit):
    d = P.choose_dtype(explicit, caps)
    assert (d.dtype, d.requested, d.reason) == (explicit, explicit, "set explicitly")


def test_unknown_dtype_is_an_error():
    with pytest.raises(ValueError, match="dtype must be 'auto' or one of float32, bfloat16, float16"):
        P.choose_dtype("bf16", CPU_AVX2_ONLY)


def test_cpuinfo_parsing_x86_and_arm():
    x86 = ("processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Processor\n"
           "flags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n\nprocessor\t: 1\n"
           "model name\t: Intel(R) Xeon(R) Processor\nflags\t\t: fpu avx2\n")
    info = P.cpu_info(x86)
    assert info == {"model": "Intel(R) Xeon(R) Processor",
                    "flags": ["amx_bf16", "amx_tile", "avx2", "avx512_bf16", "avx512f", "fpu"]}
    arm = "processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd sve bf16 i8mm\nCPU part\t: 0xd40\n"
    assert {"bf16", "sve"} <= set(P.cpu_info(arm)["flags"])


def test_real_detection_on_this_machine_is_sane():
    """detect() reads this machine; its answer agrees with /proc/cpuinfo and with the rule."""
    caps = P.detect("cpu")
    assert caps.device == "cpu" and caps.cpu_model
    d = P.resolve("auto", "cpu")
    assert d.dtype in ("bfloat16", "float32") and d.requested == "auto"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        words = set()
        for ln in cpuinfo.read_text().splitlines():
            if ln.split(":")[0].strip() in ("flags", "Features"):
                words = set(ln.split(":", 1)[1].split())
                break
        native = bool(words & {"avx512_bf16", "amx_bf16", "bf16"})
        assert caps.cpu_flags == frozenset(words)
        assert d.dtype == ("bfloat16" if native else "float32"), (d, sorted(words & set(P.REPORTED_FLAGS)))
    rec = P.cpu_record()
    assert rec["model"] == caps.cpu_model and set(rec["flags"]) <= caps.cpu_flags
    assert rec["native_bf16"] == (d.dtype == "bfloat16")
    assert P.resolve("float32", "cpu").dtype == "float32"


def test_config_default_recipes_and_the_tiny_quickstart():
    cfg = C.build()
    assert cfg.model.dtype == "auto"
    assert cfg.model.run_dtype() == "float32"          # the quickstart's tiny model stays float32
    assert C.build(overrides=["model.dtype=bfloat16"]).model.run_dtype() == "bfloat16"
    for recipe in ("smollm2-gsm8k", "gemma2b-gsm8k", "gemma2b-mbpp"):
        m = C.load(ROOT / "configs" / f"{recipe}.yaml").model
        assert (m.dtype, m.run_dtype()) == ("auto", "auto"), recipe
    assert C.load(ROOT / "configs" / "smollm2-gsm8k.yaml",
                  overrides=["model.dtype=float16"]).model.run_dtype() == "float16"
    with pytest.raises(C.ConfigError, match="model.dtype"):
        C.build(overrides=["model.dtype=bf16"])


def test_smollm2_recipe_on_a_cpu_without_bf16_runs_float32_and_says_why(monkeypatch, capsys):
    """The recipe as shipped ('auto' reaches each node), on a CPU like the one the issue measured."""
    monkeypatch.setattr(P, "detect", lambda device="auto": CPU_AVX512_ONLY)
    monkeypatch.setattr(P, "_ANNOUNCED", set())
    asked = C.load(ROOT / "configs" / "smollm2-gsm8k.yaml").model.run_dtype()
    d = P.resolve(asked, "cpu")
    assert d.dtype == "float32"
    line = P.announce(d.as_dict(), "generator")          # what the driver prints from a replica's info()
    assert line == ("generator: dtype auto -> float32: this CPU has no native bf16 (no avx512_bf16, amx_bf16) "
                    "[Xeon (Skylake)]")
    assert P.announce(d.as_dict(), "generator") is None  # once
    assert P.announce(P.resolve("float32", "cpu"), "generator") is None   # explicit: the config says it
    assert capsys.readouterr().out == line + "\n"


@pytest.mark.parametrize("caps,want", [(CPU_AVX2_ONLY, "float32"), (CPU_NATIVE_AMX, "bfloat16")])
def test_hf_engine_resolves_auto_where_it_is_built(tmp_path, monkeypatch, caps, want):
    import torch

    from sitf_ray.rollout.engines.base import EngineSpec, GenParams
    from sitf_ray.rollout.engines.hf import HFEngine
    from sitf_ray.train.model_sources import build_tiny
    folder = build_tiny(C.build(overrides=["model.tiny.num_layers=1"]), tmp_path / "m", seed=0)
    monkeypatch.setattr(P, "detect", lambda device="auto": caps)
    eng = HFEngine(EngineSpec(model=str(folder), kind="hf", dtype="auto", device="cpu"))
    assert eng.precision.dtype == want and next(eng.model.parameters()).dtype == getattr(torch, want)
    out = eng.generate(["1+2="], GenParams(max_tokens=4), seed=0)
    assert len(out) == 1 and out[0][0].n_tokens <= 4


def test_autocast_is_bf16_only_when_chosen():
    import torch
    lin = torch.nn.Linear(8, 8)
    x = torch.randn(2, 8)
    with P.autocast("bfloat16", "cpu"):
        assert lin(x).dtype == torch.bfloat16
    for dtype in ("float32", "float16"):
        with P.autocast(dtype, "cpu"):
            assert lin(x).dtype == torch.float32


def test_engine_bench_measurement_is_bounded_and_says_so(monkeypatch):
    """bench._measure_engine shortens a measurement that would exceed its budget (fewer tokens per sequence,
    same prompts; fewer repeats) and records what it cut."""
    from sitf_ray import bench
    from sitf_ray.rollout import engines
    from sitf_ray.rollout.engines.base import Completion

    clock = [0.0]      # the bench's clock: advanced by the engine's work, never by waiting

    class SlowEngine:       # 0.5 ms per generated token, no batching
        precision = P.choose_dtype("float32", CPU_UNKNOWN)

        def generate(self, prompts, params, seed):
            clock[0] += 0.0005 * len(prompts) * params.n * params.max_tokens
            return [[Completion("x", params.max_tokens, "length")] * params.n for _ in prompts]

    monkeypatch.setattr(engines, "make_engine", lambda spec: SlowEngine())
    monkeypatch.setattr(bench, "time", type("Clock", (), {"time": staticmethod(lambda: clock[0])}))
    spec = {"engine": {"model": "none", "kind": "hf"}, "prompts": [f"p{i}" for i in range(16)],
            "params": {"n": 1, "max_tokens": 64}, "repeats": 3}
    full = bench._measure_engine(spec)             # one pass: 16 x 64 tokens = 0.51 s
    assert (full["prompts"], full["max_tokens"], full["repeats"], full["dtype"]) == (16, 64, 3, "float32")
    assert "shortened" not in full and full["tokens"] == 16 * 64
    t = clock[0]
    short = bench._measure_engine(spec | {"budget_s": 0.3})        # fewer tokens (37 of 64), all prompts
    assert sum(short["pass_seconds"]) <= 0.3 and clock[0] - t < 1.0   # timed passes within the budget
    cut = short["shortened"]
    assert cut["max_tokens"][0] == 64 and 32 <= cut["max_tokens"][1] < 64 and "prompts" not in cut
    assert (short["prompts"], short["max_tokens"]) == (16, cut["max_tokens"][1])
    assert cut["repeats"] == [3, short["repeats"]] and short["repeats"] < 3 and len(short["pass_seconds"]) < 3
    assert "budget" in cut["reason"] and short["tokens"] == 16 * short["max_tokens"]
    tight = bench._measure_engine(spec | {"budget_s": 0.1})        # half the tokens, then fewer prompts
    assert tight["shortened"]["max_tokens"] == [64, 32] and tight["max_tokens"] == 32
    assert tight["shortened"]["prompts"] == [16, tight["prompts"]] and 2 <= tight["prompts"] < 16
    assert tight["tokens"] == 32 * tight["prompts"]
