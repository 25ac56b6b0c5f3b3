//! A whole training epoch on a prepared store, data loading included: ours (the trainer's
//! `dataset::sampler::Loader` feeding `train::step::train_step`) against the PyTorch twin
//! (`tools/pytorch_twin/epoch.py`: a `torch.utils.data.DataLoader` with `num_workers` workers
//! over a `Dataset` that memory-maps the same store files and augments each sample with the
//! same shape of work, feeding the twin of the step).
//!
//! Both sides: the train split's slices with at least 5 % body (the trainer's default
//! `min_body_fraction`), shuffled, `slices / batch` steps (last partial batch dropped) or fewer
//! when capped, the same preset, crop, batch, intra-op threads, loader workers (2 batches
//! prefetched each) and initial weights. The clock runs from starting the loader to the end of
//! the last step, so worker start-up, the first batch's wait and every wait for data count.
//! Building the slice list (reading the body masks) happens before the clock on both sides.

use crate::pytorch::{last_json_line, run_script};
use crate::stats::Timings;
use anyhow::Context;
use dataset::augment::AugmentConfig;
use dataset::manifest::Split;
use dataset::sampler::{split_keys, Loader, Sampler, SamplerConfig};
use dataset::store::{PreparedDataset, WindowedStore};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;
use tch::Device;
use train::config::TrainConfig;
use train::nets::Nets;
use train::step::{train_step, BatchTensors};

/// What one epoch run is.
#[derive(Debug, Clone)]
pub struct EpochSpec {
    /// The prepared store.
    pub data: PathBuf,
    pub preset: String,
    pub crop: usize,
    pub batch: usize,
    /// Cap on the steps (0: the whole epoch).
    pub max_steps: usize,
    /// Intra-op threads (both sides).
    pub threads: usize,
    /// Loader threads (ours) / `DataLoader` workers (PyTorch).
    pub workers: usize,
    /// Batches each worker prepares ahead (the trainer's default `data.prefetch` is 2, as is
    /// `DataLoader`'s `prefetch_factor`).
    pub prefetch: usize,
    /// Epochs per side, alternating ours and PyTorch's (at least 1): under a varying load
    /// from other processes, the median of alternated runs is steadier than one run each.
    pub repeats: usize,
}

/// One side's epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochSide {
    /// Slices in the epoch (train split, enough body).
    pub slices: usize,
    pub steps: usize,
    /// Loader start to the end of the last step, s.
    pub seconds: f64,
    /// Loader start to the first batch in hand, s.
    pub first_batch_s: f64,
    /// Time between successive step ends (the first from the loader start), s.
    pub step: Timings,
    /// G+R loss of the first step.
    pub first_loss_g: f64,
}

impl EpochSide {
    /// Training slices per second over the epoch.
    pub fn slices_per_s(&self, batch: usize) -> f64 {
        (self.steps * batch) as f64 / self.seconds
    }
}

/// Ours and (when run) PyTorch's epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochReport {
    pub dataset: PathBuf,
    pub preset: String,
    pub crop: usize,
    pub batch: usize,
    pub threads: usize,
    pub workers: usize,
    /// Our median epoch (by wall time) of the runs.
    pub ours: EpochSide,
    /// Wall time of each of our runs, s.
    #[serde(default)]
    pub ours_runs_s: Vec<f64>,
    /// Our loader's total blocking wait (the trainer starved of data), s.
    pub ours_loader_wait_s: f64,
    /// PyTorch's median epoch of the runs.
    pub pytorch: Option<EpochSide>,
    /// Wall time of each of PyTorch's runs, s.
    #[serde(default)]
    pub pytorch_runs_s: Vec<f64>,
}

/// The run with the median wall time (the lower middle one for an even count).
fn median_run<T>(mut runs: Vec<(EpochSide, T)>) -> Option<(EpochSide, T)> {
    runs.sort_by(|a, b| a.0.seconds.total_cmp(&b.0.seconds));
    let mid = runs.len().saturating_sub(1) / 2;
    runs.into_iter().nth(mid)
}

/// The training configuration of the epoch (the preset's defaults, the spec's sizes).
fn config(spec: &EpochSpec) -> anyhow::Result<TrainConfig> {
    let mut cfg = TrainConfig::with_preset(&spec.preset)?;
    cfg.data.batch_size = spec.batch;
    cfg.data.crop_size = spec.crop;
    cfg.data.loader_threads = spec.workers;
    cfg.data.prefetch = spec.prefetch;
    cfg.threads = spec.threads;
    let multiple = cfg.model.size_multiple() as usize;
    anyhow::ensure!(
        spec.crop.is_multiple_of(multiple),
        "epoch: the crop size {} must be a multiple of {multiple} for preset {}",
        spec.crop,
        spec.preset
    );
    Ok(cfg)
}

