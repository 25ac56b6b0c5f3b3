//! Mattes mutual information (Mattes et al. 2003, IEEE TMI 22(1)) and its analytic gradient.
//!
//! NCC assumes the two images are linearly related. A CTPA is not a linear function of its
//! NCCT: contrast lifts the blood in the right heart and pulmonary arteries by 250–400 HU and
//! leaves the rest alone, so NCC is pulled towards overlapping the bright vessels with whatever
//! the NCCT has there. Mutual information only asks that each fixed intensity predict the
//! moving one, which a contrast change does not break; it is the default of ITK
//! (`MattesMutualInformationImageToImageMetricv4`) and elastix (`AdvancedMattesMutualInformation`)
//! for CT registration.
//!
//! The joint histogram follows Mattes (and ITK, whose value this matches, see
//! `tests/register_mattes.rs`):
//!
//! - `bins` bins per axis over each image's intensity range, widened by two bins on both sides
//!   (ITK's padding) so that the Parzen window of an extreme value stays inside the histogram;
//!   the fixed range is that of the sample values, the moving range that of the whole moving
//!   image (what ITK does without masks);
//! - a zero-order (box) Parzen window on the fixed value, so the fixed marginal does not depend
//!   on the transform, and a cubic B-spline window on the moving value, so the histogram (and
//!   MI) is a differentiable function of the transform;
//! - `MI = Σ p(i, j) · log(p(i, j) / (p_f(i) · p_m(j)))`, bins below machine epsilon skipped.
//!
//! Because the B-spline window sums to one for every value, `Σ_j ∂p(i, j)/∂θ = 0`, and the
//! gradient reduces to `∂MI/∂θ = Σ ∂p(i, j)/∂θ · log(p(i, j) / p_m(j))` with
//! `∂p(i, j)/∂θ = -(1/(N·w_m)) Σ_x [i = bin_f(x)] β3'(j − t_m(x)) ∂m(T(x))/∂θ`, where `t_m` is
//! the moving value in bin units and `w_m` the moving bin width. The per-point moving gradient
//! is the same one NCC uses ([`super::metric`]).
//!
//! The sign is ours, not ITK's: this is MI itself (higher is better, like NCC, so one
//! optimiser maximises both); ITK's metric value is `-MI`.

use super::metric::{MovingMap, Samples, CHUNK};
use crate::transform::Rigid3;
use crate::{Result, Volume, VolumeError};
use rayon::prelude::*;
use tracing::trace;

/// Bins of padding on each side of the intensity range (ITK's `padding = 2`).
const PADDING: usize = 2;

/// Bins at or below this probability contribute nothing (ITK: machine epsilon).
const CLOSE_TO_ZERO: f64 = f64::EPSILON;

/// The intensity-to-bin mapping of both images, fixed for one registration level so that MI
/// is a smooth function of the transform.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Binning {
    /// Bins per axis, padding included.
    pub bins: usize,
    /// Bin width (HU) and the position of intensity 0 in bin units of each image:
    /// `t = value / width - normalized_min`.
    pub fixed_width: f64,
    pub fixed_normalized_min: f64,
    pub moving_width: f64,
    pub moving_normalized_min: f64,
}

impl Binning {
    /// The binning for intensity ranges `[min, max]` of the fixed and moving image, as ITK sets
    /// it: `bins - 4` bins span the range and two more pad each end.
    pub fn new(bins: usize, fixed_range: [f64; 2], moving_range: [f64; 2]) -> Result<Self> {
        if bins < 2 * PADDING + 1 {
            return Err(VolumeError::invalid(format!(
                "Mattes mutual information needs at least {} histogram bins, got {bins}",
                2 * PADDING + 1
            )));
        }
        let inner = (bins - 2 * PADDING) as f64;
        let axis = |[lo, hi]: [f64; 2], which: &str| {
            let width = (hi - lo) / inner;
            if !(width.is_finite() && width > 0.0) {
                return Err(VolumeError::invalid(format!(
                    "Mattes mutual information: the {which} intensities span [{lo}, {hi}]; a constant image carries no information"
                )));
            }
            Ok((width, lo / width - PADDING as f64))
        };
        let (fixed_width, fixed_normalized_min) = axis(fixed_range, "fixed")?;
        let (moving_width, moving_normalized_min) = axis(moving_range, "moving")?;
        Ok(Self {
            bins,
            fixed_width,
            fixed_normalized_min,
            moving_width,
            moving_normalized_min,
        })
    }

