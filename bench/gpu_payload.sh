#!/usr/bin/env bash
# Build the payload bench/gpu_attribution.sh unpacks on the lent H100 (docs/metering.md, "On a
# real GPU (H100)"): vLLM 0.26.0 and the cp312 wheels the device image lacks, the sidecar's wheels,
# packed into 4 parts that each fit one call's 64 MiB with room for the working tree.
#
#   bench/gpu_payload.sh     # -> .device/gpu/parts3/part.0{0..3} and .device/gpu/boot/
#
# The device image: Python 3.12.3, torch 2.11.0+cu130 (vLLM 0.26.0 pins that torch), no zstd
# binary (the zstandard wheel travels in boot/ and decompresses in Python). Recipe and the list of what the
# image already has: ../shared/notes/vllm-gpu.md and ../shared/tools/gpu/download_wheels.py.
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS=${GPU_TOOLS:-../shared/tools/gpu}
G=.device/gpu
mkdir -p "$G/w" "$G/boot"
cp "$TOOLS/download_wheels.py" "$G/"
cp -r "$TOOLS/model8b" "$G/boot/" && chmod -R u+w "$G/boot"

cd "$G"
PIP=(../../.venv/bin/python -m pip download --no-deps --only-binary=:all: --python-version 3.12
     --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64
     --platform any -q -d w)
nice -n 19 "${PIP[@]}" vllm==0.26.0
nice -n 19 ../../.venv/bin/python download_wheels.py
nice -n 19 ../../.venv/bin/python download_wheels.py --extra pycountry zstandard
# download_wheels.py skips apache-tvm-ffi (it is in its optional-kernel list), but xgrammar 0.2.8
# imports tvm_ffi.
nice -n 19 "${PIP[@]}" apache-tvm-ffi==0.1.11
cp w/zstandard-*.whl boot/

rm -rf stage && mkdir -p stage/site stage/sc
for f in w/*.whl; do case $f in *zstandard*) continue;; esac; unzip -q -o "$f" -d stage/site; done
# Dropped to fit 4 parts: the Rust frontend binary (used only with VLLM_USE_RUST_FRONTEND=1) and
# pycountry's translations (mistral_common needs its databases, not its locales).
rm -f stage/site/vllm/vllm-rs
rm -rf stage/site/pycountry/locales && mkdir stage/site/pycountry/locales
(cd ../.. && bench/device_payload.sh) && cp ../wheels/*.whl stage/sc/

rm -rf parts3 && mkdir parts3
tar -C stage -cf - site sc | nice -n 19 zstd -T2 -15 --long=27 -q -f -o site3.tar.zst
split -b 60m -d site3.tar.zst parts3/part.
md5sum site3.tar.zst
ls -la parts3 && du -sh boot
