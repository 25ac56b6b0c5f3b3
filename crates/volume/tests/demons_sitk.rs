//! `volume::register::demons` against SimpleITK's `SymmetricForcesDemonsRegistrationFilter`
//! (ITK 5.4) on the same synthetic pair, one level, unit spacing, the same iterations and field
//! smoothing (golden made by `tools/golden/demons_sitk.py`), and both against the motion the
//! pair was made with. The two implementations differ in details that are not the algorithm
//! (ITK's discrete Gaussian operator against our sampled kernel, how each forms and bounds the
//! symmetric update, the image border), so the fields are compared inside a 3-voxel margin,
//! and ours must recover the true motion at least as well as SimpleITK's does.

use ndarray::{Array3, Zip};
use std::path::Path;
use volume::register::demons::{register_demons, DemonsConfig};
use volume::{Geometry, Volume};

fn read_f32(name: &str, len: usize) -> Vec<f32> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/demons")
        .join(name);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(bytes.len(), 4 * len, "{}", path.display());
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

#[test]
fn demons_field_matches_simpleitk() {
    let golden: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/demons/golden.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let shape: Vec<usize> = golden["shape_zyx"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    let (nz, ny, nx) = (shape[0], shape[1], shape[2]);
    let n = nz * ny * nx;
    let vol = |name| {
        let a = Array3::from_shape_vec((nz, ny, nx), read_f32(name, n)).unwrap();
        Volume::new(a, Geometry::identity([1.0, 1.0, 1.0])).unwrap()
    };
    let (fixed, moving) = (vol("fixed.f32"), vol("moving.f32"));
    let sitk = read_f32("field_sitk.f32", 3 * n);
    let cfg = DemonsConfig {
        shrink_factors: vec![1],
        smoothing_sigmas_mm: vec![0.0],
        iterations: vec![golden["iterations"].as_u64().unwrap() as usize],
        field_sigma_voxels: golden["field_sigma_voxels"].as_f64().unwrap(),
        clip_hu: [-1.0e6, 1.0e6],
    };
    let r = register_demons(&fixed, &moving, &cfg).unwrap();
    // the motion the script moved the blobs by (voxels), per component
    let truth = |a: usize, k: usize, j: usize, i: usize| -> f64 {
        let pi = std::f64::consts::PI;
        match a {
            0 => 1.2 * (pi * j as f64 / 24.0).sin(),
            1 => 0.8 * (pi * i as f64 / 24.0).cos() * (pi * k as f64 / 16.0).sin(),
            _ => 0.4,
        }
    };
    let (mut diff, mut mag, mut ours_err, mut count) = (0.0f64, 0.0f64, 0.0f64, 0usize);
    for (a, ours) in r.field.components.iter().enumerate() {
        let theirs =
            Array3::from_shape_vec((nz, ny, nx), sitk[a * n..(a + 1) * n].to_vec()).unwrap();
        Zip::indexed(ours)
            .and(&theirs)
            .for_each(|(k, j, i), &o, &t| {
                let inner = (3..nz - 3).contains(&k)
                    && (3..ny - 3).contains(&j)
                    && (3..nx - 3).contains(&i);
                if inner {
                    diff += f64::from((o - t).abs());
                    mag += f64::from(t.abs());
                    ours_err += (f64::from(o) - truth(a, k, j, i)).abs();
                    count += 1;
                }
            });
    }
    let (diff, mag, ours_err) = (
        diff / count as f64,
        mag / count as f64,
        ours_err / count as f64,
    );
    let sitk_after = golden["rms_after_sitk"].as_f64().unwrap();
    let sitk_err = golden["sitk_mean_abs_error_vs_true_displacement_inner"]
        .as_f64()
        .unwrap();
    eprintln!(
        "mean |ours - SimpleITK| {diff:.4} voxels (SimpleITK's mean |u| {mag:.4}); against the \
         true motion: ours {ours_err:.4}, SimpleITK {sitk_err:.4}; rms {:.3} -> {:.3} \
         (SimpleITK {sitk_after:.3})",
        r.rms_before, r.rms_after
    );
    assert!((r.rms_before - golden["rms_before"].as_f64().unwrap()).abs() < 1e-3);
    // measured: 0.104 voxels apart for a mean |u| of 0.481
    assert!(
        diff < 0.3 * mag,
        "fields differ by {diff} voxels on average (|u| {mag})"
    );
    // measured: RMS left 1.83 (ours) against 3.09 (SimpleITK); against the true motion 0.087
    // voxels (ours) and 0.137 (SimpleITK)
    assert!(
        r.rms_after <= sitk_after,
        "{} vs SimpleITK {sitk_after}",
        r.rms_after
    );
    assert!(
        ours_err <= 1.05 * sitk_err,
        "{ours_err} vs SimpleITK {sitk_err} voxels"
    );
}
