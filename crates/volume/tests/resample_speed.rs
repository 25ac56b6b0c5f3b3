//! Timings of resampling and rigid registration at realistic sizes (ignored by default; run
//! `cargo test -p volume --release --test resample_speed -- --ignored --nocapture`).

mod masks_support;

use masks_support as chest;
use std::time::Instant;
use volume::register::{align_rigid, RigidConfig};
use volume::resample::{resample, Grid, Interpolation};
use volume::transform::Rigid3;
use volume::Geometry;

fn centred(size: [usize; 3], spacing: [f64; 3]) -> Geometry {
    Geometry {
        spacing,
        origin: [0, 1, 2].map(|a| -(size[a] as f64 - 1.0) / 2.0 * spacing[a]),
        ..Geometry::identity(spacing)
    }
}

#[test]
#[ignore = "timing"]
fn resample_256x256x100() {
    let size = [256, 256, 100];
    let g = centred(size, [1.2, 1.2, 2.5]);
    let v = chest::sample(size, g, None, 20.0, 1);
    let grid = Grid::of(&v);
    let t = Rigid3::from_degrees(grid.center(), [2.0, -1.0, 4.0], [5.0, -3.0, 2.0]);
    for interp in [Interpolation::Linear, Interpolation::Nearest] {
        let t0 = Instant::now();
        let out = resample(&v, &grid, Some(&t), interp, -1000.0).unwrap();
        let dt = t0.elapsed();
        eprintln!(
            "resample {interp:?} 256x256x100 with a rigid transform: {dt:.2?} ({} threads)",
            rayon::current_num_threads()
        );
        assert_eq!(out.size_xyz(), size);
    }
}

#[test]
#[ignore = "timing"]
fn rigid_128x128x64() {
    let size = [128, 128, 64];
    let g = centred(size, [2.5, 2.5, 3.2]);
    let fixed = chest::sample(size, g, None, 20.0, 1);
    let center = Grid::of(&fixed).center();
    let truth = Rigid3::from_degrees(center, [2.0, -2.0, 5.0], [8.0, -5.0, 3.0]);
    let moving = chest::sample(size, g, Some(&truth.inverse()), 20.0, 2);
    let t0 = Instant::now();
    let r = align_rigid(&fixed, &moving, &RigidConfig::default()).unwrap();
    eprintln!(
        "rigid 128x128x64: {:.2?}, {} iterations, NCC {:.4} -> {:.4}\n  found {}\n  truth {truth}",
        t0.elapsed(),
        r.iterations,
        r.before,
        r.after,
        r.transform
    );
    assert!(r.transform.max_corner_distance(&truth, center, [100.0; 3]) < 2.0);
}
