#!/usr/bin/env bash
# The GPU check: run from the bundle (`make gpu-bundle`) on any GPU machine, it checks that
# ncct2ctpa works there and measures it against the machine's own PyTorch, writing
# gpu-check.json and gpu-check.md into --out. `--cpu` runs the CPU-runnable parts (CI runs it
# against the debug binary: `--cpu --quick --bin target/debug/ncct2ctpa`).
#
# usage: ./gpu-check.sh [--quick] [--cpu] [--torch DIR] [--bin PATH] [--python PY] [--out DIR]
#   --quick   fewer steps and no benchmark (about 2 minutes on one H100/H200)
#   --cpu     device cpu; no precision other than fp32, no GPU requirement
#   --torch   the PyTorch package folder for the launcher (default: python3's)
#   --bin     run this ncct2ctpa binary directly instead of the bundle's launcher
#   --python  the Python with the machine's PyTorch, for the benchmark's twin (default: python3)
#
# Checks (each a row: name, pass|fail|skip, detail):
#   preflight            the bundle's preflight (glibc, PyTorch version and build, ldd, GPU)
#   device               the device the start-up line reports is the one asked for
#   data                 synth + prepare a 3-case phantom
#   train_fp32/bf16/f16  the tiny preset trains with finite losses (f16: the loss scaler's
#                        state is in the checkpoint)
#   resume               stop + --resume equals an uninterrupted run within the run-to-run
#                        spread of two uninterrupted runs (0 on the CPU; measured on a GPU,
#                        whose kernels are not all deterministic)
#   predict_vs_cpu       the device's prediction against the CPU's, MAE in HU (evaluate)
#   bench                ncct2ctpa bench against the machine's PyTorch (skipped with --quick)
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
quick=0 cpu=0 torch="" bin="" py=${PYTHON:-python3} out=gpu-check-out
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1; shift ;;
    --cpu) cpu=1; shift ;;
    --torch) torch=$2; shift 2 ;;
    --bin) bin=$2; shift 2 ;;
    --python) py=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    *) echo "gpu-check: unknown argument $1" >&2; exit 2 ;;
  esac
done
mkdir -p "$out"
out=$(cd "$out" && pwd)
rows="$out/rows.tsv"
: > "$rows"
row() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >> "$rows"; echo "gpu-check: $1: $2 ($3)" >&2; }
if [ -n "$bin" ]; then
  run() { "$bin" "$@"; }
else
  run() { "$here/ncct2ctpa" ${torch:+--torch "$torch"} "$@"; }
fi
device=cuda
[ "$cpu" = 1 ] && device=cpu
steps=$([ "$quick" = 1 ] && echo 20 || echo 200)
half=$((steps / 2))
t0=$(date +%s)

# preflight (only inside a bundle)
if [ -x "$here/preflight.sh" ] && [ -x "$here/bin/ncct2ctpa" ]; then
  if "$here/preflight.sh" ${torch:+--torch "$torch"} $([ "$cpu" = 1 ] && echo --cpu) > "$out/preflight.txt" 2>&1; then
    row preflight pass "$(grep -c '^ok' "$out/preflight.txt") checks"
  else
    row preflight fail "$(grep '^FAIL' "$out/preflight.txt" | head -n3 | tr '\n' ';')"
  fi
else
  row preflight skip "not run from a bundle"
fi

# data
if run synth --out "$out/raw" --cases 3 --seed 1 --force > "$out/synth.log" 2>&1 &&
   run prepare "$out/raw" --out "$out/prepared" > "$out/prepare.log" 2>&1; then
  row data pass "3 phantom cases prepared"
else
  row data fail "see synth.log / prepare.log"
  exit 1
fi

train() { # NAME AMP [extra args]: a tiny run into $out/NAME
  local name=$1 amp=$2
  shift 2
  rm -rf "${out:?}/$name"
  run train --data "$out/prepared" --run "$out/$name" --preset tiny --device "$device" \
    --steps "$steps" --batch-size 4 --crop-size 64 --log-every 1 --val-every "$steps" \
    --checkpoint-every "$half" --sample-every "$steps" --seed 7 --no-progress \
    --set "amp=\"$amp\"" "$@" > "$out/$name.log" 2>&1
}
losses() { # RUN: "step loss_g" lines of its train events
  "$py" -c 'import json,sys
for l in open(sys.argv[1]):
    e = json.loads(l)
    if e.get("event") == "train": print(e["step"], repr(e["loss_g"]))' "$out/$1/metrics.jsonl"
}

# training in each precision
precisions=("off")
[ "$cpu" = 0 ] && precisions=("off" "bf16" "f16")
for amp in "${precisions[@]}"; do
  name=train_$([ "$amp" = off ] && echo fp32 || echo "$amp")
  if train "$name" "$amp"; then
    last=$(losses "$name" | tail -n1 | awk '{print "step " $1 ", loss_g " $2}')
    finite=$("$py" -c 'import math,sys; print(all(math.isfinite(float(v)) for v in sys.argv[1:]))' $(losses "$name" | awk '{print $2}'))
    detail="last $last"
    [ "$amp" = f16 ] && detail="$detail; scaler: $(cat "$out/$name/checkpoints/final/amp_scaler.json" 2>/dev/null | tr -d ' \n')"
    [ "$finite" = True ] && row "$name" pass "$detail" || row "$name" fail "non-finite losses; $detail"
  else
    row "$name" fail "$(tail -n2 "$out/$name.log" | tr '\n' ' ')"
  fi
