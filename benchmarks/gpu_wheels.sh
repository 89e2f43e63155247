#!/usr/bin/env bash
# Fetch, as wheels, the peers that the GPU machine lacks, into benchmarks/.wheels (ignored by
# git), for that machine's CPython 3.12 on x86-64 Linux:
#     bash benchmarks/gpu_wheels.sh
# `pip download --no-deps` fetches no dependencies, so every missing one is named below (the
# GPU image already has torch, triton, transformers, peft, accelerate, pyarrow, pandas,
# huggingface-hub, xxhash, fsspec). The suite pip-installs them there from the folder
# (benchmarks/gpu_suite.py --wheels). About 3 MB; what travels to the device is 64 MiB at most.
# The versions are the lock's (constraints.txt), the ones CI tested on the CPU.
set -euo pipefail
cd "$(dirname "$0")"
dest=.wheels
wheels=(trl datasets dill multiprocess liger-kernel cut-cross-entropy)
rm -rf "$dest"
mkdir -p "$dest"
"${PYTHON:-python3}" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
  --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -c ../constraints.txt \
  -d "$dest" "${wheels[@]}"
kib=$(du -sk "$dest" | cut -f1)
ls "$dest"
echo "benchmarks/$dest: ${kib} KiB"
if [ "$kib" -gt $((48 * 1024)) ]; then
  echo "over 48 MiB: with the working tree it would not fit the device's 64 MiB" >&2
  exit 1
fi
