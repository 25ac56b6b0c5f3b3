//! The known motion between the two scans: small rigid motion + breathing + smooth elastic
//! bumps, scaled so that the largest displacement inside the body is the configured
//! misalignment.
//!
//! Convention (the one a spatial transformer uses): the field `u` lives on the NCCT grid and
//! the tissue at NCCT point `p` sits at `p + u(p)` in the CTPA, so sampling the CTPA at
//! `p + u(p)` reproduces the CTPA aligned to the NCCT. Rendering the moved CTPA needs the
//! inverse: for each CTPA point `q` the fixed point `p = q − u(p)` (a contraction as long
//! as the field is smooth, which the scale of its components ensures).

use super::shapes::{add, cross, norm, scale, smoothstep, sub, V3};
use ndarray::{Array3, Axis, Zip};
use rand::Rng;
use rand_distr::{Distribution, StandardNormal};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use volume::Geometry;

/// One Gaussian bump of the elastic component.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Bump {
    pub center: V3,
    pub sigma_mm: f64,
    pub amplitude: V3,
}

/// A smooth motion of the patient between the two scans (anatomical millimetres).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Motion {
    /// Centre of the rotation.
    pub center: V3,
    /// Rotation vector (axis × angle, radians).
    pub rotation: V3,
    pub translation: V3,
    /// Craniocaudal diaphragm excursion at the lung bases (negative: deeper inspiration).
    pub breathing_mm: f64,
    pub bumps: Vec<Bump>,
}

/// One standard normal draw.
fn gauss(rng: &mut impl Rng) -> f64 {
    StandardNormal.sample(rng)
}

fn rotate(v: V3, w: V3) -> V3 {
    // Rodrigues' formula.
    let theta = norm(w);
    if theta < 1e-15 {
        return v;
    }
    let k = scale(w, 1.0 / theta);
    let (s, c) = theta.sin_cos();
    let kv = cross(k, v);
    let kdv = k[0] * v[0] + k[1] * v[1] + k[2] * v[2];
    add(add(scale(v, c), scale(kv, s)), scale(k, kdv * (1.0 - c)))
}

impl Motion {
    /// No motion at all.
    pub fn identity() -> Self {
        Self {
            center: [0.0; 3],
            rotation: [0.0; 3],
            translation: [0.0; 3],
            breathing_mm: 0.0,
            bumps: Vec::new(),
        }
    }

    /// Draws the shape of a motion with roughly unit size (see [`Self::scaled`]).
    pub fn sample_unit(rng: &mut impl Rng) -> Self {
        let rotation = [0.004 * gauss(rng), 0.004 * gauss(rng), 0.006 * gauss(rng)];
        let translation = [0.3 * gauss(rng), 0.3 * gauss(rng), 0.4 * gauss(rng)];
        let breathing_mm = if rng.gen_bool(0.5) { -1.0 } else { 1.0 } * rng.gen_range(0.6..1.0);
        let bumps = (0..5)
            .map(|_| Bump {
                center: [
                    rng.gen_range(-110.0..110.0),
                    rng.gen_range(-70.0..90.0),
                    rng.gen_range(-140.0..90.0),
                ],
                sigma_mm: rng.gen_range(35.0..70.0),
                amplitude: [0.3 * gauss(rng), 0.3 * gauss(rng), 0.3 * gauss(rng)],
            })
            .collect();
        Self {
            center: [0.0, 10.0, -30.0],
            rotation,
            translation,
            breathing_mm,
            bumps,
        }
    }

    /// The same motion with every component multiplied by `s`.
    pub fn scaled(&self, s: f64) -> Self {
        Self {
            center: self.center,
            rotation: scale(self.rotation, s),
            translation: scale(self.translation, s),
            breathing_mm: self.breathing_mm * s,
            bumps: self
                .bumps
                .iter()
                .map(|b| Bump {
                    amplitude: scale(b.amplitude, s),
                    ..*b
                })
                .collect(),
        }
    }

    /// Displacement `u(p)` in mm at anatomical point `p`.
    pub fn displacement(&self, p: V3) -> V3 {
        let rel = sub(p, self.center);
        let mut u = add(sub(rotate(rel, self.rotation), rel), self.translation);
        // Breathing: the diaphragm moves craniocaudally, most at the bases, and the anterior
        // chest wall a little forward with it.
        let base = smoothstep(100.0, -120.0, p[2]);
        u[2] -= self.breathing_mm * base;
        u[1] += 0.25 * self.breathing_mm * base * smoothstep(40.0, -100.0, p[1]);
        for b in &self.bumps {
            let d = sub(p, b.center);
            let g = (-(d[0] * d[0] + d[1] * d[1] + d[2] * d[2]) / (2.0 * b.sigma_mm * b.sigma_mm))
                .exp();
            u = add(u, scale(b.amplitude, g));
        }
        u
    }

    /// The point `p` with `p + u(p) = q` (fixed-point iteration; converges for smooth,
    /// moderate fields).
    pub fn inverse(&self, q: V3) -> V3 {
        let mut p = sub(q, self.displacement(q));
        for _ in 0..12 {
            let next = sub(q, self.displacement(p));
            let step = norm(sub(next, p));
            p = next;
            if step < 1e-4 {
                break;
            }
        }
        p
    }

