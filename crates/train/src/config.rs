//! The training configuration: one TOML file with documented defaults for everything, nesting
//! the model, loss and optimizer configs of the model crate.
//!
//! # Resolution order
//! 1. [`TrainConfig::default`] (every default below), with `model` set from the `preset`;
//! 2. the TOML file (`--config`), merged key by key over that, so a file names only what it
//!    changes (a `[model.generator]` table with one key keeps the preset's other keys);
//! 3. command-line flags: one more layer ([`Layer`], built by the CLI from its flags and
//!    `--set KEY=VALUE`), merged the same way, so a new key needs no code in the CLI;
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
    /// Repeatable GPU runs where kernels allow: libtorch's deterministic algorithms (an op
    /// without a deterministic CUDA kernel, such as grid sampling's backward, warns naming
    /// itself and runs anyway), cuDNN's deterministic mode without benchmarking, and
    /// `CUBLAS_WORKSPACE_CONFIG=:4096:8` unless set. Slower on a GPU; CPU runs are
    /// deterministic already. Default: false.
    pub deterministic: bool,
    /// Shapes of G, R and D (defaults: the `preset`'s).
    pub model: ModelConfig,
    /// Loss weights (model crate defaults: L1 20, SSIM 10, lung weight 10, LSGAN 1,
    /// smoothness 10).
    pub loss: LossConfig,
    /// Ramp of `loss.lung_weight` from 1 over the first steps (default: off).
    pub lung_curriculum: LungCurriculumConfig,
    /// R1 gradient penalty on D's real inputs (`model::r1`; default: off, gamma 0).
    pub r1: model::r1::R1Config,
    /// An exponential moving average of G's weights (default: off).
    pub ema: EmaConfig,
    /// The contrast region and its reconstruction weight (default: weight 1, off).
    pub contrast: crate::contrast::ContrastConfig,
    /// The identity-preserving term outside the contrast region (default: off).
    pub identity: crate::contrast::IdentityConfig,
    /// Progressive training: G alone, then + R, then + D (`crate::phases`; default: off).
    pub progressive: ProgressiveConfig,
    /// Optimizers.
    pub optim: OptimConfig,
    /// Mixed precision of the forward passes: "off", "bf16" or "f16" (f16 with dynamic loss
    /// scaling; both CUDA-only, see `crate::amp`). Default: "off".
    pub amp: crate::amp::Precision,
    /// Length of training and the learning-rate schedule.
    pub schedule: ScheduleConfig,
    /// Batches, crops, augmentation, loader.
    pub data: DataConfig,
    /// Logging, validation, samples and checkpoints.
    pub log: LogConfig,
    /// How validation runs G over a slice: on tiles of the training crop (default), of some
    /// pixels, or whole, averaged over test-time mirrors (by default those training mirrors
    /// along). Every checkpoint records it, and `predict` and `evaluate --model` do the same
    /// unless told otherwise (`infer::tiles`, `infer::tta`).
    pub inference: infer::tiles::InferenceSettings,
    /// Fault injection for tests of the failure paths: never read from or written to a config
    /// file (binaries take them from `NCCT2CTPA_TEST_HOOKS`, see [`TestHooks`]).
    #[serde(skip)]
    #[doc(hidden)]
    pub hooks: TestHooks,
    /// The `[debug]` table that configs written before the test hooks left the config hold:
    /// accepted and ignored, so those runs still load.
    #[serde(default, skip_serializing, rename = "debug")]
    #[doc(hidden)]
    pub legacy_debug: Option<serde::de::IgnoredAny>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            preset: "default".into(),
            registration: true,
            seed: 42,
            device: "auto".into(),
            threads: 0,
            deterministic: false,
            model: ModelConfig::default(),
            loss: LossConfig::default(),
            lung_curriculum: LungCurriculumConfig::default(),
            r1: model::r1::R1Config::default(),
            ema: EmaConfig::default(),
            contrast: crate::contrast::ContrastConfig::default(),
            identity: crate::contrast::IdentityConfig::default(),
            progressive: ProgressiveConfig::default(),
            optim: OptimConfig::default(),
            amp: crate::amp::Precision::Fp32,
            schedule: ScheduleConfig::default(),
            data: DataConfig::default(),
            log: LogConfig::default(),
            inference: infer::tiles::InferenceSettings::default(),
            hooks: TestHooks::default(),
            legacy_debug: None,
        }
    }
}

