#!/usr/bin/env bash
# The CUDA checks whose numbers are in the README: run from the repository root on a GPU machine.
#   PY=python3 bench/cuda_check.sh          (DATA_PATH_ONLY=1: steps 1 and 2 only, about 3 minutes)
# 1. the CUDA tests (bf16 autocast, channels_last, a predictor moved to the GPU, batched
#    augmentation on the GPU equal to the CPU's for a seed);
# 2. the GPU data path: augmentation per sample in 8 loader workers vs whole batches on the GPU,
#    at 256², batch 64, bf16: the data path alone (loader + copy + augmentation) and whole
#    training runs, alternating, with ratios (bench/train.py --where sample,batch);
# 3. inference: the shipped Predictor path vs plain float32 NCHW (bench/predict.py);
# 4. training: shipped loop vs naive loop and vs an 8192² bf16 matmul (bench/train.py);
# 5. quality: the demo data's validation mIoU after 3 minutes of training (bench/quality.py);
# 6. quality on real photos where ../shared/data/real exists: the shipped and fine-tuning recipes
#    for REAL_MINUTES (default 5) each at 256² (bench/real_quality.py).
set -uo pipefail  # one step failing does not hide the others
export PYTHONUNBUFFERED=1
PY=${PY:-.venv/bin/python}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PY" -c 'import torch, torchvision, segmentation_models_pytorch as smp
print("torch", torch.__version__, "torchvision", torchvision.__version__, "smp", smp.__version__)'
"$PY" -m pytest --noconftest -q -p no:cacheprovider -rA -k cuda \
    tests/unit/ml/test_train.py tests/unit/ml/test_batch_augment.py
"$PY" -m bench.train --device cuda --size 256 --batch-size 64 --samples 2080 --workers 8 \
    --epochs 2 --repeats 2 --where sample,batch
[ "${DATA_PATH_ONLY:-0}" = 1 ] && exit 0
"$PY" -m bench.predict --device cuda --batches 20
"$PY" -m bench.train --device cuda --samples 1040 --batch-size 32 --workers 8
"$PY" -m bench.quality --minutes "${QUALITY_MINUTES:-3}" --workers 6
if [ -d ../shared/data/real ]; then
    "$PY" -m bench.real_quality --recipes shipped,finetune --minutes "${REAL_MINUTES:-5}"
fi
