//! Reading a checkpoint for inference: a checkpoint is self-describing, so `predict` needs
//! nothing but its folder.
//!
//! ```text
//! RUN/checkpoints/NAME/          NAME = latest | best | final
//!   generator.safetensors        G (names relative to G)
//!   registration.safetensors     R (absent when trained without registration)
//!   discriminator.safetensors    D, with the spectral-norm u/v vectors
//!   optim_gr.safetensors         Adam of G + R
//!   optim_d.safetensors          Adam of D
//!   amp_scaler.json              loss scale and clean-step count (only with amp = "f16")
//!   config.toml                  the run's resolved configuration
//!   state.json                   step, epoch, best metric, HU window, and the config again
//! ```
//!
//! Training writes this layout (`train::checkpoint`); this module is its reading side for
//! inference. [`CheckpointInfo`] takes from `state.json` only what inference needs (format
//! version, step, HU window, G's shape), and ignores every other key, so a checkpoint written
//! by a training configuration with more (or fewer) options than this build knows still
//! loads, as long as its format version is one this build reads.

use anyhow::{bail, Context};
use dataset::manifest::IntensityWindow;
use model::config::GeneratorConfig;
use model::generator::Generator;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use tch::nn::VarStore;
use tch::Device;

/// `state.json`: the checkpoint's description.
pub const STATE_FILE: &str = "state.json";
/// `config.toml`: the run's resolved configuration.
pub const CONFIG_FILE: &str = "config.toml";
/// G's weights (variable names relative to G).
pub const GENERATOR_FILE: &str = "generator.safetensors";
/// The exponential moving average of G's weights (`[ema]` in training): what inference uses
/// when a checkpoint holds it.
pub const GENERATOR_EMA_FILE: &str = "generator_ema.safetensors";
/// R's weights.
pub const REGISTRATION_FILE: &str = "registration.safetensors";
/// D's weights and spectral-norm vectors.
pub const DISCRIMINATOR_FILE: &str = "discriminator.safetensors";
/// SHA-256 of every other file of the checkpoint, written last: a bit flip or a truncated
/// copy is caught at load instead of training on damaged weights.
pub const CHECKSUMS_FILE: &str = "checksums.json";
/// The newest checkpoint layout this build writes and reads. Every older version is read too
/// (version 1 is the first).
pub const FORMAT_VERSION: u32 = 1;

/// What inference reads from a checkpoint's `state.json`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct CheckpointInfo {
    pub format_version: u32,
    /// Optimizer steps completed when it was written.
    pub step: u64,
    /// The HU window of the network's [-1, 1] scale.
    pub window: IntensityWindow,
    /// The part of the run's configuration that rebuilds G.
    pub config: RunSection,
}

/// `state.json`'s `config`, as far as inference reads it (other keys are ignored).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct RunSection {
    pub model: ModelSection,
    /// `None` in a checkpoint without a `data` section (hand-made ones).
    #[serde(default)]
    pub data: Option<DataSection>,
    /// How the run's validation ran G over a slice; `None` in a checkpoint written before
    /// runs recorded it (validated on whole slices).
    #[serde(default, deserialize_with = "recorded_inference")]
    pub inference: Option<crate::tiles::InferenceSettings>,
}

/// `config.inference`, its unknown keys ignored ([`crate::tiles::InferenceSettings::from_recorded`]).
fn recorded_inference<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<crate::tiles::InferenceSettings>, D::Error> {
    let table = serde_json::Map::<String, serde_json::Value>::deserialize(d)?;
    crate::tiles::InferenceSettings::from_recorded(table)
        .map(Some)
        .map_err(|e| serde::de::Error::custom(format!("{e:#}")))
}

/// `config.data`, as far as inference reads it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct DataSection {
    /// The side of the square crops G was trained on (`predict --tile auto`).
    pub crop_size: usize,
    /// How training augmented (`--tta auto` mirrors the same axes); `None` in a checkpoint
    /// that does not record it.
    #[serde(default)]
    pub augment: Option<AugmentSection>,
}

/// `config.data.augment`, as far as inference reads it (other keys are ignored; a key missing
/// takes training's default).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct AugmentSection {
    pub enabled: bool,
    pub flip_x_prob: f64,
    pub flip_y_prob: f64,
}

