#!/usr/bin/env bash
# The quality benchmark of issue #16: anyone can rerun it, on one machine, with one command.
#
# 1. Data: a phantom of CASES cases with MM mm of motion between NCCT and CTPA (the demo's has
#    5), prepared WITHOUT pre-alignment (`prepare --align none`): the networks see the pairs
#    as they lie, so R must do all the registration. Split 60/20/20; the val and test cases
#    are held out and scored (the final checkpoint is used, so validation selects nothing),
#    predicted as `predict` does by default: as the run's validation ran (`[inference]`: tiles
#    of the training crop unless the config says otherwise, averaged with their mirror along
#    the axes training mirrored; whole slices, one pass, for runs trained before runs
#    recorded them).
# 2. Every ARM trains with SEEDS seeds at the same budget (configs/demo.toml: tiny preset,
#    batch 4 x 96 px, lr 3e-3; STEPS steps).
# 3. Scoring against the phantom's ALIGNED ground-truth CTPA in its own masks: body, lung and
#    vessel (the pulmonary arteries, trunk to periphery) MAE; the mean HU inside the arteries,
#    at the trunk (the arteries outside the lungs: the pulmonary trunk and the main and hilar
#    arteries) and in the peripheral arteries (the arteries inside the lungs), each beside the
#    NCCT's and the truth's.
# 4. OUT/table.md: per arm the mean and, after ±, the standard deviation over the seeds of
#    the per-seed means over the held-out cases, and (with several seeds) a row for the
#    arm's ensemble: the mean of its seeds' predictions (`predict --model` once per seed),
#    scored alike; OUT/table.json the same numbers.
#
# usage: tools/quality/benchmark.sh [-s STEPS] [-n SEEDS] [-j JOBS] [-m MM] [-c CASES]
#                                   [-B] [-t TILE] [-o OUT] [-b BIN] [-p PYTHON] ARM...
#   ARM   baseline (configs/demo.toml alone), NAME (+ configs/ablation/NAME.toml) or A+B
#   -s    training steps of every run (default 1500, the demo's)
#   -n    seeds per arm: 1, 2, ... (default 3)
#   -j    runs at once, each with cores/JOBS libtorch threads (default 2)
#   -m    largest motion between the scans, mm (default 10)
#   -c    phantom cases (default 10: 6 train, 2 val, 2 test)
#   -B    the phantom with bronchi beside its arteries (`synth --bronchi`)
#   -t    also predict with `predict --tile TILE` (PX or auto: sliding-window inference on
#         tiles, README "Training options") into ARM/seed-N/tile-TILE/ and ARM/ensemble-tile-TILE/
#         (redone every time: seconds); the table then shows those predictions' scores
#   -o    output folder (default runs/quality): data/, scored/, ARM/seed-N/, table.md
#   -b    the ncct2ctpa binary (default target/release/ncct2ctpa: `cargo build --release -p cli`)
#   -p    a Python with numpy and nibabel for the trunk/peripheral masks (default
#         .venv-twin/bin/python: `make setup-twin`)
# The phantom and its preparation are reused when OUT/data exists with the same -m, -c, -B,
# and a run already scored on it with the same -s and the same configuration files
# (configs/default.toml, configs/demo.toml and the arm's fragments; OUT/ARM/seed-N/settings) is kept:
# rerunning with more seeds or arms trains only what is missing, and a run made with other
# settings (or by this script before it recorded the configuration) is trained again, its
# folder replaced. Run from anywhere: paths are
# relative to the repository root.
set -euo pipefail
cd "$(dirname "$0")/../.."   # the repository root: relative paths (-o, -b, -p) start there
STEPS=1500; SEEDS=3; JOBS=2; MM=10; CASES=10; OUT=runs/quality
BIN=target/release/ncct2ctpa; PY=.venv-twin/bin/python
usage() { sed -n '2,45p' "$0"; exit 2; }
BRONCHI= TILE=
while getopts "s:n:j:m:c:o:b:p:t:B" opt; do
  case $opt in
    s) STEPS=$OPTARG ;; n) SEEDS=$OPTARG ;; j) JOBS=$OPTARG ;; m) MM=$OPTARG ;;
    c) CASES=$OPTARG ;; o) OUT=$OPTARG ;; b) BIN=$OPTARG ;; p) PY=$OPTARG ;;
    B) BRONCHI=--bronchi ;; t) TILE=$OPTARG ;;
    *) usage ;;
  esac
