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
"$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install --quiet --upgrade pip >/dev/null 2>&1 || true
if [ "$MODE" = full ]; then
  "$VENV/bin/pip" install --quiet "torch==$TORCH_VERSION"
else
  "$VENV/bin/pip" install --quiet --no-deps "torch==$TORCH_VERSION" \
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
