#!/usr/bin/env bash
# The wheels benchmarks/gpu/h200.sh needs that the device image (Python 3.12, torch,
# transformers, onnx, onnxruntime) lacks, fetched here into .gpu-wheels (ignored by git; the
# device tool carries it: `carry: [".gpu-wheels"]`, 64 MiB at most).
set -euo pipefail
cd "$(dirname "$0")/../.."
grep -qx '/.gpu-wheels/' .git/info/exclude 2>/dev/null || echo '/.gpu-wheels/' >>.git/info/exclude
rm -rf .gpu-wheels && mkdir .gpu-wheels
python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux_2_28_x86_64 --dest .gpu-wheels \
    pydantic pydantic-core annotated-types typing-inspection soxr soundfile cffi pycparser piper-tts
du -sh .gpu-wheels