done
[ "$(grep -c "^device" "$rows")" = 0 ] && {
  started=$(grep -oE '\| device (Cpu|Cuda\([0-9]+\))' "$out/train_fp32.log" | head -n1 | sed 's/^| //')
  case "$device:$started" in
    cpu:*Cpu*|cuda:*Cuda*) row device pass "$started" ;;
    *) row device fail "asked for $device, the start-up line says '${started:-nothing}'" ;;
  esac
}

# resume: stopped at half, resumed, against two uninterrupted runs (their spread)
train resume_a off && train resume_b off &&
  NCCT2CTPA_TEST_HOOKS="stop_after_step=$half" train resume_c off &&
  run train --run "$out/resume_c" --resume --data "$out/prepared" --no-progress >> "$out/resume_c.log" 2>&1
if [ $? = 0 ]; then
  verdict=$("$py" - "$out" <<'PY'
import json, sys
def curve(run):
    return {e["step"]: e["loss_g"] for e in map(json.loads, open(f"{sys.argv[1]}/{run}/metrics.jsonl")) if e.get("event") == "train"}
a, b, c = curve("resume_a"), curve("resume_b"), curve("resume_c")
spread = max(abs(a[s] - b[s]) for s in a)
diff = max(abs(a[s] - c[s]) for s in a)
print(("pass" if diff <= spread else "fail") + f"\tmax |resumed - straight| {diff:.3g}, run-to-run spread {spread:.3g}, {len(a)} steps")
PY
)
  row resume "${verdict%%	*}" "${verdict#*	}"
else
  row resume fail "see resume_*.log"
fi

# predict on the device vs the CPU, compared by evaluate (MAE in HU)
mkdir -p "$out/pred_dev" "$out/pred_cpu"
src="$out/raw/ncct/case_000.nii.gz"
if run predict --model "$out/train_fp32" --input "$src" --output "$out/pred_dev/case_000.nii.gz" --device "$device" --force > "$out/predict.log" 2>&1 &&
   run predict --model "$out/train_fp32" --input "$src" --output "$out/pred_cpu/case_000.nii.gz" --device cpu --force >> "$out/predict.log" 2>&1 &&
   run evaluate --pred "$out/pred_dev" --target "$out/pred_cpu" --out "$out/pred_eval" --mask body > "$out/evaluate.log" 2>&1; then
  mae=$("$py" -c 'import json,sys; s=json.load(open(sys.argv[1])); print([r["model"]["mean"] for r in s["summary"] if r["metric"]=="mae"][0])' "$out/pred_eval/evaluation.json")
  ok=$("$py" -c 'import sys; print(float(sys.argv[1]) <= 1.0)' "$mae")
  [ "$ok" = True ] && row predict_vs_cpu pass "MAE $mae HU (tolerance 1 HU)" || row predict_vs_cpu fail "MAE $mae HU (tolerance 1 HU)"
else
  row predict_vs_cpu fail "see predict.log / evaluate.log"
fi

# benchmark against the machine's PyTorch
if [ "$quick" = 1 ]; then
  row bench skip "--quick"
elif run bench --device "$device" --pytorch "$py" --script "$here/tools/pytorch_twin/bench.py" \
     --config tiny:256:1 --config tiny:256:16 --config default:256:1 --config default:256:4 \
     --steps 5 --warmup 2 --out "$out/bench.json" > "$out/bench.md" 2>"$out/bench.log"; then
  row bench pass "bench.md, bench.json"
else
  row bench fail "see bench.log"
fi

# the report
"$py" - "$out" "$device" "$(( $(date +%s) - t0 ))" <<'PY'
import json, sys
out, device, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3])
rows = [l.rstrip("\n").split("\t", 2) for l in open(f"{out}/rows.tsv")]
checks = [{"name": n, "status": s, "detail": d} for n, s, d in rows]
report = {"device": device, "seconds": seconds, "checks": checks,
          "passed": all(c["status"] != "fail" for c in checks)}
json.dump(report, open(f"{out}/gpu-check.json", "w"), indent=2)
with open(f"{out}/gpu-check.md", "w") as f:
    f.write(f"# ncct2ctpa GPU check ({device}, {seconds} s)\n\n| check | status | detail |\n|---|---|---|\n")
    for c in checks:
        f.write(f"| {c['name']} | {c['status']} | {c['detail'].replace('|', '/')} |\n")
print(f"gpu-check: {'PASSED' if report['passed'] else 'FAILED'}; {out}/gpu-check.md")
sys.exit(0 if report["passed"] else 1)
PY
