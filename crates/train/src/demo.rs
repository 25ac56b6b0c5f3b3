//! The built-in demo behind `ncct2ctpa train` with no `--data` (the README's first command):
//! a small seeded phantom dataset, generated once and cached, prepared, and a training config
//! for the `tiny` preset on the CPU that shows clear learning in a few minutes on 2 cores.
//!
//! ```text
//! data/phantom-demo/raw/        phantom NIfTI pairs (+ phantom.json with the settings)
//! data/phantom-demo/prepared/   the prepared dataset the demo trains on
//! runs/demo/                    the run (runs/demo-2, -3, ... when it exists)
//! ```
//!
//! Both data folders are caches: they are reused when their settings match the demo's, and
//! rebuilt (only our own files replaced) when they do not.

use crate::config::TrainConfig;
use anyhow::Context;
use dataset::manifest::SplitFractions;
use dataset::phantom::writer::{write_dataset, WriteOptions};
use dataset::phantom::{PhantomConfig, PhantomSize};
use dataset::prepare::{prepare, PrepareOptions, SplitChoice};
use std::path::{Path, PathBuf};

/// Number of phantom cases: 4 to train on, 1 to validate, 1 to test (seeded split).
pub const DEMO_CASES: usize = 6;

/// The demo's phantom: the small grid (128 x 128 x 56), misaligned pairs (the RegGAN setting).
pub fn phantom_config() -> PhantomConfig {
    PhantomConfig {
        size: PhantomSize::Small,
        seed: 2026,
        ..PhantomConfig::default()
    }
}

/// The demo's training configuration (see `configs/demo.toml`, the same values as a file).
pub fn train_config() -> anyhow::Result<TrainConfig> {
    train_config_with(&crate::config::Layer::default())
}

/// The demo's configuration with `flags` (the command line's layer) merged over it.
pub fn train_config_with(flags: &crate::config::Layer) -> anyhow::Result<TrainConfig> {
    let demo: toml::Table = toml::from_str(DEMO_TOML).context("configs/demo.toml")?;
    TrainConfig::from_layers(vec![demo, flags.0.clone()], "tiny")
}

/// `configs/demo.toml`, compiled in so the demo needs no file.
pub const DEMO_TOML: &str = include_str!("../../../configs/demo.toml");

/// Generates (or reuses) the phantom under `root/raw` and prepares (or reuses) it under
/// `root/prepared`; returns the prepared folder.
pub fn ensure_dataset(root: &Path, on_status: &dyn Fn(&str)) -> anyhow::Result<PathBuf> {
    let raw = root.join("raw");
    let prepared = root.join("prepared");
    let cfg = phantom_config();
    // Two demo runs at once must not both (re)write the phantom: the first holds the demo
    // folder's lock until its data is ready, the second fails at once naming it.
    std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
    let _lock = dataset::prepare::lock::lock_output(root)
        .with_context(|| format!("the demo dataset in {} is being made", root.display()))?;
    if raw_matches(&raw, &cfg) {
        on_status(&format!("reusing the phantom dataset in {}", raw.display()));
    } else {
        on_status(&format!(
            "generating {DEMO_CASES} phantom cases into {} (once; later runs reuse them)",
            raw.display()
        ));
        let opts = WriteOptions {
            cases: DEMO_CASES,
            overwrite: true,
            preview: false,
        };
        write_dataset(&raw, &cfg, &opts, &|c| {
            tracing::info!("phantom case {} generated in {:.1} s", c.name, c.generate_s)
        })
        .with_context(|| format!("generating the demo phantom in {}", raw.display()))?;
    }
    let discovery =
        dataset::raw::discover(&raw).with_context(|| format!("reading {}", raw.display()))?;
    let opts = PrepareOptions {
        split: SplitChoice::Seeded {
            seed: 0,
            fractions: SplitFractions([4.0 / 6.0, 1.0 / 6.0, 1.0 / 6.0]),
        },
        ..PrepareOptions::default()
    };
    on_status(&format!(
        "preparing it into {} (cases already prepared are reused)",
        prepared.display()
    ));
    let report = prepare(
        &discovery,
        &prepared,
        &opts,
        &|c| tracing::debug!(case = %c.case, seconds = c.seconds, "demo case prepared"),
    )
    .with_context(|| format!("preparing the demo dataset into {}", prepared.display()))?;
    tracing::info!(
        "demo dataset ready: {} cases in {:.1} s",
        report.cases.len(),
        report.elapsed.as_secs_f64()
    );
    Ok(prepared)
}

/// Whether `raw` holds a complete phantom set written with `cfg` and [`DEMO_CASES`] cases.
fn raw_matches(raw: &Path, cfg: &PhantomConfig) -> bool {
    let Ok(text) = std::fs::read_to_string(raw.join("phantom.json")) else {
        return false;
    };
    let Ok(json) = serde_json::from_str::<serde_json::Value>(&text) else {
        return false;
    };
    let same_cfg = serde_json::to_value(cfg).ok().as_ref() == json.get("config");
    let cases = json
        .get("cases")
        .and_then(|c| c.as_array())
        .map_or(0, Vec::len);
    same_cfg && cases == DEMO_CASES
}

#[cfg(test)]
mod tests {
    use super::*;

    /// While another run makes the demo data, a second one fails at once, names the folder,
    /// and writes nothing.
    #[test]
    fn a_second_run_fails_at_once_while_the_first_makes_the_data() {
        let tmp = tempfile::tempdir().unwrap();
        let _held = dataset::prepare::lock::lock_output(tmp.path()).unwrap();
        let t0 = std::time::Instant::now();
        let err = ensure_dataset(tmp.path(), &|_| {}).unwrap_err();
        assert!(t0.elapsed().as_secs() < 5, "it waited");
        let msg = format!("{err:#}");
        assert!(
            msg.contains(&tmp.path().display().to_string()) && msg.contains("being made"),
            "{msg}"
        );
        assert!(!tmp.path().join("raw").exists() && !tmp.path().join("prepared").exists());
    }
}
