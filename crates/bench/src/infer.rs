//! Inference throughput through `infer::predict::Translator`, the code `ncct2ctpa predict` runs.

use crate::workload::synthetic_volume;
use dataset::manifest::IntensityWindow;
use infer::predict::{PredictOptions, Translator};
use model::generator::Generator;
use serde::{Deserialize, Serialize};
use std::time::Instant;
use tch::Device;

/// Slices of the clinical volume the report extrapolates to (512 x 512 x 300).
pub const VOLUME_SLICES: usize = 300;

/// Inference figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InferReport {
    /// Slice side in pixels.
    pub size: usize,
    /// Slices actually translated.
    pub slices: usize,
    /// Slices per forward pass.
    pub batch: usize,
    /// Wall time for `slices`, s (after one warm-up batch).
    pub seconds: f64,
    pub slices_per_s: f64,
    /// `VOLUME_SLICES / slices_per_s`: extrapolated from `slices`, not measured on a whole
    /// volume.
    pub volume_300_s: f64,
}

/// Translates a synthetic `[slices, size, size]` volume once to warm up (one batch) and once
/// timed.
pub fn measure(
    generator: &Generator,
    window: IntensityWindow,
    device: Device,
    size: usize,
    slices: usize,
    batch: usize,
) -> anyhow::Result<InferReport> {
    let t = Translator {
        generator,
        window,
        device,
    };
    let opts = PredictOptions {
        batch_size: batch.max(1),
        model_spacing_xy: None,
        ..PredictOptions::default()
    };
    let warm = synthetic_volume(batch.clamp(1, slices.max(1)), size)?;
    t.translate_volume(&warm, &opts, |_| {})?;
    let vol = synthetic_volume(slices.max(1), size)?;
    crate::step::sync(device);
    let t0 = Instant::now();
    let out = t.translate_volume(&vol, &opts, |_| {})?;
    crate::step::sync(device);
    let seconds = t0.elapsed().as_secs_f64();
    anyhow::ensure!(
        out.data.dim() == vol.data.dim(),
        "inference changed the volume's shape"
    );
    let slices_per_s = vol.data.dim().0 as f64 / seconds;
    tracing::debug!(size, slices, batch, seconds, "inference timed");
    Ok(InferReport {
        size,
        slices: vol.data.dim().0,
        batch,
        seconds,
        slices_per_s,
        volume_300_s: VOLUME_SLICES as f64 / slices_per_s,
    })
}
