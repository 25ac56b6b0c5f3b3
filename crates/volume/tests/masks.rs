//! Body and lung masks on a synthetic chest (tests/masks_support): lungs found with Dice > 0.95,
//! table, outside air, airways and gas below the lungs excluded.

mod masks_support;

use masks_support as chest;
use volume::masks::{body_mask, lung_mask, MaskConfig};
use volume::{Mask, Volume};

fn dice(a: &Mask, truth: &[bool]) -> f64 {
    let (mut inter, mut na, mut nb) = (0usize, 0usize, 0usize);
    for (&m, &t) in a.data.iter().zip(truth) {
        na += usize::from(m != 0);
        nb += usize::from(t);
        inter += usize::from(m != 0 && t);
    }
    2.0 * inter as f64 / (na + nb) as f64
}

fn points(v: &Volume) -> Vec<[f64; 3]> {
    v.data
        .indexed_iter()
        .map(|((k, j, i), _)| v.geometry.index_to_point([i as f64, j as f64, k as f64]))
        .collect()
}

#[test]
fn synthetic_chest_masks() {
    let (size, g) = chest::grid();
    let ct = chest::sample(size, g, None, 30.0, 7);
    let cfg = MaskConfig::default();
    let body = body_mask(&ct, &cfg);
    let lungs = lung_mask(&ct, &body, &cfg).unwrap();
    assert_eq!(lungs.geometry, ct.geometry);
    let pts = points(&ct);
    let at = |m: &Mask, p: usize| m.data.as_slice().unwrap()[p] != 0;

    // Body: the patient, lungs included, table and outside air excluded.
    let truth_body: Vec<bool> = pts.iter().map(|&p| chest::in_body(p)).collect();
    let db = dice(&body, &truth_body);
    assert!(db > 0.97, "body Dice {db}");
    for (n, p) in pts.iter().enumerate() {
        if p[1] > chest::TABLE_Y.0 {
            assert!(!at(&body, n), "table voxel {p:?} in the body");
        }
    }
    let lung_voxels: Vec<usize> = (0..pts.len()).filter(|&n| at(&lungs, n)).collect();
    assert!(
        lung_voxels.iter().all(|&n| at(&body, n)),
        "lungs must lie inside the body"
    );

    // Lungs vs truth.
    let truth_lung: Vec<bool> = pts.iter().map(|&p| chest::in_lung(p)).collect();
    let dl = dice(&lungs, &truth_lung);
    eprintln!("body Dice {db:.4}, lung Dice {dl:.4}");
    assert!(dl > 0.95, "lung Dice {dl}");

    // Nothing of the stomach, bowel bubble or trachea.
    let near = |p: [f64; 3], c: [f64; 3], r: f64| {
        (0..3).map(|a| (p[a] - c[a]).powi(2)).sum::<f64>().sqrt() < r
    };
    for (n, &p) in pts.iter().enumerate() {
        if near(p, chest::STOMACH.0, chest::STOMACH.1) || near(p, chest::BUBBLE.0, chest::BUBBLE.1)
        {
            assert!(
                !at(&lungs, n),
                "gas below the lungs at {p:?} is in the lung mask"
            );
        }
        let trachea = p[0].abs() < 6.0 && (p[1] + 25.0).abs() < 6.0 && p[2] > 60.0;
        if trachea {
            assert!(!at(&lungs, n), "trachea at {p:?} is in the lung mask");
        }
        if !chest::in_body(p) {
            assert!(!at(&lungs, n), "outside air at {p:?} is in the lung mask");
        }
    }
    // Vessels and the nodule inside the lungs belong to the mask.
    let nodule = ct
        .geometry
        .point_to_index([-60.0, -30.0, 30.0])
        .map(|v| v.round() as usize);
    assert_eq!(
        lungs.data[[nodule[2], nodule[1], nodule[0]]],
        1,
        "nodule centre"
    );
}

#[test]
fn airways_stay_when_not_excluded() {
    let (size, g) = chest::grid();
    let ct = chest::sample(size, g, None, 30.0, 7);
    let cfg = MaskConfig {
        exclude_airways: false,
        ..MaskConfig::default()
    };
    let body = body_mask(&ct, &cfg);
    let lungs = lung_mask(&ct, &body, &cfg).unwrap();
    let idx = ct
        .geometry
        .point_to_index([0.0, -25.0, 80.0])
        .map(|v| v.round() as usize);
    assert_eq!(
        lungs.data[[idx[2], idx[1], idx[0]]],
        1,
        "the trachea is air connected to the lungs"
    );
}

#[test]
fn masks_of_pure_air_are_empty_not_a_panic() {
    let (size, g) = chest::grid();
    let air = Volume::new(
        ndarray::Array3::from_elem((size[2], size[1], size[0]), -1000.0f32),
        g,
    )
    .unwrap();
    let cfg = MaskConfig::default();
    let body = body_mask(&air, &cfg);
    assert_eq!(body.data.sum(), 0);
    assert_eq!(lung_mask(&air, &body, &cfg).unwrap().data.sum(), 0);
    let small = Volume::new(ndarray::Array3::<u8>::zeros((2, 2, 2)), g).unwrap();
    assert!(
        lung_mask(&air, &small, &cfg).is_err(),
        "mismatched grids must be an error"
    );
}