impl Default for AugmentSection {
    fn default() -> Self {
        let d = dataset::augment::AugmentConfig::default();
        Self {
            enabled: d.enabled,
            flip_x_prob: d.flip_x_prob,
            flip_y_prob: d.flip_y_prob,
        }
    }
}

impl AugmentSection {
    /// Whether training mirrored along x and along y, as training decides it
    /// ([`dataset::augment::AugmentConfig::mirrors`]).
    pub fn mirrors(&self) -> [bool; 2] {
        dataset::augment::AugmentConfig {
            enabled: self.enabled,
            flip_x_prob: self.flip_x_prob,
            flip_y_prob: self.flip_y_prob,
            ..Default::default()
        }
        .mirrors()
    }
}

/// `config.model`, as far as inference reads it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ModelSection {
    /// G's shape, as it was built for training.
    pub generator: GeneratorConfig,
}

impl CheckpointInfo {
    /// Reads `state.json` of checkpoint folder `dir`. Errors name the file: missing, not
    /// JSON, without the keys inference needs, or written by a newer format than this build
    /// reads.
    pub fn read(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join(STATE_FILE);
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let version: Versioned = serde_json::from_slice(&bytes)
            .with_context(|| format!("parsing {}", path.display()))?;
        check_format_version(&path, version.format_version)?;
        serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))
    }
}

/// Only the version, read first so that a newer format gets its own message rather than a
/// missing-field error.
#[derive(Deserialize)]
struct Versioned {
    format_version: u32,
}

/// Errors unless checkpoint format `version` (of file `path`) is one this build reads.
pub fn check_format_version(path: &Path, version: u32) -> anyhow::Result<()> {
    if version == 0 || version > FORMAT_VERSION {
        bail!(
            "{}: checkpoint format {version} is newer than this build of ncct2ctpa reads (formats \
             1 to {FORMAT_VERSION}); use the version that wrote it, or a newer one",
            path.display()
        );
    }
    Ok(())
}

/// Writes [`CHECKSUMS_FILE`] into checkpoint folder `dir`: the SHA-256 of each of its files.
pub fn write_checksums(dir: &Path) -> anyhow::Result<()> {
    let mut sums = std::collections::BTreeMap::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name == CHECKSUMS_FILE || !path.is_file() {
            continue;
        }
        sums.insert(name, util::checksum::sha256_path(&path)?);
    }
    let json = serde_json::json!({ "sha256": sums });
    std::fs::write(dir.join(CHECKSUMS_FILE), serde_json::to_vec_pretty(&json)?)
        .with_context(|| format!("writing {}", dir.join(CHECKSUMS_FILE).display()))
}

/// Checks `files` of checkpoint folder `dir` (all recorded ones when `None`) against its
/// [`CHECKSUMS_FILE`]; errors name the damaged file. A checkpoint written before checksums
/// existed has none and passes (logged).
pub fn verify_checksums(dir: &Path, files: Option<&[&str]>) -> anyhow::Result<()> {
    let path = dir.join(CHECKSUMS_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::info!(
                "{}: no {CHECKSUMS_FILE} (an older checkpoint)",
                dir.display()
            );
            return Ok(());
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    #[derive(Deserialize)]
    struct Sums {
        sha256: std::collections::BTreeMap<String, String>,
    }
    let sums: Sums =
        serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))?;
    let names: Vec<&str> = match files {
        Some(f) => f.to_vec(),
        None => sums.sha256.keys().map(String::as_str).collect(),
    };
    for name in names {
        let Some(recorded) = sums.sha256.get(name) else {
            continue;
        };
        let file = dir.join(name);
        let now = util::checksum::sha256_path(&file)?;
        if &now != recorded {
            bail!(
                "{}: damaged (SHA-256 {} recorded when the checkpoint was written, {} now)",
                file.display(),
                &recorded[..12.min(recorded.len())],
                &now[..12]
            );
        }
    }
    Ok(())
}

/// A checkpoint folder from what a user names: a checkpoint folder itself, or a run folder
/// (then its `best`, else `final`, else `latest` checkpoint).
pub fn find_checkpoint(path: &Path) -> anyhow::Result<PathBuf> {
    if path.join(STATE_FILE).is_file() {
        return Ok(path.to_path_buf());
    }
    for name in ["best", "final", "latest"] {
        let dir = path.join("checkpoints").join(name);
        if dir.join(STATE_FILE).is_file() {
            return Ok(dir);
        }
    }
    bail!(
        "{} is neither a checkpoint folder (with {STATE_FILE}) nor a run folder with \
         checkpoints/{{best,final,latest}}",
        path.display()
    )
}