done
shift $((OPTIND - 1))
[ $# -gt 0 ] || usage
[ -x "$BIN" ] || { echo "no $BIN: build it with 'cargo build --release -p cli'" >&2; exit 2; }
"$PY" -c 'import numpy, nibabel' 2>/dev/null \
  || { echo "$PY lacks numpy or nibabel: 'make setup-twin', or -p PYTHON" >&2; exit 2; }
. "$(dirname "$0")/../lib/arm.sh"
check_arms "$@"
THREADS=$(( $(nproc) / JOBS )); [ "$THREADS" -ge 1 ] || THREADS=1

# 1. The phantom, prepared as it lies.
RAW=$OUT/data/raw DATA=$OUT/data/prepared
stamp="misalignment $MM mm, $CASES cases${BRONCHI:+, bronchi}"
if [ "$(cat "$OUT/data/settings" 2>/dev/null)" != "$stamp" ]; then
  rm -rf "$OUT/data"
  mkdir -p "$OUT/data"
  echo "making the phantom ($stamp) and preparing it without pre-alignment"
  "$BIN" synth --out "$RAW" --cases "$CASES" --seed 16 --misalignment "$MM" $BRONCHI -q
  "$BIN" prepare "$RAW" --out "$DATA" --align none --split 0.6,0.2,0.2 -q
  echo "$stamp" > "$OUT/data/settings"
fi

# The held-out cases, their truth, and the trunk and peripheral artery masks.
SCORED=$OUT/scored EXTRA_MASKS="trunk peripheral"
cases=$(held_out_cases "$DATA")
rm -rf "$SCORED"
link_scored "$RAW" $cases
"$PY" - "$SCORED" $cases <<'PYMASKS'
import sys, os, nibabel as nib, numpy as np
scored, cases = sys.argv[1], sys.argv[2:]
for name in ("trunk", "peripheral"):
    os.makedirs(f"{scored}/{name}", exist_ok=True)
for c in cases:
    art = nib.load(f"{scored}/vessels/{c}.nii.gz")
    lung = np.asarray(nib.load(f"{scored}/lung/{c}.nii.gz").dataobj) > 0
    a = np.asarray(art.dataobj) > 0
    for name, m in (("trunk", a & ~lung), ("peripheral", a & lung)):
        img = nib.Nifti1Image(m.astype(np.uint8), art.affine, art.header)
        img.set_data_dtype(np.uint8)
        nib.save(img, f"{scored}/{name}/{c}.nii.gz")
PYMASKS
echo "scoring held-out cases $cases; $# arms x $SEEDS seeds x $STEPS steps, $JOBS at once x $THREADS threads"

# 2-3. Every arm and seed.
# A run is kept when it was scored on this phantom with this many steps and the same
# configuration files (its RUN_STAMP and the arm's arm_config_sum).
RUN_STAMP="$stamp, $STEPS steps"
run_one() {
  local arm=${1%:*} seed=${1#*:}
  local dir="$OUT/$arm/seed-$seed" want
  want="$RUN_STAMP, config $(arm_config_sum "$arm")"
  if [ -f "$dir/eval/evaluation.json" ] && [ "$(cat "$dir/settings" 2>/dev/null)" = "$want" ]; then
    echo "  $arm seed $seed: kept (scored already; delete $dir to redo it)"
    return
  fi
  train_and_score "$dir" "$arm" "$seed"
  echo "$want" > "$dir/settings"
  echo "  $arm seed $seed done in $(cat "$dir/train_seconds") s of training"
}
# tiled predictions of the finished runs (-t): cheap, so always redone
predict_tiled() {
  local arm=$1 models=() s
  for s in $(seq 1 "$SEEDS"); do
    rm -rf "$OUT/$arm/seed-$s/tile-$TILE"
    predict_and_score "$OUT/$arm/seed-$s/tile-$TILE" --model "$OUT/$arm/seed-$s/run/checkpoints/final" --tile "$TILE"
    models+=(--model "$OUT/$arm/seed-$s/run/checkpoints/final")
  done
  if [ "$SEEDS" -gt 1 ]; then
    rm -rf "$OUT/$arm/ensemble-tile-$TILE"
    predict_and_score "$OUT/$arm/ensemble-tile-$TILE" "${models[@]}" --tile "$TILE"
  fi
}
export -f run_one train_and_score predict_and_score arm_config_sum
export BIN DATA OUT STEPS THREADS SCORED EXTRA_MASKS RUN_STAMP
# each run in its own shell with errexit: a failed train, predict or evaluate fails the run,
# and xargs then the script, before the table
for arm in "$@"; do for s in $(seq 1 "$SEEDS"); do echo "$arm:$s"; done; done \
  | xargs -P "$JOBS" -I{} bash -c 'set -euo pipefail; run_one "$@"' _ {}

# 3b. With several seeds, each arm's ensemble: the mean of its seeds' predictions (`predict`
# with every seed's final checkpoint, as nnU-Net averages its folds), scored alike into
# OUT/ARM/ensemble (redone every time: a few seconds).
if [ "$SEEDS" -gt 1 ]; then
  for arm in "$@"; do
    models=()
    for s in $(seq 1 "$SEEDS"); do models+=(--model "$OUT/$arm/seed-$s/run/checkpoints/final"); done
    rm -rf "$OUT/$arm/ensemble"
    predict_and_score "$OUT/$arm/ensemble" "${models[@]}"
  done
fi

if [ -n "$TILE" ]; then
  for arm in "$@"; do predict_tiled "$arm"; done
fi

# 4. The table.
python3 - "$OUT" "$STEPS" "$SEEDS" "$MM" "$TILE" "$@" <<'PYTABLE'
import json, statistics, sys
out, steps, seeds, mm, tile, arms = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6:]
def summary(arm, seed):
    run = f"seed-{seed}" if seed else "ensemble"
    if tile:
        run = f"{run}/tile-{tile}" if seed else f"ensemble-tile-{tile}"
    s = json.load(open(f"{out}/{arm}/{run}/eval/evaluation.json"))
    return {(r["region"], r["metric"]): r for r in s["summary"]}
MAE = [("body", "mae"), ("lung", "mae"), ("vessel", "mae")]
HU = ["vessel", "trunk", "peripheral"]
def values(g, who):
    v = [g[k][who]["mean"] for k in MAE]
    # the image's mean HU in a region = the truth's mean + the mean error
    v += [g[(r, "me")]["target_mean"]["mean"] + g[(r, "me")][who]["mean"] for r in HU]
    return v
def fmt(xs, digits=1):
    m = statistics.fmean(xs)
    return f"{m:.{digits}f}" + (f" ± {statistics.stdev(xs):.{digits}f}" if len(xs) > 1 else "")
rows, first = {}, None
for arm in arms:
    per_seed = [values(summary(arm, s), "model") for s in range(1, seeds + 1)]
    first = first or summary(arm, 1)
    rows[arm] = [list(col) for col in zip(*per_seed)]
    if seeds > 1:
        rows[f"{arm}, mean of the {seeds} seeds' predictions"] = [[v] for v in values(summary(arm, 0), "model")]
ncct = values(first, "baseline")
truth = [None] * len(MAE) + [first[(r, "me")]["target_mean"]["mean"] for r in HU]
head = ["body MAE", "lung MAE", "vessel MAE", "vessel mean HU", "trunk mean HU", "peripheral mean HU"]
how = f", predicted on {tile} px tiles" if tile and tile != "auto" else (", predicted on tiles of the training crop" if tile else ", predicted as each run validated")
lines = [f"| arm ({seeds} seeds x {steps} steps, {mm} mm motion{how}) | " + " | ".join(head) + " |",
         "|---" * (len(head) + 1) + "|"]
for arm, cols in rows.items():
    lines.append(f"| {arm} | " + " | ".join(fmt(c) for c in cols) + " |")
lines.append("| NCCT as prediction | " + " | ".join(f"{v:.1f}" for v in ncct) + " |")
lines.append("| truth (aligned CTPA) | " + " | ".join("" if v is None else f"{v:.1f}" for v in truth) + " |")
table = "\n".join(lines)
print(table)
open(f"{out}/table.md", "w").write(table + "\n")
json.dump({"columns": head, "seeds": seeds, "steps": int(steps), "motion_mm": float(mm),
           "arms": rows, "ncct": ncct, "truth": truth}, open(f"{out}/table.json", "w"), indent=1)
PYTABLE
