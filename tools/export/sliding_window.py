"""Sliding-window inference over a batch of slices, in NumPy, as `ncct2ctpa predict` runs G
(crates/infer/src/tiles.rs): overlapping square tiles placed as nnU-Net's
`compute_steps_for_sliding_window` places them, blended with nnU-Net's Gaussian importance map
(sigma = tile / 8, 1 at the centre). A checkpoint records the tiles its validation ran
(`config.inference` of state.json; `export_generator.py` writes them into export.json), and
`export_generator.translate_volume` calls `forward_tiled` with them, so a caller of the exported
ONNX model reproduces `predict`; with the test-time mirrors the checkpoint records (`tta_views`,
`forward_mirrored`) within each tile, as `predict` runs them.

Torch-free on purpose: `tools/golden/tiles_numpy.py` runs it with NumPy alone and commits its
output, which `crates/infer/tests/tiles_golden.rs` compares with our Rust implementation.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

# nnU-Net's Gaussian: sigma = this x the tile's side.
SIGMA_SCALE = 1.0 / 8.0


def positions(extent: int, tile: int, step: float) -> list[int]:
    """Where the tiles of one axis of `extent` pixels start: the fewest tiles at most
    `step` x `tile` apart, spread evenly from the first border to the last (nnU-Net)."""
    if extent <= tile:
        return [0]
    span = extent - tile
    n = math.ceil(span / (tile * step)) + 1
    actual = span / (n - 1)
    return [_round_half_away(actual * i) for i in range(n)]


def _round_half_away(v: float) -> int:
    """Rounds a non-negative `v` half away from zero, as Rust's `f64::round` (Python's round
    goes to even)."""
    r = math.floor(v)
    return int(r + 1 if v - r >= 0.5 else r)


def importance(height: int, width: int) -> np.ndarray:
    """The [height, width] Gaussian importance map, float32, 1 at the tile's centre."""

    def axis(n: int) -> np.ndarray:
        c = (n - 1) / 2.0
        sigma = n * SIGMA_SCALE
        return -0.5 * ((np.arange(n, dtype=np.float64) - c) / sigma) ** 2

    return np.exp(axis(height)[:, None] + axis(width)[None, :]).astype(np.float32)


def forward_tiled(x: np.ndarray, tile: int, step: float,
                  forward: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """`forward` over the tiles of `x` ([N, C, H, W]), blended with the importance map;
    returns [N, C_out, H, W] float32. A slice no larger than the tile is one forward pass."""
    if not 0.0 < step <= 1.0:
        raise ValueError(f"the tile step {step} must be in (0, 1]")
    _, _, height, width = x.shape
    if height <= tile and width <= tile:
        return forward(x)
    th, tw = min(tile, height), min(tile, width)
    g = importance(th, tw)
    acc = None
    weight = np.zeros((height, width), np.float32)
    for y0 in positions(height, th, step):
        for x0 in positions(width, tw, step):
            out = np.asarray(forward(x[:, :, y0:y0 + th, x0:x0 + tw]), np.float32)
            if acc is None:
                acc = np.zeros((out.shape[0], out.shape[1], height, width), np.float32)
            acc[:, :, y0:y0 + th, x0:x0 + tw] += out * g
            weight[y0:y0 + th, x0:x0 + tw] += g
    return acc / weight


def tile_size(inference: dict | None, crop_size: int | None) -> tuple[int | None, float]:
    """The tile side in pixels (None: whole slices) and step a checkpoint's
    `config.inference` asks for; `auto` is the training crop. A checkpoint without the record
    predates it and was validated, and predicts, on whole slices."""
    if not inference:
        return None, 0.5
    tile, step = inference.get("tile", "auto"), float(inference.get("tile_step", 0.5))
    if tile == "whole":
        return None, step
    if tile == "auto":
        if crop_size is None:
            raise ValueError("config.inference.tile = auto, but the checkpoint records no "
                             "config.data.crop_size")
        return int(crop_size), step
    return int(tile), step


def tta_views(inference: dict | None, augment: dict | None) -> tuple[list[tuple[int, ...]], list[float]]:
    """The test-time augmentation `predict` runs by default (crates/infer/src/tta.rs), from a
    checkpoint's `config.inference.tta` and `config.data.augment`: the mirrored views besides
    the identity, as axes of [N, C, H, W] to flip, and the rotations in degrees. `auto` mirrors
    the axes training mirrored (every combination), `flip` the left-right axis, `full` that and
    rotations by +-5 degrees, `none` (and a checkpoint recording no `tta`, which predates it)
    nothing."""
    tta = (inference or {}).get("tta", "none")
    if tta == "none":
        return [], []
    if tta == "flip":
        return [(3,)], []
    if tta == "full":
        return [(3,)], [-5.0, 5.0]
    if tta != "auto":
        raise ValueError(f"config.inference.tta = {tta!r}: expected none, auto, flip or full")
    if augment is None:
        raise ValueError("config.inference.tta = auto, but the checkpoint records no "
                         "config.data.augment")
    # a key missing takes training's default (crates/dataset/src/augment.rs)
    on = bool(augment.get("enabled", True))
    x = on and float(augment.get("flip_x_prob", 0.5)) > 0.0
    y = on and float(augment.get("flip_y_prob", 0.0)) > 0.0
    return [a for a, use in (((3,), x), ((2,), y), ((2, 3), x and y)) if use], []


def forward_mirrored(x: np.ndarray, mirrors: list[tuple[int, ...]],
                     run: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """The mean of `run(x)` and, for each axis tuple in `mirrors`, `run` on `x` mirrored there,
    mirrored back: `predict`'s test-time mirroring (exact: no resampling)."""
    acc = run(x).astype(np.float32)
    for axes in mirrors:
        acc = acc + np.flip(run(np.ascontiguousarray(np.flip(x, axes))), axes)
    return acc / np.float32(1 + len(mirrors))

