//! Errors of the metrics crate: inputs that cannot be scored, never a panic.

/// Result alias of this crate.
pub type Result<T, E = MetricsError> = std::result::Result<T, E>;

/// Why a metric could not be computed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MetricsError {
    /// Two arrays that must lie on the same grid have different shapes.
    #[error("{what}: shapes differ, {left:?} vs {right:?}")]
    ShapeMismatch {
        what: &'static str,
        left: Vec<usize>,
        right: Vec<usize>,
    },
    /// The mask selects no voxel (or, for SSIM, no voxel of the region where the window fits).
    #[error("{0}: the mask selects no voxel")]
    EmptyMask(&'static str),
    /// An image is smaller than the SSIM window along some axis (scikit-image refuses it too).
    #[error("SSIM: image shape {shape:?} is smaller than the {win}-voxel window along some axis")]
    TooSmall { shape: Vec<usize>, win: usize },
    /// The data range (PSNR, SSIM) must be finite and positive.
    #[error("data range must be finite and positive, got {0}")]
    InvalidDataRange(f64),
    /// A HU window with `lo >= hi` or a non-finite bound.
    #[error("HU window must satisfy lo < hi (both finite), got [{lo}, {hi}]")]
    InvalidWindow { lo: f32, hi: f32 },
}

/// Checks that two shapes are equal.
pub(crate) fn same_shape(what: &'static str, left: &[usize], right: &[usize]) -> Result<()> {
    if left == right {
        Ok(())
    } else {
        Err(MetricsError::ShapeMismatch {
            what,
            left: left.to_vec(),
            right: right.to_vec(),
        })
    }
}

/// Checks a PSNR/SSIM data range.
pub(crate) fn check_range(data_range: f64) -> Result<()> {
    if data_range.is_finite() && data_range > 0.0 {
        Ok(())
    } else {
        Err(MetricsError::InvalidDataRange(data_range))
    }
}
