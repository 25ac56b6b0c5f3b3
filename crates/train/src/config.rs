//! The training configuration: one TOML file with documented defaults for everything, nesting
//! the model, loss and optimizer configs of the model crate.
//!
//! # Resolution order
//! 1. [`TrainConfig::default`] (every default below), with `model` set from the `preset`;
//! 2. the TOML file (`--config`), merged key by key over that, so a file names only what it
//!    changes (a `[model.generator]` table with one key keeps the preset's other keys);
//! 3. command-line flags ([`Overrides`]);
//! 4. [`TrainConfig::resolve`]: data-dependent values (the HU window, the step count when the
//!    schedule is given in epochs) are filled in, and the result is checked.
//!
//! The resolved config is written to `RUN/config.toml` before step 1 and is what a resumed run
//! and `predict` rebuild everything from. Unknown keys are errors at every level
//! (`deny_unknown_fields`): a typo never silently falls back to a default.

use crate::curriculum::LungCurriculumConfig;
use crate::phases::ProgressiveConfig;
use crate::schedule::ScheduleConfig;
use anyhow::{bail, Context};
use dataset::augment::AugmentConfig;
use dataset::manifest::IntensityWindow;
use model::config::ModelConfig;
use model::losses::LossConfig;
use model::optim::AdamConfig;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Everything a training run needs besides the data. See `configs/default.toml` for the same
/// text as a commented file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Model preset the `model` tables start from: "default", "tiny" or "reggan".
    /// Default: "default".
    pub preset: String,
    /// Train the registration network R (RegGAN). `false` trains G on the unregistered pairs
    /// (plain pix2pix-style supervision, the R-off arm of the RegGAN experiment); no R is built
    /// or saved. Default: true.
    pub registration: bool,
    /// Run seed: weights initialisation, slice order, crops and augmentation. Default: 42.
    pub seed: u64,
    /// "auto" (CUDA when available), "cpu", "cuda" or "cuda:N". Default: "auto".
    pub device: String,
    /// libtorch intra-op threads on the CPU; 0 keeps libtorch's choice (one per core).
    /// Default: 0.
    pub threads: usize,
    /// Shapes of G, R and D (defaults: the `preset`'s).
    pub model: ModelConfig,
    /// Loss weights (model crate defaults: L1 20, SSIM 10, lung weight 10, LSGAN 1,
    /// smoothness 10).
    pub loss: LossConfig,
    /// Ramp of `loss.lung_weight` from 1 over the first steps (default: off).
    pub lung_curriculum: LungCurriculumConfig,
    /// R1 gradient penalty on D's real inputs (`model::r1`; default: off, gamma 0).
    pub r1: model::r1::R1Config,
    /// Progressive training: G alone, then + R, then + D (`crate::phases`; default: off).
    pub progressive: ProgressiveConfig,
    /// Optimizers.
    pub optim: OptimConfig,
    /// Mixed precision of the forward passes: "off", "bf16" or "f16" (f16 with dynamic loss
    /// scaling; both CUDA-only, see `crate::amp`). Default: "off".
    pub amp: crate::amp::AmpMode,
    /// Length of training and the learning-rate schedule.
    pub schedule: ScheduleConfig,
    /// Batches, crops, augmentation, loader.
    pub data: DataConfig,
    /// Logging, validation, samples and checkpoints.
    pub log: LogConfig,
    /// Fault injection for tests of the failure paths.
    pub debug: DebugConfig,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            preset: "default".into(),
            registration: true,
            seed: 42,
            device: "auto".into(),
            threads: 0,
            model: ModelConfig::default(),
            loss: LossConfig::default(),
            lung_curriculum: LungCurriculumConfig::default(),
            r1: model::r1::R1Config::default(),
            progressive: ProgressiveConfig::default(),
            optim: OptimConfig::default(),
            amp: crate::amp::AmpMode::Off,
            schedule: ScheduleConfig::default(),
            data: DataConfig::default(),
            log: LogConfig::default(),
            debug: DebugConfig::default(),
        }
    }
}

/// One Adam for G and R together (they are updated by one loss), one for D.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OptimConfig {
    /// Adam of G + R. Default: lr 1e-4, betas (0.5, 0.999), eps 1e-8 (RegGAN).
    pub generator: AdamConfig,
    /// Adam of D. Default: as for G.
    pub discriminator: AdamConfig,
}

