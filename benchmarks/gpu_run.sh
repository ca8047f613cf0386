#!/usr/bin/env bash
# `ecgray bench --device cuda` on a bare GPU box that has PyTorch but not this project's
# other packages (the lent H100/H200 machines here). The attribution phases need only
# torch, numpy, h5py, captum and zennit; the end-to-end phase needs Ray and is skipped.
#
#   .whl/            captum and zennit wheels (pip download --no-deps ... captum==0.9.0 zennit==0.5.1)
#   .devdata/code15/ CODE-15 exams (HDF5), copied from ../shared/data/code15-test80
#
# Results: $OUT/bench_cuda.json (rewritten after every phase) and $OUT/bench_cuda.log.
set -u
OUT=${OUT:-/tmp/ecgray-gpu}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit,driver_version --format=csv
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
python3 -c "import torch, captum, zennit; print('torch', torch.__version__, 'captum', captum.__version__, torch.cuda.get_device_name())" || exit 1
python3 -m ecgray bench --device cuda --records "${RECORDS:-64}" --n-steps 16,50 --e2e-records 0 \
  --data .devdata/code15 ${COMPILE:---compile} --out "$OUT/bench_cuda.json" 2>&1 | tee "$OUT/bench_cuda.log"
