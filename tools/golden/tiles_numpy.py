#!/usr/bin/env python3
"""Golden for tiled inference (crates/infer/src/tiles.rs): the NumPy implementation that the
ONNX export's `translate_volume` uses (tools/export/sliding_window.py), run on a fixed input
with a forward pass that depends on what each tile sees, so tile positions, the Gaussian and
the blending all show in the output.

Writes crates/infer/tests/data/tiles/golden.json:
  input    [1, 2, 40, 56] float32, a fixed pattern (row-major, flattened)
  cases    per (tile, step): nnU-Net's tile starts along y and x, and the blended output
           [1, 1, 40, 56] of `forward`
  forward  (what crates/infer/tests/tiles_golden.rs runs too): per tile, channel 0 normalised
           by its own mean and population variance (+1e-5) over the tile, an instance norm,
           times 0.5, plus 0.25 x channel 1

How it runs (from the repository root, NumPy only: the twin's Python of `make setup-twin`):

    .venv-twin/bin/python tools/golden/tiles_numpy.py
"""

import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools" / "export"))
import sliding_window  # noqa: E402

OUT = ROOT / "crates" / "infer" / "tests" / "data" / "tiles" / "golden.json"
# (tile, step): 24 px at 0.5 puts x at 0, 11, 21, 32 (rounding 10.67 up and 21.33 down);
# 16 px at 0.3 places many tiles with uneven spacing
CASES = [(24, 0.5), (16, 0.3)]  # tiles multiples of 8 (the tiny G's size multiple)


def forward(t: np.ndarray) -> np.ndarray:
    a = t[:, :1].astype(np.float32)
    mean = a.mean(axis=(2, 3), keepdims=True)
    var = a.var(axis=(2, 3), keepdims=True)
    return ((a - mean) / np.sqrt(var + np.float32(1e-5)) * np.float32(0.5)
            + t[:, 1:2] * np.float32(0.25)).astype(np.float32)


def main() -> int:
    n, c, h, w = 1, 2, 40, 56
    y, x = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    inp = np.stack([np.sin(0.31 * y + 0.17 * x) + 0.02 * y,
                    np.cos(0.11 * x * y / 7.0) - 0.01 * x])[None].astype(np.float32)
    assert inp.shape == (n, c, h, w)
    cases = []
    for tile, step in CASES:
        out = sliding_window.forward_tiled(inp, tile, step, forward)
        cases.append({
            "tile": tile,
            "step": step,
            "positions_y": sliding_window.positions(h, tile, step),
            "positions_x": sliding_window.positions(w, tile, step),
            "output": [float(f"{v:.9g}") for v in out.ravel()],
        })
        # the tiles matter: the whole-slice forward differs
        print(f"tile {tile} step {step}: starts y {cases[-1]['positions_y']} x "
              f"{cases[-1]['positions_x']}, max |tiled - whole| "
              f"{np.abs(out - forward(inp)).max():.3f}")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({
        "made_by": "tools/golden/tiles_numpy.py",
        "numpy": np.__version__,
        "shape": [n, c, h, w],
        "input": [float(f"{v:.9g}") for v in inp.ravel()],
        "cases": cases,
    }))
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
