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

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi
from scipy.stats import spearmanr

THRESHOLD_HU, MOTION_PX = 100.0, 4


def load(path: Path) -> np.ndarray:
    if not path.is_file():
        sys.exit(f"contrast_rank: {path}: no such file")
    return np.asarray(nib.load(str(path)).dataobj, dtype=np.float32)


def contrast_region(ncct: np.ndarray, ctpa: np.ndarray, body: np.ndarray) -> np.ndarray:
    """[contrast]'s region in 3D, in-plane (axes 0 and 1) like the 2D training term."""
    square = np.ones((2 * MOTION_PX + 1, 2 * MOTION_PX + 1, 1), bool)
    seen = (ctpa - ndi.maximum_filter(ncct, footprint=square) > THRESHOLD_HU) & body
    return ndi.binary_dilation(seen, structure=square) & body


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/quality", type=Path,
                    help="the benchmark's output folder (default runs/quality)")
    a = ap.parse_args()
    split_file = a.out / "data" / "prepared" / "split.json"
    if not split_file.is_file():
        sys.exit(f"contrast_rank: {split_file}: no such file (run benchmark.sh first)")
    split = json.loads(split_file.read_text())
    val = sorted(c for c, s in split.items() if s == "val")
    test = sorted(c for c, s in split.items() if s == "test")
    raw = a.out / "data" / "raw"
    regions = {}
    for c in val:
        ncct, ctpa = load(raw / "ncct" / f"{c}.nii.gz"), load(raw / "ctpa" / f"{c}.nii.gz")
        body = load(a.out / "scored" / "body" / f"{c}.nii.gz") > 0
        regions[c] = (ctpa, contrast_region(ncct, ctpa, body))
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
        mae, me = [], []
        for c, (ctpa, region) in regions.items():
            diff = (load(run / "pred" / f"{c}.nii.gz") - ctpa)[region]
            mae.append(float(np.abs(diff).mean()))
            me.append(float(diff.mean()))
        rows.append((str(run.relative_to(a.out)), vals[-1].get("mae_body_reg"),
                     vals[-1].get("mae_lung_reg"), np.mean(mae), np.mean(me),
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