/// Runs our epoch; saves the initial weights to `init` for the PyTorch side.
pub fn run_ours(spec: &EpochSpec, device: Device, init: &Path) -> anyhow::Result<(EpochSide, f64)> {
    let cfg = config(spec)?;
    let ds = Arc::new(
        PreparedDataset::open(&spec.data)
            .with_context(|| format!("opening the prepared dataset {}", spec.data.display()))?,
    );
    let keys = split_keys(&ds, Split::Train, cfg.data.min_body_fraction)?;
    let slices = keys.len();
    let mut steps = slices / spec.batch;
    if spec.max_steps > 0 {
        steps = steps.min(spec.max_steps);
    }
    anyhow::ensure!(
        steps > 0,
        "{}: {slices} training slices, fewer than one batch of {}",
        spec.data.display(),
        spec.batch
    );
    let sampler = Arc::new(Sampler::new(
        Arc::new(WindowedStore::with_dataset_window(ds)),
        keys,
        SamplerConfig {
            batch_size: spec.batch,
            crop_size: spec.crop,
            fill: -1.0,
            seed: cfg.seed,
            augment: AugmentConfig::default(),
        },
    )?);
    let mut nets = Nets::new(&cfg, device);
    let mut optims = nets.optimizers(&cfg)?;
    std::fs::create_dir_all(init)?;
    nets.save(init)
        .context("saving the initial weights for the PyTorch side")?;
    tracing::debug!(slices, steps, "epoch: ours");

    let mut samples = Vec::with_capacity(steps);
    let mut first_batch_s = f64::NAN;
    let mut first_loss_g = f64::NAN;
    let mut wait = 0.0;
    let t0 = Instant::now();
    let mut last = t0;
    let mut loader = Loader::spawn(sampler, 0..steps as u64, spec.workers, spec.prefetch)?;
    for k in 0..steps {
        let batch = loader
            .next_batch()
            .ok_or_else(|| anyhow::anyhow!("the loader ended early at step {k}"))??;
        wait += loader.last_wait().as_secs_f64();
        if k == 0 {
            first_batch_s = t0.elapsed().as_secs_f64();
        }
        let tensors = BatchTensors::from_batch(&batch, device, &cfg)?;
        let stats = train_step(
            &mut nets,
            &mut optims,
            &tensors,
            &cfg,
            k as u64 + 1,
            1.0,
            false,
        )?;
        crate::step::sync(device);
        if k == 0 {
            first_loss_g = stats.loss_g;
        }
        let now = Instant::now();
        samples.push((now - last).as_secs_f64());
        last = now;
    }
    let seconds = t0.elapsed().as_secs_f64();
    drop(loader);
    let step = Timings::of(samples).ok_or_else(|| anyhow::anyhow!("no steps"))?;
    Ok((
        EpochSide {
            slices,
            steps,
            seconds,
            first_batch_s,
            step,
            first_loss_g,
        },
        wait,
    ))
}

/// What `epoch.py` prints (see its docstring).
#[derive(Debug, Clone, Deserialize)]
struct TorchEpoch {
    schema: u32,
    slices: usize,
    steps: usize,
    seconds: f64,
    first_batch_s: f64,
    step: Timings,
    first_loss_g: f64,
}

/// Parses `epoch.py`'s output (its last JSON line).
fn parse_torch(stdout: &str) -> anyhow::Result<EpochSide> {
    let line = last_json_line(stdout).context("epoch.py")?;
    let t: TorchEpoch =
        serde_json::from_str(line).context("epoch.py's JSON does not match the expected schema")?;
    anyhow::ensure!(
        t.schema == 1,
        "epoch.py wrote schema {}, expected 1",
        t.schema
    );
    Ok(EpochSide {
        slices: t.slices,
        steps: t.steps,
        seconds: t.seconds,
        first_batch_s: t.first_batch_s,
        step: t.step,
        first_loss_g: t.first_loss_g,
    })
}

/// Runs `epoch.py` with `python` for the same epoch, from the weights in `init`.
pub fn run_pytorch(
    spec: &EpochSpec,
    python: &Path,
    script: &Path,
    init: &Path,
    steps: usize,
) -> anyhow::Result<EpochSide> {
    let mut cmd = Command::new(python);
    cmd.arg(script)
        .arg("--data")
        .arg(&spec.data)
        .args(["--preset", &spec.preset])
        .args(["--crop", &spec.crop.to_string()])
        .args(["--batch", &spec.batch.to_string()])
        .args(["--threads", &spec.threads.to_string()])
        .args(["--workers", &spec.workers.to_string()])
        .args(["--steps", &steps.to_string()])
        .arg("--init")
        .arg(init)
        .env("OMP_NUM_THREADS", spec.threads.to_string())
        .env("MKL_NUM_THREADS", spec.threads.to_string());
    let side = parse_torch(&run_script(cmd, script)?)?;
    if side.steps != steps {
        tracing::warn!(
            ours = steps,
            pytorch = side.steps,
            "the two epochs ran different step counts"
        );
    }
    Ok(side)
}

