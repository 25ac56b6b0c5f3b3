"""Seed selection (#16): does ranking an arm's seeds by a validation score that needs no
aligned truth, and averaging the best K, beat averaging them all?

For every arm of the benchmark (OUT/ARM/seed-N, each with its predictions of the held-out
cases in pred/ and its scores in eval/evaluation.csv) with more than K seeds:
- each seed's score on the VALIDATION cases: the MAE inside `[contrast]`'s motion-tolerant
  region against the CTPA as it lies (what validation logs as `mae_contrast`; computable on
  real data), which orders the seeds;
- on the TEST cases only (the selection never saw them), against the phantom's aligned
  truth: body, lung and artery MAE and the arteries' mean HU of the seeds on average, of the
  mean of all the seeds' predictions (what `predict --model A --model B ...` writes), of the
  mean of the K seeds ranked best, of the best-ranked seed alone, and of the K seeds that
  are best on the test cases themselves (hindsight: the most any selection could gain).
The numpy scoring is checked against `ncct2ctpa evaluate`'s for every single seed (within
0.05 HU), so the rows are comparable with the benchmark's.

usage: .venv-twin/bin/python tools/quality/seed_select.py [--out runs/quality] [-k 3] [ARM...]
Needs numpy, scipy and nibabel (`make setup-twin`).
"""

import argparse
import csv
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from qlib import contrast_scores, load, split, validation_regions  # noqa: E402

TOOL = "seed_select"
REGIONS = [("body", "body"), ("lung", "lung"), ("vessel", "vessels")]  # evaluate's, scored/'s


def scores(preds: list[dict], truth: dict) -> list[float]:
    """Body, lung and artery MAE and the arteries' mean HU of the voxel-wise mean of `preds`
    (one {case: volume} per model), averaged over the cases."""
    per_case = []
    for c, (target, masks) in truth.items():
        img = np.mean([p[c] for p in preds], axis=0)
        row = [float(np.abs(img - target)[masks[r]].mean()) for r, _ in REGIONS]
        row.append(float(img[masks["vessel"]].mean()))
        per_case.append(row)
    return list(np.mean(per_case, axis=0))


def check_against_evaluate(run: Path, mine: dict, test: list[str]) -> None:
    """Exit unless evaluate's per-case MAE equals this script's for the run's test cases."""
    for r in csv.DictReader((run / "eval" / "evaluation.csv").open()):
        if r["case"] in test and r["metric"] == "mae" and (r["case"], r["region"]) in mine:
            got, want = mine[(r["case"], r["region"])], float(r["model"])
            if abs(got - want) > 0.05:
                sys.exit(f"{TOOL}: {run}: {r['case']} {r['region']} MAE {got:.3f} here, "
                         f"{want:.3f} in eval/evaluation.csv: the scoring differs")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/quality", type=Path,
                    help="the benchmark's output folder (default runs/quality)")
    ap.add_argument("-k", type=int, default=3, help="seeds kept (default 3)")
    ap.add_argument("arms", nargs="*", help="arms (default: every arm with more than K seeds)")
    a = ap.parse_args()
    if a.k < 1:
        sys.exit(f"{TOOL}: -k must be at least 1, got {a.k}")
    val, test = split(a.out, TOOL)
    regions = validation_regions(a.out, val, TOOL)
    scored = a.out / "scored"
    truth = {}
    for c in test:
        masks = {r: load(scored / d / f"{c}.nii.gz", TOOL) > 0 for r, d in REGIONS}
        truth[c] = (load(scored / "target" / f"{c}.nii.gz", TOOL), masks)
    arms = a.arms or sorted({p.parent.name for p in a.out.glob("*/seed-*")})
    arm_runs = {}
    for arm in arms:
        runs = sorted(p for p in (a.out / arm).glob("seed-*") if (p / "eval").is_dir())
        if a.arms and len(runs) <= a.k:
            sys.exit(f"{TOOL}: {arm}: {len(runs)} scored seeds, need more than -k {a.k}")
        if len(runs) > a.k:
            arm_runs[arm] = runs
    head = ["body MAE", "lung MAE", "artery MAE", "artery mean HU"]
    print(f"test cases {', '.join(test)} (seeds ranked on {', '.join(val)} by the contrast "
          f"region's MAE against the CTPA as it lies)\n")
    cols = ["seeds (ranked)"] + [f"artery MAE, {w}" for w in (
        "seeds' mean", "all seeds", f"best {a.k} ranked", "best ranked",
        f"best {a.k} in hindsight")] + [f"{h}, best {a.k} ranked vs all" for h in head]
    print("| arm | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for arm, runs in arm_runs.items():
        ranked = sorted(runs, key=lambda r: contrast_scores(r / "pred", regions, TOOL)[0])
        preds = {r: {c: load(r / "pred" / f"{c}.nii.gz", TOOL) for c in test} for r in runs}
        single = {}
        for r in runs:
            single[r] = scores([preds[r]], truth)
            mine = {(c, reg): float(np.abs(preds[r][c] - t)[m[reg]].mean())
                    for c, (t, m) in truth.items() for reg, _ in REGIONS}
            check_against_evaluate(r, mine, test)
        every = scores([preds[r] for r in runs], truth)
        top = scores([preds[r] for r in ranked[: a.k]], truth)
        hindsight = sorted(runs, key=lambda r: single[r][2])[: a.k]
        cells = [statistics.fmean(single[r][2] for r in runs), every[2], top[2],
                 single[ranked[0]][2], scores([preds[r] for r in hindsight], truth)[2]]
        names = ", ".join(r.name.removeprefix("seed-") for r in ranked)
        print(f"| {arm} | {names} | " + " | ".join(f"{v:.1f}" for v in cells) + " | "
              + " | ".join(f"{t:.1f} vs {e:.1f}" for t, e in zip(top, every)) + " |")


if __name__ == "__main__":
    main()