/// How batches are made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataConfig {
    /// Slices per step. Default: 4.
    pub batch_size: usize,
    /// Side of the square random crop in pixels; must be a multiple of the model's size
    /// multiple (2^depth). Default: 256.
    pub crop_size: usize,
    /// Training slices must have at least this fraction of body pixels (skips air-only end
    /// slices). Default: 0.05.
    pub min_body_fraction: f64,
    /// Background threads preparing batches. Default: 2.
    pub loader_threads: usize,
    /// Batches each loader thread may prepare ahead. Default: 2.
    pub prefetch: usize,
    /// HU window for the network's [-1, 1] scale. Unset: the prepared dataset's window (the
    /// resolved config records the one used). Default: unset.
    pub window: Option<IntensityWindow>,
    /// Augmentation (same geometric transform for NCCT, CTPA and masks; jitter on NCCT only).
    pub augment: AugmentConfig,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            batch_size: 4,
            crop_size: 256,
            min_body_fraction: 0.05,
            loader_threads: 2,
            prefetch: 2,
            window: None,
            augment: AugmentConfig::default(),
        }
    }
}

/// Which validation metric picks the `best` checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BestMetric {
    /// MAE (HU) inside the body mask, lower is better.
    MaeBody,
    /// MAE (HU) inside the lung mask, lower is better.
    MaeLung,
    /// SSIM inside the body mask, higher is better.
    SsimBody,
    /// PSNR (dB) inside the body mask, higher is better.
    PsnrBody,
}

impl BestMetric {
    /// Whether `new` beats `old`.
    pub fn improves(self, new: f64, old: f64) -> bool {
        match self {
            BestMetric::MaeBody | BestMetric::MaeLung => new < old,
            BestMetric::SsimBody | BestMetric::PsnrBody => new > old,
        }
    }

    /// The metric's key in validation events (`metrics.jsonl`).
    pub fn key(self) -> &'static str {
        match self {
            BestMetric::MaeBody => "mae_body",
            BestMetric::MaeLung => "mae_lung",
            BestMetric::SsimBody => "ssim_body",
            BestMetric::PsnrBody => "psnr_body",
        }
    }
}

/// Observability and persistence intervals, in steps (0 disables the periodic event; the
/// final step always validates, samples and checkpoints).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// Write loss terms, lr, grad norms, flow and D statistics to `metrics.jsonl` every N
    /// steps. Default: 10.
    pub every: u64,
    /// Validate on whole validation volumes every N steps (and refresh `curves.png`).
    /// Default: 1000.
    pub val_every: u64,
    /// Validate on at most this many validation cases (0: all). Default: 0.
    pub val_max_cases: usize,
    /// Save `checkpoints/latest` every N steps. Default: 1000.
    pub checkpoint_every: u64,
    /// Write a `samples/step_N.png` grid every N steps. Default: 1000.
    pub sample_every: u64,
    /// Metric that selects `checkpoints/best`. Default: "mae_body".
    pub best_metric: BestMetric,
    /// Show the progress bar (off when not on a terminal is decided by the caller).
    /// Default: true.
    pub progress: bool,
    /// Warn when a step waits longer than this for its batch (milliseconds). Default: 50.
    pub starve_warn_ms: u64,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            every: 10,
            val_every: 1000,
            val_max_cases: 0,
            checkpoint_every: 1000,
            sample_every: 1000,
            best_metric: BestMetric::MaeBody,
            progress: true,
            starve_warn_ms: 50,
        }
    }
}

/// Hooks for testing failure handling. Leave unset in real runs.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DebugConfig {
    /// Replace the generator's loss with NaN at this step, to exercise the non-finite-loss
    /// stop (snapshot, message, non-zero exit). Default: unset.
    pub inject_nan_at_step: Option<u64>,
    /// Stop (without the final checkpoint) after this step, as if the process had been
    /// killed there: tests of `--resume` use it. Ignored once the run has passed it.
    /// Default: unset.
    pub stop_after_step: Option<u64>,
}

/// Command-line overrides, applied after the file. `None` leaves the field as it is.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub preset: Option<String>,
    pub steps: Option<u64>,
    pub epochs: Option<f64>,
    pub batch_size: Option<usize>,
    pub crop_size: Option<usize>,
    pub device: Option<String>,
    /// Learning rate of both optimizers.
    pub lr: Option<f64>,
    pub seed: Option<u64>,
    pub threads: Option<usize>,
    /// `Some(false)` for `--no-registration`.
    pub registration: Option<bool>,
    pub val_every: Option<u64>,
    pub checkpoint_every: Option<u64>,
    pub sample_every: Option<u64>,
    pub log_every: Option<u64>,
    pub progress: Option<bool>,
}