/// One Adam for G and R together (they are updated by one loss), one for D.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OptimConfig {
    /// R's learning rate as a factor of G's (R's variables form their own parameter group
    /// of G+R's Adam, `model::optim::Adam::scale_lr`; the schedule scales both). Default: 1
    /// (RegGAN: G and R at the same lr).
    pub registration_lr_factor: f64,
    /// Adam of G + R. Default: lr 1e-4, betas (0.5, 0.999), eps 1e-8 (RegGAN).
    pub generator: AdamConfig,
    /// Adam of D. Default: as for G.
    pub discriminator: AdamConfig,
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self {
            registration_lr_factor: 1.0,
            generator: AdamConfig::default(),
            discriminator: AdamConfig::default(),
        }
    }
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

/// Which validation metric picks the `best` checkpoint. The `_reg` metrics score against the
/// CTPA registered onto the NCCT (see [`crate::validate::Scores`]); they need
/// `log.registered_validation`.
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
    /// MAE (HU) inside the body against the registered CTPA, lower is better.
    MaeBodyReg,
    /// MAE (HU) inside the lungs against the registered CTPA, lower is better.
    MaeLungReg,
    /// SSIM inside the body against the registered CTPA, higher is better.
    SsimBodyReg,
    /// PSNR (dB) inside the body against the registered CTPA, higher is better.
    PsnrBodyReg,
    /// MAE (HU) inside the contrast region against the CTPA as it lies, lower is better
    /// (see [`crate::validate::Scores`]). It ranks finished runs, but as a checkpoint selector
    /// it preferred early, fainter checkpoints on the #16 benchmark (README "Honest
    /// validation").
    MaeContrast,
}

impl BestMetric {
    /// Whether `new` beats `old`.
    pub fn improves(self, new: f64, old: f64) -> bool {
        match self {
            BestMetric::MaeBody
            | BestMetric::MaeLung
            | BestMetric::MaeBodyReg
            | BestMetric::MaeLungReg
            | BestMetric::MaeContrast => new < old,
            BestMetric::SsimBody
            | BestMetric::PsnrBody
            | BestMetric::SsimBodyReg
            | BestMetric::PsnrBodyReg => new > old,
        }
    }

    /// The metric's key in validation events (`metrics.jsonl`).
    pub fn key(self) -> &'static str {
        match self {
            BestMetric::MaeBody => "mae_body",
            BestMetric::MaeLung => "mae_lung",
            BestMetric::SsimBody => "ssim_body",
            BestMetric::PsnrBody => "psnr_body",
            BestMetric::MaeBodyReg => "mae_body_reg",
            BestMetric::MaeLungReg => "mae_lung_reg",
            BestMetric::SsimBodyReg => "ssim_body_reg",
            BestMetric::PsnrBodyReg => "psnr_body_reg",
            BestMetric::MaeContrast => "mae_contrast",
        }
    }

    /// Whether the metric scores against the registered CTPA.
    pub fn registered(self) -> bool {
        self.key().ends_with("_reg")
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
    /// Validation also scores against each CTPA registered onto its NCCT by a classical
    /// deformable registration (demons, once when validation loads): the `_reg` scores, which
    /// do not reward guessing the motion between the scans. Default: true.
    pub registered_validation: bool,
    /// Metric that selects `checkpoints/best`. Default: "mae_body_reg" (the body MAE against
    /// the registered CTPA: see `registered_validation`).
    pub best_metric: BestMetric,
    /// Show the progress bar (off when not on a terminal is decided by the caller).
    /// Default: true.
    pub progress: bool,
    /// Warn when a step waits longer than this for its batch (milliseconds). Default: 50.
    pub starve_warn_ms: u64,
    /// Write TensorBoard event files into the run folder (`tensorboard --logdir runs/`):
    /// the logged scalars, validation beside the NCCT baseline, sample grids, the config.
    /// Default: true.
    pub tensorboard: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            every: 10,
            val_every: 1000,
            val_max_cases: 0,
            checkpoint_every: 1000,
            sample_every: 1000,
            registered_validation: true,
            best_metric: BestMetric::MaeBodyReg,
            progress: true,
            starve_warn_ms: 50,
            tensorboard: true,
        }
    }
}

