//! The sample points of the rigid registration, the moving-image reads every similarity
//! shares, and normalised cross-correlation with its analytic gradient (Mattes mutual
//! information is in [`super::mattes`]).
//!
//! Normalised cross-correlation (NCC) suits CT–CT: both images are in HU, and the contrast
//! agent only brightens the blood. That lowers the maximum NCC and, where the enhanced
//! structures are large (heart, pulmonary trunk), pulls it a little off the true alignment
//! (0.2 mm / 0.13° on the contrast test of `tests/register_mattes.rs`; MI is 10x closer there).
//! Both are evaluated on a fixed set of sample points of the fixed image (voxels denser than a
//! threshold, i.e. the body, thinned to a maximum count), read from the moving image with
//! trilinear interpolation. Points that map outside the moving image read its edge (see
//! `sample_with_gradient`), unlike ITK, which drops them.
//!
//! The sums run over fixed-size chunks in parallel and are added in chunk order, so the result
//! is bit-for-bit the same whatever the thread count or scheduling.

use crate::resample::trilinear;
use crate::transform::{matvec3, Rigid3};
use crate::{Geometry, Volume};
use ndarray::ArrayView3;
use rayon::prelude::*;

/// Samples per parallel chunk (fixed, for determinism).
pub(super) const CHUNK: usize = 2048;

/// Sample points of the fixed image: physical position and value.
#[derive(Debug, Clone)]
pub struct Samples {
    pub points: Vec<[f64; 3]>,
    pub values: Vec<f32>,
}

impl Samples {
    /// Voxels of `fixed` above `threshold`, evenly thinned to at most `max_samples` (every
    /// `n / max`-th in scan order), each moved by a pseudo-random sub-voxel jitter (value read
    /// there by trilinear interpolation). Deterministic.
    ///
    /// The jitter matters: when both images share a grid, unjittered points sit exactly on the
    /// moving image's voxel centres at the identity, where interpolation does not blur the noise,
    /// and NCC gets a spurious kink there (ITK jitters its random samples for the same reason).
    pub fn from_fixed(fixed: &Volume, threshold: f32, max_samples: usize) -> Self {
        let g = fixed.geometry;
        let data = fixed.data.view();
        let dims = fixed.size_xyz();
        let candidates: Vec<(usize, usize, usize)> = fixed
            .data
            .indexed_iter()
            .filter(|(_, &v)| v > threshold)
            .map(|(i, _)| i)
            .collect();
        let n = candidates.len();
        let take = n.min(max_samples.max(1));
        let mut points = Vec::with_capacity(take);
        let mut values = Vec::with_capacity(take);
        for s in 0..take {
            let (k, j, i) = candidates[s * n / take];
            let jitter = jitter3(s as u64);
            let idx = [i as f64, j as f64, k as f64];
            let idx = [0, 1, 2].map(|a| (idx[a] + jitter[a]).clamp(0.0, (dims[a] - 1) as f64));
            points.push(g.index_to_point(idx));
            values.push(trilinear(&data, idx));
        }
        Self { points, values }
    }

    /// Every voxel centre of `fixed`, unjittered and unthinned, in scan order: the "all
    /// voxels" sampling of ITK (`SetMetricSamplingStrategy(NONE)`), for comparisons with it
    /// and for small images.
    pub fn every_voxel(fixed: &Volume) -> Self {
        let g = fixed.geometry;
        let (points, values) = fixed
            .data
            .indexed_iter()
            .map(|((k, j, i), &v)| (g.index_to_point([i as f64, j as f64, k as f64]), v))
            .unzip();
        Self { points, values }
    }

    /// Smallest and largest sample value (`None` when there are no samples).
    pub fn value_range(&self) -> Option<[f64; 2]> {
        let first = f64::from(*self.values.first()?);
        Some(self.values.iter().fold([first, first], |[lo, hi], &v| {
            let v = f64::from(v);
            [lo.min(v), hi.max(v)]
        }))
    }

