//! The image terms of G+R's loss, between the (registered) output and the CTPA: the
//! lung-weighted (multi-resolution) L1 + SSIM reconstruction with the curriculum's lung weight
//! for the step, and the optional perceptual loss on a frozen VGG.
//!
//! Also the set-up these terms need before step 1: the VGG weights file is checked and its
//! SHA-256 recorded in the resolved config ([`resolve_perceptual`], from
//! [`TrainConfig::resolve`](crate::config::TrainConfig::resolve)), and loaded onto the device
//! beside the networks ([`attach`]), refusing a file that changed since the run started.

use crate::config::TrainConfig;
use crate::nets::Nets;
use anyhow::Context;
use model::losses::{reconstruction_floored, LossConfig, LossError, Recon};
use model::perceptual::{Perceptual, PerceptualConfig, PerceptualError, Vgg};
use tch::{Device, Tensor};

/// The image terms of one step (scalar tensors, differentiable).
#[derive(Debug)]
pub struct ImageLosses {
    /// L1 + SSIM parts and their weighted total.
    pub recon: Recon,
    /// The perceptual distance before weighting (`None` when off).
    pub perceptual: Option<Tensor>,
    /// The lung weight used at this step (the curriculum's, else `loss.lung_weight`).
    pub lung_weight: f64,
    /// `recon.total + relative_weight * l1_weight * perceptual`.
    pub total: Tensor,
}

/// Why the image terms could not be computed (a programming or set-up error: shapes were
/// checked when the config was validated).
#[derive(Debug, thiserror::Error)]
pub enum ImageLossError {
    #[error("reconstruction loss: {0}")]
    Reconstruction(LossError),
    #[error("perceptual loss: {0}")]
    Perceptual(LossError),
    #[error(
        "perceptual loss enabled but no VGG loaded (call image_losses::attach after Nets::new)"
    )]
    NotLoaded,
}

impl ImageLossError {
    /// The term's name, for [`NonFinite`](crate::step::NonFinite).
    pub fn term(&self) -> &'static str {
        match self {
            ImageLossError::Reconstruction(_) => "reconstruction (bad shapes)",
            ImageLossError::Perceptual(_) => "perceptual (bad shapes)",
            ImageLossError::NotLoaded => "perceptual (VGG not loaded)",
        }
    }
}

/// The image terms at `step` (1-based) of `registered` against `target`; `floor` is the
/// contrast region's weight floor (`[contrast] weight`, see [`crate::contrast`]), if on.
///
/// # Shapes
/// `registered`, `target`, `lung`, `floor`: `[batch, 1, height, width]` -> scalars.
pub fn image_losses(
    registered: &Tensor,
    target: &Tensor,
    lung: &Tensor,
    floor: Option<&Tensor>,
    cfg: &TrainConfig,
    perceptual: Option<&Perceptual>,
    step: u64,
) -> Result<ImageLosses, ImageLossError> {
    let lung_weight = cfg
        .lung_curriculum
        .lung_weight_at(step, cfg.loss.lung_weight);
    let recon = if lung_weight == cfg.loss.lung_weight {
        reconstruction_floored(registered, target, lung, floor, &cfg.loss)
    } else {
        let at_step = LossConfig {
            lung_weight,
            ..cfg.loss.clone()
        };
        reconstruction_floored(registered, target, lung, floor, &at_step)
    }
    .map_err(ImageLossError::Reconstruction)?;
    let pcfg = &cfg.loss.perceptual;
    let perceptual = match (pcfg.enabled(), perceptual) {
        (false, _) => None,
        (true, None) => return Err(ImageLossError::NotLoaded),
        (true, Some(p)) => Some(
            p.loss(registered, target)
                .map_err(ImageLossError::Perceptual)?,
        ),
    };
    let total = match &perceptual {
        Some(p) => &recon.total + p * (pcfg.relative_weight * cfg.loss.l1_weight),
        None => recon.total.shallow_clone(),
    };
    Ok(ImageLosses {
        recon,
        perceptual,
        lung_weight,
        total,
    })
}

/// SHA-256 (hex) of a weights file, with the workspace's one checksum helper.
fn sha256(path: &std::path::Path) -> anyhow::Result<String> {
    util::checksum::sha256_path(path)
        .map_err(|e| PerceptualError::Read {
            path: e.path,
            source: e.source,
        })
        .context("checksumming the perceptual loss's VGG weights")
}

/// At config resolution (a new run, before its folder exists): when the perceptual loss is on,
/// reads and checks its weights file (structure, keys, shapes: the errors name the file and the
/// key), makes its path absolute (a relative path is relative to the working directory; the
/// run must find the file again when resumed from elsewhere) and records the file's SHA-256,
/// so that the run's `config.toml` says exactly which weights were used.
pub fn resolve_perceptual(cfg: &mut PerceptualConfig) -> anyhow::Result<()> {
    cfg.validate()?;
    let Some(path) = cfg.weights_file.clone().filter(|_| cfg.enabled()) else {
        return Ok(());
    };
    Vgg::load(&path, cfg.variant, Device::Cpu)?;
    let path = std::fs::canonicalize(&path).map_err(|source| PerceptualError::Read {
        path: path.clone(),
        source,
    })?;
    cfg.weights_file = Some(path.clone());
    let sha = sha256(&path)?;
    if let Some(expected) = &cfg.weights_sha256 {
        check_sha(&path, expected, &sha)?;
    }
    tracing::debug!(file = %path.display(), %sha, "perceptual loss weights checked");
    cfg.weights_sha256 = Some(sha);
    Ok(())
}

fn check_sha(path: &std::path::Path, expected: &str, found: &str) -> anyhow::Result<()> {
    if !expected.eq_ignore_ascii_case(found) {
        return Err(PerceptualError::ChecksumMismatch {
            path: path.to_path_buf(),
            expected: expected.to_owned(),
            found: found.to_owned(),
        }
        .into());
    }
    Ok(())
}

/// Loads what the image terms need beside the networks (the frozen VGG, when the perceptual
/// loss is on; it joins no VarStore, so no optimizer and no checkpoint sees it) and returns
/// the lines describing the image terms for `train.log`. A resumed run's file must still have
/// the SHA-256 its config recorded.
pub fn attach(nets: &mut Nets, cfg: &TrainConfig, device: Device) -> anyhow::Result<Vec<String>> {
    let mut lines = Vec::new();
    let pcfg = &cfg.loss.perceptual;
    nets.perceptual = None;
    if let Some(path) = pcfg.weights_file.as_deref().filter(|_| pcfg.enabled()) {
        let sha = sha256(path)?;
        if let Some(expected) = &pcfg.weights_sha256 {
            check_sha(path, expected, &sha)?;
        }
        let p = Perceptual::from_config(pcfg, device)?
            .context("the perceptual loss is enabled but was not built")?;
        lines.push(format!(
            "perceptual loss: {} | sha256 {sha} | weight {} x l1_weight",
            p.describe(),
            pcfg.relative_weight
        ));
        nets.perceptual = Some(p);
    }
    let levels = cfg.loss.active_scales();
    if levels > 1 {
        lines.push(format!(
            "multi-resolution reconstruction: scale weights {:?} (full resolution to 1/{})",
            &cfg.loss.scale_weights[..levels],
            1 << (levels - 1)
        ));
    }
    lines.extend(cfg.lung_curriculum.describe(cfg.loss.lung_weight));
    Ok(lines)
}
