#!/usr/bin/env bash
# `make gpu-bundle`: builds, on a machine without a GPU, what a GPU machine runs: the release
# binary linked against libtorch_cuda of the pinned PyTorch, stripped, with the configs, the
# PyTorch twin, the GPU check, a launcher and a preflight, in bundle/ (git-ignored).
#
# The GPU machine needs no Rust and no network: only an existing installation of the pinned
# PyTorch (CUDA build), whose libraries the launcher points the binary at (`--torch DIR`,
# default: the `torch` package of `python3`). See the README, "GPU servers".
#
# The CUDA wheel's libtorch is installed without its CUDA dependencies into .venv-gpu
# (git-ignored; not the CPU .venv): linking libtorch_cuda.so needs only the library itself
# with rust-lld (Rust 1.95's default linker). The binary is built into target/gpu so the CPU
# build's warm target/ is left alone.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/torch-version.env

VENV=.venv-gpu
OUT=${BUNDLE_DIR:-bundle}
PYTHON=${PYTHON:-python3}

if [ ! -f "$VENV/.torch-$TORCH_VERSION" ]; then
  echo "gpu-bundle: installing the torch $TORCH_VERSION CUDA wheel (no dependencies) into $VENV" >&2
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --no-deps "torch==$TORCH_VERSION"
  touch "$VENV/.torch-$TORCH_VERSION"
fi
TORCH=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/torch
[ -f "$TORCH/lib/libtorch_cuda.so" ] || {
  echo "gpu-bundle: $TORCH/lib/libtorch_cuda.so is missing: torch==$TORCH_VERSION from PyPI should be the CUDA build" >&2
  exit 1
}

echo "gpu-bundle: building the release binary against $TORCH (libtorch_cuda linked)" >&2
LIBTORCH="$(realpath "$TORCH")" NCCT2CTPA_LINK_CUDA=1 CARGO_TARGET_DIR=target/gpu \
  cargo build --release -p cli

rm -rf "$OUT"
mkdir -p "$OUT/bin" "$OUT/tools"
cp target/gpu/release/ncct2ctpa "$OUT/bin/ncct2ctpa"
strip "$OUT/bin/ncct2ctpa"
cp -r configs "$OUT/configs"
cp -r tools/pytorch_twin "$OUT/tools/pytorch_twin"
cp scripts/gpu-check.sh scripts/bundle/preflight.sh scripts/torch-version.env "$OUT/"
cp scripts/bundle/ncct2ctpa "$OUT/ncct2ctpa"
chmod +x "$OUT/ncct2ctpa" "$OUT/preflight.sh" "$OUT/gpu-check.sh"
git rev-parse HEAD > "$OUT/COMMIT" 2>/dev/null || echo unknown > "$OUT/COMMIT"

size=$(du -sm "$OUT" | cut -f1)
echo "gpu-bundle: $OUT/ is ${size} MiB ($(du -sh "$OUT/bin/ncct2ctpa" | cut -f1) binary)" >&2
if [ "$size" -gt 64 ]; then
  echo "gpu-bundle: $OUT/ is over 64 MiB" >&2
  exit 1
fi