    pub fn len(&self) -> usize {
        self.points.len()
    }

    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// Root-mean-square distance of the points from `center` (mm): the lever arm that turns an
    /// angle into a displacement, used to scale angles against translations.
    pub fn rms_radius(&self, center: [f64; 3]) -> f64 {
        if self.is_empty() {
            return 1.0;
        }
        let sum: f64 = self
            .points
            .iter()
            .map(|p| (0..3).map(|a| (p[a] - center[a]).powi(2)).sum::<f64>())
            .sum();
        (sum / self.len() as f64).sqrt().max(1.0)
    }
}

/// Trilinear value and index-space gradient at a continuous index, extended beyond the image
/// by repeating its edge voxels (the gradient across a clamped axis is 0); `None` for a NaN
/// index.
///
/// Extending instead of dropping points that leave the image keeps the sample set fixed, so the
/// similarity is a continuous function of the transform: with dropping, an anatomy cut by the
/// first and last slices (every CT) loses a whole slice of samples as soon as the transform
/// tilts by 1e-9 rad, and the optimiser sees a cliff at the identity.
#[inline]
fn sample_with_gradient(data: &ArrayView3<f32>, idx: [f64; 3]) -> Option<(f64, [f64; 3])> {
    let (nz, ny, nx) = data.dim();
    let n = [nx, ny, nz];
    let mut b = [0usize; 3];
    let mut w = [0.0f64; 3];
    let mut inside = [true; 3];
    for a in 0..3 {
        if idx[a].is_nan() {
            return None;
        }
        let last = (n[a] - 1) as f64;
        if n[a] == 1 || idx[a] <= 0.0 || idx[a] >= last {
            // clamped: read the edge voxel (pairs with itself)
            inside[a] = false;
            b[a] = if idx[a] <= 0.0 || n[a] == 1 {
                0
            } else {
                n[a] - 2
            };
            w[a] = if idx[a] <= 0.0 || n[a] == 1 { 0.0 } else { 1.0 };
            continue;
        }
        let f = idx[a].floor();
        b[a] = f as usize;
        w[a] = idx[a] - f;
    }
    let step = [0, 1, 2].map(|a| usize::from(n[a] > 1));
    let v = |dx: usize, dy: usize, dz: usize| {
        f64::from(
            data[[
                b[2] + dz * step[2],
                b[1] + dy * step[1],
                b[0] + dx * step[0],
            ]],
        )
    };
    let (v000, v100, v010, v110) = (v(0, 0, 0), v(1, 0, 0), v(0, 1, 0), v(1, 1, 0));
    let (v001, v101, v011, v111) = (v(0, 0, 1), v(1, 0, 1), v(0, 1, 1), v(1, 1, 1));
    let [wx, wy, wz] = w;
    let c00 = v000 + (v100 - v000) * wx;
    let c10 = v010 + (v110 - v010) * wx;
    let c01 = v001 + (v101 - v001) * wx;
    let c11 = v011 + (v111 - v011) * wx;
    let c0 = c00 + (c10 - c00) * wy;
    let c1 = c01 + (c11 - c01) * wy;
    let value = c0 + (c1 - c0) * wz;
    // d/dx
    let gx0 = (v100 - v000) * (1.0 - wy) + (v110 - v010) * wy;
    let gx1 = (v101 - v001) * (1.0 - wy) + (v111 - v011) * wy;
    let gx = gx0 * (1.0 - wz) + gx1 * wz;
    let gy = (c10 - c00) * (1.0 - wz) + (c11 - c01) * wz;
    let gz = c1 - c0;
    let g = [gx, gy, gz];
    Some((value, [0, 1, 2].map(|a| if inside[a] { g[a] } else { 0.0 })))
}

/// Three numbers in `[-0.45, 0.45)` from a counter (splitmix64): a reproducible sub-voxel
/// offset.
fn jitter3(counter: u64) -> [f64; 3] {
    let mut state = counter.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    [0, 1, 2].map(|_| {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        ((z >> 11) as f64 / (1u64 << 53) as f64 - 0.5) * 0.9
    })
}

