#!/usr/bin/env bash
# The ablation of issue #6 (and the R on/off experiment of issue #4) on the demo phantom:
# every arm trains the demo configuration (configs/demo.toml) with one fragment
# configs/ablation/ARM.toml merged over it, for the same number of steps and the same seed;
# the FINAL checkpoint (no selection on validation) predicts the validation and test cases,
# scored against the phantom's aligned ground-truth CTPA (truth/ctpa_aligned) inside the
# phantom's own body, lung and vessel masks, beside the NCCT-as-prediction baseline.
#
# usage: tools/demo/ablation.sh [-s STEPS] [-j JOBS] [-t THREADS] [-S SEED] [-d DATA] [-b BIN]
#                               [-o OUT] ARM...
#   ARM       baseline (configs/demo.toml alone), the name of a configs/ablation/*.toml, or
#             several joined by + (merged in order, e.g. contrast+identity)
#   -s        training steps of every arm (default: the demo's 1500)
#   -j        arms trained at once, each with cores/JOBS libtorch threads (default 2)
#   -t        libtorch threads of each arm (default cores/JOBS)
#   -S        training seed of every arm (default: the config's, 42 in configs/demo.toml)
#   -d        prepared dataset (default data/phantom-demo/prepared); it must come from a
#             phantom (`ncct2ctpa synth`): the raw folder named in its manifest.json holds
#             the truth/ the scoring reads
#   -b        the ncct2ctpa binary (default target/release/ncct2ctpa)
#   -o        output folder (default runs/ablation): OUT/ARM/ (run, predictions, evaluation)
#             and OUT/table.md
# Needs data/phantom-demo (run `ncct2ctpa train` once) or -d, and python3 for the table.
set -euo pipefail
cd "$(dirname "$0")/../.."   # the repository root: relative paths start there
STEPS=1500; JOBS=2; THREADS=; SEED=; BIN=target/release/ncct2ctpa; OUT=runs/ablation
DATA=data/phantom-demo/prepared
while getopts "s:j:t:S:d:b:o:" opt; do
  case $opt in
    s) STEPS=$OPTARG ;; j) JOBS=$OPTARG ;; t) THREADS=$OPTARG ;; S) SEED=$OPTARG ;;
    d) DATA=$OPTARG ;; b) BIN=$OPTARG ;; o) OUT=$OPTARG ;;
    *) sed -n '2,22p' "$0"; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
[ $# -gt 0 ] || { sed -n '2,22p' "$0"; exit 2; }
[ -f "$DATA/manifest.json" ] || { echo "no $DATA/manifest.json: not a prepared dataset ('$BIN train --steps 1' makes the demo's)" >&2; exit 2; }
. "$(dirname "$0")/../lib/arm.sh"
RAW=$(phantom_raw "$DATA")
check_arms "$@"
[ -n "$THREADS" ] || THREADS=$(( $(nproc) / JOBS )); [ "$THREADS" -ge 1 ] || THREADS=1

# The scored cases: the prepared split's val and test cases.
SCORED=$OUT/scored EXTRA_MASKS=
cases=$(held_out_cases "$DATA")
link_scored "$RAW" $cases
echo "scoring cases of $DATA: $cases; $# arms x $STEPS steps, $JOBS at once x $THREADS threads${SEED:+, seed $SEED}"

run_arm() {
  train_and_score "$OUT/$1" "$1" "$SEED"
  echo "  $1 done in $(cat "$OUT/$1/train_seconds") s of training"
}
export -f run_arm train_and_score predict_and_score
export BIN DATA OUT STEPS THREADS SEED SCORED EXTRA_MASKS
printf '%s\n' "$@" | xargs -P "$JOBS" -I{} bash -c 'set -euo pipefail; run_arm "$@"' _ {}

python3 - "$OUT" "$STEPS" "$@" <<'PY' | tee "$OUT/table.md"
import json, sys
out, steps, arms = sys.argv[1], sys.argv[2], sys.argv[3:]
def row(arm):
    s = json.load(open(f"{out}/{arm}/eval/evaluation.json"))
    get = {(r["region"], r["metric"]): r for r in s["summary"]}
    return get
cols = [("body", "mae"), ("lung", "mae"), ("vessel", "mae"), ("body", "psnr"), ("body", "ssim")]
def fmt(metric, v):
    return f"{v:.3f}" if metric == "ssim" else f"{v:.1f}" if metric == "mae" else f"{v:.2f}"
print(f"| arm ({steps} steps) | " + " | ".join(f"{r} {m.upper()}" for r, m in cols) + " | train s |")
print("|---" * (len(cols) + 2) + "|")
base = None
for arm in arms:
    g = row(arm)
    base = base or g
    secs = open(f"{out}/{arm}/train_seconds").read().strip()
    print(f"| {arm} | " + " | ".join(fmt(m, g[(r, m)]["model"]["mean"]) for r, m in cols) + f" | {secs} |")
print("| NCCT as prediction | " + " | ".join(fmt(m, base[(r, m)]["baseline"]["mean"]) for r, m in cols) + " | |")
PY
