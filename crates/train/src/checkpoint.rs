//! Checkpoints: complete, self-describing, written atomically. This is the writing side (and
//! the full reading side that `--resume` needs); the layout and the reading that inference
//! needs are `infer::checkpoint`'s.
//!
//! ```text
//! RUN/checkpoints/NAME/          NAME = latest | best | final
//!   generator.safetensors        G (names relative to G)
//!   registration.safetensors     R (absent when trained without registration)
//!   discriminator.safetensors    D, with the spectral-norm u/v vectors
//!   optim_gr.safetensors         Adam of G + R (moments, step counts, hyperparameters)
//!   optim_d.safetensors          Adam of D
//!   amp_scaler.json              loss scale and clean-step count (only with amp = "f16")
//!   config.toml                  the run's resolved configuration (rebuilds every network)
//!   state.json                   TrainState: step, epoch, best metric, RNG scheme, config
//! ```
//!
//! A checkpoint is written into a staging folder beside its final name
//! (`util::atomic::write_dir_atomic`), then swapped in: the old folder is renamed aside,
//! the new one renamed into place, the old one removed. A crash leaves either the old or the
//! new checkpoint under `NAME`, or (between the two renames) the new one complete under
//! `.NAME.new` and the old one under `.NAME.old`; [`recover_swap`] (run by [`resume_dir`])
//! finishes such a swap.
//!
//! Nothing about random state needs saving: batches are functions of `(seed, step)` (see
//! `dataset::sampler`) and libtorch is reseeded from `(seed, step)` at every step
//! (`crate::step`), so the step number is the whole RNG state.

use crate::config::TrainConfig;
use crate::nets::{Nets, Optimizers};
use crate::run_dir::RunDir;
use anyhow::{bail, Context};
use dataset::manifest::IntensityWindow;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub use infer::checkpoint::{find_checkpoint, CONFIG_FILE, FORMAT_VERSION, STATE_FILE};
pub const OPTIM_GR_FILE: &str = "optim_gr.safetensors";
pub const OPTIM_D_FILE: &str = "optim_d.safetensors";

/// The best validation score so far.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Best {
    /// Metric key (`mae_body`, ...).
    pub metric: String,
    pub value: f64,
    pub step: u64,
}

/// How the run's randomness is derived (documentation in the checkpoint: there is no
/// generator state to restore).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RngState {
    /// Always `"derived-from-seed-and-step"`.
    pub scheme: String,
    pub seed: u64,
}

/// `state.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    pub format_version: u32,
    /// Optimizer steps completed.
    pub step: u64,
    /// Epochs completed (fractional).
    pub epoch: f64,
    /// Total steps of the run.
    pub total_steps: u64,
    pub best: Option<Best>,
    pub rng: RngState,
    /// The HU window of the network's [-1, 1] scale.
    pub window: IntensityWindow,
    pub config: TrainConfig,
    /// Data-parallel processes that trained up to this checkpoint (1 before distributed
    /// training existed): a resume with another number is logged.
    #[serde(default = "one_process")]
    pub world_size: usize,
}

fn one_process() -> usize {
    1
}

impl TrainState {
    pub fn new(cfg: &TrainConfig, step: u64, epoch: f64, best: Option<Best>) -> Self {
        Self {
            format_version: FORMAT_VERSION,
            step,
            epoch,
            total_steps: cfg.schedule.steps,
            best,
            rng: RngState {
                scheme: "derived-from-seed-and-step".into(),
                seed: cfg.seed,
            },
            window: cfg.window(),
            config: cfg.clone(),
            world_size: 1,
        }
    }
}

/// Writes checkpoint `name` of `run` atomically, replacing the previous one of that name.
pub fn save(
    run: &RunDir,
    name: &str,
    nets: &Nets,
    opts: &Optimizers,
    state: &TrainState,
) -> anyhow::Result<PathBuf> {
    let dest = run.checkpoint(name);
    let parent = run.checkpoints_dir();
    let staging = parent.join(format!(".{name}.new"));
    let old = parent.join(format!(".{name}.old"));
    for stale in [&staging, &old] {
        if stale.exists() {
            std::fs::remove_dir_all(stale)
                .with_context(|| format!("removing stale {}", stale.display()))?;
        }
    }
    let config_text = state.config.to_toml_string()?;
    util::atomic::write_dir_atomic(&staging, |dir| -> anyhow::Result<()> {
        nets.save(dir)?;
        opts.gr
            .save(dir.join(OPTIM_GR_FILE))
            .context("saving the G+R optimizer")?;
        opts.d
            .save(dir.join(OPTIM_D_FILE))
            .context("saving the D optimizer")?;
        if opts.scaler.enabled() {
            opts.scaler.save(&dir.join(crate::amp::SCALER_FILE))?;
        }
        std::fs::write(dir.join(CONFIG_FILE), &config_text)?;
        std::fs::write(dir.join(STATE_FILE), serde_json::to_vec_pretty(state)?)?;
        infer::checkpoint::write_checksums(dir)
    })
    .with_context(|| format!("writing checkpoint {}", dest.display()))?;
    if dest.exists() {
        std::fs::rename(&dest, &old).with_context(|| format!("moving aside {}", dest.display()))?;
    }
    std::fs::rename(&staging, &dest)
        .with_context(|| format!("renaming into {}", dest.display()))?;
    if old.exists() {
        std::fs::remove_dir_all(&old).with_context(|| format!("removing {}", old.display()))?;
    }
    tracing::debug!(checkpoint = %dest.display(), step = state.step, "checkpoint saved");
    Ok(dest)
}