/// Running sums of one chunk.
#[derive(Debug, Clone, Copy, Default)]
struct Sums {
    n: f64,
    sf: f64,
    sm: f64,
    sff: f64,
    smm: f64,
    sfm: f64,
    /// Σ f·dm/dθ, Σ dm/dθ, Σ m·dm/dθ
    a: [f64; 6],
    b: [f64; 6],
    c: [f64; 6],
}

impl Sums {
    fn add(&mut self, o: &Sums) {
        self.n += o.n;
        self.sf += o.sf;
        self.sm += o.sm;
        self.sff += o.sff;
        self.smm += o.smm;
        self.sfm += o.sfm;
        for p in 0..6 {
            self.a[p] += o.a[p];
            self.b[p] += o.b[p];
            self.c[p] += o.c[p];
        }
    }
}

/// Reads the moving image at transformed sample points: `T(p)` mapped to a continuous moving
/// index, the trilinear value there and, on request, its derivative with respect to
/// `(angle_x, angle_y, angle_z, t_x, t_y, t_z)`. Shared by every similarity measure, so they
/// all see the same interpolation and the same edge extension.
pub(super) struct MovingMap<'a> {
    data: ArrayView3<'a, f32>,
    r: [[f64; 3]; 3],
    dr: [[[f64; 3]; 3]; 3],
    off: [f64; 3],
    center: [f64; 3],
    origin: [f64; 3],
    /// physical point -> moving index: `j = S^-1 D^T (q - o)`
    inv: [[f64; 3]; 3],
}

impl<'a> MovingMap<'a> {
    pub(super) fn new(moving: &'a Volume, transform: &Rigid3) -> Self {
        let g: &Geometry = &moving.geometry;
        let mut inv = [[0.0; 3]; 3];
        for (row, inv_row) in inv.iter_mut().enumerate() {
            for (col, v) in inv_row.iter_mut().enumerate() {
                *v = g.direction[col][row] / g.spacing[row];
            }
        }
        Self {
            data: moving.data.view(),
            r: transform.matrix(),
            dr: transform.matrix_derivatives(),
            off: transform.offset(),
            center: transform.center,
            origin: g.origin,
            inv,
        }
    }

    /// Moving value at `T(p)` and, when `with_gradient`, `dm/dθ` (zeros otherwise); `None`
    /// for a point that maps to NaN.
    #[inline]
    pub(super) fn sample(&self, p: &[f64; 3], with_gradient: bool) -> Option<(f64, [f64; 6])> {
        let rp = matvec3(&self.r, *p);
        let o = self.origin;
        let q = [
            rp[0] + self.off[0],
            rp[1] + self.off[1],
            rp[2] + self.off[2],
        ];
        let idx = matvec3(&self.inv, [q[0] - o[0], q[1] - o[1], q[2] - o[2]]);
        let (m, gi) = sample_with_gradient(&self.data, idx)?;
        let mut dm = [0.0; 6];
        if with_gradient {
            // physical gradient: (d idx / d q)^T grad_idx = inv^T gi
            let inv = &self.inv;
            let gp = [0, 1, 2].map(|a| (0..3).map(|k| inv[k][a] * gi[k]).sum::<f64>());
            let c = self.center;
            let pc = [p[0] - c[0], p[1] - c[1], p[2] - c[2]];
            for (a, dra) in self.dr.iter().enumerate() {
                let dq = matvec3(dra, pc);
                dm[a] = gp[0] * dq[0] + gp[1] * dq[1] + gp[2] * dq[2];
            }
            dm[3..].copy_from_slice(&gp);
        }
        Some((m, dm))
    }
}

