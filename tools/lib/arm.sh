# Shared by tools/demo/ablation.sh and tools/quality/benchmark.sh (sourced, not run).
#
# An "arm" is configs/demo.toml plus fragments of configs/ablation/: `baseline` (no fragment),
# `NAME` (configs/ablation/NAME.toml) or `A+B` (both, later overriding earlier key by key).
# Its FINAL checkpoint (no selection on validation) predicts the scored cases, which are
# scored against the phantom's aligned ground-truth CTPA inside the phantom's own masks,
# beside the NCCT-as-prediction baseline.
#
# Environment the functions read: BIN (the ncct2ctpa binary), DATA (prepared dataset), STEPS,
# THREADS (libtorch threads of one arm), SCORED (folder of ncct/ target/ body/ lung/ vessels/
# and the EXTRA_MASKS folders, CASE.nii.gz each), EXTRA_MASKS (space-separated mask folder
# names under SCORED scored as regions beside body, lung and vessel; may be empty).

# Exits with a message when an arm names a fragment that does not exist.
check_arms() {
  local arm part parts
  for arm in "$@"; do
    [ "$arm" = baseline ] && continue
    IFS=+ read -ra parts <<< "$arm"
    for part in "${parts[@]}"; do
      [ -f "configs/ablation/$part.toml" ] || { echo "arm $arm: no configs/ablation/$part.toml" >&2; exit 2; }
    done
  done
}

# link_scored RAW CASES...: SCORED/{ncct,target,body,lung,vessels}/CASE.nii.gz linked to the
# phantom's raw NCCT and truth.
link_scored() {
  local raw=$1 c m
  shift
  mkdir -p "$SCORED"/{ncct,target,body,lung,vessels}
  for c in "$@"; do
    ln -sf "$(realpath "$raw/ncct/$c.nii.gz")" "$SCORED/ncct/$c.nii.gz"
    ln -sf "$(realpath "$raw/truth/ctpa_aligned/$c.nii.gz")" "$SCORED/target/$c.nii.gz"
    for m in body lung vessels; do
      ln -sf "$(realpath "$raw/truth/$m/$c.nii.gz")" "$SCORED/$m/$c.nii.gz"
    done
  done
}

# The held-out cases (val and test) of a prepared dataset's split.json.
held_out_cases() {
  python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); print(" ".join(sorted(c for c,v in s.items() if v in ("val","test"))))' "$1/split.json"
}

# The raw folder a prepared phantom dataset came from; exits unless it holds the truth.
phantom_raw() {
  local raw
  raw=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["raw_dir"])' "$1/manifest.json")
  [ -d "$raw/truth/ctpa_aligned" ] || { echo "no $raw/truth/ctpa_aligned: $1 is not a prepared phantom" >&2; exit 2; }
  echo "$raw"
}

# arm_config_sum ARM: a checksum of the files ARM's configuration is made of (the defaults,
# configs/default.toml, which a test holds to the code's; configs/demo.toml; the arm's
# fragments), so a run kept from before any of them changed is recognised as stale.
arm_config_sum() {
  local files=(configs/default.toml configs/demo.toml) part parts
  if [ "$1" != baseline ]; then
    IFS=+ read -ra parts <<< "$1"
    for part in "${parts[@]}"; do files+=("configs/ablation/$part.toml"); done
  fi
  cat "${files[@]}" | sha256sum | cut -c1-16
}

# train_and_score DIR ARM [SEED]: trains ARM into DIR/run, predicts the scored cases with the
# final checkpoint into DIR/pred, scores them into DIR/eval; DIR/train_seconds.
train_and_score() {
  local dir=$1 arm=$2 seed=${3:-} extra=() part parts
  if [ "$arm" != baseline ]; then
    IFS=+ read -ra parts <<< "$arm"
    for part in "${parts[@]}"; do extra+=(--config "configs/ablation/$part.toml"); done
  fi
  [ -z "$seed" ] || extra+=(--seed "$seed")
  rm -rf "$dir"
  local t0=$SECONDS
  "$BIN" train --data "$DATA" --config configs/demo.toml "${extra[@]}" --run "$dir/run" \
    --steps "$STEPS" --threads "$THREADS" --val-every "$STEPS" --sample-every "$STEPS" \
    --checkpoint-every "$STEPS" --no-progress -q
  echo $((SECONDS - t0)) > "$dir/train_seconds"
  predict_and_score "$dir" --model "$dir/run/checkpoints/final"
}

# predict_and_score DIR --model CKPT [--model CKPT ...]: predicts the scored cases with the
# model (several: the mean of their predictions) into DIR/pred and scores them into DIR/eval.
predict_and_score() {
  local dir=$1 masks=() m
  shift
  "$BIN" predict "$@" --input "$SCORED/ncct" --output "$dir/pred" --device cpu -q
  for m in ${EXTRA_MASKS:-}; do masks+=(--mask "$SCORED/$m"); done
  [ ${#masks[@]} -eq 0 ] || masks=(--mask body --mask lung --mask vessel "${masks[@]}")
  "$BIN" evaluate --pred "$dir/pred" --target "$SCORED/target" --ncct "$SCORED/ncct" \
    --body "$SCORED/body" --lung "$SCORED/lung" --vessels "$SCORED/vessels" "${masks[@]}" \
    --out "$dir/eval" -q
}