/// `[ema]`: an exponential moving average of G's weights, `ema = decay * ema + (1 - decay) *
/// G` after every step (buffers too), starting from G's initial weights, as StyleGAN and
/// diffusion training keep one. When on, validation, samples, `best`, `predict` and export use
/// the EMA weights (`generator_ema.safetensors` in every checkpoint); a resume continues it
/// exactly.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmaConfig {
    /// 0 = off; e.g. 0.999 (a horizon of about 1000 steps). Default: 0.
    pub decay: f64,
}

impl Default for EmaConfig {
    fn default() -> Self {
        Self { decay: 0.0 }
    }
}

impl EmaConfig {
    pub fn enabled(&self) -> bool {
        self.decay > 0.0
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        if !(0.0..1.0).contains(&self.decay) {
            bail!("ema.decay = {} must be in [0, 1) (0 = off)", self.decay);
        }
        Ok(())
    }
}

/// Hooks for testing failure handling; not part of a run's configuration.
#[doc(hidden)]
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TestHooks {
    /// Replace the generator's loss with NaN at this step, to exercise the non-finite-loss
    /// stop (snapshot, message, non-zero exit).
    pub inject_nan_at_step: Option<u64>,
    /// Stop (without the final checkpoint) after this step, as if the process had been
    /// killed there: tests of `--resume` use it. Ignored once the run has passed it.
    pub stop_after_step: Option<u64>,
    /// From this step on, every rank logs a digest of all its weights after each step (the
    /// data-parallel tests compare the ranks').
    pub weight_digests_from_step: Option<u64>,
}

impl TestHooks {
    /// The environment variable binaries read the hooks from:
    /// `NCCT2CTPA_TEST_HOOKS="inject_nan_at_step=3,stop_after_step=5"`.
    pub const ENV: &'static str = "NCCT2CTPA_TEST_HOOKS";

    /// These hooks, with those the environment sets (see [`Self::ENV`]) on top.
    pub fn with_env(self) -> anyhow::Result<Self> {
        match std::env::var(Self::ENV) {
            Ok(text) => self.with(&text),
            Err(_) => Ok(self),
        }
    }

    /// These hooks with `text` (`KEY=STEP,...`, the environment variable's value) on top.
    pub fn with(mut self, text: &str) -> anyhow::Result<Self> {
        for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (key, value) = item
                .split_once('=')
                .with_context(|| format!("{}: expected KEY=STEP, got {item:?}", Self::ENV))?;
            let step: u64 = value
                .trim()
                .parse()
                .with_context(|| format!("{}: {item:?} is not a step", Self::ENV))?;
            match key.trim() {
                "inject_nan_at_step" => self.inject_nan_at_step = Some(step),
                "stop_after_step" => self.stop_after_step = Some(step),
                "weight_digests_from_step" => self.weight_digests_from_step = Some(step),
                other => bail!("{}: unknown hook {other:?}", Self::ENV),
            }
        }
        tracing::warn!("test hooks set from {}: {self:?}", Self::ENV);
        Ok(self)
    }
}

/// A configuration layer: TOML keys to merge over the files, key by key (what the CLI's flags
/// become). Dotted keys name nested tables: `schedule.steps`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Layer(pub toml::Table);