    /// The binning of one level: fixed range from the sample values, moving range from every
    /// voxel of the moving image (linear interpolation never leaves it).
    pub fn for_level(bins: usize, samples: &Samples, moving: &Volume) -> Result<Self> {
        let fixed = samples.value_range().ok_or_else(|| {
            VolumeError::invalid("Mattes mutual information: no fixed samples".to_owned())
        })?;
        let moving_range =
            moving
                .data
                .iter()
                .fold([f64::INFINITY, f64::NEG_INFINITY], |[lo, hi], &v| {
                    let v = f64::from(v);
                    [lo.min(v), hi.max(v)]
                });
        Self::new(bins, fixed, moving_range)
    }

    /// Central bin of a value in bin units `t`: `floor(t)` kept within `[2, bins - 3]`, so
    /// the window's bins `[b - 1, b + 2]` stay inside the histogram.
    #[inline]
    fn central_bin(&self, t: f64) -> usize {
        (t.floor().max(PADDING as f64) as usize).min(self.bins - PADDING - 1)
    }

    #[inline]
    fn fixed_bin(&self, f: f64) -> usize {
        self.central_bin(f / self.fixed_width - self.fixed_normalized_min)
    }

    #[inline]
    fn moving_term(&self, m: f64) -> f64 {
        m / self.moving_width - self.moving_normalized_min
    }
}

/// Cubic B-spline `β3(u)`: the moving image's Parzen window (support `(-2, 2)`, sums to one
/// over integer shifts).
#[inline]
fn bspline3(u: f64) -> f64 {
    let a = u.abs();
    if a < 1.0 {
        (4.0 - 6.0 * a * a + 3.0 * a * a * a) / 6.0
    } else if a < 2.0 {
        let b = 2.0 - a;
        b * b * b / 6.0
    } else {
        0.0
    }
}

/// Derivative `β3'(u)`.
#[inline]
fn bspline3_derivative(u: f64) -> f64 {
    let a = u.abs();
    if a < 1.0 {
        -2.0 * u + 1.5 * u * a
    } else if a < 2.0 {
        let b = 2.0 - a;
        -0.5 * b * b * u.signum()
    } else {
        0.0
    }
}

/// One sample as the histogram sees it.
#[derive(Debug, Clone, Copy)]
struct Point {
    fixed_bin: usize,
    /// Moving value in bin units.
    moving_term: f64,
    /// `dm/dθ` (zeros without gradient).
    dm: [f64; 6],
}

