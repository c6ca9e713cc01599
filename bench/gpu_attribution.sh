#!/usr/bin/env bash
# The real-GPU attribution run (docs/metering.md, "On a real GPU (H100)"), on the lent device:
# vLLM 0.26 serving an 8B-shaped Llama with dummy weights, the sidecar in front of it, then
# bench/gpu_attribution.py. Results and logs under $OUT.
#
# The payload is built here by .device/gpu/pack3.sh (vLLM's wheels unzipped into site/, the
# sidecar's wheels from bench/device_payload.sh into sc/, tar | zstd, split) and sent in parts by
# earlier calls into /tmp/parts of the warm machine; the last call carries the last part and
# .device/gpu/boot (the zstandard wheel, the model config) and runs this.
set -u
B=.device/gpu/boot
OUT=${OUT:-/tmp/out}
mkdir -p /tmp/parts "$OUT"
cp .device/gpu/parts3/part.* /tmp/parts/ 2>/dev/null
t0=$(date +%s)

# 1. Unpack: the device has no zstd binary, so the zstandard wheel decompresses in Python.
python3 - "$B" <<'EOF' || exit 1
import glob, io, sys, tarfile, zipfile
zipfile.ZipFile(glob.glob(sys.argv[1] + "/zstandard-*.whl")[0]).extractall("/tmp/zst")
sys.path.insert(0, "/tmp/zst")
import zstandard
parts = sorted(glob.glob("/tmp/parts/part.*"))
print("parts", [p[-2:] for p in parts], flush=True)
data = b"".join(open(p, "rb").read() for p in parts)
print("md5", __import__("hashlib").md5(data).hexdigest(), flush=True)
r = zstandard.ZstdDecompressor(max_window_size=2**27).stream_reader(io.BytesIO(data))
tarfile.open(fileobj=r, mode="r|").extractall("/tmp/pl")
for w in glob.glob("/tmp/pl/sc/*.whl"):
    zipfile.ZipFile(w).extractall("/tmp/scsite")
EOF
echo "unpacked after $(( $(date +%s) - t0 )) s"

# 2. vLLM (its own PYTHONPATH: its fastapi differs from the sidecar's).
# --max-num-seqs pinned so the sidecar's policy can name the same value.
(export PYTHONPATH=/tmp/pl/site HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 \
   VLLM_USE_FLASHINFER_SAMPLER=0
 exec python3 -m vllm.entrypoints.openai.api_server --model "$B/model8b" \
   --served-model-name llama8b --load-format dummy --max-model-len 4096 \
   --gpu-memory-utilization 0.85 --max-num-seqs 256 --enable-per-request-metrics \
   --port 8000 --host 127.0.0.1) > "$OUT/vllm.log" 2>&1 &
vpid=$!

# 3. The sidecar: standalone policy (the dev key), engine = this H100 at $2.49/h.
cat > /tmp/policy.yaml <<'EOF'
version: "h100-1"
keys:
  - {id: key_dev, name: dev, owner: local, features: [default], default_feature: default,
     models: ["*"], key_hash: 398c0d68571a85b1eee0ff854caa777c98d9b8c813c76ad3a01d17256c50c6ec}
features:
  - {name: default, owner: local, default_max_tokens: 256, max_tokens_cap: 512, over_cap: reject}
engines:
  - {name: h100, url: "http://127.0.0.1:8000", model: llama8b, gpu_type: H100, gpus: 1,
     hourly_rate_usd: 2.49, prefill_cost_factor: 0.02, max_num_seqs: 256}
EOF
until curl -sf 127.0.0.1:8000/health >/dev/null; do
  sleep 2
  kill -0 $vpid 2>/dev/null || { echo "vllm died"; tail -40 "$OUT/vllm.log"; exit 1; }
  (( $(date +%s) - t0 > 330 )) && { echo "vllm not healthy"; tail -30 "$OUT/vllm.log"; exit 1; }
done
echo "vllm healthy after $(( $(date +%s) - t0 )) s"
export PYTHONPATH=/tmp/scsite:$PWD PYTHONUNBUFFERED=1
GPULEDGER_TRACING_ENABLED=false GPULEDGER_STATE_DIR=/tmp/sidecar-state \
  python3 -m gpuledger.cli sidecar --port 8080 --policy-file /tmp/policy.yaml \
  --usage-jsonl /tmp/usage.jsonl > "$OUT/sidecar.log" 2>&1 &
spid=$!
until curl -sf 127.0.0.1:8080/health >/dev/null; do
  sleep 0.5; kill -0 $spid 2>/dev/null || { echo "sidecar died"; tail -30 "$OUT/sidecar.log"; kill $vpid; exit 1; }
done

# 4. The measurement, then versions and the raw records.
python3 -m bench.gpu_attribution --out "$OUT/gpu_attribution.json" "$@" 2>&1 | tee "$OUT/bench.log"
curl -s 127.0.0.1:8080/metrics > "$OUT/sidecar_metrics.txt"
curl -s 127.0.0.1:8000/metrics | grep -v '^#' > "$OUT/vllm_metrics.txt"
cp /tmp/usage.jsonl "$OUT/usage.jsonl"
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__)"
  PYTHONPATH=/tmp/pl/site python3 -c "import vllm; print('vllm', vllm.__version__)"
  python3 -c "import fastapi, aiohttp, pydantic; print(fastapi.__version__, aiohttp.__version__, pydantic.__version__)"
  nproc; date -u; } > "$OUT/versions.txt" 2>&1
kill $spid $vpid; wait 2>/dev/null
echo "done after $(( $(date +%s) - t0 )) s"
