//! Image similarity metrics in HU: MAE, PSNR, SSIM, inside masks, with accumulators.
//!
//! - [`pixelwise`]: MAE, MSE, PSNR (explicit data range) on any-dimensional `ndarray` views,
//!   optionally inside a `u8` mask (non-zero = inside).
//! - [`ssim`]: SSIM matching scikit-image's `structural_similarity` with Gaussian weights, in
//!   2D and on volumes (3D window or per axial slice), whole and inside masks. Its
//!   [`SsimParams`] is the single definition of the window and constants, shared with the SSIM
//!   loss in the model crate.
//! - [`score`]: the project's convention for scoring a synthetic CT volume (HU window, which
//!   values are clipped, SSIM shift), several regions in one pass.
//! - [`accumulate`]: per-case values to mean, sd, median ([`Cumulative`], [`Summary`]).
//!
//! Pure functions, no deep-learning dependency; large volumes are processed slice-parallel
//! with rayon and deterministic reductions.

pub mod accumulate;
pub mod error;
pub mod pixelwise;
pub mod score;
pub mod ssim;
pub mod window;

pub use accumulate::{Cumulative, Summary};
pub use error::{MetricsError, Result};
pub use pixelwise::{error_stats, mae, mse, psnr, psnr_from_mse, ErrorStats};
pub use score::{score_regions, Metric, RegionScores, ScoreConfig};
pub use ssim::{
    ssim_2d, ssim_2d_masked, ssim_3d, ssim_3d_masked, ssim_map_2d, ssim_map_3d, SsimMode,
    SsimParams, SsimScores,
};
pub use window::ScoreWindow;