impl TrainConfig {
    /// The defaults with the `model` tables of `preset`.
    pub fn with_preset(preset: &str) -> anyhow::Result<Self> {
        Ok(Self {
            preset: preset.to_owned(),
            model: ModelConfig::preset(preset)?,
            ..Self::default()
        })
    }

    /// Parses TOML text: the defaults of the file's `preset` (or `default_preset` when it
    /// names none), overlaid key by key with the file.
    pub fn from_toml_str(text: &str, default_preset: &str) -> anyhow::Result<Self> {
        let user: toml::Table = toml::from_str(text).context("invalid TOML")?;
        Self::from_layers(vec![user], default_preset)
    }

    /// Builds the config from TOML tables applied in order over the defaults (a later table
    /// wins key by key). The preset is the last one any table names, else `default_preset`.
    fn from_layers(layers: Vec<toml::Table>, default_preset: &str) -> anyhow::Result<Self> {
        let mut user = toml::Table::new();
        for layer in layers {
            merge(&mut user, layer);
        }
        let preset = match user.get("preset") {
            Some(toml::Value::String(s)) => s.clone(),
            Some(other) => bail!("`preset` must be a string, got {other}"),
            None => default_preset.to_owned(),
        };
        let base = Self::with_preset(&preset)?;
        let mut merged = toml::Table::try_from(&base).context("serializing the defaults")?;
        merge(&mut merged, user);
        let cfg: Self = toml::Value::Table(merged)
            .try_into()
            .context("invalid training configuration")?;
        Ok(cfg)
    }

    /// Reads a TOML file (see [`Self::from_toml_str`]); errors name the file.
    pub fn load(path: &Path, default_preset: &str) -> anyhow::Result<Self> {
        Self::load_layered(&[path], default_preset)
    }

    /// Reads several TOML files and merges them in order, key by key, over the defaults: the
    /// way an ablation arm (`--config configs/demo.toml --config configs/ablation/r1.toml`)
    /// names only what it changes. Errors name the file at fault.
    pub fn load_layered<P: AsRef<Path>>(paths: &[P], default_preset: &str) -> anyhow::Result<Self> {
        let mut layers = Vec::with_capacity(paths.len());
        for path in paths {
            let path = path.as_ref();
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading config {}", path.display()))?;
            let table: toml::Table = toml::from_str(&text)
                .context("invalid TOML")
                .with_context(|| format!("config {}", path.display()))?;
            tracing::debug!(config = %path.display(), keys = table.len(), "config layer");
            layers.push(table);
        }
        let names: Vec<String> = paths
            .iter()
            .map(|p| p.as_ref().display().to_string())
            .collect();
        Self::from_layers(layers, default_preset)
            .with_context(|| format!("config {}", names.join(" + ")))
    }

    /// The config as commented-free TOML (what `RUN/config.toml` holds).
    pub fn to_toml_string(&self) -> anyhow::Result<String> {
        toml::to_string_pretty(self).context("serializing the training configuration")
    }

    /// Applies command-line overrides. A new `--preset` replaces the `model` tables with that
    /// preset's (flags come last, so they win over the file).
    pub fn apply(&mut self, o: &Overrides) -> anyhow::Result<()> {
        if let Some(p) = &o.preset {
            self.model = ModelConfig::preset(p)?;
            self.preset = p.clone();
        }
        if let Some(v) = o.steps {
            self.schedule.steps = v;
            self.schedule.epochs = None;
        }
        if let Some(v) = o.epochs {
            self.schedule.epochs = Some(v);
        }
        if let Some(v) = o.batch_size {
            self.data.batch_size = v;
        }
        if let Some(v) = o.crop_size {
            self.data.crop_size = v;
        }
        if let Some(v) = &o.device {
            self.device = v.clone();
        }
        if let Some(v) = o.lr {
            self.optim.generator.lr = v;
            self.optim.discriminator.lr = v;
        }
        if let Some(v) = o.seed {
            self.seed = v;
        }
        if let Some(v) = o.threads {
            self.threads = v;
        }
        if let Some(v) = o.registration {
            self.registration = v;
        }
        if let Some(v) = o.val_every {
            self.log.val_every = v;
        }
        if let Some(v) = o.checkpoint_every {
            self.log.checkpoint_every = v;
        }
        if let Some(v) = o.sample_every {
            self.log.sample_every = v;
        }
        if let Some(v) = o.log_every {
            self.log.every = v;
        }
        if let Some(v) = o.progress {
            self.log.progress = v;
        }
        Ok(())
    }

