//! Image similarity metrics in HU: MAE, PSNR, SSIM, over masks, with accumulators.
//!
//! The SSIM window and constants defined in [`ssim`] are the single definition used by both
//! the metric and the SSIM loss in the model crate.

pub mod ssim;

pub use ssim::SsimParams;
