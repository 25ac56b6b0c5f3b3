#!/usr/bin/env bash
# The data-parallel communication benchmark, both sides in one run on this machine: the
# gradient all-reduce of a preset's networks across 2 processes on 127.0.0.1 with Gloo, by
# ncct2ctpa (crates/train/examples/allreduce_speed.rs) and by torch.distributed
# (tools/pytorch_twin/allreduce_speed.py, with the full PyTorch of `make setup-twin`), then the
# ratio; and the all-reduces' share of real training steps (a 2-rank `ncct2ctpa train`).
#
#   tools/dist/bench.sh [PRESET] [STEPS] [PYTHON]     (defaults: default 10 .venv-twin/bin/python)
set -euo pipefail
cd "$(dirname "$0")/../.."
PRESET=${1:-default}
STEPS=${2:-10}
PY=${3:-.venv-twin/bin/python}
export GLOO_SOCKET_IFNAME=${GLOO_SOCKET_IFNAME:-lo}
cargo build --release -q -p train --example allreduce_speed
cargo build --release -q -p cli
port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
ranks() { # PORT CMD...: two ranks of CMD with torchrun's environment
  local p=$1; shift
  for r in 0 1; do
    RANK=$r WORLD_SIZE=2 LOCAL_RANK=$r LOCAL_WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=$p "$@" &
  done
  wait
}
# three alternating rounds of each side (a 2-core machine is noisy); the median round counts
for round in 1 2 3; do
  ranks "$(port)" target/release/examples/allreduce_speed "$PRESET" "$STEPS" | grep '^{'
  ranks "$(port)" "$PY" tools/pytorch_twin/allreduce_speed.py --preset "$PRESET" --steps "$STEPS" | grep '^{'
done | tee /dev/stderr | "$PY" -c '
import json, statistics, sys
rows = [json.loads(l) for l in sys.stdin]
ours = statistics.median(r["median_ms"] for r in rows if r["impl"] == "ncct2ctpa")
theirs = statistics.median(r["median_ms"] for r in rows if r["impl"] == "pytorch")
torch = next(r["torch"] for r in rows if r["impl"] == "pytorch")
n, preset = rows[0]["params"] / 1e6, rows[0]["preset"]
print(f"all-reduce per step ({preset}, {n:.1f}M gradients, 2 processes, Gloo; median of 3 "
      f"rounds): ncct2ctpa {ours:.1f} ms, PyTorch {torch} {theirs:.1f} ms, ratio {ours / theirs:.2f}")
'
# the share in real training steps (phantom data; made once by `make demo` or generated here)
DATA=data/phantom-demo/prepared
if [ ! -f "$DATA/manifest.json" ]; then
  target/release/ncct2ctpa train --steps 1 --no-progress --run "$(mktemp -d)/r" >/dev/null 2>&1 || true
fi
RUN=$(mktemp -d)/run
ranks "$(port)" target/release/ncct2ctpa train --data "$DATA" --run "$RUN" --preset "$PRESET" \
  --steps $((STEPS < 4 ? 4 : STEPS)) --batch-size 1 --crop-size 128 --threads 1 --no-progress \
  --val-every 100000 --checkpoint-every 100000 --sample-every 100000 --set log.val_max_cases=1 \
  2>&1 | grep "all-reduces took"