impl Layer {
    /// Sets dotted `key` to `value`.
    pub fn set(&mut self, key: &str, value: impl Into<toml::Value>) -> &mut Self {
        let mut table = &mut self.0;
        let mut parts = key.split('.').peekable();
        while let Some(part) = parts.next() {
            if parts.peek().is_none() {
                table.insert(part.to_owned(), value.into());
                break;
            }
            let entry = table
                .entry(part.to_owned())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if !entry.is_table() {
                *entry = toml::Value::Table(toml::Table::new());
            }
            let Some(next) = entry.as_table_mut() else {
                break;
            };
            table = next;
        }
        self
    }

    /// Sets `KEY=VALUE` (`--set`): VALUE is read as a TOML value (`3`, `1e-4`, `true`,
    /// `"bf16"`, `[1, 2]`), else taken as a string.
    pub fn assign(&mut self, assignment: &str) -> anyhow::Result<&mut Self> {
        let (key, value) = assignment
            .split_once('=')
            .with_context(|| format!("expected KEY=VALUE, got {assignment:?}"))?;
        let key = key.trim();
        if key.is_empty() || key.split('.').any(str::is_empty) {
            bail!("{assignment:?}: the key is empty or has an empty part");
        }
        let value = value.trim();
        let parsed = toml::from_str::<toml::Table>(&format!("v = {value}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(value.to_owned()));
        Ok(self.set(key, parsed))
    }

    /// The dotted names of every key this layer sets, sorted.
    pub fn keys(&self) -> Vec<String> {
        fn walk(prefix: &str, t: &toml::Table, out: &mut Vec<String>) {
            for (k, v) in t {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                match v {
                    toml::Value::Table(sub) => walk(&key, sub, out),
                    _ => out.push(key),
                }
            }
        }
        let mut out = Vec::new();
        walk("", &self.0, &mut out);
        out.sort();
        out
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The value at dotted `key`, if this layer sets it.
    pub fn get(&self, key: &str) -> Option<&toml::Value> {
        let mut parts = key.split('.');
        let mut value = self.0.get(parts.next()?)?;
        for part in parts {
            value = value.as_table()?.get(part)?;
        }
        Some(value)
    }
}

impl TrainConfig {
    /// Whether R registers across slices: `model.registration.through_plane` with R on (with
    /// `registration = false` the key is ignored and G sees one slice per sample).
    pub fn registers_across_slices(&self) -> bool {
        self.registration && self.model.registration.through_plane
    }

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
    pub fn from_layers(layers: Vec<toml::Table>, default_preset: &str) -> anyhow::Result<Self> {
        let mut user = toml::Table::new();
        for layer in layers {
            merge_layer(&mut user, layer);
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
        Self::load_layers(paths, &Layer::default(), default_preset)
    }

    /// [`Self::load_layered`], then `flags` (the command line's layer) over the files.
    pub fn load_layers<P: AsRef<Path>>(
        paths: &[P],
        flags: &Layer,
        default_preset: &str,
    ) -> anyhow::Result<Self> {
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
        let mut names: Vec<String> = paths
            .iter()
            .map(|p| p.as_ref().display().to_string())
            .collect();
        if !flags.is_empty() {
            layers.push(flags.0.clone());
            names.push("the command line".into());
        }
        Self::from_layers(layers, default_preset)
            .with_context(|| format!("config {}", names.join(" + ")))
    }

    /// The config as commented-free TOML (what `RUN/config.toml` holds).
    pub fn to_toml_string(&self) -> anyhow::Result<String> {
        toml::to_string_pretty(self).context("serializing the training configuration")
    }

    /// Fills in what depends on the data and checks every field.
    ///
    /// * `window`: the prepared dataset's window, used when `data.window` is unset;
    /// * `train_slices`: number of training slices, to turn `schedule.epochs` into steps;
    /// * `world`: data-parallel processes (1 alone): a step then reads `batch_size x world`
    ///   slices, so an epoch has that many times fewer steps.
    pub fn resolve(
        &mut self,
        window: IntensityWindow,
        train_slices: usize,
        world: usize,
    ) -> anyhow::Result<()> {
        if self.data.window.is_none() {
            self.data.window = Some(window);
        }
        let per_epoch = train_slices as f64 / (self.data.batch_size.max(1) * world.max(1)) as f64;
        if let Some(epochs) = self.schedule.epochs.take() {
            if !(epochs.is_finite() && epochs > 0.0) {
                bail!("schedule.epochs must be positive, got {epochs}");
            }
            self.schedule.steps = (epochs * per_epoch).ceil().max(1.0) as u64;
        }
        self.progressive
            .resolve(per_epoch)
            .context("[progressive]")?;
        self.lung_curriculum.resolve(per_epoch)?;
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
        self.ema.validate().context("[ema]")?;
        self.contrast.validate().context("[contrast]")?;
        self.identity.validate().context("[identity]")?;
        self.progressive.validate().context("[progressive]")?;
        model::optim::check_lr_factor(self.optim.registration_lr_factor)
            .map_err(|e| anyhow::anyhow!("optim.registration_lr_factor: {e}"))?;
        self.optim
            .generator
            .validate()
            .context("[optim.generator]")?;
        self.optim
            .discriminator
            .validate()
            .context("[optim.discriminator]")?;
        self.schedule.validate().context("[schedule]")?;
        if self.log.best_metric.registered() && !self.log.registered_validation {
            bail!(
                "log.best_metric = {:?} scores against the registered CTPA, but \
                 log.registered_validation = false: choose a metric without _reg, or register",
                self.log.best_metric.key()
            );
        }
        self.data
            .augment
            .validate()
            .map_err(anyhow::Error::msg)
            .context("[data.augment]")?;
        let d = &self.data;
        if !(1..=MAX_BATCH).contains(&d.batch_size) {
            bail!(
                "data.batch_size = {} must lie in 1..={MAX_BATCH}",
                d.batch_size
            );
        }
        if d.crop_size > MAX_CROP {
            bail!(
                "data.crop_size = {} is above the largest crop, {MAX_CROP} px (a CT slice is \
                 512 px)",
                d.crop_size
            );
        }
        self.model.validate(d.crop_size as i64)?;
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
        let g = &self.model.generator;
        if g.in_channels < 1 || g.in_channels % 2 == 0 || g.in_channels > 15 || g.out_channels != 1
        {
            bail!(
                "model.generator: the trainer feeds 2k + 1 neighbouring NCCT slices (in_channels \
                 = 1, 3, 5, ... 15; 2.5D input when above 1) and predicts one CTPA slice \
                 (out_channels = 1), got {} -> {}",
                g.in_channels,
                g.out_channels
            );
        }
        model::device::DeviceSpec::parse(&self.device).context("device")?;
        self.tiling()?;
        self.tta()?;
        Ok(())
    }

    /// The tiles validation runs G on (`[inference]`); `None`: whole slices.
    pub fn tiling(&self) -> anyhow::Result<Option<infer::tiles::Tiling>> {
        let multiple = self.model.generator.size_multiple().max(1) as usize;
        self.inference
            .tiling(Some(self.data.crop_size), multiple)
            .context("[inference]")
    }

    /// The test-time augmentation validation runs (`[inference] tta`; `auto`: the mirrors
    /// `[data.augment]` trains with); `None`: one pass.
    pub fn tta(&self) -> anyhow::Result<Option<infer::tta::Tta>> {
        self.inference
            .tta
            .views(Some(self.data.augment.mirrors()))
            .context("[inference]")
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

/// Keys that say the same thing two ways: a layer that names one drops the other from the
/// layers below it (`--steps` wins over a file's `schedule.epochs`).
const EXCLUSIVE: [(&str, &str, &str); 1] = [("schedule", "steps", "epochs")];

/// [`merge`], where a layer naming one key of an [`EXCLUSIVE`] pair drops the other first.
fn merge_layer(base: &mut toml::Table, over: toml::Table) {
    for (table, a, b) in EXCLUSIVE {
        let names = |k: &str| {
            over.get(table)
                .and_then(toml::Value::as_table)
                .is_some_and(|t| t.contains_key(k))
        };
        let drop = match (names(a), names(b)) {
            (true, false) => Some(b),
            (false, true) => Some(a),
            _ => None,
        };
        if let (Some(k), Some(toml::Value::Table(t))) = (drop, base.get_mut(table)) {
            t.remove(k);
        }
    }
    merge(base, over);
}

/// Limits that no real run reaches and that keep a typo from asking for terabytes.
pub const MAX_BATCH: usize = 4096;
pub const MAX_CROP: usize = 4096;

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

    /// The command line's layer: dotted keys, TOML values, and `--steps` over a file's epochs.
    #[test]
    fn flag_layers_merge_key_by_key() {
        let mut flags = Layer::default();
        flags
            .set("schedule.steps", 7)
            .set("optim.generator.lr", 0.5);
        flags.assign("amp = \"bf16\"").unwrap();
        flags.assign("log.every=3").unwrap();
        assert!(flags.clone().assign("novalue").is_err());
        assert!(flags.clone().assign(".x=1").is_err());
        assert_eq!(
            flags.keys(),
            ["amp", "log.every", "optim.generator.lr", "schedule.steps"]
        );
        assert_eq!(flags.get("log.every"), Some(&toml::Value::Integer(3)));
        let file: toml::Table = toml::from_str("[schedule]\nepochs = 2.0\n").unwrap();
        let cfg = TrainConfig::from_layers(vec![file, flags.0], "tiny").unwrap();
        assert_eq!((cfg.schedule.steps, cfg.schedule.epochs), (7, None));
        assert_eq!(cfg.optim.generator.lr, 0.5);
        assert_eq!(cfg.log.every, 3);
        assert_eq!(cfg.amp, crate::amp::Precision::Bf16);
        // a typo in a flag's key is an error, as in a file
        let mut typo = Layer::default();
        typo.set("schedule.stepz", 3);
        assert!(TrainConfig::from_layers(vec![typo.0], "tiny").is_err());
    }

    /// Configs written before the test hooks left the config hold an (empty) `[debug]` table;
    /// they still load, and the hooks are never written.
    #[test]
    fn old_debug_tables_load_and_hooks_are_never_written() {
        let cfg = TrainConfig::from_toml_str("[debug]\nstop_after_step = 3\n", "tiny").unwrap();
        assert_eq!(cfg.hooks, TestHooks::default());
        let mut c = TrainConfig::with_preset("tiny").unwrap();
        c.hooks.stop_after_step = Some(2);
        let text = c.to_toml_string().unwrap();
        assert!(
            !text.contains("debug") && !text.contains("stop_after"),
            "{text}"
        );
    }

    /// The hooks' environment variable: its keys, and a clear error for anything else.
    #[test]
    fn test_hooks_parse_and_refuse_bad_values() {
        let h = TestHooks::default()
            .with("stop_after_step=5, inject_nan_at_step=2")
            .unwrap();
        assert_eq!(
            (h.stop_after_step, h.inject_nan_at_step),
            (Some(5), Some(2))
        );
        for bad in ["stop_after_step", "stop_after_step=x", "typo=3"] {
            let err = TestHooks::default().with(bad).unwrap_err().to_string();
            assert!(err.contains(TestHooks::ENV), "{bad}: {err}");
        }
    }

    #[test]
    fn merge_keeps_unnamed_keys() {
        let mut base: toml::Table = toml::from_str("a = 1\n[t]\nx = 1\ny = 2\n").unwrap();
        merge(&mut base, toml::from_str("[t]\ny = 3\n").unwrap());
        assert_eq!(base["a"].as_integer(), Some(1));
        assert_eq!(base["t"]["x"].as_integer(), Some(1));
        assert_eq!(base["t"]["y"].as_integer(), Some(3));
    }
}
