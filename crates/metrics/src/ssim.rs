//! The one definition of SSIM used by the metric (this crate) and the loss (model crate).
//!
//! It reproduces scikit-image's
//! `structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
//! data_range=R)`: Gaussian weights with sigma 1.5 truncated at 3.5 sigma (an 11-tap window),
//! `C1 = (K1 R)^2`, `C2 = (K2 R)^2` with `K1 = 0.01`, `K2 = 0.03`, population (not sample)
//! covariance, and the mean SSIM taken over the pixels whose whole window lies inside the
//! image (scikit-image filters with reflection, then crops `(win - 1) / 2` pixels from every
//! border before averaging, so the padding never reaches the averaged pixels). An
//! implementation can therefore compute the local statistics with a *valid* (unpadded)
//! separable convolution and average that.
//!
//! The metric itself (2D, 3D, masked) lives in [`compute`] and is re-exported here.

mod compute;

pub(crate) use compute::ssim_scores_offset;
pub use compute::{
    map_offset, ssim_2d, ssim_2d_masked, ssim_3d, ssim_3d_masked, ssim_map_2d, ssim_map_3d,
    SsimMode, SsimScores,
};

use serde::{Deserialize, Serialize};

/// SSIM settings. `Default` is the project convention (DESIGN.md, "SSIM").
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SsimParams {
    /// Standard deviation of the Gaussian window, pixels.
    pub sigma: f64,
    /// The window is truncated at `truncate * sigma` (scikit-image uses 3.5).
    pub truncate: f64,
    pub k1: f64,
    pub k2: f64,
}

impl Default for SsimParams {
    fn default() -> Self {
        Self {
            sigma: 1.5,
            truncate: 3.5,
            k1: 0.01,
            k2: 0.03,
        }
    }
}

impl SsimParams {
    /// Window width in pixels: `2 * floor(truncate * sigma + 0.5) + 1` (11 for the defaults).
    pub fn win_size(&self) -> usize {
        2 * (self.truncate * self.sigma + 0.5).floor() as usize + 1
    }

    /// The normalised 1D Gaussian window (sums to 1); the 2D window is its outer product.
    pub fn gaussian_window(&self) -> Vec<f64> {
        let n = self.win_size();
        let r = (n / 2) as f64;
        let w: Vec<f64> = (0..n)
            .map(|i| {
                let x = i as f64 - r;
                (-0.5 * x * x / (self.sigma * self.sigma)).exp()
            })
            .collect();
        let s: f64 = w.iter().sum();
        w.into_iter().map(|v| v / s).collect()
    }

    /// Stabilising constants `(C1, C2)` for the given data range.
    pub fn constants(&self, data_range: f64) -> (f64, f64) {
        (
            (self.k1 * data_range).powi(2),
            (self.k2 * data_range).powi(2),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_window_is_11_taps_symmetric_and_normalised() {
        let p = SsimParams::default();
        let w = p.gaussian_window();
        assert_eq!(w.len(), 11);
        assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        for i in 0..5 {
            assert!((w[i] - w[10 - i]).abs() < 1e-15);
            assert!(w[i] < w[i + 1]);
        }
        let (c1, c2) = p.constants(2.0);
        assert!((c1 - 4e-4).abs() < 1e-15 && (c2 - 3.6e-3).abs() < 1e-15);
    }
}