/// NCC between the samples and the moving image under `transform`, with its gradient with
/// respect to `(angle_x, angle_y, angle_z, t_x, t_y, t_z)` when `with_gradient`.
/// Returns `(ncc, gradient, samples used)`; `ncc` is 0 when fewer than 8 samples land inside
/// the moving image or either side is constant.
pub fn ncc(
    samples: &Samples,
    moving: &Volume,
    transform: &Rigid3,
    with_gradient: bool,
) -> (f64, [f64; 6], usize) {
    let map = MovingMap::new(moving, transform);
    let partial: Vec<Sums> = samples
        .points
        .par_chunks(CHUNK)
        .zip(samples.values.par_chunks(CHUNK))
        .map(|(pts, vals)| {
            let mut s = Sums::default();
            for (p, &f) in pts.iter().zip(vals) {
                let Some((m, dm)) = map.sample(p, with_gradient) else {
                    continue;
                };
                let f = f64::from(f);
                s.n += 1.0;
                s.sf += f;
                s.sm += m;
                s.sff += f * f;
                s.smm += m * m;
                s.sfm += f * m;
                if with_gradient {
                    for (k, &d) in dm.iter().enumerate() {
                        s.a[k] += f * d;
                        s.b[k] += d;
                        s.c[k] += m * d;
                    }
                }
            }
            s
        })
        .collect();
    let mut t = Sums::default();
    for p in &partial {
        t.add(p);
    }
    let used = t.n as usize;
    if used < 8 {
        return (0.0, [0.0; 6], used);
    }
    let (mf, mm) = (t.sf / t.n, t.sm / t.n);
    let cov = t.sfm - t.sf * mm;
    let vf = t.sff - t.sf * mf;
    let vm = t.smm - t.sm * mm;
    if vf <= 1e-12 || vm <= 1e-12 {
        return (0.0, [0.0; 6], used);
    }
    let denom = (vf * vm).sqrt();
    let value = cov / denom;
    let mut grad = [0.0; 6];
    if with_gradient {
        for (k, g) in grad.iter_mut().enumerate() {
            let dcov = t.a[k] - mf * t.b[k];
            let dvm_half = t.c[k] - mm * t.b[k];
            *g = (dcov - cov / vm * dvm_half) / denom;
        }
    }
    (value, grad, used)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array3;

    fn blob() -> Volume {
        let data = Array3::from_shape_fn((20, 22, 24), |(z, y, x)| {
            let (dx, dy, dz) = (x as f64 - 11.0, y as f64 - 10.5, z as f64 - 9.0);
            (500.0 * (-(dx * dx / 30.0 + dy * dy / 20.0 + dz * dz / 15.0)).exp() + 3.0 * x as f64)
                as f32
        });
        Volume::new(data, Geometry::identity([1.5, 1.2, 2.0])).unwrap()
    }

    #[test]
    fn ncc_is_one_at_identity_and_gradient_matches_finite_differences() {
        let v = blob();
        let samples = Samples::from_fixed(&v, 10.0, 100_000);
        let center = crate::resample::Grid::of(&v).center();
        let id = Rigid3::new(center, [0.0; 3], [0.0; 3]);
        let (val, _, used) = ncc(&samples, &v, &id, false);
        assert!(used > 1000);
        assert!((val - 1.0).abs() < 1e-9, "{val}");
        let t = Rigid3::new(center, [0.03, -0.02, 0.05], [1.1, -0.7, 0.4]);
        let (_, grad, _) = ncc(&samples, &v, &t, true);
        for (k, &gk) in grad.iter().enumerate() {
            let h = if k < 3 { 1e-5 } else { 1e-4 };
            let (tp, tm) = (t.nudged(k, h), t.nudged(k, -h));
            let fd =
                (ncc(&samples, &v, &tp, false).0 - ncc(&samples, &v, &tm, false).0) / (2.0 * h);
            assert!(
                (fd - gk).abs() < 1e-3 * fd.abs().max(1e-2),
                "param {k}: analytic {gk} vs finite difference {fd}"
            );
        }
    }
}
