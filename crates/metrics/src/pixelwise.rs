//! Voxel-wise error metrics: MAE, MSE, PSNR and the signed mean error, optionally inside a mask.
//!
//! All come from one pass that accumulates `p - t`, `|p - t|`, `(p - t)^2` and `t` in `f64`
//! ([`ErrorStats`]), so scoring a region costs one read of the two volumes. The pass runs in
//! parallel over the first axis (axial slices of a `[z, y, x]` volume) and sums the partial
//! results in slice order, so the result does not depend on the number of threads.
//!
//! Values are taken as given: clipping to a HU window (see [`crate::ScoreWindow`]) is the
//! caller's choice, made once per volume rather than once per metric.

use ndarray::{ArrayView, Axis, Dimension, Slice, Zip};
use rayon::prelude::*;

use crate::error::{check_range, same_shape, MetricsError, Result};

/// Sums of absolute and squared differences over the scored voxels.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ErrorStats {
    /// Number of voxels scored.
    pub n: u64,
    /// `sum |pred - target|`.
    pub sum_abs: f64,
    /// `sum (pred - target)^2`.
    pub sum_sq: f64,
    /// `sum (pred - target)`.
    pub sum: f64,
    /// `sum target`.
    pub sum_target: f64,
}

impl ErrorStats {
    /// Combines two disjoint sets of voxels.
    pub fn merge(self, other: Self) -> Self {
        Self {
            n: self.n + other.n,
            sum_abs: self.sum_abs + other.sum_abs,
            sum_sq: self.sum_sq + other.sum_sq,
            sum: self.sum + other.sum,
            sum_target: self.sum_target + other.sum_target,
        }
    }

    /// Mean (signed) error `mean(pred - target)`: the bias, e.g. how far short of the target's
    /// enhancement a synthetic CTPA falls inside the vessels; `None` when no voxel was scored.
    pub fn me(&self) -> Option<f64> {
        (self.n > 0).then(|| self.sum / self.n as f64)
    }

    /// The target's mean over the scored voxels; `None` when no voxel was scored.
    pub fn target_mean(&self) -> Option<f64> {
        (self.n > 0).then(|| self.sum_target / self.n as f64)
    }

    /// Mean absolute error; `None` when no voxel was scored.
    pub fn mae(&self) -> Option<f64> {
        (self.n > 0).then(|| self.sum_abs / self.n as f64)
    }

    /// Mean squared error; `None` when no voxel was scored.
    pub fn mse(&self) -> Option<f64> {
        (self.n > 0).then(|| self.sum_sq / self.n as f64)
    }

    /// PSNR in dB for `data_range` (`+inf` when the images agree exactly, as scikit-image);
    /// `None` when no voxel was scored.
    pub fn psnr(&self, data_range: f64) -> Option<f64> {
        self.mse().map(|mse| psnr_from_mse(mse, data_range))
    }
}

/// `10 log10(R^2 / MSE)`, the definition of scikit-image's `peak_signal_noise_ratio` and
/// MONAI's `PSNRMetric`. `MSE = 0` gives `+inf`.
pub fn psnr_from_mse(mse: f64, data_range: f64) -> f64 {
    10.0 * (data_range * data_range / mse).log10()
}

/// Accumulates [`ErrorStats`] of `pred - target` over the voxels where `mask` is non-zero (all
/// voxels without a mask).
///
/// # Errors
/// Shapes differ.
pub fn error_stats<D: Dimension>(
    pred: ArrayView<'_, f32, D>,
    target: ArrayView<'_, f32, D>,
    mask: Option<ArrayView<'_, u8, D>>,
) -> Result<ErrorStats> {
    same_shape("prediction vs target", pred.shape(), target.shape())?;
    if let Some(m) = &mask {
        same_shape("mask vs target", m.shape(), target.shape())?;
    }
    let stats = if pred.ndim() >= 2 && pred.len_of(Axis(0)) > 1 {
        // One task per outer slice; ordered reduction keeps the sum deterministic.
        let parts: Vec<ErrorStats> = (0..pred.len_of(Axis(0)))
            .into_par_iter()
            .map(|i| {
                let slab = Slice::from(i..i + 1);
                fold_serial(
                    pred.slice_axis(Axis(0), slab),
                    target.slice_axis(Axis(0), slab),
                    mask.as_ref().map(|m| m.slice_axis(Axis(0), slab)),
                )
            })
            .collect();
        parts
            .into_iter()
            .fold(ErrorStats::default(), ErrorStats::merge)
    } else {
        fold_serial(pred, target, mask)
    };
    tracing::trace!(n = stats.n, sum_abs = stats.sum_abs, "error stats");
    Ok(stats)
}

fn fold_serial<D: Dimension>(
    pred: ArrayView<'_, f32, D>,
    target: ArrayView<'_, f32, D>,
    mask: Option<ArrayView<'_, u8, D>>,
) -> ErrorStats {
    let mut s = ErrorStats::default();
    let mut add = |p: f32, t: f32| {
        let d = f64::from(p) - f64::from(t);
        s.n += 1;
        s.sum_abs += d.abs();
        s.sum_sq += d * d;
        s.sum += d;
        s.sum_target += f64::from(t);
    };
    match mask {
        Some(m) => Zip::from(&pred)
            .and(&target)
            .and(&m)
            .for_each(|&p, &t, &m| {
                if m != 0 {
                    add(p, t)
                }
            }),
        None => Zip::from(&pred).and(&target).for_each(|&p, &t| add(p, t)),
    }
    s
}

