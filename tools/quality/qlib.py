"""What the #16 quality tools share: reading the benchmark's volumes, its split, and the
motion-tolerant contrast region of `[contrast]` (crates/train/src/contrast.rs) in numpy/scipy.

Needs numpy, scipy and nibabel (`make setup-twin`).
"""

import argparse
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

# `[contrast]`'s defaults, which configs/demo.toml keeps
THRESHOLD_HU, MOTION_PX = 100.0, 4


def load(path: Path, tool: str) -> np.ndarray:
    """A NIfTI volume as float32; a missing file exits naming `tool` and the file."""
    if not path.is_file():
        sys.exit(f"{tool}: {path}: no such file")
    return np.asarray(nib.load(str(path)).dataobj, dtype=np.float32)


def prediction_args(doc: str, tool: str) -> tuple[argparse.Namespace, Path, list[str]]:
    """The command line of a tool that reads prediction folders (`[--out OUT] PRED...`, its
    description the first line of `doc`), the benchmark's scored folder and its held-out
    cases (file names); exits naming `tool` when there are none."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--out", default="runs/quality", type=Path,
                    help="the benchmark's output folder (default runs/quality)")
    ap.add_argument("pred", nargs="+", type=Path, help="prediction folders")
    a = ap.parse_args()
    scored = a.out / "scored"
    cases = sorted(p.name for p in (scored / "target").glob("*.nii.gz"))
    if not cases:
        sys.exit(f"{tool}: no cases in {scored / 'target'} (run benchmark.sh first)")
    return a, scored, cases


def split(out: Path, tool: str) -> tuple[list[str], list[str]]:
    """The benchmark's validation and test cases (OUT/data/prepared/split.json)."""
    split_file = out / "data" / "prepared" / "split.json"
    if not split_file.is_file():
        sys.exit(f"{tool}: {split_file}: no such file (run benchmark.sh first)")
    s = json.loads(split_file.read_text())
    return (sorted(c for c, v in s.items() if v == "val"),
            sorted(c for c, v in s.items() if v == "test"))


def contrast_region(ncct: np.ndarray, ctpa: np.ndarray, body: np.ndarray) -> np.ndarray:
    """[contrast]'s region in 3D, in-plane (axes 0 and 1) like the 2D training term: body
    voxels where the CTPA is brighter by more than THRESHOLD_HU than the brightest NCCT voxel
    within MOTION_PX, grown by MOTION_PX."""
    from scipy import ndimage as ndi

    square = np.ones((2 * MOTION_PX + 1, 2 * MOTION_PX + 1, 1), bool)
    seen = (ctpa - ndi.maximum_filter(ncct, footprint=square) > THRESHOLD_HU) & body
    return ndi.binary_dilation(seen, structure=square) & body


def validation_regions(out: Path, val: list[str], tool: str) -> dict:
    """Per validation case: the CTPA as it lies and its contrast region."""
    raw = out / "data" / "raw"
    regions = {}
    for c in val:
        ncct = load(raw / "ncct" / f"{c}.nii.gz", tool)
        ctpa = load(raw / "ctpa" / f"{c}.nii.gz", tool)
        body = load(out / "scored" / "body" / f"{c}.nii.gz", tool) > 0
        regions[c] = (ctpa, contrast_region(ncct, ctpa, body))
    return regions


def contrast_scores(pred_dir: Path, regions: dict, tool: str) -> tuple[float, float]:
    """A run's MAE and mean error inside the contrast region, against the CTPA as it lies,
    averaged over the validation cases: a score that needs no aligned truth."""
    mae, me = [], []
    for c, (ctpa, region) in regions.items():
        diff = (load(pred_dir / f"{c}.nii.gz", tool) - ctpa)[region]
        mae.append(float(np.abs(diff).mean()))
        me.append(float(diff.mean()))
    return float(np.mean(mae)), float(np.mean(me))
