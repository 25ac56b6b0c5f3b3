"""Where a prediction's body error lies (#16): the lungs, the bright structures, their rims,
or the rest of the soft tissue.

A body MAE above the NCCT's can be noise and texture everywhere, a brightened rim around
the enhanced vessels and the heart (the pinball loss pushing where misalignment sometimes
puts a vessel), or one offset over all the soft tissue. For each prediction folder (one
NIfTI per held-out case, as `tools/quality/benchmark.sh` writes them in OUT/ARM/seed-N/pred),
beside the NCCT, the body is cut into four parts by the aligned truth:
- lungs: the lung mask,
- bright: outside the lungs, truth above BRIGHT_HU (the enhanced vessels and heart, bone),
- rim: outside the lungs, within RIM_PX in-plane of a bright voxel, not bright itself,
- tissue: the rest of the body outside the lungs,
and for each part: its share of the body's voxels, the MAE and the mean error (prediction
minus truth) inside it, and what it adds to the body MAE (share x MAE: the four add up to it),
over all the held-out cases' voxels together.

usage: .venv-twin/bin/python tools/quality/body_split.py [--out runs/quality] PRED...
Needs numpy, scipy and nibabel (`make setup-twin`); reads OUT/scored.
"""

import sys
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

sys.path.insert(0, str(Path(__file__).resolve().parent))
from qlib import load as qload, prediction_args  # noqa: E402

BRIGHT_HU, RIM_PX = 150.0, 4
PARTS = ["lungs", "bright", "rim", "tissue"]


def load(path: Path) -> np.ndarray:
    return qload(path, "body_split")


def parts(truth: np.ndarray, body: np.ndarray, lung: np.ndarray) -> list[np.ndarray]:
    """The body's four parts (PARTS), disjoint, covering it."""
    outside = body & ~lung
    bright = outside & (truth > BRIGHT_HU)
    square = np.ones((2 * RIM_PX + 1, 2 * RIM_PX + 1, 1), bool)  # in-plane: axes 0, 1
    rim = ndi.binary_dilation(truth > BRIGHT_HU, structure=square) & outside & ~bright
    return [body & lung, bright, rim, outside & ~bright & ~rim]


def main() -> None:
    a, scored, cases = prediction_args(__doc__, "body_split")
    names = ["NCCT"] + [str(p) for p in a.pred]
    # per name and part: voxels, sum |error|, sum error
    sums = {n: np.zeros((len(PARTS), 3)) for n in names}
    for case in cases:
        truth = load(scored / "target" / case)
        body = load(scored / "body" / case) > 0
        lung = load(scored / "lung" / case) > 0
        masks = parts(truth, body, lung)
        images = [load(scored / "ncct" / case)] + [load(p / case) for p in a.pred]
        for name, img in zip(names, images):
            if img.shape != truth.shape:
                sys.exit(f"body_split: {name}/{case}: shape {img.shape}, truth {truth.shape}")
            err = img - truth
            for i, m in enumerate(masks):
                e = err[m]
                sums[name][i] += (e.size, np.abs(e).sum(), e.sum())
    print(f"{len(cases)} cases of {scored}; per part: share of the body / MAE / mean error "
          f"(HU) / adds to the body MAE")
    print("| | " + " | ".join(PARTS) + " | body MAE |")
    print("|---" * (len(PARTS) + 2) + "|")
    for name in names:
        n, abs_sum, sum_ = sums[name].T
        total = n.sum()
        cells = [f"{n[i] / total:.2f} / {abs_sum[i] / n[i]:.1f} / {sum_[i] / n[i]:+.1f} / "
                 f"{abs_sum[i] / total:.1f}" for i in range(len(PARTS))]
        print(f"| {name} | " + " | ".join(cells) + f" | {abs_sum.sum() / total:.1f} |")


if __name__ == "__main__":
    main()
