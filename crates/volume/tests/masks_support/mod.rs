//! A synthetic chest CT for the mask and registration tests, defined analytically in LPS mm
//! (x to the patient's left, y posterior, z superior) so it can be sampled on any grid and
//! through any transform without interpolation.
//!
//! Contents (HU): air -1000 around; an elliptic body (soft tissue 40, a 12 mm fat layer -100);
//! two lung ellipsoids at -850 with a vessel and a nodule inside (40); a spine (400); a trachea
//! from the top down to a carina, with two main bronchi into the lungs (-1000); a stomach bubble
//! and a small bowel bubble below the lungs (-1000); a table below the patient (y posterior),
//! separated from the body by air (200).

#![allow(dead_code)]

use ndarray::Array3;
use volume::transform::Rigid3;
use volume::{Geometry, Volume};

/// Smooth 0..1 step of a signed distance-like value `d` (negative inside), `w` mm wide.
fn inside(d: f64, w: f64) -> f64 {
    (0.5 - d / w).clamp(0.0, 1.0)
}

/// Approximate signed distance (mm) to an axis-aligned ellipsoid (negative inside).
fn ellipsoid(p: [f64; 3], c: [f64; 3], r: [f64; 3]) -> f64 {
    let q = [
        (p[0] - c[0]) / r[0],
        (p[1] - c[1]) / r[1],
        (p[2] - c[2]) / r[2],
    ];
    let n = (q[0] * q[0] + q[1] * q[1] + q[2] * q[2]).sqrt();
    (n - 1.0) * r[0].min(r[1]).min(r[2])
}

/// Signed distance to a capsule (segment a-b, radius r).
fn capsule(p: [f64; 3], a: [f64; 3], b: [f64; 3], r: f64) -> f64 {
    let ab = [b[0] - a[0], b[1] - a[1], b[2] - a[2]];
    let ap = [p[0] - a[0], p[1] - a[1], p[2] - a[2]];
    let t = ((ap[0] * ab[0] + ap[1] * ab[1] + ap[2] * ab[2])
        / (ab[0] * ab[0] + ab[1] * ab[1] + ab[2] * ab[2]))
        .clamp(0.0, 1.0);
    let d = [ap[0] - t * ab[0], ap[1] - t * ab[1], ap[2] - t * ab[2]];
    (d[0] * d[0] + d[1] * d[1] + d[2] * d[2]).sqrt() - r
}

const EDGE: f64 = 2.0;
pub const LUNG_CENTERS: [[f64; 3]; 2] = [[-65.0, -5.0, 20.0], [65.0, -5.0, 20.0]];
pub const LUNG_RADII: [f64; 3] = [48.0, 62.0, 75.0];
pub const STOMACH: ([f64; 3], f64) = ([-40.0, -30.0, -85.0], 24.0);
pub const BUBBLE: ([f64; 3], f64) = ([35.0, -35.0, -75.0], 12.0);
pub const TABLE_Y: (f64, f64) = (112.0, 127.0);

/// Whether a point is inside the true lungs (the two ellipsoids, vessels included).
pub fn in_lung(p: [f64; 3]) -> bool {
    LUNG_CENTERS
        .iter()
        .any(|&c| ellipsoid(p, c, LUNG_RADII) < 0.0)
}

/// Whether a point is inside the true body (patient, without table).
pub fn in_body(p: [f64; 3]) -> bool {
    (p[0] / 150.0).powi(2) + (p[1] / 100.0).powi(2) <= 1.0
}

/// HU of the chest at an LPS point (no noise).
pub fn chest_hu(p: [f64; 3]) -> f64 {
    let [x, y, z] = p;
    let mut hu = -1000.0;
    // table
    let table = inside(
        (TABLE_Y.0 - y).max(y - TABLE_Y.1).max(x.abs() - 140.0),
        EDGE,
    );
    hu += table * (200.0 - hu);
    // body: elliptic cylinder, fat rim, soft tissue core
    let body_n = ((x / 150.0).powi(2) + (y / 100.0).powi(2)).sqrt();
    let body = inside((body_n - 1.0) * 100.0, EDGE);
    hu += body * (-100.0 - hu);
    let core = inside((body_n - 1.0) * 100.0 + 12.0, EDGE);
    hu += core * (40.0 - hu);
    // spine
    let spine = inside(
        ((x / 18.0).powi(2) + ((y - 70.0) / 18.0).powi(2)).sqrt() * 18.0 - 18.0,
        EDGE,
    );
    hu += spine * (400.0 - hu);
    // lungs
    for c in LUNG_CENTERS {
        let l = inside(ellipsoid(p, c, LUNG_RADII), EDGE);
        hu += l * (-850.0 - hu);
    }
    // vessels and a nodule inside the lungs
    for c in LUNG_CENTERS {
        let v = inside(
            capsule(
                p,
                [c[0], c[1] + 10.0, c[2] - 50.0],
                [c[0] * 0.8, c[1], c[2] + 50.0],
                4.0,
            ),
            EDGE,
        );
        hu += v * (40.0 - hu);
    }
    let nodule = inside(ellipsoid(p, [-60.0, -30.0, 30.0], [7.0; 3]), EDGE);
    hu += nodule * (40.0 - hu);
    // airways: trachea, carina, main bronchi
    let trachea = inside(
        capsule(p, [0.0, -25.0, 48.0], [0.0, -25.0, 200.0], 9.0),
        EDGE,
    );
    let bronchi = [-1.0, 1.0].map(|s| {
        inside(
            capsule(p, [0.0, -25.0, 48.0], [s * 42.0, -12.0, 35.0], 6.0),
            EDGE,
        )
    });
    for a in [trachea, bronchi[0], bronchi[1]] {
        hu += a * (-1000.0 - hu);
    }
    // gas below the lungs
    for (c, r) in [STOMACH, BUBBLE] {
        let g = inside(ellipsoid(p, c, [r; 3]), EDGE);
        hu += g * (-1000.0 - hu);
    }
    let _ = z;
    hu
}

/// The chest sampled on `g` with `size_xyz`, seen through `moving_to_fixed` (the image shows the
/// chest moved so that voxel point `q` holds `chest_hu(moving_to_fixed(q))`), plus uniform noise
/// of amplitude `noise` HU from `seed`.
pub fn sample(
    size_xyz: [usize; 3],
    g: Geometry,
    moving_to_fixed: Option<&Rigid3>,
    noise: f64,
    seed: u64,
) -> Volume {
    let mut s = seed.wrapping_mul(0x9E3779B97F4A7C15).wrapping_add(1);
    let mut rnd = move || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    };
    let [nx, ny, nz] = size_xyz;
    let mut data = Array3::<f32>::zeros((nz, ny, nx));
    for ((k, j, i), v) in data.indexed_iter_mut() {
        let q = g.index_to_point([i as f64, j as f64, k as f64]);
        let p = moving_to_fixed.map_or(q, |t| t.apply(q));
        *v = (chest_hu(p) + noise * rnd()) as f32;
    }
    Volume::new(data, g).unwrap()
}

/// The default test grid: 80 x 64 x 40 voxels of 4 x 4 x 5 mm centred on the origin.
pub fn grid() -> ([usize; 3], Geometry) {
    let size = [80, 64, 40];
    let spacing = [4.0, 4.0, 5.0];
    let origin = [0, 1, 2].map(|a| -(size[a] as f64 - 1.0) / 2.0 * spacing[a]);
    (
        size,
        Geometry {
            spacing,
            origin,
            direction: [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
        },
    )
}
