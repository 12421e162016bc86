#!/usr/bin/env bash
# The CUDA checks whose numbers are in the README: run from the repository root on a GPU machine.
#   PY=python3 bench/cuda_check.sh
# 1. the CUDA tests (bf16 autocast, channels_last, a predictor moved to the GPU);
# 2. inference: the shipped Predictor path vs plain float32 NCHW (bench/predict.py);
# 3. training: shipped loop vs naive loop and vs an 8192² bf16 matmul (bench/train.py);
# 4. quality: the demo data's validation mIoU after 3 minutes of training (bench/quality.py).
set -uo pipefail  # one step failing does not hide the others
export PYTHONUNBUFFERED=1
PY=${PY:-.venv/bin/python}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PY" -c 'import torch, torchvision, segmentation_models_pytorch as smp
print("torch", torch.__version__, "torchvision", torchvision.__version__, "smp", smp.__version__)'
"$PY" -m pytest --noconftest -q -p no:cacheprovider -rA tests/unit/ml/test_train.py -k cuda
"$PY" -m bench.predict --device cuda --batches 20
"$PY" -m bench.train --device cuda --samples 1040 --batch-size 32 --workers 8
"$PY" -m bench.quality --minutes "${QUALITY_MINUTES:-3}" --workers 6
