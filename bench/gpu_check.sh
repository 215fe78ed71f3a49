#!/usr/bin/env bash
# One short call on a lent GPU machine (an H200): the CUDA-marked tests, the
# tensor-pipeline tests under that machine's own Pillow/torchvision, and the
# side-by-side benchmark on KonIQ-sized JPEGs.  About 4-6 minutes (inner time limits
# 180 s + 330 s, so the call below ends inside its 540 s).
#
# That machine has no network and lacks open_clip_torch and its two small
# dependencies ftfy and wcwidth: they travel as wheels in .whl/ (ignored by
# git, see .gitignore).  Fetch them once on a machine with the registry:
#
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux2014_x86_64 -d .whl \
#       open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4
#
# (2.3 MB in all; the versions this project is tested with).  Then, from a
# session that has a device machine, in the repository root:
#
#   run(command="bash bench/gpu_check.sh", carry=[".whl"], timeout_s=540)
#
# (Add torchcodec==0.17.0 to that list to check the TorchCodec decoder there too; it must match the
# machine's torch: without it, the tensor pipeline falls back to torchvision's decoder.)
#
# Results come back in $OUT: gpu.txt, pytest_gpu.log, embed_bench.log and
# embed_bench.json (the benchmark's JSON line), and with 2 or more GPUs dist_bench.log /
# dist_bench.json (one process against 2 torchrun ranks, NCCL, one GPU each).  The 2-GPU step runs in
# its own call, to stay inside one call's limit:
#
#   run(command="DIST_ONLY=1 bash bench/gpu_check.sh", carry=[".whl"], timeout_s=300)  N=... changes the number of
# images (default 4000; generated in parallel, ~30 s on 16 cores).
#
# Stage two's precision: the CUDA tests of tests/test_precision.py, then the bench (fp32 / bf16 x bmm / shared
# GEMM at K = 1, 8, 32, 64, and the test MAE of fp32 against bf16 over 5 seeds, next to fp32 on 5 other seeds)
# in its own call; results in pytest_precision.log, precision_bench.log / precision_bench.json:
#
#   run(command="PRECISION_ONLY=1 bash bench/gpu_check.sh", timeout_s=420)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/iqa-gpu-check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}  # the interpreter that has torch (plain python3 on the GPU machine)
if compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || exit 1
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
{
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv
    nproc
    "$PY" -c "import torch, torchvision, PIL, h5py, open_clip; print('torch', torch.__version__, 'torchvision', \
torchvision.__version__, 'pillow', PIL.__version__, 'h5py', h5py.__version__, 'open_clip', open_clip.__version__, \
'cuda', torch.cuda.is_available(), 'gpus', torch.cuda.device_count())"
    "$PY" -c "from iqa_cache.embed.decode import resolve_decoder, torchcodec_available as t; \
print('jpeg decoder', resolve_decoder('auto'), t())"
} 2>&1 | tee "$OUT/gpu.txt"

if [ "${PRECISION_ONLY:-0}" = 1 ]; then
    # the CUDA tests of autocast, the shared GEMM and auto (~20 s), then the bench
    timeout 60 "$PY" -m pytest -q -p no:cacheprovider -m cuda tests/test_precision.py 2>&1 \
        | tee "$OUT/pytest_precision.log" | tail -8
    timeout 400 "$PY" bench/precision_bench.py --device cuda --steps 5 --repeats 5 --epochs 20 \
        --note "lent GPU machine" 2>&1 | tee "$OUT/precision_bench.log" | tail -30
    tail -1 "$OUT/precision_bench.log" > "$OUT/precision_bench.json"
    exit 0
fi

if [ "${DIST_ONLY:-0}" != 1 ]; then
# 1. GPU tests, and the CPU tests of the tensor pipeline against this machine's Pillow (~1 min)
timeout 180 "$PY" -m pytest -q -p no:cacheprovider -m "cuda or not slow" \
    tests/test_embed_pipeline.py tests/test_bad_images.py 2>&1 | tee "$OUT/pytest_gpu.log" | tail -25

# 2. the benchmark (~2-4 min): (a) one at a time fp32 on the GPU, (b) 16 PIL processes + fp32 batches,
#    (c) ours on the CPU, (d) ours on the GPU in fp32 / bf16 / fp16, fidelity against the CPU fp32 reference
timeout 330 "$PY" bench/embed_bench.py --n "${N:-4000}" --note "lent GPU machine" 2>&1 \
    | tee "$OUT/embed_bench.log" | tail -16
tail -1 "$OUT/embed_bench.log" > "$OUT/embed_bench.json"
fi

# 3. with 2+ GPUs: the same images on one process and on 2 torchrun ranks (NCCL), tensor pipeline (~1-2 min)
if [ "${DIST_ONLY:-0}" = 1 ] && [ "$(nvidia-smi -L 2>/dev/null | wc -l)" -ge 2 ]; then
    timeout 240 "$PY" bench/dist_bench.py --device cuda --ranks 2 --n "${DIST_N:-4000}" \
        --data /tmp/iqa-dist-bench --note "lent GPU machine, 2 GPUs" 2>&1 | tee "$OUT/dist_bench.log" | tail -3
    tail -1 "$OUT/dist_bench.log" > "$OUT/dist_bench.json"
fi
