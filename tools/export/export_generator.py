#!/usr/bin/env python3
"""Export a trained generator G from an ncct2ctpa checkpoint to ONNX (and to plain safetensors).

A checkpoint is self-describing (crates/infer/src/checkpoint.rs): its state.json holds G's
configuration (`config.model.generator`) and the HU window of the network's [-1, 1] scale
(`window.min`, `window.max`), and generator.safetensors holds G's weights under our VarStore
names, which are the `state_dict()` keys of the PyTorch twin (tools/pytorch_twin/reggan_twin.py).
This script rebuilds G in the twin from that configuration, loads the weights with strict key
and shape checking, wraps G in the same HU mapping as our inference, and exports it.

Usage (from the repository root, with the twin's Python of `make setup-twin`):

    .venv-twin/bin/python tools/export/export_generator.py --model runs/demo --out export/demo

  --model PATH        a run folder (its checkpoints/best, else final, else latest, as
                      `ncct2ctpa predict --model` picks) or a checkpoint folder (with state.json)
  --checkpoint NAME   best | final | latest: that checkpoint of the run folder
  --out DIR           output folder (created; existing export files are replaced)
  --opset N           ONNX opset (default 18, the opset torch 2.11's exporter writes natively)
  --height/--width    size of the example input traced and checked (multiples of 2^depth)
  --no-ema            use generator.safetensors even when generator_ema.safetensors exists
  --threads N         CPU threads of PyTorch and ONNX Runtime for the check

Weights: when the checkpoint holds generator_ema.safetensors (an exponential moving average of
G's weights), those are exported instead of generator.safetensors, and the script says so.
When the checkpoint has checksums.json, the files read are checked against it first, as
`ncct2ctpa predict` does.

Written to OUT:
  generator.onnx          HU in, HU out (the contract below)
  generator.safetensors   G's weights as loaded (same key names; float32; loadable by the twin
                          and by our VarStore)
  export.json             the contract in machine-readable form: window, size multiple, input
                          channels, source checkpoint and step, SHA-256 of the files, the check
  README.txt              the contract in words

The ONNX model's contract:
  input  "ncct_hu"  float32 [N, in_channels, H, W]: NCCT slices in HU; with in_channels =
                    2k + 1 (a 2.5D model) the slices z-k..z+k around the one translated
  output "ctpa_hu"  float32 [N, 1, H, W]: the synthetic CTPA slice z in HU
  N, H and W are dynamic; H and W must be multiples of the size multiple 2^depth (8 for the
  tiny preset, 16 for the default). The graph computes exactly what our inference does:
      x  = 2 * (clamp(hu, min, max) - min) / (max - min) - 1
      y  = G(x)                       (eval mode: batch norm uses its running statistics)
      hu = min + (clamp(y, -1, 1) + 1) / 2 * (max - min)
  Padding is the caller's: our translator (crates/infer/src/translate.rs) pads each slice,
  centred, to the next multiples of 2^depth with air (-1 in network units, which is `min` HU
  before the mapping), and crops the output back. `translate_volume` below does the same for a
  whole [z, y, x] volume (stacking neighbours clamped at the volume's ends for 2.5D models),
  so `translate_volume(onnx_runner(path), hu, meta)` reproduces `ncct2ctpa predict` (without
  --tta, --precision or --model-spacing), on the tiles and mirrors the run's validation ran:
  export.json's "inference" (`tile`: pixels, or null for whole slices; `tile_step`;
  `tta_mirrors`: axes of [N, C, H, W] whose mirrored views are averaged with the slice), which
  `translate_volume` runs with tools/export/sliding_window.py (nnU-Net's tile positions and Gaussian, as
  crates/infer/src/tiles.rs; tools/golden/tiles_numpy.py checks the two agree).

After exporting, the script runs ONNX Runtime and the twin on the same random HU input (at the
example size and at a second, larger one, which exercises the dynamic H and W) and prints the
largest absolute difference in HU; it fails above --check-tolerance (default 0.5 HU).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools" / "pytorch_twin"))
sys.path.insert(0, str(ROOT / "tools" / "export"))
import reggan_twin as twin  # noqa: E402
import sliding_window  # noqa: E402

STATE_FILE = "state.json"
CHECKSUMS_FILE = "checksums.json"
GENERATOR_FILE = "generator.safetensors"
GENERATOR_EMA_FILE = "generator_ema.safetensors"
# The newest checkpoint format this script reads (infer::checkpoint::FORMAT_VERSION).
FORMAT_VERSION = 1
DEFAULT_OPSET = 18
INPUT_NAME = "ncct_hu"
OUTPUT_NAME = "ctpa_hu"


class ExportError(Exception):
    """A checkpoint this script cannot export, with the reason."""


# ---------------------------------------------------------------------------- checkpoint


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def find_checkpoint(path: Path, which: str | None = None) -> Path:
    """The checkpoint folder of `path`: itself when it holds state.json, else the run folder's
    checkpoints/`which`, or without `which` its best, else final, else latest
    (infer::checkpoint::find_checkpoint)."""
    if which is None and (path / STATE_FILE).is_file():
        return path
    names = [which] if which else ["best", "final", "latest"]
    for name in names:
        d = path / "checkpoints" / name
        if (d / STATE_FILE).is_file():
            return d
    if which:
        raise ExportError(f"{path} has no checkpoints/{which}/{STATE_FILE}")
    raise ExportError(
        f"{path} is neither a checkpoint folder (with {STATE_FILE}) nor a run folder with "
        "checkpoints/{best,final,latest}"
    )


def verify_checksums(ckpt: Path, names: list[str]) -> bool:
    """Checks `names` against checksums.json (infer::checkpoint::verify_checksums); a
    checkpoint without one passes. Returns whether there was one."""
    path = ckpt / CHECKSUMS_FILE
    if not path.is_file():
        return False
    recorded = json.loads(path.read_text())["sha256"]
    for name in names:
        if name not in recorded:
            continue
        now = sha256_file(ckpt / name)
        if now != recorded[name]:
            raise ExportError(
                f"{ckpt / name}: damaged (SHA-256 {recorded[name][:12]} recorded when the "
                f"checkpoint was written, {now[:12]} now)"
            )
    return True


def read_state(ckpt: Path) -> dict[str, Any]:
    """state.json, with its format version checked."""
    state = json.loads((ckpt / STATE_FILE).read_text())
    version = state.get("format_version")
    if not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        raise ExportError(
            f"{ckpt / STATE_FILE}: checkpoint format {version!r}; this script reads formats 1 to "
            f"{FORMAT_VERSION}"
        )
    return state


def generator_config(state: dict[str, Any]) -> dict[str, Any]:
    """G's configuration from state.json's config.model.generator, over the twin's defaults
    (the defaults of model::config::GeneratorConfig). A key the twin does not know is refused:
    it would be an option of G that the twin cannot reproduce."""
    try:
        section = state["config"]["model"]["generator"]
    except (KeyError, TypeError) as e:
        raise ExportError("state.json has no config.model.generator") from e
    try:
        cfg = twin.merge_config({"generator": section})["generator"]
    except KeyError as e:
        raise ExportError(
            f"the checkpoint's generator has an option the PyTorch twin does not implement: {e}"
        ) from e
    if cfg["in_channels"] < 1 or cfg["in_channels"] % 2 == 0:
        raise ExportError(
            f"in_channels = {cfg['in_channels']}: translating a volume needs an odd number "
            "(slices z-k..z+k), as in crates/infer/src/translate.rs"
        )
    if cfg["out_channels"] != 1:
        raise ExportError(
            f"out_channels = {cfg['out_channels']}: the HU contract (and our translator) "
            "needs 1 output channel"
        )
    return cfg


def window_of(state: dict[str, Any]) -> tuple[float, float]:
    """The HU window (min, max) of the network's [-1, 1] scale (state.json's `window`)."""
    w = state["window"]
    lo, hi = float(w["min"]), float(w["max"])
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise ExportError(f"state.json: window [{lo}, {hi}] must be finite with min < max")
    return lo, hi


def load_weights(g: twin.Generator, path: Path) -> dict[str, torch.Tensor]:
    """Loads `path` into `g` with strict checking: the same keys (BatchNorm's
    num_batches_tracked aside, which we do not keep), the same shapes, finite values.
    Returns the tensors loaded (float32, our key names)."""
    from safetensors.torch import load_file

    loaded = load_file(str(path))
    expected = twin.export_state(g)
    missing = sorted(set(expected) - set(loaded))
    unexpected = sorted(set(loaded) - set(expected))
    if missing or unexpected:
        raise ExportError(
            f"{path}: keys do not match G built from state.json: missing {missing[:8]}"
            f"{' ...' if len(missing) > 8 else ''}, unexpected {unexpected[:8]}"
            f"{' ...' if len(unexpected) > 8 else ''}"
        )
    tensors = {}
    for name, t in loaded.items():
        if tuple(t.shape) != tuple(expected[name].shape):
            raise ExportError(
                f"{path}: {name} has shape {tuple(t.shape)}, G expects "
                f"{tuple(expected[name].shape)}"
            )
        if not t.is_floating_point():
            raise ExportError(f"{path}: {name} has dtype {t.dtype}, expected float32")
        if t.dtype != torch.float32:
            print(f"note: {name} stored as {t.dtype}, loaded as float32")
            t = t.float()
        if not torch.isfinite(t).all():
            raise ExportError(f"{path}: {name} has non-finite values")
        tensors[name] = t.contiguous()
    result = g.load_state_dict(tensors, strict=False)
    # only BatchNorm's step counter may be absent; nothing may be left over
    leftover = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    assert not leftover and not result.unexpected_keys, result
    return tensors


# ---------------------------------------------------------------------------- the HU model


class HUGenerator(nn.Module):
    """G between HU slices: the window mapping of dataset::manifest::IntensityWindow
    (`normalize`, `denormalize`) around G, in the same float32 operation order.

    # Shapes
    hu [N, in_channels, H, W] -> [N, 1, H, W], H and W multiples of 2^depth."""

    def __init__(self, g: twin.Generator, window: tuple[float, float]):
        super().__init__()
        self.g = g
        self.lo, self.hi = float(window[0]), float(window[1])

    def forward(self, hu: torch.Tensor) -> torch.Tensor:
        span = self.hi - self.lo
        t = (hu.clamp(self.lo, self.hi) - self.lo) / span
        y = self.g(2.0 * t - 1.0)
        t = (y.clamp(-1.0, 1.0) + 1.0) * 0.5
        return self.lo + t * span


def build_from_checkpoint(
    model: Path, which: str | None = None, use_ema: bool = True
) -> tuple[HUGenerator, dict[str, Any]]:
    """G from a run or checkpoint folder, wrapped in the HU mapping, in eval mode, and a
    description of what was loaded (`meta`: the contract's fields)."""
    ckpt = find_checkpoint(model, which)
    ema = use_ema and (ckpt / GENERATOR_EMA_FILE).is_file()
    weights = ckpt / (GENERATOR_EMA_FILE if ema else GENERATOR_FILE)
    if not weights.is_file():
        raise ExportError(f"{weights} is missing")
    had_sums = verify_checksums(ckpt, [STATE_FILE, weights.name])
    state = read_state(ckpt)
    cfg = generator_config(state)
    window = window_of(state)
    config = state.get("config", {})
    try:
        tile, tile_step = sliding_window.tile_size(config.get("inference"),
                                                   config.get("data", {}).get("crop_size"))
        mirrors, rotations = sliding_window.tta_views(config.get("inference"),
                                                      config.get("data", {}).get("augment"))
    except ValueError as e:
        raise ExportError(f"state.json: {e}") from e
    g = twin.Generator(cfg)
    load_weights(g, weights)
    g.eval()
    meta = {
        "checkpoint": str(ckpt),
        "step": state.get("step"),
        "weights": weights.name,
        "ema": ema,
        "checksums_verified": had_sums,
        "generator_config": cfg,
        "window": {"min": window[0], "max": window[1]},
        "in_channels": cfg["in_channels"],
        "size_multiple": 2 ** cfg["depth"],
        "residual": cfg["residual"],
        # what `predict` runs by default: tiles of `tile` px (None: whole slices), and within
        # each the mean over the identity and these mirrors (axes of [N, C, H, W]) and rotations
        "inference": {"tile": tile, "tile_step": tile_step,
                      "tta_mirrors": [list(a) for a in mirrors], "tta_rotations_deg": rotations},
    }
    return HUGenerator(g, window).eval(), meta


def export_onnx(model: HUGenerator, path: Path, meta: dict[str, Any], height: int, width: int,
                opset: int) -> None:
    """torch.onnx.export (the torch.export-based exporter) with dynamic N, H and W; H and W
    are declared as multiples of the size multiple, which the UNet needs."""
    m = meta["size_multiple"]
    if height % m or width % m:
        raise ExportError(f"--height {height} / --width {width} must be multiples of {m}")
    example = torch.zeros(1, meta["in_channels"], height, width)
    batch = torch.export.Dim("batch", min=1)
    # H = m * height_over_m: the exporter writes the dimension as "8*height_over_8"
    h = torch.export.Dim(f"height_over_{m}", min=1)
    w = torch.export.Dim(f"width_over_{m}", min=1)
    with torch.no_grad():
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes={"hu": {0: batch, 2: m * h, 3: m * w}},
            opset_version=opset,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    # the contract travels inside the file too
    import onnx

    proto = onnx.load(str(path))
    props = {
        "ncct2ctpa.window_min_hu": repr(meta["window"]["min"]),
        "ncct2ctpa.window_max_hu": repr(meta["window"]["max"]),
        "ncct2ctpa.size_multiple": str(m),
        "ncct2ctpa.in_channels": str(meta["in_channels"]),
        "ncct2ctpa.padding": "centred, with window_min_hu (air), to multiples of size_multiple",
        "ncct2ctpa.checkpoint_step": str(meta["step"]),
        "ncct2ctpa.weights": meta["weights"],
    }
    for k, v in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    proto.doc_string = (
        "ncct2ctpa generator: NCCT HU slices [N, in_channels, H, W] -> synthetic CTPA HU "
        f"[N, 1, H, W]; H, W multiples of {m}"
    )
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


# ---------------------------------------------------------------------------- running it


def onnx_runner(path: Path, threads: int = 0) -> Callable[[np.ndarray], np.ndarray]:
    """An ONNX Runtime session (CPU) of an exported generator as a function
    [N, C, H, W] float32 HU -> [N, 1, H, W] float32 HU."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads > 0:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return lambda x: session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(x, np.float32)})[0]


def translate_volume(run: Callable[[np.ndarray], np.ndarray], hu: np.ndarray, meta: dict[str, Any],
                     batch_size: int = 8) -> np.ndarray:
    """Translates a [z, y, x] HU volume axial slice by axial slice, as our translator does
    (crates/infer/src/translate.rs): slice z with its neighbours z-k..z+k (clamped at the ends)
    for in_channels = 2k + 1, padded centred to multiples of the size multiple with the
    window's min (air; -1 after the mapping), run, cropped back. Returns [z, y, x] float32 HU.
    `run` maps [N, C, H', W'] HU to [N, 1, H', W'] HU (e.g. `onnx_runner`); with
    `meta["inference"]["tile"]` set it runs on the padded slices' tiles, blended
    (sliding_window.forward_tiled), as `predict` does, each the mean over the identity and
    `meta["inference"]["tta_mirrors"]` (sliding_window.forward_mirrored)."""
    tiles = meta.get("inference") or {}
    if tiles.get("tta_rotations_deg"):
        raise NotImplementedError("the checkpoint's validation rotated (tta = full); translate_volume "
                                  "reproduces the mirrors only")
    mirrors = [tuple(a) for a in tiles.get("tta_mirrors", [])]

    def views(x: np.ndarray) -> np.ndarray:
        return sliding_window.forward_mirrored(x, mirrors, run)

    nz, ny, nx = hu.shape
    m, c = meta["size_multiple"], meta["in_channels"]
    half = c // 2
    ph, pw = -(-ny // m) * m, -(-nx // m) * m
    top, left = (ph - ny) // 2, (pw - nx) // 2
    air = np.float32(meta["window"]["min"])
    out = np.zeros((nz, ny, nx), np.float32)
    for z0 in range(0, nz, max(batch_size, 1)):
        zs = range(z0, min(z0 + max(batch_size, 1), nz))
        x = np.full((len(zs), c, ph, pw), air, np.float32)
        for i, z in enumerate(zs):
            for ch in range(c):
                src = min(max(z + ch - half, 0), nz - 1)
                x[i, ch, top : top + ny, left : left + nx] = hu[src]
        if tiles.get("tile"):
            y = sliding_window.forward_tiled(x, int(tiles["tile"]), float(tiles["tile_step"]),
                                             views)
        else:
            y = views(x)
        out[z0 : z0 + len(zs)] = y[:, 0, top : top + ny, left : left + nx]
    return out


def check_against_twin(model: HUGenerator, onnx_path: Path, meta: dict[str, Any],
                       shapes: list[tuple[int, int, int, int]], threads: int) -> float:
    """Largest |ONNX Runtime - twin| in HU over random HU inputs of `shapes`, printed."""
    run = onnx_runner(onnx_path, threads)
    gen = torch.Generator().manual_seed(0)
    lo, hi = meta["window"]["min"], meta["window"]["max"]
    worst = 0.0
    for shape in shapes:
        # HU a little beyond the window on both sides, so the clamps are exercised
        x = torch.rand(shape, generator=gen) * (hi - lo + 400.0) + (lo - 200.0)
        with torch.no_grad():
            ref = model(x).numpy()
        got = run(x.numpy())
        if got.shape != ref.shape:
            raise ExportError(f"ONNX output shape {got.shape}, twin {ref.shape}")
        diff = float(np.abs(got - ref).max())
        print(f"check {list(shape)}: max |ONNX Runtime - PyTorch twin| = {diff:.3g} HU")
        worst = max(worst, diff)
    return worst


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True,
                   help="run folder (best, else final, else latest) or checkpoint folder")
    p.add_argument("--checkpoint", choices=["best", "final", "latest"],
                   help="which checkpoint of the run folder")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                   help=f"ONNX opset (default {DEFAULT_OPSET})")
    p.add_argument("--height", type=int, default=64, help="example input height (default 64)")
    p.add_argument("--width", type=int, default=64, help="example input width (default 64)")
    p.add_argument("--no-ema", action="store_true",
                   help=f"export {GENERATOR_FILE} even when {GENERATOR_EMA_FILE} exists")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: the libraries' default)")
    p.add_argument("--check-tolerance", type=float, default=0.5,
                   help="largest |ONNX Runtime - twin| in HU accepted by the check (default 0.5)")
    args = p.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    try:
        model, meta = build_from_checkpoint(args.model, args.checkpoint, not args.no_ema)
    except ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    m = meta["size_multiple"]
    if args.height % m or args.width % m or min(args.height, args.width) < m:
        print(f"error: --height {args.height} / --width {args.width} must be positive multiples "
              f"of {m} (2^depth)", file=sys.stderr)
        return 2
    ckpt = Path(meta["checkpoint"])
    print(f"checkpoint {ckpt} (step {meta['step']}), weights {meta['weights']}"
          + (" (the EMA weights)" if meta["ema"] else ""))
    print(f"G: {json.dumps(meta['generator_config'])}")
    print(f"HU window [{meta['window']['min']}, {meta['window']['max']}], "
          f"size multiple {meta['size_multiple']}, in_channels {meta['in_channels']}")
    t = meta["inference"]
    print(f"predict runs G on {t['tile']} px tiles, step {t['tile_step']}" if t["tile"]
          else "predict runs G on whole slices")
    if t["tta_mirrors"] or t["tta_rotations_deg"]:
        print(f"and averages it over the mirrors {t['tta_mirrors']} (axes of N, C, H, W)"
              + (f" and rotations {t['tta_rotations_deg']} degrees" if t["tta_rotations_deg"]
                 else ""))

    args.out.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file

    st_path = args.out / "generator.safetensors"
    save_file(twin.export_state(model.g), str(st_path),
              metadata={"source": str(ckpt / meta["weights"]), "step": str(meta["step"])})

    onnx_path = args.out / "generator.onnx"
    t0 = time.time()
    try:
        export_onnx(model, onnx_path, meta, args.height, args.width, args.opset)
    except ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"exported {onnx_path} (opset {args.opset}) in {time.time() - t0:.1f} s")

    c = meta["in_channels"]
    shapes = [(2, c, args.height, args.width), (1, c, args.height + 2 * m, args.width + m)]
    worst = check_against_twin(model, onnx_path, meta, shapes, args.threads)

    import onnx
    import onnxruntime

    contract = {
        "format": 1,
        "onnx": {
            "file": onnx_path.name,
            "sha256": sha256_file(onnx_path),
            "opset": args.opset,
            "input": {"name": INPUT_NAME, "shape": ["N", c, "H", "W"], "dtype": "float32",
                      "unit": "HU"},
            "output": {"name": OUTPUT_NAME, "shape": ["N", 1, "H", "W"], "dtype": "float32",
                       "unit": "HU"},
            "dynamic": ["N", "H", "W"],
        },
        "safetensors": {"file": st_path.name, "sha256": sha256_file(st_path)},
        "size_multiple": m,
        "in_channels": c,
        "window": meta["window"],
        "inference": meta["inference"],
        "tiling": "with inference.tile set, `ncct2ctpa predict` runs G on square tiles of that "
                  "size of the padded slice, starts as nnU-Net's compute_steps_for_sliding_window "
                  "(at most tile_step x tile apart, first and last flush with the borders), "
                  "outputs blended with a Gaussian of sigma = tile / 8 "
                  "(tools/export/sliding_window.py)",
        "mirroring": "each tile (or whole slice) is the mean of G on it and on its mirrors "
                     "along inference.tta_mirrors (axes of [N, C, H, W]), each mirrored back "
                     "(sliding_window.forward_mirrored)",
        "normalisation": "x = 2 * (clamp(hu, min, max) - min) / (max - min) - 1; "
                         "hu = min + (clamp(G(x), -1, 1) + 1) / 2 * (max - min)",
        "padding": "not in the graph: pad each slice centred (top = (H' - H) // 2, "
                   "left = (W' - W) // 2) to multiples of size_multiple with window.min HU, "
                   "crop the output back",
        "stacking": "in_channels = 2k + 1: channel j holds slice z - k + j, clamped to the "
                    "volume",
        "source": {k: meta[k] for k in ("checkpoint", "step", "weights", "ema",
                                         "checksums_verified")},
        "generator_config": meta["generator_config"],
        "check": {"shapes": [list(s) for s in shapes], "max_abs_diff_hu": worst,
                  "tolerance_hu": args.check_tolerance},
        "versions": {"torch": torch.__version__, "onnx": onnx.__version__,
                     "onnxruntime": onnxruntime.__version__},
    }
    (args.out / "export.json").write_text(json.dumps(contract, indent=2) + "\n")
    (args.out / "README.txt").write_text(
        f"ncct2ctpa generator exported from {ckpt} (step {meta['step']}, {meta['weights']}).\n\n"
        f"generator.onnx: input '{INPUT_NAME}' float32 [N, {c}, H, W] NCCT in HU"
        + (f" (slices z-{c // 2}..z+{c // 2})" if c > 1 else "")
        + f", output '{OUTPUT_NAME}' float32 [N, 1, H, W] synthetic CTPA in HU.\n"
        f"H and W must be multiples of {m}: pad each slice centred with {meta['window']['min']} "
        "HU (air) and crop the output back, as `ncct2ctpa predict` does.\n"
        f"The HU window [{meta['window']['min']}, {meta['window']['max']}] mapping is inside the "
        "graph (inputs are clipped to it, outputs lie in it).\n"
        "generator.safetensors: the same weights, keys = tools/pytorch_twin/reggan_twin.py "
        "Generator state_dict names.\n"
        + (f"`ncct2ctpa predict` runs G on {meta['inference']['tile']} px tiles of the padded "
           f"slice, {meta['inference']['tile_step']} x the tile apart at most, blended with a "
           "Gaussian (sigma = tile / 8): tools/export/sliding_window.py does the same.\n"
           if meta["inference"]["tile"] else "`ncct2ctpa predict` runs G on whole slices.\n")
        + (f"Each tile (or slice) is the mean of G on it and on its mirrors along the axes "
           f"{meta['inference']['tta_mirrors']} of [N, C, H, W], mirrored back "
           "(test-time mirroring: sliding_window.forward_mirrored).\n"
           if meta["inference"]["tta_mirrors"] else "")
        + "export.json: the same contract, machine-readable, with checksums and tool versions.\n"
    )
    print(f"wrote {st_path}, {onnx_path}, {args.out / 'export.json'}, {args.out / 'README.txt'}")
    if worst > args.check_tolerance:
        print(f"error: ONNX Runtime differs from the twin by {worst:.3g} HU "
              f"(> {args.check_tolerance} HU)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
