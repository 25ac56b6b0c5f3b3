#!/usr/bin/env bash
# Kill a training run with SIGKILL between checkpoints, resume it, and check that its loss
# curve equals an uninterrupted run's, step for step (issue #4's "a run killed and resumed
# with identical curves").
#
# usage: tools/demo/kill_resume.sh [BIN] [OUT_DIR] [STEPS] [CHECKPOINT_EVERY] [KILL_AFTER_CHECKPOINT]
#   BIN                     the ncct2ctpa binary (default target/release/ncct2ctpa)
#   OUT_DIR                 where the two runs go (default runs/kill-resume; replaced)
#   STEPS                   training steps of both runs (default 300)
#   CHECKPOINT_EVERY        checkpoints/latest interval (default 100)
#   KILL_AFTER_CHECKPOINT   the run is killed once a checkpoint at this step or later exists and
#                           a few more steps were logged (default 200)
# Trains on the demo phantom (data/phantom-demo/prepared; `ncct2ctpa train` makes it).
set -euo pipefail
BIN=${1:-target/release/ncct2ctpa}
OUT=${2:-runs/kill-resume}
STEPS=${3:-300}
EVERY=${4:-100}
KILL_AT=${5:-200}
DATA=data/phantom-demo/prepared
[ -f "$DATA/manifest.json" ] || { echo "no $DATA: run '$BIN train --steps 1' once to make it" >&2; exit 2; }
rm -rf "$OUT"
mkdir -p "$OUT"
common=(train --data "$DATA" --config configs/demo.toml --steps "$STEPS"
        --checkpoint-every "$EVERY" --log-every 1 --val-every "$STEPS" --sample-every "$STEPS"
        --no-progress -q)

echo "1/3 uninterrupted run -> $OUT/straight"
"$BIN" "${common[@]}" --run "$OUT/straight"

echo "2/3 run to be killed -> $OUT/killed"
"$BIN" "${common[@]}" --run "$OUT/killed" &
pid=$!
state="$OUT/killed/checkpoints/latest/state.json"
# Wait for a checkpoint at >= KILL_AT, then for 5 more logged steps, then SIGKILL.
while kill -0 "$pid" 2>/dev/null; do
  if [ -f "$state" ]; then
    ck=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["step"])' "$state" 2>/dev/null || echo 0)
    if [ "$ck" -ge "$KILL_AT" ]; then
      last=$(tail -n 1 "$OUT/killed/metrics.jsonl" | python3 -c 'import json,sys; print(json.loads(sys.stdin.read())["step"])' 2>/dev/null || echo 0)
      if [ "$last" -ge $((ck + 5)) ]; then
        kill -9 "$pid"
        echo "   killed (SIGKILL) at logged step $last, latest checkpoint at step $ck"
        echo "$ck" > "$OUT/killed-checkpoint-step"
        break
      fi
    fi
  fi
  sleep 0.2
done
wait "$pid" 2>/dev/null || true
cp "$OUT/killed/metrics.jsonl" "$OUT/killed-before-resume.jsonl"

echo "3/3 resume -> $OUT/killed"
"$BIN" train --run "$OUT/killed" --resume --no-progress -q

python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
def train_events(path):
    ev = {}
    dup = []
    for line in open(path):
        line = line.strip()
        if not line:
            continue
        try:
            v = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by the kill
        if v.get("event") == "train":
            if v["step"] in ev:
                dup.append(v["step"])
            ev[v["step"]] = v
    return ev, dup
keys = ["loss_g", "l1", "ssim", "adv_g", "smooth", "loss_d", "d_real", "d_fake", "flow_mean", "flow_max", "lr"]
a, _ = train_events(f"{out}/straight/metrics.jsonl")
b, dup = train_events(f"{out}/killed/metrics.jsonl")
k, _ = train_events(f"{out}/killed-before-resume.jsonl")
assert not dup, f"steps logged twice after resume: {dup[:5]}"
assert sorted(a) == sorted(b), "the two runs logged different steps"
diff = [(s, key, a[s][key], b[s][key]) for s in sorted(a) for key in keys if a[s].get(key) != b[s].get(key)]
# The steps the killed process logged after its last checkpoint were redone after resume: the
# killed process's values for them must equal too.
redo = [s for s in k if s in a and any(k[s].get(x) != a[s].get(x) for x in keys)]
ck = int(open(f"{out}/killed-checkpoint-step").read())
print(f"steps compared: {len(a)}, {len(keys)} loss fields each; the killed process logged "
      f"steps 1-{max(k)} (the last {max(k) - ck} after its step-{ck} checkpoint, so redone "
      f"after resume); its values that differ from the uninterrupted run's: {len(redo)}")
if diff or redo:
    print("MISMATCH", diff[:5], redo[:5])
    sys.exit(1)
print("identical: every loss of every step equals the uninterrupted run's, bit for bit")
PY