    pub fn is_identity(&self) -> bool {
        self.rotation == [0.0; 3]
            && self.translation == [0.0; 3]
            && self.breathing_mm == 0.0
            && self.bumps.iter().all(|b| b.amplitude == [0.0; 3])
    }
}

/// Maps voxel indices of the phantom grid to anatomical points and back.
#[derive(Debug, Clone, Copy)]
pub struct Frame {
    pub geometry: Geometry,
    /// Physical (LPS) position of the anatomical origin.
    pub anatomy_origin: V3,
}

impl Frame {
    pub fn point(&self, i: usize, j: usize, k: usize) -> V3 {
        sub(
            self.geometry.index_to_point([i as f64, j as f64, k as f64]),
            self.anatomy_origin,
        )
    }
    pub fn index(&self, p: V3) -> V3 {
        self.geometry.point_to_index(add(p, self.anatomy_origin))
    }
}

/// The displacement field on a grid of shape `[z, y, x]`, components `[x, y, z]` in mm.
pub fn displacement_field(motion: &Motion, frame: &Frame, shape: [usize; 3]) -> [Array3<f32>; 3] {
    let mut comps: [Array3<f32>; 3] = std::array::from_fn(|_| Array3::zeros(shape));
    let [cx, cy, cz] = &mut comps;
    Zip::indexed(cx)
        .and(cy)
        .and(cz)
        .par_for_each(|(k, j, i), ux, uy, uz| {
            let u = motion.displacement(frame.point(i, j, k));
            *ux = u[0] as f32;
            *uy = u[1] as f32;
            *uz = u[2] as f32;
        });
    comps
}

/// Largest displacement magnitude over the voxels where `mask` is set.
pub fn max_magnitude(field: &[Array3<f32>; 3], mask: &Array3<u8>) -> f64 {
    let mut m = 0.0f64;
    Zip::from(&field[0])
        .and(&field[1])
        .and(&field[2])
        .and(mask)
        .for_each(|&x, &y, &z, &b| {
            if b != 0 {
                m = m.max(((x * x + y * y + z * z) as f64).sqrt());
            }
        });
    m
}

/// Trilinear interpolation of `data` at continuous index `(i, j, k)`, clamped to the edge.
pub fn trilinear(data: &Array3<f32>, idx: V3) -> f32 {
    let (nz, ny, nx) = data.dim();
    let dims = [nx, ny, nz];
    let mut i0 = [0usize; 3];
    let mut f = [0f32; 3];
    for a in 0..3 {
        let x = idx[a].clamp(0.0, (dims[a] - 1) as f64);
        let fl = x.floor().min((dims[a].saturating_sub(2)) as f64).max(0.0);
        i0[a] = fl as usize;
        f[a] = (x - fl) as f32;
    }
    let at = |di: usize, dj: usize, dk: usize| {
        let i = (i0[0] + di).min(nx - 1);
        let j = (i0[1] + dj).min(ny - 1);
        let k = (i0[2] + dk).min(nz - 1);
        data[[k, j, i]]
    };
    let l = |a: f32, b: f32, t: f32| a + (b - a) * t;
    let c00 = l(at(0, 0, 0), at(1, 0, 0), f[0]);
    let c10 = l(at(0, 1, 0), at(1, 1, 0), f[0]);
    let c01 = l(at(0, 0, 1), at(1, 0, 1), f[0]);
    let c11 = l(at(0, 1, 1), at(1, 1, 1), f[0]);
    l(l(c00, c10, f[1]), l(c01, c11, f[1]), f[2])
}

/// Renders `aligned` (on `frame`'s grid) as seen after `motion`: each output voxel `q`
/// takes the value at the inverse-mapped point.
pub fn warp(aligned: &Array3<f32>, motion: &Motion, frame: &Frame) -> Array3<f32> {
    let mut out = Array3::zeros(aligned.raw_dim());
    out.axis_iter_mut(Axis(0))
        .into_par_iter()
        .enumerate()
        .for_each(|(k, mut slice)| {
            Zip::indexed(&mut slice).for_each(|(j, i), v| {
                let p = motion.inverse(frame.point(i, j, k));
                *v = trilinear(aligned, frame.index(p));
            });
        });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn inverse_inverts() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let m = Motion::sample_unit(&mut rng).scaled(15.0);
        for p in [[0.0, 0.0, 0.0], [100.0, -50.0, -120.0], [-80.0, 60.0, 80.0]] {
            let q = add(p, m.displacement(p));
            let back = m.inverse(q);
            assert!(norm(sub(back, p)) < 1e-3, "{p:?} -> {back:?}");
        }
    }

    #[test]
    fn trilinear_reproduces_linear_functions() {
        let a = Array3::from_shape_fn((4, 5, 6), |(k, j, i)| {
            (i as f32) + 2.0 * j as f32 - 3.0 * k as f32
        });
        let v = trilinear(&a, [2.25, 1.5, 0.75]);
        assert!((v - (2.25 + 3.0 - 2.25)).abs() < 1e-5);
        assert_eq!(trilinear(&a, [5.0, 4.0, 3.0]), a[[3, 4, 5]]);
    }
}