/// Ours, then PyTorch's when `torch` names `(python, epoch.py)`.
pub fn measure(
    spec: &EpochSpec,
    device: Device,
    tmp: &Path,
    torch: Option<(&Path, &Path)>,
    progress: &dyn Fn(&str),
) -> anyhow::Result<EpochReport> {
    let init = tmp.join("init-epoch");
    let mut ours_runs = Vec::new();
    let mut torch_runs = Vec::new();
    for r in 1..=spec.repeats.max(1) {
        progress(&format!(
            "epoch {r} on {} ({} {}px batch {}, {} loader workers): ours",
            spec.data.display(),
            spec.preset,
            spec.crop,
            spec.batch,
            spec.workers
        ));
        let (ours, wait) = run_ours(spec, device, &init)?;
        let steps = ours.steps;
        ours_runs.push((ours, wait));
        if let Some((python, script)) = torch {
            progress(&format!("epoch {r}: the PyTorch side (DataLoader)"));
            torch_runs.push((run_pytorch(spec, python, script, &init, steps)?, ()));
        }
    }
    let ours_runs_s: Vec<f64> = ours_runs.iter().map(|r| r.0.seconds).collect();
    let pytorch_runs_s: Vec<f64> = torch_runs.iter().map(|r| r.0.seconds).collect();
    let (ours, wait) = median_run(ours_runs).ok_or_else(|| anyhow::anyhow!("no epoch ran"))?;
    let pytorch = median_run(torch_runs).map(|r| r.0);
    Ok(EpochReport {
        dataset: spec.data.clone(),
        preset: spec.preset.clone(),
        crop: spec.crop,
        batch: spec.batch,
        threads: spec.threads,
        workers: spec.workers,
        ours,
        ours_runs_s,
        ours_loader_wait_s: wait,
        pytorch,
        pytorch_runs_s,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A short epoch on a small phantom store: the steps asked for run, the clock covers them,
    /// and the first loss is finite.
    #[test]
    fn ours_runs_a_capped_epoch() {
        let _serial = crate::serial_test();
        let tmp = tempfile::tempdir().unwrap();
        let data = crate::data::phantom_store(tmp.path(), 2).unwrap();
        let spec = EpochSpec {
            data,
            preset: "tiny".into(),
            crop: 32,
            batch: 2,
            max_steps: 3,
            threads: 1,
            workers: 2,
            prefetch: 2,
            repeats: 1,
        };
        let (side, wait) = run_ours(&spec, Device::Cpu, &tmp.path().join("init")).unwrap();
        assert_eq!(side.steps, 3);
        assert_eq!(side.step.samples.len(), 3);
        assert!(side.slices >= 6, "{side:?}");
        let sum: f64 = side.step.samples.iter().sum();
        assert!(side.seconds >= sum * 0.999 && side.first_batch_s <= side.seconds);
        assert!(wait >= 0.0 && wait <= side.seconds);
        assert!(side.first_loss_g.is_finite());
        assert!(tmp.path().join("init/generator.safetensors").is_file());
    }

    #[test]
    fn median_run_picks_the_middle_wall_time() {
        let side = |s: f64| EpochSide {
            slices: 8,
            steps: 2,
            seconds: s,
            first_batch_s: 0.1,
            step: Timings::of(vec![s / 2.0, s / 2.0]).unwrap(),
            first_loss_g: 1.0,
        };
        let runs = vec![(side(3.0), 'a'), (side(1.0), 'b'), (side(2.0), 'c')];
        assert_eq!(median_run(runs).unwrap().1, 'c');
        let even = vec![(side(3.0), 'a'), (side(1.0), 'b')];
        assert_eq!(median_run(even).unwrap().1, 'b');
        assert!(median_run::<()>(Vec::new()).is_none());
    }

    #[test]
    fn parses_the_twin_output() {
        let line = r#"{"schema": 1, "torch": "2.13.0", "threads": 2, "workers": 2, "preset": "tiny", "crop": 96, "batch": 4, "slices": 224, "steps": 2, "seconds": 1.5, "first_batch_s": 0.2, "step": {"samples": [0.9, 0.6], "median": 0.75, "p10": 0.63, "p90": 0.87, "mean": 0.75}, "first_loss_g": 23.9}"#;
        let side = parse_torch(&format!("warning: x\n{line}\n")).unwrap();
        assert_eq!((side.slices, side.steps), (224, 2));
        assert!((side.slices_per_s(4) - 8.0 / 1.5).abs() < 1e-12);
        assert!(parse_torch(&line.replace("\"schema\": 1", "\"schema\": 7")).is_err());
    }
}
