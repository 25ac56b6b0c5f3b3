//! The HU window that CT scores are computed in.
//!
//! Scores of synthetic CT are only comparable with a fixed intensity range: PSNR and SSIM need
//! a data range, and values outside what a scanner reconstructs (padding at -2048 or -3024 HU
//! outside the field of view, metal above 3071 HU) would otherwise dominate the errors. Both
//! the prediction and the target are therefore clipped to one window before scoring, and the
//! window's width is the data range of PSNR and SSIM.
//!
//! The default is [-1024, 3071] HU (range 4095), the 12-bit range of CT storage
//! (DESIGN.md). SynthRAD 2023 uses [-1024, 3000] (range 4024); pass that window to reproduce
//! its numbers.

use ndarray::{Array, ArrayView, Dimension, Zip};
use serde::{Deserialize, Serialize};

use crate::error::{MetricsError, Result};

/// The HU window scores are computed in: a closed interval `[lo, hi]` both volumes are clipped
/// to, whose width is the data range of PSNR and SSIM (not to be confused with the dataset's
/// `IntensityWindow`, which maps HU to the network's [-1, 1]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoreWindow {
    pub lo: f32,
    pub hi: f32,
}

impl Default for ScoreWindow {
    fn default() -> Self {
        Self {
            lo: -1024.0,
            hi: 3071.0,
        }
    }
}

impl ScoreWindow {
    /// A window, checking `lo < hi` and both finite.
    pub fn new(lo: f32, hi: f32) -> Result<Self> {
        let w = Self { lo, hi };
        w.validate()?;
        Ok(w)
    }

    /// Checks `lo < hi` and both finite (a deserialized window is not checked by serde).
    pub fn validate(&self) -> Result<()> {
        if self.lo.is_finite() && self.hi.is_finite() && self.lo < self.hi {
            Ok(())
        } else {
            Err(MetricsError::InvalidWindow {
                lo: self.lo,
                hi: self.hi,
            })
        }
    }

    /// Width `hi - lo`: the data range of PSNR and SSIM.
    pub fn range(&self) -> f64 {
        f64::from(self.hi) - f64::from(self.lo)
    }

    /// Clips one value (NaN stays NaN, so that it shows in the scores rather than hides).
    pub fn clip_value(&self, v: f32) -> f32 {
        v.clamp(self.lo, self.hi)
    }

    /// A clipped copy of `a`, computed in parallel.
    pub fn clip<D: Dimension>(&self, a: ArrayView<'_, f32, D>) -> Array<f32, D> {
        Zip::from(&a).par_map_collect(|&v| self.clip_value(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn clips_to_the_window_and_reports_its_range() {
        let w = ScoreWindow::default();
        assert_eq!(w.range(), 4095.0);
        let a = array![[-3024.0f32, -1024.0, 0.5], [3071.0, 4000.0, f32::NAN]];
        let c = w.clip(a.view());
        assert_eq!(c[[0, 0]], -1024.0);
        assert_eq!(c[[0, 2]], 0.5);
        assert_eq!(c[[1, 1]], 3071.0);
        assert!(c[[1, 2]].is_nan());
        assert!(ScoreWindow::new(10.0, 10.0).is_err());
        assert!(ScoreWindow::new(f32::NEG_INFINITY, 10.0).is_err());
    }
}
