#!/usr/bin/env bash
# Install LiteLLM's proxy into its own virtual environment (.venv-litellm), for the side-by-side
# benchmark. Idempotent: does nothing when the pinned version is already there.
# 1.108.7 is the newest release whose `proxy` extra resolves against the registry reachable here
# (see /work/shared/notes/peers.md).
set -euo pipefail
VERSION="1.108.7"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${LITELLM_VENV:-$ROOT/.venv-litellm}"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3

if [ -x "$VENV/bin/litellm" ] && "$VENV/bin/python" - "$VERSION" <<'PYEOF'
import sys
from importlib.metadata import version
sys.exit(0 if version("litellm") == sys.argv[1] else 1)
PYEOF
then
    echo "litellm $VERSION already installed in $VENV"
    exit 0
fi

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/pip" install --quiet --upgrade pip
# uvloop + httptools so LiteLLM gets the same fast server stack as our sidecar (uvicorn falls back
# to pure-Python parsing without httptools): the comparison is against LiteLLM at its best.
"$VENV/bin/pip" install --quiet "litellm[proxy]==$VERSION" uvloop httptools
echo "installed litellm $VERSION in $VENV"