/// Mean absolute error `mean |pred - target|` over the mask (in the inputs' unit: HU).
///
/// # Errors
/// Shapes differ, or the mask is empty.
pub fn mae<D: Dimension>(
    pred: ArrayView<'_, f32, D>,
    target: ArrayView<'_, f32, D>,
    mask: Option<ArrayView<'_, u8, D>>,
) -> Result<f64> {
    error_stats(pred, target, mask)?
        .mae()
        .ok_or(MetricsError::EmptyMask("MAE"))
}

/// Mean squared error over the mask.
///
/// # Errors
/// Shapes differ, or the mask is empty.
pub fn mse<D: Dimension>(
    pred: ArrayView<'_, f32, D>,
    target: ArrayView<'_, f32, D>,
    mask: Option<ArrayView<'_, u8, D>>,
) -> Result<f64> {
    error_stats(pred, target, mask)?
        .mse()
        .ok_or(MetricsError::EmptyMask("MSE"))
}

/// Peak signal-to-noise ratio in dB over the mask, `10 log10(data_range^2 / MSE)`.
///
/// The data range is explicit (MONAI requires it too): for CT in HU use the width of the HU
/// window the values were clipped to ([`crate::ScoreWindow::range`], 4095 for [-1024, 3071]);
/// deriving it from the data would make scores incomparable between cases. Equals
/// `skimage.metrics.peak_signal_noise_ratio(target[mask], pred[mask], data_range=R)`.
///
/// # Errors
/// Shapes differ, the mask is empty, or the data range is not finite and positive.
pub fn psnr<D: Dimension>(
    pred: ArrayView<'_, f32, D>,
    target: ArrayView<'_, f32, D>,
    mask: Option<ArrayView<'_, u8, D>>,
    data_range: f64,
) -> Result<f64> {
    check_range(data_range)?;
    error_stats(pred, target, mask)?
        .psnr(data_range)
        .ok_or(MetricsError::EmptyMask("PSNR"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array2, Array3};

    #[test]
    fn constant_offset_gives_offset_as_mae_and_known_psnr() {
        let t = Array3::from_shape_fn((3, 4, 5), |(z, y, x)| (z * 100 + y * 10 + x) as f32 - 500.0);
        let p = t.mapv(|v| v + 25.0);
        assert_eq!(mae(p.view(), t.view(), None).unwrap(), 25.0);
        assert_eq!(mse(p.view(), t.view(), None).unwrap(), 625.0);
        // MSE 625 with range 4095: 10 log10(4095^2 / 625).
        let want = 10.0 * (4095.0f64 * 4095.0 / 625.0).log10();
        assert!((psnr(p.view(), t.view(), None, 4095.0).unwrap() - want).abs() < 1e-12);
        // 20 log10(R) - 10 log10(MSE) by hand: 72.245079 - 27.958800 = 44.286279.
        assert!((want - 44.286_279).abs() < 1e-5, "{want}");
    }

    #[test]
    fn mask_ignores_outside_voxels() {
        let t = Array2::<f32>::zeros((4, 4));
        let mut p = t.clone();
        let mut m = Array2::<u8>::zeros((4, 4));
        p[[0, 0]] = 1000.0; // outside the mask: must not count
        p[[1, 1]] = 10.0;
        p[[2, 2]] = -30.0;
        m[[1, 1]] = 1;
        m[[2, 2]] = 7; // any non-zero value is inside
        m[[3, 3]] = 1;
        let s = error_stats(p.view(), t.view(), Some(m.view())).unwrap();
        assert_eq!(s.n, 3);
        assert_eq!(s.mae(), Some(40.0 / 3.0));
        assert_eq!(s.mse(), Some(1000.0 / 3.0));
    }

    #[test]
    fn identical_images_have_infinite_psnr_and_zero_mae() {
        let t = Array2::from_shape_fn((5, 6), |(y, x)| (y * x) as f32);
        assert_eq!(mae(t.view(), t.view(), None).unwrap(), 0.0);
        assert_eq!(psnr(t.view(), t.view(), None, 1.0).unwrap(), f64::INFINITY);
    }

    #[test]
    fn errors_are_typed() {
        let a = Array2::<f32>::zeros((4, 4));
        let b = Array2::<f32>::zeros((4, 5));
        assert!(matches!(
            mae(a.view(), b.view(), None),
            Err(MetricsError::ShapeMismatch { .. })
        ));
        let m = Array2::<u8>::zeros((4, 4));
        assert_eq!(
            mae(a.view(), a.view(), Some(m.view())),
            Err(MetricsError::EmptyMask("MAE"))
        );
        assert_eq!(
            psnr(a.view(), a.view(), None, 0.0),
            Err(MetricsError::InvalidDataRange(0.0))
        );
    }

    #[test]
    fn parallel_and_serial_paths_agree() {
        let t = Array3::from_shape_fn((7, 9, 11), |(z, y, x)| {
            ((z * 31 + y * 7 + x) % 13) as f32 * 1.7
        });
        let p = Array3::from_shape_fn((7, 9, 11), |(z, y, x)| {
            ((z + y * 3 + x * 5) % 17) as f32 * 0.9
        });
        let par = error_stats(p.view(), t.view(), None).unwrap();
        let flat_p = p.iter().copied().collect::<ndarray::Array1<f32>>();
        let flat_t = t.iter().copied().collect::<ndarray::Array1<f32>>();
        let ser = error_stats(flat_p.view(), flat_t.view(), None).unwrap();
        assert_eq!(par.n, ser.n);
        assert!((par.sum_abs - ser.sum_abs).abs() < 1e-9);
        assert!((par.sum_sq - ser.sum_sq).abs() < 1e-9);
    }
}
