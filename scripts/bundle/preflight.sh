#!/usr/bin/env bash
# Checks that this machine can run the bundle: glibc, the PyTorch version and build, the
# libraries the binary needs, and a visible GPU. One line per check; exits non-zero naming
# what failed.
#
# usage: ./preflight.sh [--torch DIR] [--cpu]    (--cpu: do not require a GPU)
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/torch-version.env"
torch=${NCCT2CTPA_TORCH_DIR:-}
need_gpu=1
while [ $# -gt 0 ]; do
  case "$1" in
    --torch) torch=$2; shift 2 ;;
    --cpu) need_gpu=0; shift ;;
    *) echo "preflight: unknown argument $1" >&2; exit 2 ;;
  esac
done
failed=0
ok() { echo "ok    $*"; }
bad() { echo "FAIL  $*"; failed=1; }

# 1. glibc: the binary is built on Debian 12 (glibc 2.36) and needs >= 2.34
glibc=$(ldd --version 2>/dev/null | head -n1 | grep -oE '[0-9]+\.[0-9]+$')
if [ -z "$glibc" ]; then
  bad "glibc: cannot tell the version (ldd --version)"
elif [ "$(printf '%s\n2.34\n' "$glibc" | sort -V | head -n1)" = "2.34" ]; then
  ok "glibc $glibc (>= 2.34)"
else
  bad "glibc $glibc is older than 2.34 (RHEL/Rocky 8 have 2.28): the bundle cannot run here"
fi

# 2. PyTorch: the pinned version and build
if [ -z "$torch" ]; then
  torch=$("${PYTHON:-python3}" -c 'import os, torch; print(os.path.dirname(torch.__file__))' 2>/dev/null) || torch=
fi
if [ -z "$torch" ] || [ ! -f "$torch/version.py" ]; then
  bad "PyTorch: not found (pass --torch DIR, the torch package folder)"
else
  version=$(sed -n "s/^__version__ = '\(.*\)'.*/\1/p" "$torch/version.py" | head -n1)
  git=$(sed -n "s/^git_version = '\(.*\)'.*/\1/p" "$torch/version.py" | head -n1)
  case "$version" in
    "$TORCH_VERSION"*) ok "PyTorch $version in $torch" ;;
    *) bad "PyTorch $version in $torch: the bundle is built for $TORCH_VERSION" ;;
  esac
  if [ "$git" = "$TORCH_GIT_VERSION" ]; then
    ok "PyTorch build $git"
  else
    bad "PyTorch build ${git:-unknown}, the bundle's is $TORCH_GIT_VERSION (another build of $TORCH_VERSION: C++ ABI and kernels may differ)"
  fi
  # 3. libraries
  libs="$torch/lib"
  for d in "$torch"/../nvidia/*/lib; do [ -d "$d" ] && libs="$libs:$d"; done
  missing=$(LD_LIBRARY_PATH="$libs" ldd "$here/bin/ncct2ctpa" 2>&1 | grep "not found" | awk '{print $1}' | tr '\n' ' ')
  if [ -n "$missing" ]; then
    bad "libraries not found: $missing(the CPU-only or a partial PyTorch install?)"
  else
    ok "every library of bin/ncct2ctpa resolves (ldd)"
  fi
fi

# 4. a GPU
if [ "$need_gpu" = 1 ]; then
  if command -v nvidia-smi >/dev/null && gpus=$(nvidia-smi -L 2>/dev/null) && [ -n "$gpus" ]; then
    ok "GPU: $(echo "$gpus" | head -n1)"
  else
    bad "no GPU visible (nvidia-smi -L lists none): this machine can only run with --device cpu"
  fi
fi
exit $failed