/// Finishes the swap of checkpoint `name` that a kill interrupted ([`save`]'s renames): a
/// complete `.NAME.new` (it only exists once whole: it is written atomically) is the newest
/// checkpoint and becomes `NAME`; else a `.NAME.old` left without a `NAME` becomes `NAME`
/// again. Leftovers are removed. The caller holds the run's lock, so no other process is
/// writing them.
pub fn recover_swap(run: &RunDir, name: &str) -> anyhow::Result<()> {
    let dest = run.checkpoint(name);
    let staging = run.checkpoints_dir().join(format!(".{name}.new"));
    let old = run.checkpoints_dir().join(format!(".{name}.old"));
    let complete = |dir: &Path| dir.join(STATE_FILE).is_file();
    let promote = |from: &Path| -> anyhow::Result<()> {
        if dest.exists() {
            std::fs::remove_dir_all(&dest)
                .with_context(|| format!("removing {}", dest.display()))?;
        }
        std::fs::rename(from, &dest)
            .with_context(|| format!("renaming {} to {}", from.display(), dest.display()))?;
        tracing::warn!(
            "{}: finished a checkpoint swap that was interrupted ({} -> {name})",
            run.root().display(),
            from.display()
        );
        Ok(())
    };
    if complete(&staging) {
        promote(&staging)?;
    } else if complete(&old) && !complete(&dest) {
        promote(&old)?;
    }
    for leftover in [&staging, &old] {
        if leftover.exists() {
            std::fs::remove_dir_all(leftover)
                .with_context(|| format!("removing {}", leftover.display()))?;
        }
    }
    Ok(())
}

/// When `latest` is damaged: the intact checkpoint (`final` or `best`) with the highest step,
/// said loudly; none: the damage is the error.
fn newest_intact(run: &RunDir, damage: anyhow::Error) -> anyhow::Result<PathBuf> {
    let intact = ["final", "best"]
        .into_iter()
        .map(|n| run.checkpoint(n))
        .filter(|d| d.join(STATE_FILE).is_file())
        .filter(|d| infer::checkpoint::verify_checksums(d, None).is_ok())
        .filter_map(|d| load_state(&d).ok().map(|s| (s.step, d)))
        .max_by_key(|(step, _)| *step);
    match intact {
        Some((step, dir)) => {
            tracing::warn!(
                "checkpoints/latest is damaged ({damage:#}); resuming from {} (step {step}) \
                 instead",
                dir.display()
            );
            Ok(dir)
        }
        None => Err(damage.context(format!(
            "cannot resume {}: checkpoints/latest is damaged and no other checkpoint is intact",
            run.root().display()
        ))),
    }
}

/// Reads `state.json` of a checkpoint folder.
pub fn load_state(dir: &Path) -> anyhow::Result<TrainState> {
    let path = dir.join(STATE_FILE);
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let state: TrainState =
        serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))?;
    infer::checkpoint::check_format_version(&path, state.format_version)?;
    Ok(state)
}

/// Loads weights and optimizer states of checkpoint `dir` into `nets` and `opts`, returning
/// its state.
pub fn restore(dir: &Path, nets: &mut Nets, opts: &mut Optimizers) -> anyhow::Result<TrainState> {
    infer::checkpoint::verify_checksums(dir, None)?;
    let state = load_state(dir)?;
    nets.load(dir)?;
    opts.gr
        .load(dir.join(OPTIM_GR_FILE))
        .with_context(|| format!("loading the G+R optimizer of {}", dir.display()))?;
    opts.d
        .load(dir.join(OPTIM_D_FILE))
        .with_context(|| format!("loading the D optimizer of {}", dir.display()))?;
    opts.scaler.load_from_checkpoint(dir)?;
    Ok(state)
}

/// The checkpoint a `--resume` of `run` continues from: `latest`, after finishing a swap that
/// a kill interrupted (see [`recover_swap`]).
pub fn resume_dir(run: &RunDir) -> anyhow::Result<PathBuf> {
    recover_swap(run, "latest")?;
    let latest = run.checkpoint("latest");
    if latest.join(STATE_FILE).is_file() {
        let Err(damage) = infer::checkpoint::verify_checksums(&latest, None) else {
            return Ok(latest);
        };
        return newest_intact(run, damage);
    }
    bail!(
        "cannot resume {}: it has no checkpoints/latest (the run stopped before its first \
         checkpoint; start it again without --resume into a new folder)",
        run.root().display()
    )
}