    /// Fills in what depends on the data and checks every field.
    ///
    /// * `window`: the prepared dataset's window, used when `data.window` is unset;
    /// * `train_slices`: number of training slices, to turn `schedule.epochs` into steps.
    pub fn resolve(&mut self, window: IntensityWindow, train_slices: usize) -> anyhow::Result<()> {
        if self.data.window.is_none() {
            self.data.window = Some(window);
        }
        if let Some(epochs) = self.schedule.epochs.take() {
            if !(epochs.is_finite() && epochs > 0.0) {
                bail!("schedule.epochs must be positive, got {epochs}");
            }
            let per_epoch = train_slices as f64 / self.data.batch_size.max(1) as f64;
            self.schedule.steps = (epochs * per_epoch).ceil().max(1.0) as u64;
        }
        self.progressive
            .resolve(train_slices as f64 / self.data.batch_size.max(1) as f64)
            .context("[progressive]")?;
        self.lung_curriculum
            .resolve(train_slices as f64 / self.data.batch_size.max(1) as f64)?;
        self.validate()?;
        // The VGG file is checked now, before the run folder exists, and its SHA-256 recorded.
        crate::image_losses::resolve_perceptual(&mut self.loss.perceptual)
            .context("[loss.perceptual]")
    }

    /// Checks ranges and consistency; errors name the offending field.
    pub fn validate(&self) -> anyhow::Result<()> {
        if !ModelConfig::preset_names().contains(&self.preset.as_str()) {
            bail!(
                "preset {:?} is not one of {}",
                self.preset,
                ModelConfig::preset_names().join(", ")
            );
        }
        self.loss.validate().context("[loss]")?;
        self.lung_curriculum.validate()?;
        self.r1.validate().context("[r1]")?;
        self.progressive.validate().context("[progressive]")?;
        self.optim
            .generator
            .validate()
            .context("[optim.generator]")?;
        self.optim
            .discriminator
            .validate()
            .context("[optim.discriminator]")?;
        self.schedule.validate().context("[schedule]")?;
        self.data
            .augment
            .validate()
            .map_err(anyhow::Error::msg)
            .context("[data.augment]")?;
        let d = &self.data;
        if d.batch_size == 0 {
            bail!("data.batch_size must be at least 1");
        }
        let multiple = self.size_multiple();
        if d.crop_size == 0 || !d.crop_size.is_multiple_of(multiple) {
            bail!(
                "data.crop_size = {} must be a positive multiple of {multiple} (2^depth of the \
                 model's UNets)",
                d.crop_size
            );
        }
        let crop = d.crop_size as i64;
        self.loss
            .check_image_size(crop, crop)
            .with_context(|| format!("[loss] with data.crop_size = {crop}"))?;
        if !(0.0..=1.0).contains(&d.min_body_fraction) {
            bail!(
                "data.min_body_fraction must lie in [0, 1], got {}",
                d.min_body_fraction
            );
        }
        if let Some(w) = d.window {
            IntensityWindow::new(w.min, w.max)
                .map_err(anyhow::Error::msg)
                .context("data.window")?;
        }
        if self.model.generator.in_channels != 1 || self.model.generator.out_channels != 1 {
            bail!(
                "model.generator: the trainer feeds one NCCT slice and predicts one CTPA slice \
                 (in_channels = out_channels = 1), got {} -> {}",
                self.model.generator.in_channels,
                self.model.generator.out_channels
            );
        }
        model::device::DeviceSpec::parse(&self.device).context("device")?;
        Ok(())
    }

    /// Crops and validation slices are padded to multiples of this.
    pub fn size_multiple(&self) -> usize {
        let g = self.model.generator.size_multiple();
        let m = if self.registration {
            g.max(self.model.registration.size_multiple())
        } else {
            g
        };
        m.max(1) as usize
    }

    /// The HU window in use (set by [`Self::resolve`]; the dataset default before).
    pub fn window(&self) -> IntensityWindow {
        self.data.window.unwrap_or_default()
    }
}

/// Overlays `over` onto `base`: tables merge key by key, anything else replaces.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_keeps_unnamed_keys() {
        let mut base: toml::Table = toml::from_str("a = 1\n[t]\nx = 1\ny = 2\n").unwrap();
        merge(&mut base, toml::from_str("[t]\ny = 3\n").unwrap());
        assert_eq!(base["a"].as_integer(), Some(1));
        assert_eq!(base["t"]["x"].as_integer(), Some(1));
        assert_eq!(base["t"]["y"].as_integer(), Some(3));
    }
}
