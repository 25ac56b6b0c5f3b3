"""Which validation score, computable on real data, ranks trained runs by their artery MAE (#16)?

For every benchmark run OUT/ARM/seed-N (its predictions of the held-out cases in pred/, its
scores in eval/evaluation.csv, its training log in run/metrics.jsonl), this compares, on the
validation cases (split "val"), scores that need no aligned truth:
- the last validation's `mae_body_reg` and `mae_lung_reg` (metrics.jsonl: against the CTPA
  registered onto the NCCT by demons, what `log.best_metric` can choose today);
- the MAE and the mean error inside the motion-tolerant contrast region (the region of
  `[contrast]`: body voxels where the CTPA, as it lies, is brighter by more than 100 HU than
  the brightest NCCT voxel within 4 px in-plane, grown by 4 px), against the CTPA as it lies;
with the artery MAE against the aligned truth on the test cases (split "test"), and prints
each score's Spearman rank correlation with it over all runs.

usage: .venv-twin/bin/python tools/quality/contrast_rank.py [--out runs/quality]
Needs numpy, scipy and nibabel (`make setup-twin`).
"""

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent))
from qlib import contrast_scores, split, validation_regions  # noqa: E402

TOOL = "contrast_rank"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/quality", type=Path,
                    help="the benchmark's output folder (default runs/quality)")
    a = ap.parse_args()
    val, test = split(a.out, TOOL)
    regions = validation_regions(a.out, val, TOOL)
    rows = []
    for ev in sorted(a.out.glob("*/seed-*/eval/evaluation.csv")):
        run = ev.parent.parent
        per = list(csv.DictReader(ev.open()))
        artery = [float(r["model"]) for r in per
                  if r["case"] in test and r["region"] == "vessel" and r["metric"] == "mae"]
        vals = [json.loads(line) for line in (run / "run" / "metrics.jsonl").open()
                if '"event":"val"' in line]
        if not artery or not vals:
            continue
        mae, me = contrast_scores(run / "pred", regions, TOOL)
        rows.append((str(run.relative_to(a.out)), vals[-1].get("mae_body_reg"),
                     vals[-1].get("mae_lung_reg"), mae, me,
                     float(np.mean(artery))))
    if len(rows) < 3:
        sys.exit(f"contrast_rank: {len(rows)} scored runs in {a.out}: too few to rank")
    names = ["mae_body_reg", "mae_lung_reg", "contrast MAE", "contrast ME"]
    print("| run | " + " | ".join(names) + " | test artery MAE |")
    print("|---" * (len(names) + 2) + "|")
    for r in rows:
        print(f"| {r[0]} | " + " | ".join(f"{v:.1f}" for v in r[1:]) + " |")
    table = np.array([r[1:] for r in rows], dtype=float)
    print(f"\nSpearman rank correlation with the test cases' artery MAE over {len(rows)} runs "
          f"(validation cases {', '.join(val)}; test cases {', '.join(test)}):")
    for i, n in enumerate(names):
        print(f"  {n}: {spearmanr(table[:, i], table[:, -1])[0]:+.2f}")


if __name__ == "__main__":
    main()
