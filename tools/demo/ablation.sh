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
#   ARM       baseline (configs/demo.toml alone) or the name of a configs/ablation/*.toml
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
STEPS=1500; JOBS=2; THREADS=; SEED=; BIN=target/release/ncct2ctpa; OUT=runs/ablation
DATA=data/phantom-demo/prepared
while getopts "s:j:t:S:d:b:o:" opt; do
  case $opt in
    s) STEPS=$OPTARG ;; j) JOBS=$OPTARG ;; t) THREADS=$OPTARG ;; S) SEED=$OPTARG ;;
    d) DATA=$OPTARG ;; b) BIN=$OPTARG ;; o) OUT=$OPTARG ;;
    *) sed -n '2,21p' "$0"; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
[ $# -gt 0 ] || { sed -n '2,21p' "$0"; exit 2; }
[ -f "$DATA/manifest.json" ] || { echo "no $DATA/manifest.json: not a prepared dataset ('$BIN train --steps 1' makes the demo's)" >&2; exit 2; }
RAW=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["raw_dir"])' "$DATA/manifest.json")
[ -d "$RAW/truth/ctpa_aligned" ] || { echo "no $RAW/truth/ctpa_aligned: $DATA is not a prepared phantom" >&2; exit 2; }
for arm in "$@"; do
  [ "$arm" = baseline ] || [ -f "configs/ablation/$arm.toml" ] \
    || { echo "no configs/ablation/$arm.toml" >&2; exit 2; }
done
[ -n "$THREADS" ] || THREADS=$(( $(nproc) / JOBS )); [ "$THREADS" -ge 1 ] || THREADS=1

# The scored cases: the prepared split's val and test cases.
mkdir -p "$OUT/scored"/{ncct,target,body,lung,vessels}
cases=$(python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); print(" ".join(sorted(c for c,v in s.items() if v in ("val","test"))))' "$DATA/split.json")
for c in $cases; do
  ln -sf "$(realpath "$RAW/ncct/$c.nii.gz")" "$OUT/scored/ncct/$c.nii.gz"
  ln -sf "$(realpath "$RAW/truth/ctpa_aligned/$c.nii.gz")" "$OUT/scored/target/$c.nii.gz"
  for m in body lung vessels; do
    ln -sf "$(realpath "$RAW/truth/$m/$c.nii.gz")" "$OUT/scored/$m/$c.nii.gz"
  done
done
echo "scoring cases of $DATA: $cases; $# arms x $STEPS steps, $JOBS at once x $THREADS threads${SEED:+, seed $SEED}"

run_arm() {
  local arm=$1 dir="$OUT/$1" extra=()
  [ "$arm" = baseline ] || extra=(--config "configs/ablation/$arm.toml")
  [ -z "$SEED" ] || extra+=(--seed "$SEED")
  rm -rf "$dir"
  local t0=$SECONDS
  "$BIN" train --data "$DATA" --config configs/demo.toml "${extra[@]}" --run "$dir/run" \
    --steps "$STEPS" --threads "$THREADS" --val-every "$STEPS" --sample-every "$STEPS" \
    --checkpoint-every "$STEPS" --no-progress -q
  echo $((SECONDS - t0)) > "$dir/train_seconds"
  "$BIN" predict --model "$dir/run/checkpoints/final" --input "$OUT/scored/ncct" \
    --output "$dir/pred" --device cpu -q
  "$BIN" evaluate --pred "$dir/pred" --target "$OUT/scored/target" --ncct "$OUT/scored/ncct" \
    --body "$OUT/scored/body" --lung "$OUT/scored/lung" --vessels "$OUT/scored/vessels" \
    --out "$dir/eval" -q
  echo "  $arm done in $(cat "$dir/train_seconds") s of training"
}
export -f run_arm
export BIN DATA OUT STEPS THREADS SEED
printf '%s\n' "$@" | xargs -P "$JOBS" -I{} bash -c 'run_arm "$@"' _ {}

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
