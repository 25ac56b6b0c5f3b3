//! Augmentation keeps NCCT, CTPA and masks on one grid, and jitters only the NCCT.

use dataset::augment::{augment_crop, AugmentConfig, SlicePair};
use ndarray::Array2;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// A smooth image with a few blobs, and the mask of its pixels above `THRESHOLD`.
fn blobs(h: usize, w: usize) -> Array2<f32> {
    let centres = [(20.0, 18.0, 9.0), (40.0, 44.0, 12.0), (15.0, 50.0, 6.0)];
    Array2::from_shape_fn((h, w), |(y, x)| {
        let mut v = -1.0f32;
        for (cy, cx, r) in centres {
            let d2 = (y as f32 - cy).powi(2) + (x as f32 - cx).powi(2);
            v += 2.0 * (-d2 / (2.0 * r * r)).exp();
        }
        v
    })
}

const THRESHOLD: f32 = 0.0;

fn pair() -> SlicePair {
    let img = blobs(64, 64);
    let mask = img.mapv(|v| u8::from(v > THRESHOLD));
    SlicePair {
        ncct: img.clone(),
        ctpa: img,
        lung: mask.clone(),
        body: mask,
        context: Vec::new(),
    }
}

fn strong() -> AugmentConfig {
    AugmentConfig {
        enabled: true,
        flip_x_prob: 0.5,
        flip_y_prob: 0.5,
        rotate_deg: 30.0,
        scale: 0.2,
        ncct_contrast: 0.0,
        ncct_brightness: 0.0,
        ncct_noise_std: 0.0,
    }
}

#[test]
fn masks_follow_the_images_through_every_transform() {
    let p = pair();
    let mut total_disagree = 0usize;
    for seed in 0..20u64 {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let out = augment_crop(&p, 48, &strong(), -1.0, &mut rng).unwrap();
        // Same input, same map: the two images and the two masks stay identical.
        assert_eq!(out.ncct, out.ctpa, "seed {seed}");
        assert_eq!(out.lung, out.body, "seed {seed}");
        let thr = out.ctpa.mapv(|v| u8::from(v > THRESHOLD));
        // Bilinear (images) and nearest (masks) may disagree only on the mask's boundary: a
        // pixel where they differ must have a neighbour of the other label in the mask (or lie
        // on the crop's edge).
        for ((y, x), &m) in out.lung.indexed_iter() {
            if thr[[y, x]] == m {
                continue;
            }
            total_disagree += 1;
            // On the crop's edge the neighbourhood lies partly outside the output.
            let mut boundary = y == 0 || x == 0 || y == 47 || x == 47;
            for (dy, dx) in [
                (-1i64, 0i64),
                (1, 0),
                (0, -1),
                (0, 1),
                (-1, -1),
                (1, 1),
                (-1, 1),
                (1, -1),
            ] {
                let (yy, xx) = (y as i64 + dy, x as i64 + dx);
                if yy >= 0
                    && xx >= 0
                    && yy < 48
                    && xx < 48
                    && out.lung[[yy as usize, xx as usize]] != m
                {
                    boundary = true;
                }
            }
            assert!(
                boundary,
                "seed {seed}: mask and image disagree inside a region at ({y},{x})"
            );
        }
        // The mask is still binary.
        assert!(out.lung.iter().all(|&v| v <= 1));
    }
    // And the disagreement is a thin rim, not a shifted mask.
    let mask_pixels = 20 * 48 * 48;
    assert!(
        total_disagree * 50 < mask_pixels,
        "{total_disagree} disagreeing pixels"
    );
}

#[test]
fn a_shifted_mask_would_be_caught() {
    // Guard for the test above: applying different maps to image and mask must fail it.
    let p = pair();
    let a = augment_crop(&p, 48, &strong(), -1.0, &mut ChaCha8Rng::seed_from_u64(1)).unwrap();
    let b = augment_crop(&p, 48, &strong(), -1.0, &mut ChaCha8Rng::seed_from_u64(2)).unwrap();
    let thr = a.ctpa.mapv(|v| u8::from(v > THRESHOLD));
    let disagree = thr
        .iter()
        .zip(b.lung.iter())
        .filter(|(x, y)| x != y)
        .count();
    assert!(
        disagree > 100,
        "only {disagree} pixels differ between two different draws"
    );
}

#[test]
fn intensity_jitter_changes_only_the_ncct() {
    let p = pair();
    let jitter = AugmentConfig {
        ncct_contrast: 0.2,
        ncct_brightness: 0.1,
        ncct_noise_std: 0.05,
        ..strong()
    };
    let plain = augment_crop(&p, 48, &strong(), -1.0, &mut ChaCha8Rng::seed_from_u64(7)).unwrap();
    let jit = augment_crop(&p, 48, &jitter, -1.0, &mut ChaCha8Rng::seed_from_u64(7)).unwrap();
    // Geometry and target are untouched by the jitter settings ...
    assert_eq!(plain.ctpa, jit.ctpa);
    assert_eq!(plain.lung, jit.lung);
    assert_eq!(plain.body, jit.body);
    // ... and the NCCT differs, by a plausible amount.
    let mad = (&plain.ncct - &jit.ncct).mapv(f32::abs).mean().unwrap();
    assert!(mad > 0.01 && mad < 0.5, "mean |jitter| = {mad}");
}

#[test]
fn same_seed_same_output_other_seed_other_output() {
    let p = pair();
    let cfg = AugmentConfig::default();
    let a = augment_crop(&p, 32, &cfg, -1.0, &mut ChaCha8Rng::seed_from_u64(5)).unwrap();
    let b = augment_crop(&p, 32, &cfg, -1.0, &mut ChaCha8Rng::seed_from_u64(5)).unwrap();
    let c = augment_crop(&p, 32, &cfg, -1.0, &mut ChaCha8Rng::seed_from_u64(6)).unwrap();
    assert_eq!(a, b);
    assert_ne!(a.ncct, c.ncct);
}

#[test]
fn small_slices_are_padded_with_the_fill_value() {
    let img = Array2::<f32>::zeros((10, 20));
    let mask = Array2::<u8>::ones((10, 20));
    let p = SlicePair {
        ncct: img.clone(),
        ctpa: img,
        lung: mask.clone(),
        body: mask,
        context: Vec::new(),
    };
    let out = augment_crop(
        &p,
        16,
        &AugmentConfig::none(),
        -1.0,
        &mut ChaCha8Rng::seed_from_u64(0),
    )
    .unwrap();
    // Height 10 in a 16 crop: 3 rows of fill above, 3 below.
    for x in 0..16 {
        assert_eq!(out.ncct[[0, x]], -1.0);
        assert_eq!(out.lung[[0, x]], 0);
        assert_eq!(out.ncct[[3, x]], 0.0);
        assert_eq!(out.lung[[12, x]], 1);
        assert_eq!(out.ncct[[13, x]], -1.0);
    }
}

#[test]
fn mismatched_shapes_are_an_error_not_a_panic() {
    let mut p = pair();
    p.body = Array2::zeros((10, 10));
    let err = augment_crop(
        &p,
        32,
        &AugmentConfig::default(),
        -1.0,
        &mut ChaCha8Rng::seed_from_u64(0),
    )
    .unwrap_err();
    assert!(err.contains("disagree"), "{err}");
}
