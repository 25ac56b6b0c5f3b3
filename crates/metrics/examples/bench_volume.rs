//! Times `score_regions` on a CT-sized volume (default 300 x 512 x 512, two regions).
//!
//! `cargo run --release -p metrics --example bench_volume [-- NZ NY NX]`

use metrics::{score_regions, ScoreConfig, SsimMode};
use ndarray::Array3;
use std::time::Instant;

fn main() {
    let dims: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let (nz, ny, nx) = match dims[..] {
        [z, y, x] => (z, y, x),
        _ => (300, 512, 512),
    };
    let target = Array3::from_shape_fn((nz, ny, nx), |(z, y, x)| {
        ((z * 7 + y * 13 + x * 29) % 2000) as f32 - 1000.0
    });
    let pred = target.mapv(|v| v + 12.0);
    let body = Array3::from_shape_fn((nz, ny, nx), |(_, y, x)| u8::from((y + x) % 3 != 0));
    let lung = Array3::from_shape_fn((nz, ny, nx), |(_, y, _)| u8::from(y < ny / 2));
    let threads = rayon::current_num_threads();
    for mode in [SsimMode::Volume, SsimMode::Axial] {
        let cfg = ScoreConfig {
            ssim_mode: mode,
            ..Default::default()
        };
        let t0 = Instant::now();
        let r = score_regions(
            pred.view(),
            target.view(),
            &[body.view(), lung.view()],
            &cfg,
        );
        let dt = t0.elapsed().as_secs_f64();
        match r {
            Ok(r) => println!(
                "{nz}x{ny}x{nx}, {mode:?} SSIM, 2 regions, {threads} threads: {dt:.2} s (body MAE {:?}, SSIM {:?})",
                r[0].mae, r[0].ssim
            ),
            Err(e) => println!("error: {e}"),
        }
    }
}
