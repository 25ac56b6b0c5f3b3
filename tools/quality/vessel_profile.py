"""Where a prediction loses the small vessels' enhancement (#16): dim, blurred or swapped.

For each prediction folder (one NIfTI per held-out case, as `tools/quality/benchmark.sh`
writes them in OUT/ARM/seed-N/pred), beside the NCCT and the aligned truth, the mean HU and
the MAE against the truth, averaged over the held-out cases, in
- the peripheral arteries (the arteries inside the lungs: benchmark.sh's `peripheral` mask),
- the peripheral veins (the phantom's pulmonary veins inside the lungs, not arteries): a model
  that cannot tell the two apart brightens the veins as much as it dims the arteries,
- the ring of lung one pixel around the peripheral arteries, in-plane (not vessel): a model
  that blurs the enhancement brightens it.

usage: .venv-twin/bin/python tools/quality/vessel_profile.py [--out runs/quality] PRED...
Needs numpy and nibabel (`make setup-twin`); reads OUT/scored and OUT/data/raw/truth/veins.
"""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from qlib import load as qload, prediction_args  # noqa: E402


def load(path: Path) -> np.ndarray:
    return qload(path, "vessel_profile")


def ring(mask: np.ndarray) -> np.ndarray:
    """Voxels 4-connected in-plane (axes 0 and 1) to `mask`, outside it."""
    grown = mask.copy()
    for axis in (0, 1):
        for step in (1, -1):
            shifted = np.roll(mask, step, axis=axis)
            edge = [slice(None)] * mask.ndim
            edge[axis] = 0 if step == 1 else -1
            shifted[tuple(edge)] = False  # no wrap-around
            grown |= shifted
    return grown & ~mask


def main() -> None:
    a, scored, cases = prediction_args(__doc__, "vessel_profile")
    veins_dir = a.out / "data" / "raw" / "truth" / "veins"
    names = ["truth", "NCCT"] + [str(p) for p in a.pred]
    regions = ["peripheral arteries", "peripheral veins", "ring around them"]
    sums = {n: np.zeros((len(regions), 2)) for n in names}
    for case in cases:
        truth = load(scored / "target" / case)
        lung = load(scored / "lung" / case) > 0
        arteries = load(scored / "vessels" / case) > 0
        peripheral = load(scored / "peripheral" / case) > 0
        veins = (load(veins_dir / case) > 0) & lung & ~arteries
        around = ring(peripheral) & lung & ~arteries & ~veins
        masks = [peripheral, veins, around]
        images = [truth, load(scored / "ncct" / case)] + [load(p / case) for p in a.pred]
        for name, img in zip(names, images):
            if img.shape != truth.shape:
                sys.exit(f"vessel_profile: {name}/{case}: shape {img.shape}, truth {truth.shape}")
            for i, m in enumerate(masks):
                sums[name][i] += (img[m].mean(), np.abs(img - truth)[m].mean())
    print(f"{len(cases)} cases of {scored}; mean HU / MAE against the truth")
    print("| | " + " | ".join(regions) + " |")
    print("|---" * (len(regions) + 1) + "|")
    for name in names:
        v = sums[name] / len(cases)
        cells = [f"{m:.0f} / {e:.0f}" for m, e in v]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
