#!/usr/bin/env bash
# The neural engines on a GPU, batched against unbatched in the same run (docs/benchmarks.md,
# "GPU"). Run on the device machine from the project root, with .gpu-wheels carried (made by
# benchmarks/gpu/wheels.sh); results go to $OUT.
#
# Whisper is not run here: CTranslate2's wheels load libcublas.so.12 and the device image has
# CUDA 13 only; the CUDA 12 cuBLAS wheel is far over the 64 MiB the device tool carries.
set -uo pipefail
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
python3 -m pip install -q --upgrade --no-deps --no-index --target /tmp/site .gpu-wheels/*.whl 2>/dev/null
export PYTHONPATH="$PWD/src:$PWD:/tmp/site" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
python3 - <<'PY' 2>&1 | tee "$OUT/env.txt"
import platform, torch, transformers, onnxruntime
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda)
print("gpu", torch.cuda.get_device_name(0), "transformers", transformers.__version__)
print("onnxruntime", onnxruntime.__version__, onnxruntime.get_available_providers())
PY
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$OUT/env.txt"
timeout "${VITS_S:-240}" python3 benchmarks/bench_neural.py tts --engine vits --device cuda \
    --levels "${VITS_LEVELS:-1,8,32,128}" --max-batch 128 --clauses 3 --dtype "${VITS_DTYPE:-float32}" \
    --json "$OUT/vits.json" 2>&1 | tee "$OUT/vits.log"
if python3 -c "import onnxruntime as o, sys; sys.exit('CUDAExecutionProvider' not in o.get_available_providers())"; then
    timeout "${PIPER_S:-150}" python3 benchmarks/bench_neural.py tts --engine piper --device cuda \
        --levels "${PIPER_LEVELS:-1,8,32}" --max-batch 32 --clauses 3 \
        --json "$OUT/piper.json" 2>&1 | tee "$OUT/piper.log"
else
    echo "piper: onnxruntime here has no CUDA provider; not run" | tee "$OUT/piper.log"
fi
