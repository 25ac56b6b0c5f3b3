#!/usr/bin/env python3
"""Golden for the ONNX export of G (tools/export/export_generator.py): our translation of a fixed
phantom volume and ONNX Runtime's translation of it with the exported model.

Writes crates/infer/tests/data/onnx/:
  checkpoint/state.json, checkpoint/generator.safetensors
                        G of a tiny residual run (configs/demo.toml, 200 steps, batch 2 of
                        64 px crops, seed 42, deterministic, 1 thread) on the demo phantom,
                        copied from its checkpoints/final
  checkpoint/checksums.json
                        the training checkpoint's own SHA-256 entries for those two files
                        (the other files of the checkpoint are not kept, so their entries are
                        dropped; verify_checksums passes with or without a file list)
  ncct.nii.gz           the fixed input: float32 HU, 4 slices of 117 x 79 voxels (x, y) of a
                        phantom chest through the pulmonary arteries (`ncct2ctpa synth
                        --cases 1 --seed 2026`, case_000, voxels x 5..121, y 27..105,
                        z 28..31, inclusive). Neither side is a multiple of 8, so both are
                        padded, unevenly (x: 1 + 2, y: 0 + 1)
  onnxruntime.nii.gz    ONNX Runtime's output for ncct.nii.gz (float32 HU, the input's geometry)
  golden.json           tool versions, shapes, |ours - ONNX Runtime| (and the twin), the
                        proposed tolerance and its reasoning, SHA-256 of every file above

How it runs (from the repository root, with the twin's Python of `make setup-twin`):

    cp target/debug/ncct2ctpa /tmp/ncct2ctpa-helper
    .venv-twin/bin/python tools/golden/onnx_export.py --bin /tmp/ncct2ctpa-helper

  1. `BIN train --data data/phantom-demo/prepared --run WORK/run --config configs/demo.toml
     --steps 200 --batch-size 2 --crop-size 64 --threads 1 --seed 42 --no-progress
     --set deterministic=true` (the demo's prepared phantom: `ncct2ctpa train` with no --data
     makes it), and the copy of checkpoints/final described above;
  2. `BIN synth` and the crop above with nibabel (slicing keeps the affine consistent);
  3. ours: `BIN predict --model OUT/checkpoint --input OUT/ncct.nii.gz --output WORK/ours.nii.gz
     --device cpu` (no TTA, fp32, batch 8);
  4. `tools/export/export_generator.py --model OUT/checkpoint --out WORK/export`, then ONNX
     Runtime (CPU) over the volume with export_generator.translate_volume (the same stacking,
     centred padding with the window's min and crop as crates/infer/src/translate.rs), and the
     twin in PyTorch the same way;
  5. the differences, written to golden.json, with what three plausible defects of an
     exporter would cost on the same volume (padding at the end instead of centred, the slice
     flipped left-right, G without its residual), to show the tolerance can see them.

`--keep-checkpoint` skips step 1 and uses the committed checkpoint; `--work DIR` keeps the
scratch files (default: a new temporary folder).

Run on 2026-12-04 with torch 2.11.0+cu130 (CPU), onnx 1.23.2, onnxruntime 1.32.0,
onnxscript 0.7.2 and ncct2ctpa 0.1.0 (debug build), on a 2-core x86-64 CPU; the numbers are
in golden.json. Two runs from scratch wrote byte-identical files (training is deterministic
on one thread).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools" / "export"))
import export_generator as exporter  # noqa: E402

OUT = ROOT / "crates" / "infer" / "tests" / "data" / "onnx"

TRAIN_STEPS = 200
SYNTH_SEED = 2026
# voxel index ranges of the crop: NIfTI i (x), j (y), k (z)
CROP = (slice(5, 122), slice(27, 106), slice(28, 32))
# The tolerance proposed for the Rust test (see golden.json's "tolerance.reasoning").
TOL_MAX_HU = 0.1
TOL_MEAN_HU = 0.01


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run(cmd: list[str]) -> str:
    print("$ " + " ".join(cmd), flush=True)
    done = subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True)
    return done.stdout + done.stderr


def train_checkpoint(bin_: str, data: Path, work: Path, dest: Path) -> dict:
    """Trains the tiny run and copies what inference needs of checkpoints/final to `dest`."""
    run_dir = work / "run"
    run([bin_, "train", "--data", str(data), "--run", str(run_dir),
         "--config", "configs/demo.toml", "--steps", str(TRAIN_STEPS), "--batch-size", "2",
         "--crop-size", "64", "--threads", "1", "--seed", "42", "--no-progress",
         "--set", "deterministic=true"])
    src = run_dir / "checkpoints" / "final"
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    keep = [exporter.STATE_FILE, exporter.GENERATOR_FILE]
    recorded = json.loads((src / exporter.CHECKSUMS_FILE).read_text())["sha256"]
    for name in keep:
        shutil.copyfile(src / name, dest / name)
        if sha256(dest / name) != recorded[name]:
            raise SystemExit(f"{name}: the copy does not match the checkpoint's checksum")
    # the same JSON shape and layout as infer::checkpoint::write_checksums (serde pretty)
    subset = {"sha256": {name: recorded[name] for name in sorted(keep)}}
    (dest / exporter.CHECKSUMS_FILE).write_text(json.dumps(subset, indent=2))
    return json.loads((src / exporter.STATE_FILE).read_text())


def make_volume(bin_: str, work: Path, dest: Path) -> None:
    """The fixed input: a crop of a synthetic phantom NCCT, float32 HU."""
    synth = work / "synth"
    run([bin_, "synth", "--out", str(synth), "--cases", "1", "--seed", str(SYNTH_SEED), "-q"])
    img = nib.load(synth / "ncct" / "case_000.nii.gz")
    crop = img.slicer[CROP]
    data = np.asarray(crop.dataobj, dtype=np.float32)
    out = nib.Nifti1Image(data, crop.affine, header=crop.header)
    out.set_data_dtype(np.float32)
    out.header["descrip"] = b"ncct2ctpa synth seed 2026 case_000 crop (ONNX golden)"
    nib.save(out, dest)


def zyx(img: nib.Nifti1Image) -> np.ndarray:
    """A NIfTI volume as our [z, y, x] float32 array (x = NIfTI's i, no reorientation)."""
    return np.ascontiguousarray(np.asarray(img.dataobj, dtype=np.float32).transpose(2, 1, 0))


def stats(a: np.ndarray, b: np.ndarray) -> dict:
    d = np.abs(a.astype(np.float64) - b.astype(np.float64))
    return {"max": float(d.max()), "mean": float(d.mean()), "p99": float(np.percentile(d, 99))}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bin", default="/tmp/ncct2ctpa-helper", help="the ncct2ctpa binary")
    p.add_argument("--train-data", type=Path, default=ROOT / "data" / "phantom-demo" / "prepared")
    p.add_argument("--work", type=Path, help="scratch folder (default: a temporary one)")
    p.add_argument("--keep-checkpoint", action="store_true",
                   help="reuse the committed checkpoint instead of training a new one")
    args = p.parse_args()
    torch.set_num_threads(1)
    work = args.work or Path(tempfile.mkdtemp(prefix="onnx-golden-"))
    work.mkdir(parents=True, exist_ok=True)
    OUT.mkdir(parents=True, exist_ok=True)
    ckpt = OUT / "checkpoint"

    version = run([args.bin, "--version"]).strip()
    if args.keep_checkpoint:
        state = json.loads((ckpt / exporter.STATE_FILE).read_text())
    else:
        state = train_checkpoint(args.bin, args.train_data, work, ckpt)
    ncct_path = OUT / "ncct.nii.gz"
    make_volume(args.bin, work, ncct_path)

    # ours: the CLI, exactly as a user runs it
    ours_path = work / "ours.nii.gz"
    run([args.bin, "predict", "--model", str(ckpt), "--input", str(ncct_path),
         "--output", str(ours_path), "--device", "cpu", "--force", "-q"])

    # the export, through its documented command line
    export_dir = work / "export"
    out = run([sys.executable, str(ROOT / "tools" / "export" / "export_generator.py"),
               "--model", str(ckpt), "--out", str(export_dir), "--threads", "1"])
    print("\n".join(line for line in out.splitlines() if not line.startswith("W")))
    contract = json.loads((export_dir / "export.json").read_text())

    ncct_img = nib.load(ncct_path)
    hu = zyx(ncct_img)
    ort_zyx = exporter.translate_volume(
        exporter.onnx_runner(export_dir / "generator.onnx", threads=1), hu, contract)
    model, _ = exporter.build_from_checkpoint(ckpt)

    def twin_run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(x)).numpy()

    twin_zyx = exporter.translate_volume(twin_run, hu, contract)

    ort_img = nib.Nifti1Image(ort_zyx.transpose(2, 1, 0), ncct_img.affine, header=ncct_img.header)
    ort_img.set_data_dtype(np.float32)
    ort_img.header["descrip"] = b"onnxruntime output of the exported G (ONNX golden)"
    nib.save(ort_img, OUT / "onnxruntime.nii.gz")

    ours_img = nib.load(ours_path)
    ours_zyx = zyx(ours_img)
    if ours_zyx.shape != hu.shape:
        raise SystemExit(f"our output has shape {ours_zyx.shape}, the input {hu.shape}")
    same_affine = bool(np.allclose(ours_img.affine, ncct_img.affine, atol=1e-4))

    ours_vs_ort = stats(ours_zyx, ort_zyx)
    ours_vs_twin = stats(ours_zyx, twin_zyx)
    twin_vs_ort = stats(twin_zyx, ort_zyx)
    # how far G moved the volume: a difference between the two sides is only meaningful if
    # the network did something (a residual G near the identity would pass trivially)
    window = contract["window"]
    clipped = np.clip(hu, window["min"], window["max"])
    g_effect = stats(ours_zyx, clipped)

    # what plausible exporter defects would cost against ONNX Runtime's output
    m = contract["size_multiple"]

    def padded_at_end(x: np.ndarray) -> np.ndarray:
        ny, nx = hu.shape[1:]
        ph, pw = -(-ny // m) * m, -(-nx // m) * m
        top, left = (ph - ny) // 2, (pw - nx) // 2
        core = x[:, :, top : top + ny, left : left + nx]
        shifted = np.full_like(x, window["min"])
        shifted[:, :, :ny, :nx] = core
        y = twin_run(shifted)
        out = np.full_like(y, window["min"])
        out[:, :, top : top + ny, left : left + nx] = y[:, :, :ny, :nx]
        return out

    defects = {
        "padding_at_end_not_centred": stats(
            exporter.translate_volume(padded_at_end, hu, contract), ort_zyx),
        "flipped_left_right": stats(exporter.translate_volume(
            lambda x: twin_run(np.ascontiguousarray(x[..., ::-1]))[..., ::-1], hu, contract),
            ort_zyx),
    }
    model.g.residual = False
    defects["residual_ignored"] = stats(exporter.translate_volume(twin_run, hu, contract), ort_zyx)
    model.g.residual = True

    import onnx
    import onnxruntime
    import onnxscript

    nz, ny, nx = hu.shape
    golden = {
        "what": "ncct2ctpa predict vs ONNX Runtime on the exported G (tools/golden/onnx_export.py)",
        "shape_zyx": [nz, ny, nx],
        "padded_yx": [-(-ny // m) * m, -(-nx // m) * m],
        "size_multiple": m,
        "window": window,
        "checkpoint": {
            "step": state["step"],
            "generator": state["config"]["model"]["generator"],
            "train": f"configs/demo.toml, --steps {TRAIN_STEPS} --batch-size 2 --crop-size 64 "
                     "--threads 1 --seed 42 --set deterministic=true, on data/phantom-demo",
        },
        "input": f"ncct2ctpa synth --cases 1 --seed {SYNTH_SEED}: case_000 NCCT, voxels "
                 "x 5..121, y 27..105, z 28..31 (inclusive)",
        "abs_diff_hu": {
            "ours_vs_onnxruntime": ours_vs_ort,
            "ours_vs_pytorch_twin": ours_vs_twin,
            "pytorch_twin_vs_onnxruntime": twin_vs_ort,
            "ours_vs_input_clipped_to_window": g_effect,
        },
        "defects_vs_onnxruntime_hu": defects,
        "output_geometry_matches_input": same_affine,
        "tolerance": {
            "max_abs_hu": TOL_MAX_HU,
            "mean_abs_hu": TOL_MEAN_HU,
            "reasoning": (
                "Both sides compute the same float32 graph; they differ only in the arithmetic "
                "order of their kernels (libtorch/oneDNN vs ONNX Runtime/MLAS convolutions and "
                "instance-norm reductions): relative errors of order 1e-7 to 1e-6 of the "
                "network's [-1, 1] scale, i.e. 1e-4 to 1e-3 HU at 1262 HU per unit (measured "
                "here: abs_diff_hu.ours_vs_onnxruntime). The bounds leave over two orders of "
                "magnitude for other CPUs and library versions and stay far below what an "
                "exporter defect costs on this volume (defects_vs_onnxruntime_hu: padding at "
                "the end instead of centred, a left-right flip, G without its residual), and "
                "G does change this volume (ours_vs_input_clipped_to_window), so agreement is "
                "not trivial. The bounds are for fp32 on the CPU: TF32 convolutions or reduced "
                "precision on a GPU change the arithmetic itself and are not covered."
            ),
        },
        "versions": {
            "ncct2ctpa": version,
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
            "onnxscript": onnxscript.__version__,
            "numpy": np.__version__,
            "nibabel": nib.__version__,
            "python": platform.python_version(),
            "opset": contract["onnx"]["opset"],
        },
        "sha256": {
            str(path.relative_to(OUT)): sha256(path)
            for path in sorted(OUT.rglob("*"))
            if path.is_file() and path.name != "golden.json"
        },
    }
    (OUT / "golden.json").write_text(json.dumps(golden, indent=2) + "\n")
    print(json.dumps(golden["abs_diff_hu"], indent=2))
    ok = ours_vs_ort["max"] <= TOL_MAX_HU and ours_vs_ort["mean"] <= TOL_MEAN_HU and same_affine
    print(("within" if ok else "OUTSIDE") + f" the proposed tolerance (max {TOL_MAX_HU} HU, "
          f"mean {TOL_MEAN_HU} HU)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