/// Mattes MI between the samples and the moving image under `transform`, with its gradient
/// with respect to `(angle_x, angle_y, angle_z, t_x, t_y, t_z)` when `with_gradient`.
/// Returns `(mi, gradient, samples used)`; MI is in nats, `>= 0`, higher is better; it is 0
/// with a zero gradient when fewer than 8 samples could be read.
///
/// Deterministic: the histogram is filled in sample order and the gradient's chunk sums are
/// added in chunk order, whatever the thread count.
pub fn mattes_mi(
    samples: &Samples,
    moving: &Volume,
    transform: &Rigid3,
    binning: &Binning,
    with_gradient: bool,
) -> (f64, [f64; 6], usize) {
    let map = MovingMap::new(moving, transform);
    // 1. read the moving image at every sample (parallel, order kept)
    let points: Vec<Point> = samples
        .points
        .par_chunks(CHUNK)
        .zip(samples.values.par_chunks(CHUNK))
        .flat_map_iter(|(pts, vals)| {
            pts.iter().zip(vals).filter_map(|(p, &f)| {
                let (m, dm) = map.sample(p, with_gradient)?;
                Some(Point {
                    fixed_bin: binning.fixed_bin(f64::from(f)),
                    moving_term: binning.moving_term(m),
                    dm,
                })
            })
        })
        .collect();
    let used = points.len();
    if used < 8 {
        return (0.0, [0.0; 6], used);
    }

    // 2. joint histogram (box window on the fixed value, cubic B-spline on the moving value)
    let nb = binning.bins;
    let mut joint = vec![0.0f64; nb * nb]; // [fixed bin, moving bin]
    let mut fixed_marginal = vec![0.0f64; nb];
    for pt in &points {
        let b = binning.central_bin(pt.moving_term);
        let row = &mut joint[pt.fixed_bin * nb..(pt.fixed_bin + 1) * nb];
        for (j, cell) in row.iter_mut().enumerate().take(b + 3).skip(b - 1) {
            *cell += bspline3(j as f64 - pt.moving_term);
        }
        fixed_marginal[pt.fixed_bin] += 1.0;
    }
    let scale = 1.0 / used as f64;
    joint.iter_mut().for_each(|p| *p *= scale);
    fixed_marginal.iter_mut().for_each(|p| *p *= scale);
    let mut moving_marginal = vec![0.0f64; nb];
    for row in joint.chunks_exact(nb) {
        for (m, &p) in moving_marginal.iter_mut().zip(row) {
            *m += p;
        }
    }

    // 3. MI, and log(p / p_m) for the gradient
    let mut mi = 0.0;
    let mut log_ratio = vec![0.0f64; nb * nb];
    for (i, row) in joint.chunks_exact(nb).enumerate() {
        let pf = fixed_marginal[i];
        for (j, &p) in row.iter().enumerate() {
            let pm = moving_marginal[j];
            if !(p > CLOSE_TO_ZERO && pm > CLOSE_TO_ZERO) {
                continue;
            }
            let ratio = (p / pm).ln();
            log_ratio[i * nb + j] = ratio;
            if pf > CLOSE_TO_ZERO {
                mi += p * (ratio - pf.ln());
            }
        }
    }
    trace!(mi, used, "Mattes MI");
    if !with_gradient {
        return (mi, [0.0; 6], used);
    }

    // 4. gradient: Σ_x Σ_j log_ratio[i(x), j] · ∂β3(j - t(x))/∂θ, chunk sums in chunk order
    let partial: Vec<[f64; 6]> = points
        .par_chunks(CHUNK)
        .map(|chunk| {
            let mut g = [0.0f64; 6];
            for pt in chunk {
                let b = binning.central_bin(pt.moving_term);
                let row = &log_ratio[pt.fixed_bin * nb..(pt.fixed_bin + 1) * nb];
                // d β3(j - t)/dt = -β3'(j - t)
                let mut dmi_dt = 0.0;
                for (j, &l) in row.iter().enumerate().take(b + 3).skip(b - 1) {
                    dmi_dt -= bspline3_derivative(j as f64 - pt.moving_term) * l;
                }
                for (gk, d) in g.iter_mut().zip(pt.dm) {
                    *gk += dmi_dt * d;
                }
            }
            g
        })
        .collect();
    let mut grad = [0.0f64; 6];
    for g in &partial {
        for (a, b) in grad.iter_mut().zip(g) {
            *a += b;
        }
    }
    // dt/dm = 1 / width, and p carries 1 / N
    let factor = scale / binning.moving_width;
    (mi, grad.map(|g| g * factor), used)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Geometry;
    use ndarray::Array3;

    #[test]
    fn bspline_window_is_a_partition_of_unity_and_its_derivative_matches() {
        for k in 0..100 {
            let t = 2.0 + k as f64 * 0.173;
            let b = t.floor();
            let sum: f64 = (-1..=2).map(|d| bspline3(b + d as f64 - t)).sum();
            assert!((sum - 1.0).abs() < 1e-12, "{t}: {sum}");
        }
        for k in 0..80 {
            let u = -2.1 + k as f64 * 0.0531;
            let h = 1e-6;
            let fd = (bspline3(u + h) - bspline3(u - h)) / (2.0 * h);
            assert!((fd - bspline3_derivative(u)).abs() < 1e-6, "{u}");
        }
    }

    #[test]
    fn binning_pads_two_bins_and_rejects_constant_images() {
        let b = Binning::new(50, [-1000.0, 1300.0], [0.0, 46.0]).unwrap();
        assert!((b.fixed_width - 50.0).abs() < 1e-12);
        // the minimum falls at bin 2, the maximum at bin 48 (kept at 47 as a window centre)
        assert_eq!(b.fixed_bin(-1000.0), 2);
        assert_eq!(b.fixed_bin(1300.0), 47);
        assert!((b.moving_term(46.0) - 48.0).abs() < 1e-12);
        assert!(Binning::new(50, [5.0, 5.0], [0.0, 1.0]).is_err());
        assert!(Binning::new(4, [0.0, 1.0], [0.0, 1.0]).is_err());
    }

    #[test]
    fn mi_of_an_image_with_itself_is_positive_and_at_most_the_fixed_entropy() {
        // MI(A, A) <= H(A) (the B-spline window blurs the moving side) and > 0
        let data = Array3::from_shape_fn((6, 7, 8), |(z, y, x)| (x * 7 + y * 3 + z) as f32);
        let v = Volume::new(data, Geometry::identity([1.0; 3])).unwrap();
        let s = Samples::every_voxel(&v);
        let b = Binning::for_level(16, &s, &v).unwrap();
        let t = Rigid3::identity();
        let (mi, _, used) = mattes_mi(&s, &v, &t, &b, false);
        assert_eq!(used, 336);
        // fixed entropy from the box-window histogram
        let mut counts = [0.0; 16];
        for &f in &s.values {
            counts[b.fixed_bin(f64::from(f))] += 1.0;
        }
        let h: f64 = counts
            .iter()
            .filter(|&&c| c > 0.0)
            .map(|&c| {
                let p = c / used as f64;
                -p * p.ln()
            })
            .sum();
        assert!(mi > 0.5 * h && mi <= h + 1e-12, "MI {mi}, H {h}");
    }
}
