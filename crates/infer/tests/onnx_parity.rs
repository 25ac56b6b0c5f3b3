//! #15 item 5: a trained G leaves our tool intact. `tools/export/export_generator.py` loads a
//! checkpoint into the PyTorch twin and exports ONNX; `tools/golden/onnx_export.py` ran ONNX
//! Runtime on a fixed phantom volume with that export and committed its output
//! (tests/data/onnx/: the tiny residual checkpoint, the NCCT, ONNX Runtime's synthetic CTPA,
//! golden.json with the versions). Here our own inference of the same checkpoint must agree.
//!
//! Tolerance: max |ours - ONNX Runtime| <= 0.1 HU and mean <= 0.01 HU, on the CPU in fp32.
//! Measured when the golden was made (2026-12-04): max 0.00024 HU, mean 0.000036 HU; the
//! bound leaves room for other CPUs and libtorch builds, and stays far below any export
//! defect the script measured (padding at the end instead of centred: max 90 HU; a flipped
//! slice: 314 HU; the residual ignored: 1547 HU).

use std::path::{Path, PathBuf};
use tch::Device;

fn data(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/onnx")
        .join(p)
}

#[test]
fn our_inference_equals_onnx_runtime_on_the_exported_generator() {
    let loaded = infer::checkpoint::load_generator(&data("checkpoint"), Device::Cpu).unwrap();
    let ncct = volume::io::nifti::read_nifti(&data("ncct.nii.gz")).unwrap();
    let onnx = volume::io::nifti::read_nifti(&data("onnxruntime.nii.gz")).unwrap();
    assert!(
        onnx.same_grid(&ncct, 1e-6),
        "ONNX Runtime's output keeps the input's grid"
    );
    let opts = infer::predict::PredictOptions {
        batch_size: 4,
        ..Default::default()
    };
    let ours = loaded
        .translator()
        .translate_volume(&ncct, &opts, |_| {})
        .unwrap();
    let n = ours.data.len() as f64;
    let diff = |a: &ndarray::Array3<f32>, b: &ndarray::Array3<f32>| {
        let d: Vec<f64> = a
            .iter()
            .zip(b)
            .map(|(x, y)| f64::from((x - y).abs()))
            .collect();
        (
            d.iter().copied().fold(0.0, f64::max),
            d.iter().sum::<f64>() / n,
        )
    };
    let (max, mean) = diff(&ours.data, &onnx.data);
    assert!(
        max <= 0.1 && mean <= 0.01,
        "|ours - ONNX Runtime|: max {max} HU, mean {mean} HU"
    );
    // the model changes its input: agreement is not an identity passing through both
    let w = loaded.window;
    let clipped = ncct.data.mapv(|v| v.clamp(w.min, w.max));
    let (_, change) = diff(&ours.data, &clipped);
    assert!(
        change > 10.0,
        "G changed the input by only {change} HU on average"
    );
}
