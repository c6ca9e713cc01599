#!/usr/bin/env bash
# Build .device/: the cp312 wheels the overhead benchmark needs on the lent 16-core machine
# (bench/device_bench.py runs it there; docs/benchmarks.md, "Direct vs gpuledger on a 16-core host").
#
# The device image is Python 3.12.3 with no internet and none of fastapi/pydantic/uvicorn, so the
# simulator's, the sidecar's and the load generator's third-party imports travel as wheels. The
# versions are the ones in .venv, so the device runs what the test suite runs. LiteLLM is left out.
#
#   bench/device_payload.sh            # downloads into .device/wheels (idempotent)
#   bench/device_payload.sh --check    # also imports everything with a local python3.12
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=.device/wheels
mkdir -p "$DEST"

PKGS=(
  # sidecar: ASGI app, settings, server
  fastapi==0.165.0 annotated-doc==0.0.7 starlette==1.10.0 anyio==4.16.0 sniffio==1.3.1 idna==3.20
  pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
  typing-extensions==4.16.0 pydantic-settings==2.16.3 python-dotenv==1.2.4
  uvicorn==0.54.0 click==8.5.1 h11==0.16.0 uvloop==0.23.0 httptools==0.9.0
  # sidecar upstream client, simulator server, load generator
  aiohttp==3.14.5 aiohappyeyeballs==2.7.1 aiosignal==1.4.0 frozenlist==1.8.0 multidict==7.2.1
  yarl==1.25.1 propcache==0.5.4 attrs==26.1.0
  # metering, metrics, policy, rate limits
  orjson==3.13.0 prometheus-client==0.26.0 pyyaml==6.0.4 redis==8.1.0 uuid-utils==1.2.0
  # tracing, exported over OTLP/HTTP to the runner's sink
  opentelemetry-api==1.45.2 opentelemetry-sdk==1.45.2 opentelemetry-semantic-conventions==0.66b2
  opentelemetry-exporter-otlp-proto-http==1.45.2 opentelemetry-exporter-otlp-proto-common==1.45.2
  opentelemetry-proto==1.45.2 opentelemetry-exporter-otlp-common==0.66b2
  opentelemetry-exporter-http-transport==0.66b2 protobuf==7.36.2 googleapis-common-protos==1.76.0
  requests==2.34.2 urllib3==2.8.0 certifi==2026.10.19.post1 charset-normalizer==3.5.3
)
EXTRA=()
[ -f .device/extra.txt ] && mapfile -t EXTRA < .device/extra.txt

PIP=(.venv/bin/python -m pip download --no-deps --only-binary=:all: --python-version 3.12
     --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64
     --platform manylinux2014_x86_64 --platform any -q -d "$DEST")
for p in "${PKGS[@]}" "${EXTRA[@]}"; do
  "${PIP[@]}" "$p"
done
du -sh "$DEST"

if [ "${1:-}" = "--check" ]; then
  # The same unpacking the device does, into a scratch folder, then import every entry point.
  PY=${PYTHON312:-$(ls /root/.pyenv/versions/3.12*/bin/python3.12 2>/dev/null | head -1)}
  SITE=$(mktemp -d)
  "$PY" -c "import glob, sys, zipfile; [zipfile.ZipFile(w).extractall(sys.argv[1]) for w in glob.glob('$DEST/*.whl')]" "$SITE"
  PYTHONPATH="$SITE:$PWD" "$PY" -s -c "
import gpuledger.cli, sidecar.app, sidecar.wiring, sidecar.tracing, serving.simulator, bench.runner
import opentelemetry.exporter.otlp.proto.http.trace_exporter, uvicorn.loops.uvloop, uvicorn.protocols.http.httptools_impl
print('imports ok')"
  rm -rf "$SITE"
fi
