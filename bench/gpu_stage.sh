#!/usr/bin/env bash
# Prepares what a lent GPU machine without internet needs for bench/gpu_check.py:
# the CIFAR-10 training set split into three git-ignored folders of at most
# two 30 MB batch files (a device call carries 64 MiB) and the pure-Python
# wheels its image lacks or has too old: orbax-checkpoint within our pin (the
# image has 0.12.4), ml-collections, tensorboardX and filelock (the
# compilation cache's size bound). bench/README.md has the calls.
#   bench/gpu_stage.sh ../shared/data/cifar10/cifar-10-batches-bin
set -euo pipefail
src=${1:?usage: bench/gpu_stage.sh CIFAR10_BINARY_DIR}
cd "$(dirname "$0")/.."
for f in data_batch_{1..5}.bin; do
  [ -f "$src/$f" ] || { echo "error: $src/$f is missing" >&2; exit 2; }
done
rm -rf .data/p1 .data/p2 .data/p3
mkdir -p .data/p1 .data/p2 .data/p3
cp "$src"/data_batch_{1,2}.bin .data/p1/
cp "$src"/data_batch_{3,4}.bin .data/p2/
cp "$src"/data_batch_5.bin .data/p3/
[ ! -f "$src/batches.meta.txt" ] || cp "$src/batches.meta.txt" .data/p3/
rm -rf .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp -d .whl 'orbax-checkpoint>=0.12.8,<0.13' \
  'ml-collections>=1.1,<2' 'tensorboardX>=2.6' 'filelock>=3.12'
du -sh .data/p1 .data/p2 .data/p3 .whl
