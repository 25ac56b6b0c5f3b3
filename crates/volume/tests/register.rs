//! Rigid registration recovers a known rigid motion of a synthetic chest CT.
//!
//! Tolerances: each Euler angle within 0.5 degrees and each translation component within
//! 0.5 mm of the truth (voxels are 4 x 4 x 5 mm), with independent noise in both images.

mod masks_support;

use masks_support as chest;
use std::time::Instant;
use volume::register::{align_rigid, RigidConfig};
use volume::resample::Grid;
use volume::transform::Rigid3;

#[test]
fn recovers_a_known_rigid_motion() {
    let (size, g) = chest::grid();
    let fixed = chest::sample(size, g, None, 20.0, 1);
    let center = Grid::of(&fixed).center();
    let truth = Rigid3::from_degrees(center, [1.5, -2.0, 5.0], [8.0, -5.0, 3.0]);
    // moving(q) = chest(truth^-1(q)), so moving(truth(p)) = fixed(p): truth is the answer.
    let moving = chest::sample(size, g, Some(&truth.inverse()), 20.0, 2);
    let t0 = Instant::now();
    let r = align_rigid(&fixed, &moving, &RigidConfig::default()).unwrap();
    eprintln!(
        "found {} (truth {truth}); NCC {:.4} -> {:.4}; {} iterations; {:.2?}",
        r.transform,
        r.before,
        r.after,
        r.iterations,
        t0.elapsed()
    );
    let (a, b) = (r.transform.angles_deg(), truth.angles_deg());
    for k in 0..3 {
        assert!((a[k] - b[k]).abs() < 0.5, "angle {k}: {} vs {}", a[k], b[k]);
        let (t, u) = (r.transform.translation[k], truth.translation[k]);
        assert!((t - u).abs() < 0.5, "translation {k}: {t} vs {u}");
    }
    assert_eq!(r.transform.center, center);
    assert!(r.after > r.before + 0.1, "NCC {} -> {}", r.before, r.after);
    assert!(r.iterations > 0);
}

#[test]
fn aligned_images_stay_at_identity_and_results_are_deterministic() {
    let (size, g) = chest::grid();
    let fixed = chest::sample(size, g, None, 20.0, 3);
    let moving = chest::sample(size, g, None, 20.0, 4);
    let cfg = RigidConfig::default();
    let r = align_rigid(&fixed, &moving, &cfg).unwrap();
    eprintln!("identity case: {}", r.transform);
    for k in 0..3 {
        assert!(r.transform.angles_deg()[k].abs() < 0.2, "{}", r.transform);
        assert!(r.transform.translation[k].abs() < 0.3, "{}", r.transform);
    }
    assert!(r.after >= r.before - 1e-9);
    let again = align_rigid(&fixed, &moving, &cfg).unwrap();
    assert_eq!(again, r, "same inputs must give the same result");
}

#[test]
fn bad_configuration_is_an_error() {
    let (size, g) = chest::grid();
    let v = chest::sample([size[0] / 4, size[1] / 4, size[2] / 4], g, None, 0.0, 1);
    let cfg = RigidConfig {
        shrink_factors: vec![2, 0],
        ..RigidConfig::default()
    };
    assert!(align_rigid(&v, &v, &cfg).is_err());
    let cfg = RigidConfig {
        smoothing_sigmas: vec![1.0],
        ..RigidConfig::default()
    };
    assert!(align_rigid(&v, &v, &cfg).is_err());
    let air = volume::Volume::new(ndarray::Array3::from_elem((8, 8, 8), -1000.0f32), g).unwrap();
    assert!(
        align_rigid(&air, &air, &RigidConfig::default()).is_err(),
        "no body: error, no panic"
    );
}