/// A generator rebuilt from a checkpoint, for inference.
pub struct LoadedGenerator {
    /// Owns G's variables (keep it alive while using `generator`).
    pub store: VarStore,
    pub generator: Generator,
    /// The window the network's [-1, 1] scale maps to.
    pub window: IntensityWindow,
    /// The checkpoint folder it came from.
    pub checkpoint: PathBuf,
    pub step: u64,
    /// The weights are the EMA of G's ([`GENERATOR_EMA_FILE`]).
    pub ema: bool,
    /// The side of the square crops G was trained on, when the checkpoint says.
    pub train_crop: Option<usize>,
    /// Whether training mirrored along x and y (`[x, y]`), when the checkpoint says.
    pub train_mirrors: Option<[bool; 2]>,
    /// How the run's validation ran G (tiles or whole slices, test-time augmentation), when
    /// the checkpoint says: what `predict` does by default ([`crate::tiles::resolve`],
    /// [`crate::tta::resolve`]).
    pub inference: Option<crate::tiles::InferenceSettings>,
}

impl LoadedGenerator {
    /// The translator of this generator on its own device.
    pub fn translator(&self) -> crate::predict::Translator<'_> {
        crate::predict::Translator {
            generator: &self.generator,
            window: self.window,
            device: self.store.device(),
        }
    }
}

impl std::fmt::Debug for LoadedGenerator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedGenerator")
            .field("checkpoint", &self.checkpoint)
            .field("step", &self.step)
            .field("window", &self.window)
            .finish_non_exhaustive()
    }
}

/// Rebuilds G from a checkpoint (or a run folder, see [`find_checkpoint`]) on `device`, from
/// the configuration stored with it: nothing else is needed.
pub fn load_generator(path: &Path, device: Device) -> anyhow::Result<LoadedGenerator> {
    let dir = find_checkpoint(path)?;
    // the EMA of G's weights when the run kept one (what its validation scored)
    let ema = dir.join(GENERATOR_EMA_FILE).is_file();
    let file = if ema {
        GENERATOR_EMA_FILE
    } else {
        GENERATOR_FILE
    };
    verify_checksums(&dir, Some(&[STATE_FILE, file]))?;
    let info = CheckpointInfo::read(&dir)?;
    let mut store = VarStore::new(device);
    let generator = Generator::new(&store.root(), &info.config.model.generator);
    let weights = dir.join(file);
    store
        .load(&weights)
        .with_context(|| format!("loading {}", weights.display()))?;
    let vars = store.variables();
    model::finite::check_finite(vars.iter().map(|(n, t)| (n.as_str(), t)), &weights)?;
    tracing::info!(checkpoint = %dir.display(), step = info.step, ema, "generator loaded");
    Ok(LoadedGenerator {
        store,
        generator,
        window: info.window,
        checkpoint: dir,
        step: info.step,
        ema,
        train_crop: info.config.data.as_ref().map(|d| d.crop_size),
        train_mirrors: info
            .config
            .data
            .as_ref()
            .and_then(|d| d.augment.as_ref())
            .map(AugmentSection::mirrors),
        inference: info.config.inference,
    })
}

#[cfg(test)]
mod tests {
    use super::AugmentSection;

    /// A checkpoint's `config.data.augment` is read leniently: keys this build does not read
    /// are ignored, and a key missing takes training's default (left-right mirrors with p =
    /// 0.5, no anterior-posterior ones).
    #[test]
    fn a_partial_augment_record_takes_trainings_defaults() {
        let read = |json: &str| {
            serde_json::from_str::<AugmentSection>(json)
                .unwrap()
                .mirrors()
        };
        assert_eq!(
            read(r#"{"flip_y_prob": 0.5, "rotate_deg": 3.0}"#),
            [true, true]
        );
        assert_eq!(
            read(r#"{"enabled": false, "flip_y_prob": 0.5}"#),
            [false, false]
        );
        assert_eq!(read(r#"{"flip_x_prob": 0.0}"#), [false, false]);
        assert_eq!(read("{}"), [true, false]);
    }
}
