#!/usr/bin/env bash
# Installs libtorch from PyPI into the project-local virtual environment `.venv`
# (see ../shared/DESIGN.md, "Getting libtorch"), and links `.venv/libtorch` to the
# wheel's `torch` folder so that `.cargo/config.toml` can point LIBTORCH at it.
#
# CPU build (default; this is what CI and laptops use): the torch wheel without its
# dependencies plus the two CUDA runtime wheels libtorch_cpu.so is linked against.
# GPU servers: set NCCT2CTPA_TORCH=full to install the complete CUDA build instead.
# Idempotent: a second run with a complete environment does nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

# TORCH_VERSION, CUDA_RUNTIME_VERSION, CUDA_CUPTI_VERSION: the one file that names them.
. scripts/torch-version.env
VENV=.venv
PYTHON=${PYTHON:-python3}
MODE=${NCCT2CTPA_TORCH:-cpu}

if [ -f "$VENV/libtorch/lib/libtorch_cpu.so" ] && [ -f "$VENV/.ncct2ctpa-torch-$TORCH_VERSION-$MODE" ]; then
  exit 0
fi

echo "setup: installing libtorch $TORCH_VERSION ($MODE) from PyPI into $VENV" >&2
# The CPU install needs about 1.3 GB (the wheel is unpacked, not cached: --no-cache-dir);
# say so up front instead of failing half-way with pip's "No space left on device".
free_kb=$(df -Pk . | awk 'NR == 2 { print $4 }')
if [ -n "$free_kb" ] && [ "$free_kb" -lt 2000000 ]; then
  echo "setup: only $((free_kb / 1024)) MiB free on $(df -P . | awk 'NR == 2 { print $6 }'); libtorch needs about 1.3 GB and a debug build about 10 GB more" >&2
  exit 1
fi
"$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install --quiet --upgrade pip >/dev/null 2>&1 || true
if [ "$MODE" = full ]; then
  "$VENV/bin/pip" install --quiet --no-cache-dir "torch==$TORCH_VERSION"
else
  "$VENV/bin/pip" install --quiet --no-cache-dir --no-deps "torch==$TORCH_VERSION" \
    "nvidia-cuda-runtime==$CUDA_RUNTIME_VERSION" "nvidia-cuda-cupti==$CUDA_CUPTI_VERSION"
fi
site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
ln -sfn "$(realpath --relative-to="$VENV" "$site/torch")" "$VENV/libtorch"
found=$(sed -n "s/^__version__ = '\(.*\)'.*/\1/p" "$VENV/libtorch/version.py" | head -n1)
case "$found" in
  "$TORCH_VERSION"*) ;;
  *) echo "setup: expected torch $TORCH_VERSION in $VENV, found '$found'" >&2; exit 1 ;;
esac
touch "$VENV/.ncct2ctpa-torch-$TORCH_VERSION-$MODE"
echo "setup: libtorch $found ready at $VENV/libtorch" >&2
