//! Tiled inference against an independent implementation: `tools/golden/tiles_numpy.py` ran
//! the NumPy sliding window that the ONNX export's `translate_volume` uses
//! (`tools/export/sliding_window.py`) on a fixed input, with a forward pass that normalises
//! each tile by its own statistics (an instance norm), and committed the tile starts and the
//! blended output (`tests/data/tiles/golden.json`). `infer::tiles` must place the same tiles and
//! blend to the same values, so a PyTorch or ONNX caller of an exported G reproduces `predict`.
//!
//! Tolerance: 1e-5 absolute on outputs of magnitude about 1 (float32 both sides; the Gaussian
//! is computed in float64 by NumPy and in float32 here). A tile placed one pixel off moves
//! values by about 0.01-0.1, a Gaussian of another sigma by more.

use infer::tiles::{forward_tiled, positions, Tiling};
use serde::Deserialize;
use tch::{Device, Kind, Tensor};

#[derive(Deserialize)]
struct Golden {
    shape: Vec<i64>,
    input: Vec<f32>,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    tile: usize,
    step: f64,
    positions_y: Vec<usize>,
    positions_x: Vec<usize>,
    output: Vec<f32>,
}

/// The golden's forward pass: channel 0 normalised over the tile, x 0.5, + 0.25 x channel 1.
fn forward(t: &Tensor) -> Tensor {
    let a = t.narrow(1, 0, 1);
    let mean = a.mean_dim(&[2i64, 3][..], true, Kind::Float);
    let var = a.var_dim(&[2i64, 3][..], false, true);
    (a - mean) / (var + 1e-5).sqrt() * 0.5 + t.narrow(1, 1, 1) * 0.25
}

#[test]
fn tiles_and_blending_equal_the_numpy_sliding_window() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/tiles/golden.json");
    let golden: Golden = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let x = Tensor::from_slice(&golden.input).reshape(&golden.shape);
    let (h, w) = (golden.shape[2] as usize, golden.shape[3] as usize);
    assert_eq!(golden.cases.len(), 2);
    for case in &golden.cases {
        assert_eq!(positions(h, case.tile, case.step), case.positions_y);
        assert_eq!(positions(w, case.tile, case.step), case.positions_x);
        let tiling = Tiling::new(case.tile, case.step, 8).unwrap();
        let ours = forward_tiled(&x, &tiling, forward).to_device(Device::Cpu);
        let theirs = Tensor::from_slice(&case.output).reshape(ours.size());
        let worst = (&ours - &theirs).abs().max().double_value(&[]);
        assert!(
            worst <= 1e-5,
            "tile {} step {}: max |ours - NumPy| = {worst}",
            case.tile,
            case.step
        );
        // the tiles matter here: the whole-slice forward is far from the blend
        let whole = (forward(&x) - &theirs).abs().max().double_value(&[]);
        assert!(
            whole > 0.1,
            "tile {}: whole slice within {whole}",
            case.tile
        );
    }
}
